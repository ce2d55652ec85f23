"""Online t-SNE whose layout moves when, and only when, the data moves.

:func:`tsne_next` lays out one run given the previous run's keys, embeddings and layout. Each
point is pulled by two sets of affinities: its neighbours in this run (ordinary t-SNE, weight
``1 - anchor``) and its neighbours among the previous run's points, held fixed at their
previous positions (weight ``anchor``). A point whose embedding barely moved has its own
former self and former neighbours as previous-run neighbours, so it stays; a point that moved
far is pulled to where its new neighbours were. This is a window of two runs embedded together
with the older run frozen, an online stand-in for one global t-SNE over all runs. The layout
then follows the spread of the data (``spread_power``) and comes back already in the previous
layout's frame: do not Procrustes-align it again.

Example:
    >>> import numpy as np
    >>> X0 = np.random.default_rng(0).normal(size=(120, 8))
    >>> keys = np.arange(120)
    >>> L0 = tsne_next(X0, keys, None)
    >>> L1 = tsne_next(X0.copy(), keys, (keys, X0, L0))  # nothing moved: nothing moves
    >>> bool(np.array_equal(L0, L1))
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.reduce.align import procrustes_align, rms_radius
from lightning_embproj.reduce.dispatch import warm_init
from lightning_embproj.reduce.pca import TSNE_PCA_DIMS, pca, prepare
from lightning_embproj.reduce.tsne import (
    MIN_ROWS,
    Threads,
    effective_perplexity,
    threads_now,
    tsne,
    tsne_gradient_method,
    tsne_neighbors,
)
from lightning_embproj.runtime.trace import stage

#: Weight of the previous run's affinities (0: plain warm start; 1: only the previous run).
#: bench_stability.py, digits MLP, 3 seeds: 0.1 -> stability 0.56-0.58 / np@1% 0.56;
#: 0.2 -> 0.61-0.67 (0.46 on one seed) / 0.545-0.571; 0.25 -> +0.01 stability, -0.01 np.
ANCHOR = 0.2
#: The layout's RMS radius follows the data's RMS radius to this power (0: t-SNE's own scale).
#: Same bench at anchor 0.2: 0 -> 0.46-0.67, 0.5 -> 0.65-0.79, 1 -> 0.72-0.81, np unchanged.
SPREAD_POWER = 0.5
# Gradient steps per run: the anchored layout settles within ~100 (same scores at 100 and 250).
_ITERS = 100
# Iterations per traced chunk (lightning_embproj.runtime.trace), as the cold run's.
_CHUNK_ITERS = 50
# t-SNE's own RMS radius is ~0.65-0.95 sqrt(N) (openTSNE, learning rate N); the optimisation
# runs at this scale whatever the size of the previous layout (which follows the data).
_WORK_RMS_PER_SQRT_N = 0.85
_MIN_SHARED = 3


def anchored_gradient(
    Y: np.ndarray, P: Any, Pc: Any, ref: np.ndarray, method: str, threads: int
) -> np.ndarray:
    """openTSNE's KL gradient of layout ``Y`` under the affinities ``P`` (CSR), plus the
    attraction of the rows of ``Pc`` (CSR, one row per point of ``Y``) towards the fixed
    points ``ref``.

    The one place that calls openTSNE's private gradient code (``openTSNE._tsne``, pinned
    below openTSNE 2; ``tests/reduce/test_opentsne_contract.py`` checks it): the public API
    has no way to add an attraction to fixed points. ``method``: ``"bh"`` or ``"fft"``.

    Example:
        >>> import scipy.sparse as sp
        >>> Y = np.array([[0.0, 0.0], [1.0, 0.0]])
        >>> P = sp.csr_matrix(np.array([[0.0, 0.5], [0.5, 0.0]]))
        >>> g = anchored_gradient(Y, P, sp.csr_matrix((2, 1)), np.zeros((1, 2)), "bh", 1)
        >>> bool(g[0, 0] < 0 < g[1, 0])  # the two points attract each other
        True
    """
    from openTSNE import _tsne
    from openTSNE.tsne import kl_divergence_bh, kl_divergence_fft

    objective = kl_divergence_fft if method == "fft" else kl_divergence_bh
    _, grad = objective(
        Y, P, dof=1, bh_params={"theta": 0.5},
        fft_params={"n_interpolation_points": 3, "min_num_intervals": 50, "ints_in_interval": 1},
        n_jobs=threads,
    )
    _tsne.estimate_positive_gradient_nn(
        Pc.indices, Pc.indptr, Pc.data, Y, ref, grad, 1, num_threads=threads,
        should_eval_error=False,
    )
    return np.asarray(grad)


def descend(
    Y: np.ndarray, P: Any, Pc: Any, ref: np.ndarray, n_iter: int, method: str,
    frozen: np.ndarray, n_jobs: Threads,
) -> np.ndarray:
    """openTSNE's gradient descent (momentum 0.8, gains, steps clipped at 5, learning rate N)
    on :func:`anchored_gradient`, rows ``frozen`` held where they are; returns a new array.

    Not openTSNE's own loop: that one re-centres the layout every step, which would move
    the points that must stay where they were (otherwise the same steps: the contract test
    compares the two).

    Example:
        >>> import scipy.sparse as sp
        >>> Y = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
        >>> P = sp.csr_matrix(np.full((3, 3), 1 / 6) - np.eye(3) / 6)
        >>> out = descend(Y, P, sp.csr_matrix((3, 1)), np.zeros((1, 2)), 5, "bh",
        ...               np.array([True, False, False]), 1)
        >>> out[0].tolist(), out.shape
        ([0.0, 0.0], (3, 2))
    """
    Y = np.ascontiguousarray(Y, dtype=np.float64).copy()
    update = np.zeros_like(Y)
    gains = np.ones_like(Y)
    lr = float(len(Y))
    for done in range(0, n_iter, _CHUNK_ITERS):
        with stage("t-SNE chunk"):
            for _ in range(min(_CHUNK_ITERS, n_iter - done)):
                grad = anchored_gradient(Y, P, Pc, ref, method, threads_now(n_jobs))
                flip = np.sign(update) != np.sign(grad)
                gains[flip] += 0.2
                gains[~flip] = gains[~flip] * 0.8 + 0.01
                update = 0.8 * update - lr * gains * grad
                norms = np.linalg.norm(update, axis=1)
                big = norms > 5.0
                update[big] *= (5.0 / norms[big])[:, None]
                update[frozen] = 0.0
                Y += update
    return Y


def tsne_next(
    X: Any,
    keys: Any,
    previous: tuple[Any, Any, Any] | None,
    n_components: int = 2,
    *,
    perplexity: float = 30.0,
    random_state: int = 0,
    n_jobs: Threads = 1,
    anchor: float = ANCHOR,
    spread_power: float = SPREAD_POWER,
    check_input: bool = True,
) -> np.ndarray:
    """t-SNE layout of run ``X`` (rows named by ``keys``) that continues ``previous``.

    ``previous`` is ``(prev_keys, X_prev, layout_prev)`` of the run before (any order, any
    overlap of keys) or None for the first run (a cold :func:`~lightning_embproj.reduce.tsne.tsne`).
    The result is in ``layout_prev``'s frame already (no Procrustes needed), and:

    - every shared key whose embedding is bit-identical keeps its previous position exactly
      when all shared embeddings are identical (a frozen model), new keys are then placed
      around them; with nothing new the previous layout comes back as it is;
    - the others are pulled towards their neighbours in this run (weight ``1 - anchor``) and
      towards the previous positions of their neighbours in the previous run (``anchor``);
    - the layout's RMS radius is the previous one times (this run's RMS radius in the
      embedding space / the previous run's, on the shared keys) ** ``spread_power``.

    Embeddings of more than 50 dims go through one PCA to 50 fitted on both runs, so that
    distances across runs are comparable. With fewer than 3 shared keys, fewer than 5 rows, no
    variance or a collapsed previous layout: today's warm start (``warm_init`` + ``tsne`` +
    ``procrustes_align``). Deterministic for a given input and ``random_state``.
    ``check_input=False``: the arrays are checked runs' (see :mod:`lightning_embproj.checks`).

    Example:
        >>> X0 = np.random.default_rng(0).normal(size=(100, 6))
        >>> keys = np.arange(100)
        >>> L0 = tsne_next(X0, keys, None)
        >>> tsne_next(X0 + 0.01, keys, (keys, X0, L0)).shape
        (100, 2)
    """
    checks.components(n_components)
    if not 0.0 <= anchor < 1.0:
        raise ValueError(f"anchor must be in [0, 1), got {anchor!r}")
    if not (math.isfinite(spread_power) and spread_power >= 0.0):
        raise ValueError(f"spread_power must be a finite number >= 0, got {spread_power!r}")
    if check_input:
        X = checks.matrix(X, "X")
        keys = checks.keys(keys, "keys", rows=X.shape[0])
    X, keys = np.asarray(X, dtype=np.float64), np.asarray(keys)
    n = X.shape[0]
    if previous is None:
        return tsne(prepare(X, ["tsne"], check_input=False), n_components,
                    perplexity=perplexity, random_state=random_state, n_jobs=n_jobs)
    pkeys, Xp, Lp = _previous_run(previous, n_components, X.shape[1], check_input)

    _, ic, ip = np.intersect1d(keys, pkeys, assume_unique=True, return_indices=True)
    same = np.zeros(n, dtype=bool)
    same[ic] = (X[ic] == Xp[ip]).all(axis=1)
    if len(ic) == n and same.all():
        out = np.empty((n, n_components))
        out[ic] = Lp[ip]  # a frozen model: the very same layout
        return out
    s_prev = rms_radius(Lp)
    if len(ic) < _MIN_SHARED or n < MIN_ROWS or rms_radius(X) == 0.0 or s_prev == 0.0:
        layout = tsne(prepare(X, ["tsne"], check_input=False), n_components,
                      init=warm_init(pkeys, Lp, keys, X), perplexity=perplexity,
                      random_state=random_state, n_jobs=n_jobs)
        return procrustes_align(layout, keys, Lp, pkeys, check_input=False)

    with stage("t-SNE affinities"):
        P, Pc, Z = _affinities(X, Xp, perplexity, anchor, random_state, n_jobs)
    frozen = same if same[ic].all() else np.zeros(n, dtype=bool)
    s_x, s_xp = rms_radius(X[ic]), rms_radius(Xp[ip])
    ratio = (s_x / s_xp) ** spread_power if s_xp > 0.0 and s_x > 0.0 else 1.0
    out = _descend_in_frame(Lp, pkeys, keys, Z, P, Pc, frozen, ratio, n_jobs)
    if frozen.any():
        out[ic[frozen[ic]]] = Lp[ip[frozen[ic]]]  # bit-exact, not scaled back and forth
    return out


def _descend_in_frame(
    Lp: np.ndarray, pkeys: np.ndarray, keys: np.ndarray, Z: np.ndarray, P: Any, Pc: Any,
    frozen: np.ndarray, ratio: float, n_jobs: Threads,
) -> np.ndarray:
    """:func:`descend` from the warm start at t-SNE's own scale, centred; the result comes back
    in the previous layout's frame: its centre, its RMS radius times ``ratio``."""
    centre = Lp.mean(axis=0)
    work = _WORK_RMS_PER_SQRT_N * math.sqrt(len(Lp)) / rms_radius(Lp)
    ref = np.ascontiguousarray((Lp - centre) * work)
    init = warm_init(pkeys, ref, keys, Z)
    assert init is not None  # at least _MIN_SHARED keys are shared
    # A finished layout's extent makes FFT's grid large: the warm choice (Barnes-Hut to 20,000).
    method = tsne_gradient_method(len(Z), Lp.shape[1], warm=True)
    Y = descend(init, P, Pc, ref, _ITERS, method, frozen, n_jobs)
    return np.asarray(Y * (ratio / work) + centre, dtype=np.float64)


def _previous_run(
    previous: Any, n_components: int, dims: int, check_input: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``previous`` of :func:`tsne_next` as checked ``(prev_keys, X_prev, layout_prev)``."""
    if not isinstance(previous, tuple) or len(previous) != 3:
        raise ValueError("previous must be None or a tuple (prev_keys, X_prev, layout_prev), "
                         f"got {type(previous).__name__}")
    pkeys, Xp, Lp = previous
    if check_input:
        Xp = checks.matrix(Xp, "previous X_prev")
        pkeys = checks.keys(pkeys, "previous prev_keys", rows=Xp.shape[0], of="X_prev")
        Lp = checks.matrix(Lp, "previous layout_prev")
    Xp, Lp = np.asarray(Xp, dtype=np.float64), np.asarray(Lp, dtype=np.float64)
    if Lp.shape != (Xp.shape[0], n_components):
        raise ValueError(f"previous layout_prev must have shape {(Xp.shape[0], n_components)} "
                         f"(one row per prev_key, n_components columns), got {Lp.shape}")
    if Xp.shape[1] != dims:
        raise ValueError(f"previous X_prev has {Xp.shape[1]} dims but X has {dims}")
    return np.asarray(pkeys), Xp, Lp


def _affinities(
    X: np.ndarray, Xp: np.ndarray, perplexity: float, anchor: float, random_state: int,
    n_jobs: Threads,
) -> tuple[Any, Any, np.ndarray]:
    """``(P, Pc, Z)``: this run's own affinities, those to the previous run's points, and the
    space they were computed in (one PCA to 50 dims of both runs above 50 dims, so that
    distances across runs are comparable)."""
    from openTSNE.affinity import PerplexityBasedNN

    n = len(X)
    if X.shape[1] > TSNE_PCA_DIMS:
        both = pca(np.concatenate([X, Xp]), TSNE_PCA_DIMS, check_input=False)
        Z, Zp = both[:n], both[n:]
    else:
        Z, Zp = X, Xp
    own = PerplexityBasedNN(
        Z, perplexity=effective_perplexity(perplexity, n), method=tsne_neighbors(n),
        random_state=random_state, n_jobs=threads_now(n_jobs), verbose=False,
    ).P
    cross = PerplexityBasedNN(
        Zp, perplexity=effective_perplexity(perplexity, len(Zp)),
        method=tsne_neighbors(len(Zp)), random_state=random_state,
        n_jobs=threads_now(n_jobs), verbose=False,
    ).to_new(Z, perplexity=effective_perplexity(perplexity, len(Zp)))
    # own sums to 1 over all N^2 entries, cross to 1 per row: bring both to ~1/N per row.
    return (own * (1.0 - anchor)).tocsr(), (cross * (anchor / n)).tocsr(), Z
