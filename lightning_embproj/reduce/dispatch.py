"""Reduce stage: one entry point for the PCA, t-SNE and UMAP layouts, UMAP, and warm starts.

:func:`reduce` dispatches by name to :mod:`~lightning_embproj.reduce.pca`,
:mod:`~lightning_embproj.reduce.tsne` and :func:`umap` with BLAS pinned to the job's threads;
:func:`warm_init` places a run's points where the previous run had them. Pure functions over numpy
arrays; openTSNE, scikit-learn and umap-learn are imported lazily. Every reducer returns a float64
``(N, n_components)`` array and is deterministic for a given input and ``random_state``. The PCA
and t-SNE names are re-exported here (``reduce.pca``, ``reduce.tsne``, ``reduce.prepare``, ...).

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> reduce("pca", X, 2).shape
    (100, 2)
    >>> prepared = prepare(X, ["pca", "tsne"])
    >>> bool(np.allclose(reduce("pca", prepared, 2), reduce("pca", X, 2)))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.collect.hashing import splitmix64
from lightning_embproj.reduce.pca import (
    PCA_SOLVERS,
    TSNE_PCA_DIMS,
    PCASolver,
    Prepared,
    pca,
    prepare,
)
from lightning_embproj.reduce.tsne import (
    MIN_ROWS,
    Threads,
    check_init,
    threads_now,
    tsne,
    tsne_gradient_method,
    tsne_neighbors,
    warm_iterations,
)
from lightning_embproj.runtime import native

__all__ = [
    "PCA_SOLVERS", "REDUCERS", "TSNE_PCA_DIMS", "PCASolver", "Prepared", "Threads", "pca",
    "prepare", "reduce", "threads_now", "tsne", "tsne_gradient_method", "tsne_neighbors", "umap",
    "warm_init", "warm_iterations",
]

#: The reducer names, in the order the docs list them (the single source for options/view).
REDUCERS: tuple[str, ...] = ("pca", "tsne", "umap")
# UMAP warm start: 100 epochs from a tenth of umap's learning rate. umap's SGD restarted at
# its full rate (1.0) moves a converged layout even when nothing changed (digits, 300 rows:
# Procrustes disparity to the previous layout 0.165 for identical input, 0.20 after a mixed +
# noisy change, vs 0.048 / 0.053 here, with equal trustworthiness 0.980; cold: 0.235).
_UMAP_WARM_EPOCHS = 100
_UMAP_WARM_LEARNING_RATE = 0.1
# The keywords reduce() passes on (tsne's own, but n_jobs, which reduce uses itself).
_TSNE_OPTIONS = ("init", "random_state", "perplexity", "change")


def reduce(
    method: str,
    X: np.ndarray | Prepared,
    n_components: int,
    *,
    n_jobs: Threads = 1,
    **options: Any,
) -> np.ndarray:
    """Project ``X`` with the reducer named ``method`` (one of :data:`REDUCERS`).

    ``X`` is an array or a :class:`Prepared` (to share the PCA between reducers).
    ``options`` are the keywords of :func:`tsne` (``init``, a previous layout, see
    :func:`warm_init`; ``random_state``; ``perplexity``; ``change``); UMAP takes ``init`` and
    ``random_state`` of them, PCA none. ``n_jobs``: threads for openTSNE and for
    numpy/scipy's BLAS during the call (1 while training, so the trainer keeps its cores;
    -1: openTSNE takes all cores and BLAS is left as configured).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 4))
        >>> reduce("pca", X, 3).shape
        (50, 3)
    """
    if method not in REDUCERS:
        raise ValueError(f"reducer must be one of {list(REDUCERS)}, got {method!r}")
    unknown = sorted(set(options) - set(_TSNE_OPTIONS))
    if unknown:
        raise TypeError(f"reduce() got unexpected keyword arguments {unknown}; the reducers "
                        f"take {list(_TSNE_OPTIONS)}")
    with _blas_threads(threads_now(n_jobs)):
        if method == "pca":
            return pca(X, n_components)
        if method == "tsne":
            return tsne(X, n_components, n_jobs=n_jobs, **options)
        return umap(X, n_components, init=options.get("init"),
                    random_state=options.get("random_state", 0))


@contextlib.contextmanager
def _blas_threads(n_jobs: int) -> Iterator[None]:
    """numpy/scipy's BLAS limited to ``n_jobs`` threads inside the block (-1: left alone)."""
    # While training runs, BLAS threads spin-wait for cores the trainer holds: small LAPACK
    # calls (QR, eigh) then take 20-100x longer (bench_reduce.py); one thread avoids that.
    if n_jobs == -1:
        yield
        return
    with native.limit(int(n_jobs), "blas"):
        yield


def umap(
    X: np.ndarray | Prepared,
    n_components: int,
    *,
    init: np.ndarray | None = None,
    random_state: int = 0,
) -> np.ndarray:
    """UMAP layout (umap-learn, optional extra); warm start from ``init``: 100 epochs at a
    tenth of umap's learning rate, so an unchanged input keeps its layout.

    Fewer than 5 rows, or no variance at all, return the PCA layout. The first call pays
    umap's numba compilation (~20-60 s).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(300, 8))
        >>> umap(X, 2).shape  # doctest: +SKIP
        (300, 2)
    """
    checks.components(n_components)
    prepared = prepare(X)
    n = prepared.X.shape[0]
    if init is not None:
        init = check_init(init, n, n_components)
    try:
        import umap as umap_learn
    except ImportError as err:
        raise ImportError(
            'reducer "umap" needs umap-learn: pip install "lightning-embproj[umap]"'
        ) from err
    if n < MIN_ROWS or prepared.total <= 0.0:
        return prepared.pca(n_components)
    model = umap_learn.UMAP(
        n_components=n_components,
        n_neighbors=min(15, n - 1),
        init=init if init is not None else "spectral",
        n_epochs=_UMAP_WARM_EPOCHS if init is not None else None,
        learning_rate=_UMAP_WARM_LEARNING_RATE if init is not None else 1.0,
        random_state=random_state,
        n_jobs=1,  # a seed forces one thread anyway; say so to skip umap's warning
    )
    return np.asarray(model.fit_transform(prepared.X.astype(np.float64)), dtype=np.float64)


def _key_jitter(keys: np.ndarray, n_components: int) -> np.ndarray:
    """Deterministic pseudo-random values in [-1, 1) per key and axis (SplitMix64 hash)."""
    u64 = np.uint64
    axis = np.arange(n_components, dtype=u64)
    z = keys.astype(u64)[:, None] * u64(n_components) + axis + u64(1)
    top = splitmix64(z) >> u64(11)
    return top.astype(np.float64) / 2.0**52 - 1.0


def warm_init(
    prev_keys: np.ndarray,
    prev_layout: np.ndarray,
    keys: np.ndarray,
    X: np.ndarray | Prepared,
) -> np.ndarray | None:
    """Initial layout for rows ``keys`` (embeddings ``X``) from the previous epoch's layout.

    Shared keys keep their previous position; a new key takes the position of its nearest
    shared neighbour in ``X`` plus a tiny deterministic jitter. ``None`` when fewer than 3 keys
    are shared (start cold).

    Example:
        >>> prev = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> X = np.array([[0.0], [1.0], [2.0], [1.1]])
        >>> init = warm_init(np.array([1, 2, 3]), prev, np.array([3, 2, 1, 9]), X)
        >>> init[:3].tolist()
        [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    """
    prev_keys = np.asarray(prev_keys, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.int64)
    prev_layout = np.asarray(prev_layout, dtype=np.float64)
    X = (X.X if isinstance(X, Prepared) else np.asarray(X, dtype=np.float64)).reshape(len(keys), -1)
    if prev_layout.ndim != 2 or len(prev_layout) != len(prev_keys):
        raise ValueError(
            f"prev_layout must be (len(prev_keys), n_components) = ({len(prev_keys)}, k), "
            f"got {prev_layout.shape}"
        )
    order = np.argsort(prev_keys, kind="stable")
    pos = np.searchsorted(prev_keys, keys, sorter=order).clip(max=max(len(order) - 1, 0))
    src = order[pos] if len(order) else pos
    shared = prev_keys[src] == keys if len(order) else np.zeros(len(keys), dtype=bool)
    if int(shared.sum()) < 3:
        return None
    out = np.empty((len(keys), prev_layout.shape[1]))
    out[shared] = prev_layout[src[shared]]
    new = ~shared
    if new.any():
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=1).fit(X[shared])
        idx = nn.kneighbors(X[new], return_distance=False)[:, 0]
        scale = 1e-3 * float(out[shared].std()) or 1e-6
        out[new] = out[shared][idx] + scale * _key_jitter(keys[new], out.shape[1])
    return out
