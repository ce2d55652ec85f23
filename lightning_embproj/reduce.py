"""Reduce stage: PCA, t-SNE and UMAP layouts of ``(N, D)`` embeddings, plus warm starts.

Pure functions over numpy arrays; openTSNE, scikit-learn and umap-learn are imported lazily.
Every reducer returns a float64 ``(N, n_components)`` array and is deterministic for a given
input and ``random_state``.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> reduce("pca", X, 2).shape
    (100, 2)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

REDUCERS: tuple[str, ...] = ("pca", "tsne", "umap")

# Below this many rows t-SNE / UMAP are meaningless (and the libraries raise): use PCA.
_MIN_ROWS = 5
# PCA to this many dims before t-SNE: the kNN graph is cheaper and less noisy (bench_tsne.py).
_TSNE_PCA_DIMS = 50
# Warm start: no early exaggeration, fewer iterations (bench_tsne.py: same kNN preservation,
# ~2x faster, layout moves far less).
_TSNE_COLD_ITERS = 500
_TSNE_WARM_ITERS = 250
# Exact eigh of the D x D covariance up to this D, randomized SVD above (measured at N=10,000).
_EXACT_PCA_MAX_DIM = 1024
# UMAP warm start: 100 epochs from a tenth of umap's learning rate. umap's SGD restarted at
# its full rate (1.0) moves a converged layout even when nothing changed (digits, 300 rows:
# Procrustes disparity to the previous layout 0.165 for identical input, 0.20 after a mixed +
# noisy change, vs 0.048 / 0.053 here, with equal trustworthiness 0.980; cold: 0.235).
_UMAP_WARM_EPOCHS = 100
_UMAP_WARM_LEARNING_RATE = 0.1


def reduce(
    method: str,
    X: np.ndarray,
    n_components: int,
    *,
    init: np.ndarray | None = None,
    random_state: int = 0,
    perplexity: float = 30.0,
) -> np.ndarray:
    """Project ``X`` with the reducer named ``method`` (one of :data:`REDUCERS`).

    ``init`` (a previous layout, see :func:`warm_init`) is ignored by PCA; ``perplexity`` is
    used by t-SNE only.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 4))
        >>> reduce("pca", X, 3).shape
        (50, 3)
    """
    if method == "pca":
        return pca(X, n_components)
    if method == "tsne":
        return tsne(
            X, n_components, init=init, perplexity=perplexity, random_state=random_state
        )
    if method == "umap":
        return umap(X, n_components, init=init, random_state=random_state)
    raise ValueError(f"reducer must be one of {list(REDUCERS)}, got {method!r}")


def _check(X: np.ndarray, n_components: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (N, D) array, got shape {X.shape}")
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def _check_init(init: np.ndarray, n: int, n_components: int) -> np.ndarray:
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (n, n_components):
        raise ValueError(f"init must have shape {(n, n_components)}, got {init.shape}")
    if not np.isfinite(init).all():
        raise ValueError("init contains NaN or infinite values")
    return init


def pca(X: np.ndarray, n_components: int) -> np.ndarray:
    """Centred PCA scores with a fixed sign: each axis' largest-|loading| is positive.

    Zero-variance directions (all rows identical, N=1, D < n_components) give zero columns.

    Example:
        >>> pca(np.ones((3, 5)), 2)
        array([[0., 0.],
               [0., 0.],
               [0., 0.]])
    """
    X = _check(X, n_components)
    n, d = X.shape
    out = np.zeros((n, n_components))
    k = min(n_components, d)
    Xc = X - X.mean(axis=0)
    total = float(np.einsum("ij,ij->", Xc, Xc))
    if n < 2 or k == 0 or total <= 0.0:
        return out
    if d <= _EXACT_PCA_MAX_DIM:
        evals, evecs = np.linalg.eigh(Xc.T @ Xc)
        var = evals[::-1][:k]
        comps = evecs[:, ::-1][:, :k].T
    else:
        from sklearn.utils.extmath import randomized_svd

        _, s, comps = randomized_svd(Xc, k, n_oversamples=20, n_iter=6, random_state=0)
        var = s**2
    # Fix the sign: eigh/SVD may return either sign for the same input or a tiny change of it.
    rows = np.arange(comps.shape[0])
    signs = np.sign(comps[rows, np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    scores = Xc @ comps.T
    # Directions with no variance are numerical noise: zero them rather than show noise.
    scores[:, var <= 1e-12 * total] = 0.0
    out[:, : scores.shape[1]] = scores
    return out


def _effective_perplexity(perplexity: float, n: int) -> float:
    # openTSNE needs 3 * perplexity nearest neighbours, i.e. fewer than N - 1.
    return float(min(perplexity, max(1.0, (n - 2) / 3.0)))


class _DropInitStdWarning(logging.Filter):
    # openTSNE warns whenever the init is not ~1e-4 in scale; a warm start is meant to be at the
    # scale of a finished layout, so the warning is noise here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Standard deviation of embedding" not in record.getMessage()


_OT_LOG = logging.getLogger("openTSNE.tsne")
if not any(isinstance(f, _DropInitStdWarning) for f in _OT_LOG.filters):
    _OT_LOG.addFilter(_DropInitStdWarning())


def tsne(
    X: np.ndarray,
    n_components: int,
    *,
    init: np.ndarray | None = None,
    perplexity: float = 30.0,
    random_state: int = 0,
    n_jobs: int = 1,
) -> np.ndarray:
    """t-SNE layout with openTSNE; a warm start from ``init`` when given.

    Cold: PCA initialisation, 250 early-exaggeration iterations, then 500.
    Warm (``init`` given, e.g. from :func:`warm_init`): 250 iterations from ``init`` without
    early exaggeration, which keeps the previous layout's arrangement.
    Inputs with more than 50 dims are first reduced to 50 by PCA. Fewer than 5 rows, or no
    variance at all, return the PCA layout. Barnes-Hut below 10,000 rows or in 3-D (openTSNE's
    FFT gradient supports 1-2 dims only and is slower below ~10,000 rows), FFT above.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> X = load_digits().data[:200]
        >>> tsne(X, 2).shape
        (200, 2)
    """
    X = _check(X, n_components)
    n = X.shape[0]
    if init is not None:
        init = _check_init(init, n, n_components)
    if perplexity <= 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity!r}")
    if n < _MIN_ROWS or not (X - X[0]).any():
        return pca(X, n_components)
    Xr = pca(X, _TSNE_PCA_DIMS) if X.shape[1] > _TSNE_PCA_DIMS else X

    import openTSNE

    method = "fft" if n >= 10_000 and n_components <= 2 else "bh"
    params: dict[str, Any] = dict(
        n_components=n_components,
        perplexity=_effective_perplexity(perplexity, n),
        negative_gradient_method=method,
        n_jobs=n_jobs,
        random_state=random_state,
        # exact kNN below 1,000 rows, Annoy (seeded) above: openTSNE's own choice
        neighbors="auto",
        verbose=False,
    )
    if init is None:
        # Our sign-fixed PCA at openTSNE's recommended init scale (std 1e-4 along axis 0).
        start = pca(Xr, n_components)
        std = float(start[:, 0].std())
        start = start / std * 1e-4 if std > 0 else start
        model = openTSNE.TSNE(initialization=start, n_iter=_TSNE_COLD_ITERS, **params)
    else:
        model = openTSNE.TSNE(
            initialization=init, early_exaggeration_iter=0, n_iter=_TSNE_WARM_ITERS, **params
        )
    return np.asarray(model.fit(Xr), dtype=np.float64)


def umap(
    X: np.ndarray,
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
    X = _check(X, n_components)
    n = X.shape[0]
    if init is not None:
        init = _check_init(init, n, n_components)
    try:
        import umap as umap_learn
    except ImportError as err:
        raise ImportError(
            'reducer "umap" needs umap-learn: pip install "lightning-embproj[umap]"'
        ) from err
    if n < _MIN_ROWS or not (X - X[0]).any():
        return pca(X, n_components)
    model = umap_learn.UMAP(
        n_components=n_components,
        n_neighbors=min(15, n - 1),
        init=init if init is not None else "spectral",
        n_epochs=_UMAP_WARM_EPOCHS if init is not None else None,
        learning_rate=_UMAP_WARM_LEARNING_RATE if init is not None else 1.0,
        random_state=random_state,
        n_jobs=1,  # a seed forces one thread anyway; say so to skip umap's warning
    )
    return np.asarray(model.fit_transform(X), dtype=np.float64)


def _key_jitter(keys: np.ndarray, n_components: int) -> np.ndarray:
    """Deterministic pseudo-random values in [-1, 1) per key and axis (splitmix64 hash)."""
    u64 = np.uint64
    axis = np.arange(n_components, dtype=u64)
    z = (keys.astype(u64)[:, None] * u64(n_components) + axis + u64(1)).astype(u64)
    with np.errstate(over="ignore"):
        z = z * u64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
        z = z ^ (z >> u64(31))
    top: npt.NDArray[np.uint64] = z >> u64(11)
    return top.astype(np.float64) / 2.0**52 - 1.0


def warm_init(
    prev_keys: np.ndarray, prev_layout: np.ndarray, keys: np.ndarray, X: np.ndarray
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
    X = np.asarray(X, dtype=np.float64).reshape(len(keys), -1)
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
