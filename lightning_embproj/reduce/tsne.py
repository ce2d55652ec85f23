"""t-SNE stage: openTSNE layouts, cold or warm-started, with threads that follow training.

A cold run starts from the sign-fixed PCA, a warm one from a previous layout (see
``reduce.warm_init``); later runs of a projector are continued by
:mod:`~lightning_embproj.reduce.tsne_online`.
Gradient method (Barnes-Hut or FFT), neighbour search (exact or Annoy) and iterations are chosen by
size from the measurements noted at each constant. ``n_jobs`` may be a function, read again every
50 iterations (:data:`Threads`).

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(120, 8))
    >>> tsne(X, 2).shape
    (120, 2)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.reduce.pca import TSNE_PCA_DIMS, Prepared, prepare
from lightning_embproj.runtime.trace import stage

#: Threads for a call: a count, or a function giving the count allowed *now*. t-SNE reads a
#: function again between chunks of its optimisation, so a run that started on one thread while
#: training ran takes every core as soon as training ends.
Threads = int | Callable[[], int]
#: Below this many rows t-SNE / UMAP are meaningless (and the libraries raise): use PCA.
MIN_ROWS = 5
# A cold run: openTSNE's 250 early-exaggeration iterations, then this many.
_TSNE_COLD_ITERS = 500
# ...but 125 early-exaggeration and 250 later iterations up to this many rows: the layout has
# settled by then. kNN@10 preservation / Spearman correlation of the class centres' distances,
# 250 + 500 vs 125 + 250 iterations (2 threads): digits 1,797 rows 0.512 / 0.822 vs 0.505 /
# 0.813; 4,000 x 64 untrained-MLP embeddings 0.191 / 0.633 vs 0.188 / 0.642; 4,000 rows of 30
# Gaussians 0.233 / 0.535 vs 0.230 / 0.528. Half the cost of a cold run. Larger runs keep
# converging (20,000 rows, kNN@10 after 250 / 500 later iterations: 0.088 / 0.102).
_TSNE_SHORT_COLD_MAX_ROWS = 5_000
_TSNE_SHORT_EXAGGERATION_ITERS = 125
_TSNE_SHORT_COLD_ITERS = 250
# Warm start: no early exaggeration, fewer iterations (bench_tsne.py: same kNN preservation,
# ~2x faster, layout moves far less).
_TSNE_WARM_ITERS = 250
# With a change hint (kNN overlap with the previous epoch), fewer warm iterations: 250 at
# overlap <= 0.5, linearly down to 50 at overlap 1 (bench_reduce.py: kNN preservation within
# 0.01 of 250 iterations).
_TSNE_WARM_MIN_ITERS = 50
_TSNE_CHANGE_FLOOR = 0.5
# openTSNE's FFT gradient (2-D only) for a cold run from this many rows, Barnes-Hut below
# (bench_tsne.py --parts methods, CPU s at 128-d, BH / FFT: 2,000: 4.9 / 21.2; 10,000: 40.0 /
# 40.0; 20,000: 93.0 / ~54). A warm start begins at the full layout's extent, which makes the
# FFT grid large: Barnes-Hut is cheaper there up to 20,000 rows (10,000: 18.5 / 38.4; 20,000:
# 34.0 / ~55), the most measured; FFT above.
_TSNE_FFT_MIN_ROWS = 10_000
_TSNE_WARM_BH_MAX_ROWS = 20_000
# Exact kNN (scikit-learn, brute force) for the affinities up to this many rows, Annoy above.
# Measured at 50-d, 1 / 2 threads: 4,000 rows exact 0.14 / 0.10 s vs Annoy 1.45 / 0.59 s;
# 10,000: 0.47 / 0.38 vs 3.3 / 1.9; 20,000: 1.2 / 1.3 vs 6.8 / 4.1. Exact grows as N^2 and
# Annoy as ~N, so they meet near 100,000 rows; exact is also the better neighbourhood.
_TSNE_EXACT_KNN_MAX_ROWS = 50_000
# Optimisation steps between two reads of a Threads function (openTSNE keeps its gains and
# momentum between optimize calls, so chunks give the same descent as one call).
_TSNE_CHUNK_ITERS = 50


def threads_now(n_jobs: Threads) -> int:
    """The thread count ``n_jobs`` allows now (calls it when it is a function).

    Example:
        >>> threads_now(2), threads_now(lambda: 4)
        (2, 4)
    """
    n = n_jobs() if callable(n_jobs) else n_jobs
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n == 0 or n < -1:
        raise ValueError(f"n_jobs must be a positive int or -1 (all cores), or a function "
                         f"returning one, got {n!r}")
    return int(n)


def tsne_neighbors(n: int) -> str:
    """openTSNE's kNN method for ``n`` rows: ``"exact"`` up to 50,000, ``"annoy"`` above.

    Example:
        >>> tsne_neighbors(4000), tsne_neighbors(100_000)
        ('exact', 'annoy')
    """
    return "exact" if n <= _TSNE_EXACT_KNN_MAX_ROWS else "annoy"


def check_init(init: np.ndarray, n: int, n_components: int) -> np.ndarray:
    """``init`` as a finite float64 ``(n, n_components)`` array, or a clear error."""
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (n, n_components):
        raise ValueError(f"init must have shape {(n, n_components)}, got {init.shape}")
    return checks.matrix(init, "init", dtype=np.float64)


def effective_perplexity(perplexity: float, n: int) -> float:
    """``perplexity`` as ``n`` rows allow: openTSNE needs 3 * perplexity nearest neighbours,
    i.e. fewer than ``n - 1``.

    Example:
        >>> effective_perplexity(30.0, 1000), effective_perplexity(30.0, 20)
        (30.0, 6.0)
    """
    return float(min(perplexity, max(1.0, (n - 2) / 3.0)))


class _DropInitStdWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Standard deviation of embedding" not in record.getMessage()


@contextlib.contextmanager
def _quiet_warm_init() -> Iterator[None]:
    """openTSNE's warning about the scale of an initial layout is dropped inside the block."""
    # openTSNE warns whenever the init is not ~1e-4 in scale; a warm start is meant to be at the
    # scale of a finished layout, so the warning is noise there (and only there).
    log = logging.getLogger("openTSNE.tsne")
    quiet = _DropInitStdWarning()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def tsne_gradient_method(n: int, n_components: int, warm: bool = False) -> str:
    """openTSNE's ``negative_gradient_method`` for ``n`` rows, measured on 2 cores: in 1-2 dims
    ``"fft"`` from 10,000 rows for a cold run and above 20,000 rows for a warm start;
    ``"bh"`` (Barnes-Hut) otherwise, and always in 3-D (openTSNE's FFT is 1-2-D only).

    Example:
        >>> tsne_gradient_method(4000, 2), tsne_gradient_method(20000, 2)
        ('bh', 'fft')
        >>> tsne_gradient_method(20000, 2, warm=True), tsne_gradient_method(20000, 3)
        ('bh', 'bh')
    """
    if n_components > 2:
        return "bh"
    if warm:
        return "fft" if n > _TSNE_WARM_BH_MAX_ROWS else "bh"
    return "fft" if n >= _TSNE_FFT_MIN_ROWS else "bh"


def warm_iterations(change: float | None) -> int:
    """Iterations of a warm-started t-SNE given ``change`` (the mean fraction of each point's
    10 nearest neighbours kept since the previous epoch: 1 = unchanged, ``None`` = unknown).

    250 when unknown or at most 0.5, then linearly fewer down to 50 at 1.

    Example:
        >>> warm_iterations(None), warm_iterations(0.4), warm_iterations(0.75), warm_iterations(1.0)
        (250, 250, 150, 50)
    """
    if change is None:
        return _TSNE_WARM_ITERS
    change = float(change)
    if not 0.0 <= change <= 1.0:
        raise ValueError(f"change must be in [0, 1] (1 = unchanged), got {change!r}")
    calm = max(0.0, (change - _TSNE_CHANGE_FLOOR) / (1.0 - _TSNE_CHANGE_FLOOR))
    return round(_TSNE_WARM_ITERS - calm * (_TSNE_WARM_ITERS - _TSNE_WARM_MIN_ITERS))


def tsne(
    X: np.ndarray | Prepared,
    n_components: int,
    *,
    init: np.ndarray | None = None,
    perplexity: float = 30.0,
    random_state: int = 0,
    n_jobs: Threads = 1,
    change: float | None = None,
) -> np.ndarray:
    """t-SNE layout with openTSNE; a warm start from ``init`` when given.

    Cold: PCA initialisation, 250 early-exaggeration iterations, then 500 (125 then 250 up to
    5,000 rows, where the layout has settled by then).
    Warm (``init`` given, e.g. from ``reduce.warm_init``): no early exaggeration, which keeps the
    previous layout's arrangement, and :func:`warm_iterations` of ``change`` iterations (250
    without a hint). Inputs with more than 50 dims are first reduced to 50 by PCA (shared with
    the PCA reducer through a :class:`Prepared`). Fewer than 5 rows, or no variance at all,
    return the PCA layout. Gradient: :func:`tsne_gradient_method` (Barnes-Hut or FFT by size,
    cold or warm); neighbours: :func:`tsne_neighbors`. ``n_jobs``: openTSNE's threads (1 leaves
    the cores to training), or a function read again every 50 iterations (see :data:`Threads`).

    Example:
        >>> from sklearn.datasets import load_digits
        >>> X = load_digits().data[:200]
        >>> tsne(X, 2).shape
        (200, 2)
    """
    checks.components(n_components)
    prepared = prepare(X, ["tsne"])
    n, d = prepared.X.shape
    if init is not None:
        init = check_init(init, n, n_components)
    if perplexity <= 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity!r}")
    threads = threads_now(n_jobs)
    n_iter = warm_iterations(change)
    if n < MIN_ROWS or prepared.total <= 0.0:
        return prepared.pca(n_components)
    Xr = prepared.pca(TSNE_PCA_DIMS) if d > TSNE_PCA_DIMS else prepared.X.astype(np.float64)
    params: dict[str, Any] = dict(
        n_components=n_components,
        perplexity=effective_perplexity(perplexity, n),
        negative_gradient_method=tsne_gradient_method(n, n_components, warm=init is not None),
        n_jobs=threads,
        random_state=random_state,
        neighbors=tsne_neighbors(n),
        verbose=False,
    )
    model, phases = _model(prepared, n_components, init, n_iter, params)
    with stage("t-SNE affinities"), (
            _quiet_warm_init() if init is not None else contextlib.nullcontext()):
        embedding = model.prepare_initial(Xr)
    # openTSNE's own fit, in chunks: the thread count may change between them.
    for iters, exaggeration, momentum in phases:
        for done in range(0, iters, _TSNE_CHUNK_ITERS):
            with stage("t-SNE chunk"):
                embedding.optimize(
                    min(_TSNE_CHUNK_ITERS, iters - done), exaggeration=exaggeration,
                    momentum=momentum, n_jobs=threads_now(n_jobs), inplace=True,
                    propagate_exception=True,
                )
    return np.asarray(embedding, dtype=np.float64)


def _model(
    prepared: Prepared, n_components: int, init: np.ndarray | None, n_iter: int,
    params: dict[str, Any],
) -> tuple[Any, list[tuple[int, float, float]]]:
    """The ``openTSNE.TSNE`` of a cold run (from the PCA) or a warm one (from ``init``), and
    its phases: (iterations, exaggeration, momentum)."""
    import openTSNE

    if init is None:
        # Our sign-fixed PCA at openTSNE's recommended init scale (std 1e-4 along axis 0).
        start = prepared.pca(n_components)  # the leading columns of Xr: no second PCA
        std = float(start[:, 0].std())
        start = start / std * 1e-4 if std > 0 else start
        if len(start) <= _TSNE_SHORT_COLD_MAX_ROWS:
            params.update(early_exaggeration_iter=_TSNE_SHORT_EXAGGERATION_ITERS,
                          n_iter=_TSNE_SHORT_COLD_ITERS)
        else:
            params.update(n_iter=_TSNE_COLD_ITERS)
        model = openTSNE.TSNE(initialization=start, **params)
        phases = [(model.early_exaggeration_iter, model.early_exaggeration,
                   model.initial_momentum)]
    else:
        model = openTSNE.TSNE(
            initialization=init, early_exaggeration_iter=0, n_iter=n_iter, **params
        )
        phases = []
    phases.append((model.n_iter, model.exaggeration, model.final_momentum))
    return model, phases
