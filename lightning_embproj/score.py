"""Score one epoch: cluster quality, faithfulness of each layout, drift since the last epoch.

Pure numpy functions (scikit-learn only for the kNN of the 2-D/3-D layouts). Everything that
needs the original space's distances is computed in one chunked pass over the rows
(:func:`_scan`): memory is ``O(chunk * N)``, never ``N x N``, and the pass is shared by the
metrics of an epoch. kNN indices are memoised by the content of the array, so the previous
epoch's neighbours (and :func:`movers` after :func:`epoch_metrics`) cost a hash, not a pass.

Metrics are NaN only when undefined: silhouette with fewer than 2 labels (or fewer than 3
points, or as many labels as points), any kNN metric with fewer than 2 points,
trustworthiness with fewer than 3 points, drift with fewer than 2 tracked points shared by
the two epochs. ``k`` shrinks to what ``N`` allows (``N - 1``; for trustworthiness below
``N / 2``, as scikit-learn requires).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 0.1, (20, 5)), rng.normal(5, 0.1, (20, 5))]
    >>> y = np.repeat([0, 1], 20)
    >>> round(silhouette(X, y), 2), knn_accuracy(X, y)
    (0.97, 1.0)
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np

from lightning_embproj.types import Projection

METRIC_DOCS: dict[str, str] = {
    "silhouette": "Mean silhouette coefficient of the labels in the original embedding space "
    "(Euclidean, -1..1, higher = tighter and better separated classes; deterministic subsample "
    "of 10,000 points above that).",
    "knn_accuracy": "Leave-one-out accuracy of a majority vote among the k=10 nearest "
    "neighbours in the original space (0..1; ties go to the class of the nearest tied neighbour).",
    "<reducer>/trustworthiness": "Trustworthiness (k=10, scikit-learn's definition) of the "
    "reducer's layout: 1 = neighbours in the layout are also neighbours in the original space.",
    "drift/knn_overlap": "Mean fraction of each tracked point's k=10 nearest neighbours in the "
    "original space that it kept since the previous epoch (1 = unchanged).",
    "<reducer>/displacement": "Mean distance tracked points moved in the aligned layout since "
    "the previous epoch, divided by the RMS radius of the previous layout (0 = unchanged).",
}

SILHOUETTE_MAX_POINTS = 10_000
_CHUNK_BYTES = 16 * 2**20  # one (rows x N) block; peak memory is a few of these
_CACHE_SIZE = 8
_knn_cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def _matrix(X: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32/float64 ``(N, D)`` array; bad input raises naming ``name``."""
    a = np.asarray(X)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; scores need finite vectors")
    return a


def _codes(labels: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    """Labels (ints, strings, mixed) -> int codes ``0..C-1``."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the embeddings, got {lab.shape}")
    try:
        return np.unique(lab, return_inverse=True)[1].reshape(-1)
    except TypeError:  # mixed types (e.g. ints and None) do not sort: compare their text
        return np.unique(lab.astype(str), return_inverse=True)[1].reshape(-1)


def _knn_k(n: int, k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return min(k, n - 1)


def _trust_k(n: int, k: int) -> int:
    return min(_knn_k(n, k), math.ceil(n / 2) - 1)


class _Scan(NamedTuple):
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


def _scan(
    X: np.ndarray,
    k: int = 0,
    layouts: Sequence[np.ndarray] = (),
    trust_k: int = 10,
    labels: np.ndarray | None = None,
    max_points: int | None = SILHOUETTE_MAX_POINTS,
) -> _Scan:
    """One chunked pass over the distances of ``X`` for every metric that needs them.

    ``k``: neighbours to return (0: none). ``layouts``: trustworthiness of each with
    ``trust_k`` neighbours (shrunk by :func:`_trust_k`). ``labels``: int codes for the
    silhouette (None: skip). Ranks and neighbours only need the order of distances, so
    squared distances serve unless the silhouette needs the true ones.
    """
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    kt = _trust_k(n, trust_k) if layouts and n >= 3 else 0
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
    return _Scan(knn, trust, sil.result() if sil is not None else math.nan)


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


def _knn(X: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` nearest neighbours of each row (itself excluded), memoised by content."""
    with _cache_lock:
        hit = _knn_cache.get(_digest(X, k))
    return hit if hit is not None else cast(np.ndarray, _scan(X, k).knn)


def silhouette(
    X: np.ndarray, labels: Sequence[object] | np.ndarray,
    max_points: int | None = SILHOUETTE_MAX_POINTS,
) -> float:
    """Mean silhouette coefficient (Euclidean), as ``sklearn.metrics.silhouette_score``.

    Above ``max_points`` rows, computed on a fixed random subset (seed 0). NaN when undefined:
    fewer than 2 labels, or as many labels as points (so always with fewer than 3 points).

    Example:
        >>> silhouette(np.array([[0.0], [0.1], [5.0], [5.1]]), ["a", "a", "b", "b"]) > 0.9
        True
    """
    X = _matrix(X, "X")
    return _scan(X, labels=_codes(labels, X.shape[0]), max_points=max_points).silhouette


def _vote(knn: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Majority label among each row's neighbours; ties go to the nearest tied neighbour."""
    nb = codes[knn]
    counts = (nb[:, :, None] == nb[:, None, :]).sum(axis=2)
    return nb[np.arange(nb.shape[0]), counts.argmax(axis=1)]


def knn_accuracy(X: np.ndarray, labels: Sequence[object] | np.ndarray, k: int = 10) -> float:
    """Leave-one-out accuracy of a majority vote of the ``k`` nearest neighbours (NaN if N < 2).

    Example:
        >>> knn_accuracy(np.array([[0.0], [0.1], [5.0], [5.1]]), [0, 0, 1, 1], k=1)
        1.0
    """
    X = _matrix(X, "X")
    codes = _codes(labels, X.shape[0])
    if X.shape[0] < 2:
        return math.nan
    return float((_vote(_knn(X, _knn_k(X.shape[0], k)), codes) == codes).mean())


def trustworthiness(X: np.ndarray, layout: np.ndarray, k: int = 10) -> float:
    """``sklearn.manifold.trustworthiness(X, layout, n_neighbors=k)`` in ``O(chunk * N)`` memory.

    ``k`` shrinks below ``N / 2``; NaN with fewer than 3 points.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> trustworthiness(X, X[:, :2], k=5) > trustworthiness(X, X[::-1, :2], k=5)
        True
    """
    X, layout = _matrix(X, "X"), _matrix(layout, "layout")
    if layout.shape[0] != X.shape[0]:
        raise ValueError(f"layout has {layout.shape[0]} rows, X has {X.shape[0]}: rows must match")
    _knn_k(X.shape[0], k)
    return _scan(X, layouts=[layout], trust_k=k).trust[0]


def _overlap(knn_a: np.ndarray, knn_b: np.ndarray) -> np.ndarray:
    """Per row, the fraction of neighbours the two index sets share."""
    shared = (knn_a[:, :, None] == knn_b[:, None, :]).any(axis=2).sum(axis=1)
    return shared / knn_a.shape[1]


def neighbourhood_overlap(X_prev: np.ndarray, X: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row (rows already matched), the fraction of its ``k`` nearest neighbours kept.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(30, 4))
        >>> float(neighbourhood_overlap(X, X, k=5).min())
        1.0
    """
    X_prev, X = _matrix(X_prev, "X_prev"), _matrix(X, "X")
    if X_prev.shape[0] != X.shape[0]:
        raise ValueError(f"X_prev has {X_prev.shape[0]} rows, X has {X.shape[0]}: rows must match")
    n = X.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    kk = _knn_k(n, k)
    return _overlap(_knn(X_prev, kk), _knn(X, kk))


def mean_displacement(prev_layout: np.ndarray, layout: np.ndarray, normalize: bool = True) -> float:
    """Mean Euclidean distance between matched rows of two aligned layouts.

    With ``normalize`` (the logged value) divided by the RMS radius of ``prev_layout`` around
    its centroid, so it reads as "fraction of the layout's size" whatever the reducer's units;
    if the previous layout is a single point, by the RMS radius of both layouts together.

    Example:
        >>> P = np.array([[0.0, 0.0], [2.0, 0.0]])
        >>> mean_displacement(P, P + [0.0, 0.5])
        0.5
    """
    P, L = _matrix(prev_layout, "prev_layout"), _matrix(layout, "layout")
    if P.shape != L.shape:
        raise ValueError(f"prev_layout {P.shape} and layout {L.shape} must have the same shape")
    if P.shape[0] == 0:
        return math.nan
    raw = float(np.linalg.norm(L.astype(np.float64) - P, axis=1).mean())
    if not normalize or raw == 0.0:
        return raw

    def rms(A: np.ndarray) -> float:
        return float(np.sqrt(((A - A.mean(axis=0)) ** 2).sum(axis=1).mean()))

    scale = rms(P.astype(np.float64)) or rms(np.concatenate([P, L]).astype(np.float64))
    return raw / scale


def _shared_rows(current: Projection, previous: Projection) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the keys present in both epochs, in the current epoch's row order."""
    cur, prev = np.asarray(current.sample.keys), np.asarray(previous.sample.keys)
    _, ic, ip = np.intersect1d(cur, prev, return_indices=True)
    order = np.argsort(ic)  # current order, so the current kNN comes from the memo
    return ic[order], ip[order]


def _drift_overlap(
    current: Projection, previous: Projection, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(current rows, previous rows, per-row overlap) on the tracked points of both epochs."""
    ic, ip = _shared_rows(current, previous)
    if ic.size < 2:
        return ic, ip, np.full(ic.size, np.nan)
    Xc = _matrix(current.sample.embeddings, "current.sample.embeddings")
    Xp = _matrix(previous.sample.embeddings, "previous.sample.embeddings")
    kk = _knn_k(ic.size, k)
    subc = Xc if ic.size == Xc.shape[0] else Xc[ic]
    subp = Xp if np.array_equal(ip, np.arange(Xp.shape[0])) else Xp[ip]
    return ic, ip, _overlap(_knn(subp, kk), _knn(subc, kk))


def epoch_metrics(
    current: Projection, previous: Projection | None = None, k: int = 10
) -> dict[str, float]:
    """All scalar metrics of one epoch, named as in :data:`METRIC_DOCS`.

    ``silhouette`` and ``knn_accuracy`` with labels; ``R/trustworthiness`` per layout; with
    ``previous``: ``drift/knn_overlap`` and ``R/displacement`` per reducer present in both,
    on the rows whose ``sample.keys`` appear in both epochs (any order, partial overlap).

    Example:
        >>> from lightning_embproj.types import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X, labels=np.arange(40) % 2)
        >>> p = Projection(s, epoch=0, step=0, layouts={"pca": X[:, :2]})
        >>> sorted(epoch_metrics(p, p))[:3]
        ['drift/knn_overlap', 'knn_accuracy', 'pca/displacement']
    """
    X = _matrix(current.sample.embeddings, "current.sample.embeddings")
    n = X.shape[0]
    labels = current.sample.labels
    codes = None if labels is None else _codes(labels, n)
    names = list(current.layouts)
    layouts = [_matrix(current.layouts[r], f"layouts[{r!r}]") for r in names]
    for r, L in zip(names, layouts, strict=True):
        if L.shape[0] != n:
            raise ValueError(f"layouts[{r!r}] has {L.shape[0]} rows, the sample has {n}")
    kk = _knn_k(n, k) if n >= 2 else 0
    scan = _scan(X, kk, layouts, k, codes)  # its kNN is memoised for drift and movers
    out: dict[str, float] = {}
    if codes is not None:
        out["silhouette"] = scan.silhouette
        out["knn_accuracy"] = (
            float((_vote(scan.knn, codes) == codes).mean()) if scan.knn is not None else math.nan
        )
    for r, t in zip(names, scan.trust, strict=True):
        out[f"{r}/trustworthiness"] = t
    if previous is not None:
        ic, ip, ov = _drift_overlap(current, previous, k)
        out["drift/knn_overlap"] = float(ov.mean()) if ic.size >= 2 else math.nan
        for r in names:
            if r in previous.layouts:
                prev_l = _matrix(previous.layouts[r], f"previous.layouts[{r!r}]")
                out[f"{r}/displacement"] = (
                    mean_displacement(prev_l[ip], current.layouts[r][ic]) if ic.size else math.nan
                )
    return out


def movers(
    current: Projection, previous: Projection | None = None, k: int = 10, top: int = 20
) -> dict[str, np.ndarray]:
    """The points worth a look after an epoch, as parallel arrays of length ``M <= 2 * top``.

    Keys: ``index`` (int64 row of ``current``), ``key`` (int64 ``sample.keys``), ``kind``
    (str: ``"changed"`` or ``"mislabelled-neighbourhood"``), ``overlap`` (float, fraction of
    the row's k nearest neighbours kept since ``previous``; NaN without ``previous`` or when
    the row is new), ``foreign_fraction`` (float, fraction of its k nearest neighbours with
    another label; NaN without labels). ``"changed"`` rows come first: the ``top`` shared
    rows with the lowest overlap below 1, lowest first. Then the ``top`` rows whose foreign
    fraction exceeds 0.5, highest first. A row can appear once under each kind; ties go to
    the lower index.

    Example:
        >>> from lightning_embproj.types import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6))
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X)
        >>> movers(Projection(s, 0, 0), Projection(s, 0, 0))["index"].size
        0
    """
    X = _matrix(current.sample.embeddings, "current.sample.embeddings")
    n = X.shape[0]
    overlap = np.full(n, np.nan)
    if previous is not None:
        ic, _, ov = _drift_overlap(current, previous, k)
        overlap[ic] = ov
    foreign = np.full(n, np.nan)
    if current.sample.labels is not None and n >= 2:
        codes = _codes(current.sample.labels, n)
        foreign = (codes[_knn(X, _knn_k(n, k))] != codes[:, None]).mean(axis=1)
    changed = np.flatnonzero(overlap < 1.0)  # NaN compares False: untracked rows drop out
    changed = changed[np.argsort(overlap[changed], kind="stable")][:top]
    odd = np.flatnonzero(foreign > 0.5)
    odd = odd[np.argsort(-foreign[odd], kind="stable")][:top]
    index = np.concatenate([changed, odd]).astype(np.int64)
    kind = np.array(["changed"] * changed.size + ["mislabelled-neighbourhood"] * odd.size,
                    dtype=str)
    return {
        "index": index,
        "key": np.asarray(current.sample.keys, dtype=np.int64)[index],
        "kind": kind,
        "overlap": overlap[index],
        "foreign_fraction": foreign[index],
    }
