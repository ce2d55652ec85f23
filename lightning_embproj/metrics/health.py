"""Label-free health of an embedding: RankMe, uniformity and linear CKA to the previous run.

Pure numpy functions over one run (or two runs matched on their tracking keys): RankMe
(Garrido et al., ICML 2023), uniformity (Wang & Isola, ICML 2020) and linear CKA between runs
(Kornblith et al., ICML 2019). :data:`HEALTH_DOCS` documents every metric the evolve stage adds
(these, the cluster scores of :func:`~lightning_embproj.evolve.clusters.cluster_scores` and
the temporal stability of :mod:`~lightning_embproj.metrics.stability`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 16))
    >>> round(rankme(X)) > round(rankme(X[:, :2] @ rng.normal(size=(2, 16))))
    True
    >>> round(linear_cka(X, X @ np.linalg.qr(rng.normal(size=(16, 16)))[0]), 6)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import shared_rows
from lightning_embproj.metrics.sizing import fixed_subset

HEALTH_DOCS: dict[str, str] = {
    "health/rankme": "RankMe (Garrido et al. 2023): exp of the entropy of the normalised "
    "singular values of the embeddings, 1..min(N, D); falls when embeddings collapse into "
    "fewer dimensions.",
    "health/uniformity": "Uniformity (Wang & Isola 2020): log of the mean of "
    "exp(-2 ||u - v||^2) over pairs of L2-normalised embeddings, -4..0; lower = spread more "
    "evenly over the sphere, 0 = all in one direction (2,048 fixed rows above that).",
    "health/cka_previous": "Linear CKA between this run's and the previous run's embeddings "
    "of the same tracked points, 0..1 (1 = the same up to rotation and scale).",
    "clusters/count": "Number of clusters this run (noise excluded).",
    "clusters/noise_fraction": "Fraction of points HDBSCAN left as noise (0 with k-means).",
    "clusters/ari_previous": "Adjusted Rand index between this run's and the previous run's "
    "clusters on the tracked points clustered in both (noise left out; 1 = the same "
    "partition).",
    "clusters/nmi_labels": "Normalized mutual information between clusters and labels on the "
    "clustered points (noise left out), 0..1.",
    "<reducer>/temporal_stability": "Spearman correlation between each point's step length in the "
    "original space and in the aligned layout, pooled over points and consecutive runs "
    "(Vernier et al. 2020; 1 = the layout moves a point as much as the model does).",
}
UNIFORMITY_MAX_POINTS = 2048


def rankme(X: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe: ``exp(-sum p log p)`` with ``p = s / sum(s) + eps`` over the singular values.

    The embeddings are used as they are (not centred), as in the paper. Ranges from about 1
    (rank one) to ``min(N, D)``; NaN for an empty or all-zero matrix. The singular values come
    from the eigenvalues of the smaller Gram matrix (``D x D`` or ``N x N``).

    Example:
        >>> round(rankme(np.eye(4)), 3), round(rankme(np.ones((5, 3))), 3)
        (4.0, 1.0)
    """
    return _rankme(checks.matrix(X, "X", dtype=np.float64), eps)


def _rankme(X: np.ndarray, eps: float = 1e-7) -> float:
    if X.size == 0:
        return math.nan
    G = X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T
    s = np.sqrt(np.clip(np.linalg.eigvalsh(G), 0.0, None))
    total = float(s.sum())
    if total <= 0.0:
        return math.nan
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def uniformity(
    X: np.ndarray, t: float = 2.0, max_points: int | None = UNIFORMITY_MAX_POINTS
) -> float:
    """Uniformity: ``log mean exp(-t ||u - v||^2)`` over pairs ``i < j`` of normalised rows.

    Lower (down to ``-2t``) means spread more evenly over the unit sphere; 0 means every row
    points the same way. Rows are L2-normalised (all-zero rows stay zero). Above
    ``max_points`` rows, all pairs of a fixed random subset (seed 0) of that many rows.
    NaN with fewer than 2 rows. Memory ``O(chunk * max_points)``.

    Example:
        >>> uniformity(np.ones((4, 3)))
        0.0
        >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])), 3)
        -8.0
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    return _uniformity(checks.matrix(X, "X", dtype=np.float64), t, max_points)


def _uniformity(X: np.ndarray, t: float, max_points: int | None) -> float:
    rows = fixed_subset(X.shape[0], max_points)
    U = X if rows is None else X[rows]
    n = U.shape[0]
    if n < 2:
        return math.nan
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    U = U / np.where(norms > 0, norms, 1.0)
    sq = np.einsum("ij,ij->i", U, U)
    total = 0.0
    step = checks.chunk_rows(8 * n, at_least=16)
    for s in range(0, n, step):
        e = min(n, s + step)
        d = sq[s:e, None] + sq[None, :] - 2.0 * (U[s:e] @ U.T)
        # -t * d lies in [-4t, 0]: exp cannot overflow or vanish, no log-sum-exp shift needed
        vals = np.exp(-t * np.clip(d, 0.0, None))
        upper = np.arange(n)[None, :] > np.arange(s, e)[:, None]
        total += float(vals[upper].sum())
    return float(math.log(total / (n * (n - 1) / 2)))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two representations of the same rows (columns centred).

    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, computed with the ``D x D`` matrices or,
    when that is cheaper (``N`` small against ``D``), with the ``N x N`` Gram matrices in row
    blocks (same value: ``||X^T X||_F = ||X X^T||_F``). Invariant to rotations and isotropic
    scaling of either side; 1 for identical inputs. NaN when either side has no variance or
    fewer than 2 rows.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(30, 5))
        >>> round(linear_cka(X, 3 * X), 6)
        1.0
    """
    X = checks.matrix(X, "X", dtype=np.float64)
    Y = checks.matrix(Y, "Y", dtype=np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows, Y has {Y.shape[0]}: rows must match")
    return _cka(X, Y)


def _cka(X: np.ndarray, Y: np.ndarray) -> float:
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if n < 2:
        return math.nan
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    if dx * dy + dx * dx + dy * dy <= n * (dx + dy):
        hsic = float(np.square(Y.T @ X).sum())
        nx = float(np.linalg.norm(X.T @ X))
        ny = float(np.linalg.norm(Y.T @ Y))
    else:
        hsic = nx2 = ny2 = 0.0
        step = checks.chunk_rows(8 * n, at_least=16)
        for s in range(0, n, step):
            K = X[s : s + step] @ X.T
            L = Y[s : s + step] @ Y.T
            hsic += float((K * L).sum())
            nx2 += float(np.square(K).sum())
            ny2 += float(np.square(L).sum())
        nx, ny = math.sqrt(nx2), math.sqrt(ny2)
    if nx <= 0.0 or ny <= 0.0:
        return math.nan
    return float(hsic / (nx * ny))


def health_metrics(
    keys: np.ndarray | Sequence[int],
    X: np.ndarray,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    X_prev: np.ndarray | None = None,
    *,
    check_input: bool = True,
) -> dict[str, float]:
    """``health/rankme``, ``health/uniformity`` and ``health/cka_previous`` of one run.

    ``health/cka_previous`` is computed on the keys present in both runs (NaN without a
    previous run or with fewer than 2 shared keys). ``check_input=False``: the arrays are a
    checked run's (see :mod:`lightning_embproj.checks`).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> health_metrics(np.arange(50), X, np.arange(50), X)["health/cka_previous"]
        1.0
    """
    if check_input:
        X = checks.matrix(X, "X")
        keys = checks.keys(keys, "keys", rows=X.shape[0])
    X64 = np.asarray(X, dtype=np.float64)
    out = {"health/rankme": _rankme(X64),
           "health/uniformity": _uniformity(X64, 2.0, UNIFORMITY_MAX_POINTS)}
    cka = math.nan
    if prev_keys is not None and X_prev is not None:
        if check_input:
            X_prev = checks.matrix(X_prev, "X_prev")
            prev_keys = checks.keys(prev_keys, "prev_keys", rows=X_prev.shape[0], of="X_prev")
        ip, ic = shared_rows(np.asarray(prev_keys), np.asarray(keys))
        if ip.size >= 2:
            cka = _cka(np.asarray(X_prev, dtype=np.float64)[ip], X64[ic])
            cka = round(cka, 12) if cka == cka else cka  # identical runs read exactly 1.0
    out["health/cka_previous"] = cka
    return out
