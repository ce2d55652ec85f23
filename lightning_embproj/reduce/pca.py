"""PCA stage: centred, sign-fixed principal components, solver chosen by shape, computed once.

Pure functions over numpy arrays. :func:`pca` gives ``(N, k)`` scores; :class:`Prepared` wraps one
run's embeddings so that the PCA reducer and t-SNE's PCA-to-50 step share one decomposition.
Exact (eigh of the Gram or covariance matrix) when one side is small, randomized SVD otherwise,
in float64 blocks of at most ``checks.CHUNK_BYTES`` (16 MB).

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> pca(X, 2).shape
    (100, 2)
    >>> bool(np.allclose(prepare(X, ["pca", "tsne"]).pca(2), pca(X, 2)))
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from lightning_embproj import checks

PCASolver = Literal["auto", "gram", "covariance", "randomized"]
PCA_SOLVERS: tuple[str, ...] = ("auto", "gram", "covariance", "randomized")
#: t-SNE first reduces wider input to this many dims by PCA: the kNN graph is cheaper and less
#: noisy (bench_tsne.py). A :class:`Prepared` for t-SNE computes that many components at once.
TSNE_PCA_DIMS = 50

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


def _blocks(n: int, width: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose float64 blocks of ``width`` columns are small:
    memory stays ``O(block)``, not ``O(N * D)``."""
    step = checks.chunk_rows(8 * max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _top_eigh(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending, >= 0) and eigenvectors of symmetric ``M``."""
    import scipy.linalg

    m = M.shape[0]
    if k >= m or m <= _FULL_EIGH_MAX:
        evals, evecs = np.linalg.eigh(M)
    else:
        evals, evecs = scipy.linalg.eigh(M, subset_by_index=[m - k, m - 1])
    # Only the k asked for: the scores (N x k) and axes (k x D) are built from what this returns.
    return np.maximum(evals[::-1][:k], 0.0), evecs[:, ::-1][:, :k]


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

    Pass it wherever a reducer takes ``X`` (``reduce``, :func:`pca`, ``tsne``, ``umap``,
    ``warm_init``). The PCA reducer's columns and t-SNE's PCA-to-50 input
    then come from one decomposition. Nothing is computed or checked until a reducer asks, so
    building one never raises on bad embeddings; the reducer does, as with a plain array.
    ``check_input=False``: ``X`` is a checked float32 / float64 matrix already
    (:func:`lightning_embproj.checks.matrix`).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(80, 64))
        >>> p = prepare(X, ["pca", "tsne"])
        >>> p.pca(2).shape, p.pca(50).shape  # one eigendecomposition serves both
        ((80, 2), (80, 50))
    """

    def __init__(self, X: Any, reducers: Sequence[str] = (), solver: PCASolver = "auto",
                 *, check_input: bool = True) -> None:
        self._raw = X
        self._X: np.ndarray | None = None if check_input else np.ascontiguousarray(X)
        # t-SNE will ask for 50 columns: compute them on the first request, whoever asks.
        self._min_dims = TSNE_PCA_DIMS if "tsne" in reducers else 0
        self._solver = solver
        self._basis: _Basis | None = None
        self._total: float | None = None

    @property
    def X(self) -> np.ndarray:
        """The checked float32/float64 ``(N, D)`` array (no copy of float32/float64 input)."""
        if self._X is None:
            self._X = checks.matrix(self._raw, "X")
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
        checks.components(n_components)
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


def prepare(
    X: Any, reducers: Sequence[str] = (), solver: PCASolver = "auto", *, check_input: bool = True
) -> Prepared:
    """Wrap ``X`` for the reducers named in ``reducers`` (see :class:`Prepared`).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(60, 100))
        >>> p = prepare(X, ["pca", "tsne"])
        >>> prepare(p) is p, p.pca(2).shape
        (True, (60, 2))
    """
    if isinstance(X, Prepared):
        return X
    return Prepared(X, reducers, solver, check_input=check_input)


def pca(
    X: np.ndarray | Prepared, n_components: int, *, solver: PCASolver = "auto",
    check_input: bool = True,
) -> np.ndarray:
    """Centred PCA scores with a fixed sign: each axis' largest-|loading| is positive.

    ``solver="auto"``: exact (float64 eigh of the N x N Gram when N < D, of the D x D
    covariance otherwise) when min(N, D) <= 15 * (k + 20), k the components computed (so up
    to ~1,050 when t-SNE shares them, ~330 for a 2-D PCA alone); randomized SVD (6 power
    iterations, fixed seed) when both sides are larger. Memory: the input plus
    O(N * n_components) and a few 16 MB blocks. Zero-variance directions (all rows identical,
    N=1, D < n_components) give zero columns. With a :class:`Prepared`, its solver is used.
    ``check_input=False``: ``X`` is a checked float32 / float64 matrix already.

    Example:
        >>> pca(np.ones((3, 5)), 2)
        array([[0., 0.],
               [0., 0.],
               [0., 0.]])
    """
    checks.components(n_components)
    return prepare(X, solver=solver, check_input=check_input).pca(n_components)
