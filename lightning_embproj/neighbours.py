"""One chunked pass over the original-space distances, shared by the metrics of an epoch.

:func:`scan` walks the distance matrix in row blocks (memory ``O(chunk * N)``, never
``N x N``) and returns what the metrics need from it: each row's k nearest neighbours, the
trustworthiness penalty of each layout, the silhouette sums. kNN indices are memoised by the
content of the array, so the previous epoch's neighbours cost a hash, not a pass.

Example:
    >>> X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    >>> knn(X, 3).shape
    (30, 3)
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np

SILHOUETTE_MAX_POINTS = 10_000
_CHUNK_BYTES = 16 * 2**20  # one (rows x N) block; peak memory is a few of these
_CACHE_SIZE = 8
_knn_cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def as_matrix(X: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32/float64 ``(N, D)`` array; bad input raises naming ``name``."""
    a = np.asarray(X)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; scores need finite vectors")
    return a


def knn_k(n: int, k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return min(k, n - 1)


def trustworthiness_k(n: int, k: int) -> int:
    return min(knn_k(n, k), math.ceil(n / 2) - 1)


class Scan(NamedTuple):
    knn: np.ndarray | None  # (N, k) original-space neighbours, nearest first
    trust: list[float]  # one per layout
    silhouette: float


class _Silhouette:
    """Per-class distance sums from each chunk of the distance matrix (rows x all columns)."""

    def __init__(self, codes: np.ndarray, max_points: int | None, dtype: np.dtype) -> None:
        import scipy.sparse

        n = codes.size
        self.rows = np.ones(n, dtype=bool)
        if max_points is not None and n > max_points:  # fixed subsample: same every epoch
            self.rows[:] = False
            self.rows[np.random.default_rng(0).choice(n, max_points, replace=False)] = True
        sub = np.unique(codes[self.rows], return_inverse=True)[1].reshape(-1)
        self.n_cls = int(sub.max()) + 1 if sub.size else 0
        self.defined = n >= 3 and 2 <= self.n_cls <= sub.size - 1
        self.code = np.full(n, -1)
        self.code[self.rows] = sub
        self.sizes = np.bincount(sub, minlength=self.n_cls)
        idx = np.flatnonzero(self.rows)
        ones = np.ones(idx.size, dtype=dtype)
        W = scipy.sparse.csc_matrix((ones, (idx, sub)), shape=(n, self.n_cls))
        self.W = W.toarray() if self.n_cls <= 64 else W  # dense BLAS is faster for few classes
        self.values: list[np.ndarray] = []

    def add(self, D: np.ndarray, s: int) -> None:
        """``D``: Euclidean distances of rows ``s..s+len(D)`` to all points (self = 0)."""
        loc = np.flatnonzero(self.rows[s : s + D.shape[0]])
        sums = np.asarray((D if loc.size == D.shape[0] else D[loc]) @ self.W, dtype=np.float64)
        own, at = self.code[s + loc], np.arange(loc.size)
        a = sums[at, own] / np.maximum(self.sizes[own] - 1, 1)
        mean = sums / self.sizes
        mean[at, own] = np.inf
        b = mean.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sv = np.nan_to_num((b - a) / np.maximum(a, b))  # 0/0 (all points equal) -> 0
        sv[self.sizes[own] == 1] = 0.0  # singleton classes score 0, as in scikit-learn
        self.values.append(sv)

    def result(self) -> float:
        return float(np.concatenate(self.values).mean()) if self.defined else math.nan


def _chunk_knn(C: np.ndarray, k: int, S: np.ndarray | None) -> np.ndarray:
    """Indices of the ``k`` smallest entries of each row, nearest first (``S``: rows sorted)."""
    if S is not None:  # with sorted rows a mask is cheaper than argpartition, barring ties
        kth = S[:, k - 1 : k]
        mask = kth >= C
        if (mask.sum(axis=1) == k).all():
            part = np.nonzero(mask)[1].reshape(C.shape[0], k)
        else:
            part = np.argpartition(C, k - 1, axis=1)[:, :k]
    else:
        part = np.argpartition(C, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(C, part, axis=1)
    return np.take_along_axis(part, np.argsort(d, axis=1, kind="stable"), axis=1)


def scan(
    X: np.ndarray,
    k: int = 0,
    layouts: Sequence[np.ndarray] = (),
    trust_k: int = 10,
    labels: np.ndarray | None = None,
    max_points: int | None = SILHOUETTE_MAX_POINTS,
) -> Scan:
    """One chunked pass over the distances of ``X`` for every metric that needs them.

    ``k``: neighbours to return (0: none). ``layouts``: trustworthiness of each with
    ``trust_k`` neighbours (shrunk by :func:`trustworthiness_k`). ``labels``: int codes for the
    silhouette (None: skip). Ranks and neighbours only need the order of distances, so
    squared distances serve unless the silhouette needs the true ones.
    """
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    kt = trustworthiness_k(n, trust_k) if layouts and n >= 3 else 0
    lay_nbrs = [
        NearestNeighbors(n_neighbors=kt).fit(L).kneighbors(return_distance=False)
        for L in layouts
    ] if kt >= 1 else []
    need_rank = np.concatenate(lay_nbrs, axis=1) if lay_nbrs else None
    knn = np.empty((n, k), dtype=np.int64) if k else None
    penalty = np.zeros(len(lay_nbrs))
    sil = _Silhouette(labels, max_points, X.dtype) if labels is not None else None
    if sil is not None and not sil.defined:
        sil = None

    sq = np.einsum("ij,ij->i", X, X)
    XT = -2 * X.T
    step = max(16, _CHUNK_BYTES // (X.itemsize * max(n, 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        diag = (np.arange(e - s), np.arange(s, e))
        C = X[s:e] @ XT
        C += sq[s:e, None]
        C += sq[None, :]
        np.maximum(C, 0, out=C)
        C[diag] = 0
        if sil is not None:
            np.sqrt(C, out=C)
            sil.add(C, s)
        C[diag] = np.inf  # a point is not its own neighbour
        S = np.sort(C, axis=1) if need_rank is not None else None
        if knn is not None:
            knn[s:e] = _chunk_knn(C, k, S)
        if need_rank is not None and S is not None:
            thr = np.take_along_axis(C, need_rank[s:e], axis=1)
            todo = np.flatnonzero((thr > S[:, kt - 1 : kt]).any(axis=1))  # rank can exceed kt
            if todo.size:
                ranks = np.stack([np.searchsorted(S[r], thr[r]) for r in todo])  # strictly less
                over = np.maximum(ranks + 1 - kt, 0).reshape(todo.size, len(lay_nbrs), kt)
                penalty += over.sum(axis=(0, 2))
    scale = 2.0 / (n * kt * (2.0 * n - 3.0 * kt - 1.0)) if kt >= 1 else math.nan
    trust = [float(1.0 - p * scale) for p in penalty] if kt >= 1 else [math.nan] * len(layouts)
    if knn is not None:
        _cache_put(_digest(X, k), knn)
    return Scan(knn, trust, sil.result() if sil is not None else math.nan)


def _digest(X: np.ndarray, k: int) -> tuple[str, int]:
    h = hashlib.blake2b(X.tobytes(), digest_size=16)
    h.update(f"{X.shape}{X.dtype}".encode())
    return h.hexdigest(), k


def _cache_put(key: tuple[str, int], knn: np.ndarray) -> None:
    knn.flags.writeable = False  # shared by every caller that hits the memo
    with _cache_lock:
        _knn_cache[key] = knn
        while len(_knn_cache) > _CACHE_SIZE:
            _knn_cache.popitem(last=False)


def knn(X: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` nearest neighbours of each row (itself excluded), memoised by content."""
    with _cache_lock:
        hit = _knn_cache.get(_digest(X, k))
    return hit if hit is not None else cast(np.ndarray, scan(X, k).knn)
