"""Reduce stage: PCA, t-SNE and UMAP layouts of ``(N, D)`` embeddings, plus warm starts.

Pure functions over numpy arrays; openTSNE, scikit-learn and umap-learn are imported lazily.
Every reducer returns a float64 ``(N, n_components)`` array and is deterministic for a given
input and ``random_state``. :func:`prepare` wraps one epoch's embeddings so that the principal
components are computed once and shared by the PCA reducer and t-SNE's PCA-to-50 step.

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
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from lightning_embproj.sample import splitmix64

#: The reducer names, in the order the docs list them (the single source for options/view).
REDUCERS: tuple[str, ...] = ("pca", "tsne", "umap")
PCASolver = Literal["auto", "gram", "covariance", "randomized"]
PCA_SOLVERS: tuple[str, ...] = ("auto", "gram", "covariance", "randomized")
#: Threads for a call: a count, or a function giving the count allowed *now*. t-SNE reads a
#: function again between chunks of its optimisation, so a run that started on one thread while
#: training ran takes every core as soon as training ends.
Threads = int | Callable[[], int]

# Below this many rows t-SNE / UMAP are meaningless (and the libraries raise): use PCA.
_MIN_ROWS = 5
# PCA to this many dims before t-SNE: the kNN graph is cheaper and less noisy (bench_tsne.py).
_TSNE_PCA_DIMS = 50
# Warm start: no early exaggeration, fewer iterations (bench_tsne.py: same kNN preservation,
# ~2x faster, layout moves far less).
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
# Exact PCA (float64 eigh of the N x N Gram or of the D x D covariance) when the smaller side m
# is at most this many times the randomized sketch's width (k + 20): exact costs ~2*N*D*m, the
# sketch ~28*N*D*width. So m <= 1,050 for t-SNE's 50 components, <= 330 for a 2-D PCA alone
# (bench_reduce.py, CPU s on one BLAS thread: 300 x 4096 Gram 0.01-0.02 vs randomized 0.03-0.08;
# 2,000 x 4096 k=50: Gram 0.70 vs randomized 0.31; 20,000 x 1024 k=50: covariance 0.60 vs 0.91).
_EXACT_PCA_PER_WIDTH = 15
# Full eigh up to this size (as fast as a partial one there, and its leading columns do not
# depend on how many are asked for); LAPACK's partial eigh (evr) above.
_FULL_EIGH_MAX = 512
# Randomized SVD: oversampling and power iterations (as scikit-learn's randomized_svd).
_RSVD_OVERSAMPLE = 20
_RSVD_ITERS = 6
# Row/column blocks cast to float64 are at most this large: memory stays O(block), not O(N*D).
_BLOCK_BYTES = 16 * 2**20
# UMAP warm start: 100 epochs from a tenth of umap's learning rate. umap's SGD restarted at
# its full rate (1.0) moves a converged layout even when nothing changed (digits, 300 rows:
# Procrustes disparity to the previous layout 0.165 for identical input, 0.20 after a mixed +
# noisy change, vs 0.048 / 0.053 here, with equal trustworthiness 0.980; cold: 0.235).
_UMAP_WARM_EPOCHS = 100
_UMAP_WARM_LEARNING_RATE = 0.1


def _check_components(n_components: int) -> None:
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")


def _blocks(n: int, width: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose float64 blocks of ``width`` columns are small."""
    step = max(1, _BLOCK_BYTES // (8 * max(width, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _as_matrix(X: np.ndarray) -> np.ndarray:
    """``X`` as a 2-D finite float32/float64 array, without a copy when it already is one."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (N, D) array, got shape {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    if not all(np.isfinite(X[rows]).all() for rows in _blocks(X.shape[0], X.shape[1])):
        raise ValueError("X contains NaN or infinite values")
    return X


def _top_eigh(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending, >= 0) and eigenvectors of symmetric ``M``."""
    import scipy.linalg

    m = M.shape[0]
    if k >= m or m <= _FULL_EIGH_MAX:
        evals, evecs = np.linalg.eigh(M)
    else:
        evals, evecs = scipy.linalg.eigh(M, subset_by_index=[m - k, m - 1])
    return np.maximum(evals[::-1], 0.0), evecs[:, ::-1]


def _qr(A: np.ndarray) -> np.ndarray:
    return np.linalg.qr(A)[0]


class _Basis:
    """Leading principal axes of one matrix: mean, sign-fixed axes, their variances, scores."""

    def __init__(self, X: np.ndarray, k: int, solver: str) -> None:
        n, d = X.shape
        self.mean = X.mean(axis=0, dtype=np.float64)
        if solver == "gram":
            self._gram(X, k)
        else:
            if solver == "covariance":
                self._covariance(X, k)
            else:
                self._randomized(X, k)
            self.scores = np.empty((n, self.comps.shape[0]))
            for rows in _blocks(n, d):
                self.scores[rows] = self._centred(X, rows) @ self.comps.T
        # Directions with no variance are numerical noise: zero them rather than show noise.
        self.scores[:, self.var <= 1e-12 * self.total] = 0.0

    def _centred(self, X: np.ndarray, rows: slice, cols: slice = slice(None)) -> np.ndarray:
        block = X[rows, cols].astype(np.float64)
        block -= self.mean[cols]
        return block

    def _fix_signs(self, comps: np.ndarray) -> np.ndarray:
        # eigh/SVD may return either sign for the same input or a tiny change of it: make each
        # axis' largest-|loading| positive.
        rows = np.arange(comps.shape[0])
        signs = np.sign(comps[rows, np.argmax(np.abs(comps), axis=1)])
        self.signs = np.where(signs == 0, 1.0, signs)
        return comps * self.signs[:, None]

    def _covariance(self, X: np.ndarray, k: int) -> None:
        n, d = X.shape
        cov = np.zeros((d, d))
        for rows in _blocks(n, d):
            block = self._centred(X, rows)
            cov += block.T @ block
            del block  # before the next block is cast: one block alive at a time
        self.total = float(np.trace(cov))
        self.var, evecs = _top_eigh(cov, k)
        self.comps = self._fix_signs(evecs.T)

    def _gram(self, X: np.ndarray, k: int) -> None:
        # N < D: the N x N Gram has the same nonzero eigenvalues as the D x D covariance, and
        # its eigenvectors u give the axes Xc^T u / s and the scores u * s.
        n, d = X.shape
        gram = np.zeros((n, n))
        for cols in _blocks(d, n):
            block = self._centred(X, slice(None), cols)
            gram += block @ block.T
            del block
        self.total = float(np.trace(gram))
        self.var, u = _top_eigh(gram, min(k, n))
        s = np.sqrt(self.var)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        comps = np.empty((len(s), d))
        for cols in _blocks(d, n):
            comps[:, cols] = (u.T @ self._centred(X, slice(None), cols)) * inv[:, None]
        self.comps = self._fix_signs(comps)
        self.scores = u * (s * self.signs)

    def _randomized(self, X: np.ndarray, k: int) -> None:
        # Halko et al.'s range finder with implicit centring: the power iterations run in X's
        # own dtype on X itself (no centred copy), the projection and the small SVD in float64.
        n, d = X.shape
        width = min(k + _RSVD_OVERSAMPLE, n, d)
        mean = self.mean.astype(X.dtype)
        rng = np.random.default_rng(0)
        q = rng.standard_normal((d, width)).astype(X.dtype)
        y = X @ q - mean @ q
        for _ in range(_RSVD_ITERS):
            y = _qr(y)
            z = _qr(X.T @ y - np.outer(mean, y.sum(axis=0)))
            y = X @ z - mean @ z
        q64 = _qr(y.astype(np.float64))
        small = np.zeros((width, d))
        total = 0.0
        for rows in _blocks(n, d):
            block = self._centred(X, rows)
            small += q64[rows].T @ block
            total += float(np.einsum("ij,ij->", block, block))
            del block
        self.total = total
        _, s, vt = np.linalg.svd(small, full_matrices=False)
        self.var = s[:k] ** 2
        self.comps = self._fix_signs(vt[:k])


def _pca_solver(n: int, d: int, k: int, solver: str) -> str:
    """The solver ``pca`` uses for ``k`` components of an ``(n, d)`` matrix."""
    if solver not in PCA_SOLVERS:
        raise ValueError(f"solver must be one of {list(PCA_SOLVERS)}, got {solver!r}")
    if solver != "auto":
        return solver
    if min(n, d) > _EXACT_PCA_PER_WIDTH * min(k + _RSVD_OVERSAMPLE, n, d):
        return "randomized"
    return "gram" if n < d else "covariance"


class Prepared:
    """One epoch's embeddings, with the principal components computed at most once.

    Pass it wherever a reducer takes ``X`` (:func:`reduce`, :func:`pca`, :func:`tsne`,
    :func:`umap`, :func:`warm_init`). The PCA reducer's columns and t-SNE's PCA-to-50 input
    then come from one decomposition. Nothing is computed or checked until a reducer asks, so
    building one never raises on bad embeddings; the reducer does, as with a plain array.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(80, 64))
        >>> p = prepare(X, ["pca", "tsne"])
        >>> p.pca(2).shape, p.pca(50).shape  # one eigendecomposition serves both
        ((80, 2), (80, 50))
    """

    def __init__(self, X: Any, reducers: Sequence[str] = (), solver: PCASolver = "auto") -> None:
        self._raw = X
        self._X: np.ndarray | None = None
        # t-SNE will ask for 50 columns: compute them on the first request, whoever asks.
        self._min_dims = _TSNE_PCA_DIMS if "tsne" in reducers else 0
        self._solver = solver
        self._basis: _Basis | None = None
        self._total: float | None = None

    @property
    def X(self) -> np.ndarray:
        """The checked float32/float64 ``(N, D)`` array (no copy of float32/float64 input)."""
        if self._X is None:
            self._X = _as_matrix(self._raw)
        return self._X

    @property
    def total(self) -> float:
        """Sum of squared distances of the rows to their mean (0: all rows identical)."""
        if self._total is None:
            if self._basis is not None:
                self._total = self._basis.total
            else:
                X = self.X
                mean = X.mean(axis=0, dtype=np.float64)
                self._total = 0.0
                for rows in _blocks(*X.shape):
                    block = X[rows].astype(np.float64)
                    block -= mean
                    self._total += float(np.einsum("ij,ij->", block, block))
                    del block
        return self._total

    def pca(self, n_components: int) -> np.ndarray:
        """Centred PCA scores ``(N, n_components)``, see :func:`pca`."""
        _check_components(n_components)
        X = self.X
        n, d = X.shape
        out = np.zeros((n, n_components))
        k = min(n_components, d, n)
        if n < 2:
            return out
        if self._basis is None or self._basis.comps.shape[0] < k:
            want = min(max(k, self._min_dims), d, n)
            self._basis = _Basis(X, want, _pca_solver(n, d, want, self._solver))
            self._total = self._basis.total
        if self._basis.total <= 0.0:
            return out
        out[:, :k] = self._basis.scores[:, :k]
        return out


def prepare(X: Any, reducers: Sequence[str] = (), solver: PCASolver = "auto") -> Prepared:
    """Wrap ``X`` for the reducers named in ``reducers`` (see :class:`Prepared`).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(60, 100))
        >>> p = prepare(X, ["pca", "tsne"])
        >>> reduce("tsne", p, 2).shape
        (60, 2)
    """
    return X if isinstance(X, Prepared) else Prepared(X, reducers, solver)


def reduce(
    method: str,
    X: np.ndarray | Prepared,
    n_components: int,
    *,
    init: np.ndarray | None = None,
    random_state: int = 0,
    perplexity: float = 30.0,
    n_jobs: Threads = 1,
    change: float | None = None,
) -> np.ndarray:
    """Project ``X`` with the reducer named ``method`` (one of :data:`REDUCERS`).

    ``X`` is an array or a :class:`Prepared` (to share the PCA between reducers). ``init``
    (a previous layout, see :func:`warm_init`) is ignored by PCA; ``perplexity`` and
    ``change`` are used by t-SNE only (see :func:`tsne`). ``n_jobs``: threads for openTSNE and
    for numpy/scipy's BLAS during the call (1 while training, so the trainer keeps its cores;
    -1: openTSNE takes all cores and BLAS is left as configured).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 4))
        >>> reduce("pca", X, 3).shape
        (50, 3)
    """
    if method not in REDUCERS:
        raise ValueError(f"reducer must be one of {list(REDUCERS)}, got {method!r}")
    with _blas_threads(threads_now(n_jobs)):
        if method == "pca":
            return pca(X, n_components)
        if method == "tsne":
            return tsne(
                X, n_components, init=init, perplexity=perplexity, random_state=random_state,
                n_jobs=n_jobs, change=change,
            )
        return umap(X, n_components, init=init, random_state=random_state)


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


@contextlib.contextmanager
def _blas_threads(n_jobs: int) -> Iterator[None]:
    """numpy/scipy's BLAS limited to ``n_jobs`` threads inside the block (-1: left alone)."""
    # While training runs, BLAS threads spin-wait for cores the trainer holds: small LAPACK
    # calls (QR, eigh) then take 20-100x longer (bench_reduce.py); one thread avoids that.
    if n_jobs == -1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, leave the threads alone
        yield
        return
    with threadpool_limits(limits=int(n_jobs), user_api="blas"):
        yield


def _check_init(init: np.ndarray, n: int, n_components: int) -> np.ndarray:
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (n, n_components):
        raise ValueError(f"init must have shape {(n, n_components)}, got {init.shape}")
    if not np.isfinite(init).all():
        raise ValueError("init contains NaN or infinite values")
    return init


def pca(X: np.ndarray | Prepared, n_components: int, *, solver: PCASolver = "auto") -> np.ndarray:
    """Centred PCA scores with a fixed sign: each axis' largest-|loading| is positive.

    ``solver="auto"``: exact (float64 eigh of the N x N Gram when N < D, of the D x D
    covariance otherwise) when min(N, D) <= 15 * (k + 20), k the components computed (so up
    to ~1,050 when t-SNE shares them, ~330 for a 2-D PCA alone); randomized SVD (6 power
    iterations, fixed seed) when both sides are larger. Memory: the input plus
    O(N * n_components) and a few 16 MB blocks. Zero-variance directions (all rows identical,
    N=1, D < n_components) give zero columns. With a :class:`Prepared`, its solver is used.

    Example:
        >>> pca(np.ones((3, 5)), 2)
        array([[0., 0.],
               [0., 0.],
               [0., 0.]])
    """
    _check_components(n_components)
    return prepare(X, solver=solver).pca(n_components)


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
    Warm (``init`` given, e.g. from :func:`warm_init`): no early exaggeration, which keeps the
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
    _check_components(n_components)
    prepared = prepare(X, ["tsne"])
    n, d = prepared.X.shape
    if init is not None:
        init = _check_init(init, n, n_components)
    if perplexity <= 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity!r}")
    threads = threads_now(n_jobs)
    n_iter = warm_iterations(change)
    if n < _MIN_ROWS or prepared.total <= 0.0:
        return prepared.pca(n_components)
    Xr = prepared.pca(_TSNE_PCA_DIMS) if d > _TSNE_PCA_DIMS else prepared.X.astype(np.float64)

    import openTSNE

    params: dict[str, Any] = dict(
        n_components=n_components,
        perplexity=_effective_perplexity(perplexity, n),
        negative_gradient_method=tsne_gradient_method(n, n_components, warm=init is not None),
        n_jobs=threads,
        random_state=random_state,
        neighbors=tsne_neighbors(n),
        verbose=False,
    )
    if init is None:
        # Our sign-fixed PCA at openTSNE's recommended init scale (std 1e-4 along axis 0).
        start = pca(Xr, n_components)
        std = float(start[:, 0].std())
        start = start / std * 1e-4 if std > 0 else start
        if n <= _TSNE_SHORT_COLD_MAX_ROWS:
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
    embedding = model.prepare_initial(Xr)
    # openTSNE's own fit, in chunks: the thread count may change between them.
    for iters, exaggeration, momentum in phases:
        for done in range(0, iters, _TSNE_CHUNK_ITERS):
            embedding.optimize(
                min(_TSNE_CHUNK_ITERS, iters - done), exaggeration=exaggeration,
                momentum=momentum, n_jobs=threads_now(n_jobs), inplace=True,
                propagate_exception=True,
            )
    return np.asarray(embedding, dtype=np.float64)


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
    _check_components(n_components)
    prepared = prepare(X)
    n = prepared.X.shape[0]
    if init is not None:
        init = _check_init(init, n, n_components)
    try:
        import umap as umap_learn
    except ImportError as err:
        raise ImportError(
            'reducer "umap" needs umap-learn: pip install "lightning-embproj[umap]"'
        ) from err
    if n < _MIN_ROWS or prepared.total <= 0.0:
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
