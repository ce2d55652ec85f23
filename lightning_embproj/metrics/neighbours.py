"""One chunked pass over the original-space distances, shared by the metrics of an epoch.

:func:`scan` walks the distance matrix in row blocks (memory ``O(chunk * N)``, never
``N x N``) and returns what the metrics need from it: each row's k nearest neighbours, the
trustworthiness penalty of each layout, each row's silhouette. A run's neighbours are computed
once, by the pass of ``score_run``, and handed on to what reuses them (drift against the next
run, the movers, the per-label table).

Example:
    >>> X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    >>> knn(X, 3).shape
    (30, 3)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Union, cast

import numpy as np

from lightning_embproj.checks import chunk_rows
from lightning_embproj.metrics.sizing import subset_mask, trustworthiness_k

if TYPE_CHECKING:
    import torch

Device = Union[str, "torch.device"]

SILHOUETTE_MAX_POINTS = 10_000
TRUST_MAX_POINTS = 5_000
# On an accelerator bigger blocks: fewer launches, and its memory is not the training's host RAM.
_DEVICE_CHUNK_BYTES = 256 * 2**20
_DENSE_CLASSES = 64  # up to this many classes the silhouette sums are one dense matmul


class Scan(NamedTuple):
    """What one :func:`scan` found."""

    knn: np.ndarray | None  # (N, k) original-space neighbours, nearest first
    trust: list[float]  # one per layout
    silhouette: float  # mean over the subset rows (NaN: undefined or not asked for)
    silhouette_values: np.ndarray | None  # (N,) per row, NaN outside the subset


class _Silhouette:
    """Per-class distance sums from each chunk of the distance matrix (rows x all columns)."""

    def __init__(self, codes: np.ndarray, max_points: int | None, dtype: np.dtype) -> None:
        import scipy.sparse

        n = codes.size
        subset = subset_mask(n, max_points)  # fixed subsample: same every epoch
        self.rows = np.ones(n, dtype=bool) if subset is None else subset
        sub = np.unique(codes[self.rows], return_inverse=True)[1].reshape(-1)
        self.n_cls = int(sub.max()) + 1 if sub.size else 0
        self.defined = n >= 3 and 2 <= self.n_cls <= sub.size - 1
        self.code = np.full(n, -1)
        self.code[self.rows] = sub
        self.sizes = np.bincount(sub, minlength=self.n_cls)
        idx = np.flatnonzero(self.rows)
        ones = np.ones(idx.size, dtype=dtype)
        W = scipy.sparse.csc_matrix((ones, (idx, sub)), shape=(n, self.n_cls))
        self.W = W.toarray() if self.n_cls <= _DENSE_CLASSES else W  # dense BLAS: few classes
        self.values: list[np.ndarray] = []

    def add(self, D: np.ndarray, s: int) -> None:
        """``D``: Euclidean distances of rows ``s..s+len(D)`` to all points (self = 0)."""
        loc = np.flatnonzero(self.rows[s : s + D.shape[0]])
        self.add_sums(
            np.asarray((D if loc.size == D.shape[0] else D[loc]) @ self.W, dtype=np.float64),
            s + loc,
        )

    def add_sums(self, sums: np.ndarray, rows: np.ndarray) -> None:
        """``sums``: per-class distance sums (float64) of the subset rows ``rows``."""
        own, at = self.code[rows], np.arange(rows.size)
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

    def per_row(self) -> np.ndarray | None:
        """Each row's value (rows outside the subset NaN), None when undefined."""
        if not self.defined:
            return None
        out = np.full(self.rows.size, math.nan)
        out[self.rows] = np.concatenate(self.values)  # chunks come in row order
        return out


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


class _Pass(NamedTuple):
    """What one pass needs besides ``X``: the work to do and where its results go."""

    k: int
    kt: int
    need_rank: np.ndarray | None  # (N, layouts * kt) layout neighbours whose rank is needed
    trust_rows: np.ndarray | None  # bool mask of the rows trustworthiness is estimated on
    sil: _Silhouette | None
    n_layouts: int


def scan(
    X: np.ndarray,
    k: int = 0,
    layouts: Sequence[np.ndarray] = (),
    trust_k: int = 10,
    labels: np.ndarray | None = None,
    max_points: int | None = SILHOUETTE_MAX_POINTS,
    trust_max_points: int | None = TRUST_MAX_POINTS,
    device: Device | None = None,
) -> Scan:
    """One chunked pass over the distances of ``X`` for every metric that needs them.

    ``k``: neighbours to return (0: none). ``layouts``: trustworthiness of each with
    ``trust_k`` neighbours (shrunk by :func:`trustworthiness_k`); above ``trust_max_points``
    rows it is estimated on a fixed subset of that many rows (each ranked against all N
    points, the penalty scaled by N / subset: unbiased). ``labels``: int codes for the
    silhouette (None: skip), on a fixed subset above ``max_points``. Ranks and neighbours
    only need the order of distances, so squared distances serve unless the silhouette needs
    the true ones. ``device``: None runs numpy (measured faster than torch on CPU,
    benchmarks/bench_metrics.py); a torch device (``"cuda"``, ``"cpu"``) runs the pass in torch
    there, chunked matmul + top-k, with the same results within floating-point tolerance.
    """
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    kt = trustworthiness_k(n, trust_k) if layouts and n >= 3 else 0
    lay_nbrs = [
        NearestNeighbors(n_neighbors=kt).fit(L).kneighbors(return_distance=False)
        for L in layouts
    ] if kt >= 1 else []
    sil = _Silhouette(labels, max_points, X.dtype) if labels is not None else None
    work = _Pass(
        k, kt, np.concatenate(lay_nbrs, axis=1) if lay_nbrs else None,
        subset_mask(n, trust_max_points) if lay_nbrs else None,
        sil if sil is not None and sil.defined else None, len(lay_nbrs),
    )
    knn: np.ndarray | None
    if device is None:
        knn, penalty = _pass_numpy(X, work)
    else:
        try:
            knn, penalty = _pass_torch(X, work, device)
        except MemoryError:  # the accelerator is full (training's memory): do it on the host
            if work.sil is not None:
                work.sil.values.clear()
            knn, penalty = _pass_numpy(X, work)
    m = n if work.trust_rows is None else int(work.trust_rows.sum())
    scale = 2.0 / (m * kt * (2.0 * n - 3.0 * kt - 1.0)) if kt >= 1 else math.nan
    trust = [float(1.0 - p * scale) for p in penalty] if kt >= 1 else [math.nan] * len(layouts)
    sil_result = work.sil
    return Scan(knn, trust, sil_result.result() if sil_result is not None else math.nan,
                sil_result.per_row() if sil_result is not None else None)


def _pass_numpy(X: np.ndarray, work: _Pass) -> tuple[np.ndarray | None, np.ndarray]:
    n, k, kt, need_rank, sil = X.shape[0], work.k, work.kt, work.need_rank, work.sil
    knn = np.empty((n, k), dtype=np.int64) if k else None
    penalty = np.zeros(work.n_layouts)
    sq = np.einsum("ij,ij->i", X, X)
    XT = -2 * X.T
    step = chunk_rows(X.itemsize * n, at_least=16)
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
        S = sel = None
        if need_rank is not None:
            sel = None if work.trust_rows is None else np.flatnonzero(work.trust_rows[s:e])
            S = np.sort(C if sel is None else C[sel], axis=1)
        if knn is not None:
            knn[s:e] = _chunk_knn(C, k, S if sel is None else None)
        if need_rank is not None and S is not None and S.shape[0]:
            Cs = C if sel is None else C[sel]
            thr = np.take_along_axis(Cs, need_rank[s:e] if sel is None else need_rank[s + sel],
                                     axis=1)
            todo = np.flatnonzero((thr > S[:, kt - 1 : kt]).any(axis=1))  # rank can exceed kt
            if todo.size:
                ranks = np.stack([np.searchsorted(S[r], thr[r]) for r in todo])  # strictly less
                over = np.maximum(ranks + 1 - kt, 0).reshape(todo.size, work.n_layouts, kt)
                penalty += over.sum(axis=(0, 2))
    return knn, penalty


def _pass_torch(
    X: np.ndarray, work: _Pass, device: Device
) -> tuple[np.ndarray | None, np.ndarray]:
    """:func:`_pass_numpy` in torch on ``device``: the chunk's distances, top-k, sort and
    class sums stay there; only each chunk's kNN rows, silhouette sums and the penalty come
    back."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return _pass_torch_on(X, work, dev)
    try:
        # A side stream: the pass neither waits for nor delays the training's queued kernels.
        with torch.cuda.stream(torch.cuda.Stream(dev)):
            return _pass_torch_on(X, work, dev)
    except torch.cuda.OutOfMemoryError as err:
        raise MemoryError(str(err)) from err


def _read_tensor(X: np.ndarray) -> torch.Tensor:
    """``X`` as a tensor sharing its memory, for reading only."""
    import torch

    with warnings.catch_warnings():
        # A run's embeddings are read-only views (results are frozen): torch warns, but the
        # pass never writes to them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(X)


def _pass_torch_on(
    X: np.ndarray, work: _Pass, dev: torch.device
) -> tuple[np.ndarray | None, np.ndarray]:
    import torch

    n, k, kt, sil = X.shape[0], work.k, work.kt, work.sil
    # TF32 matmuls (set_float32_matmul_precision "high"/"medium", a global the training
    # chose) would cost float32 distances most of their mantissa: float64 then.
    tf32 = dev.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    Xt = _read_tensor(X).to(dev, torch.float64 if tf32 else None)
    sq = (Xt * Xt).sum(dim=1)
    need = None if work.need_rank is None else torch.from_numpy(work.need_rank).to(dev)
    trust_rows = None if work.trust_rows is None else torch.from_numpy(work.trust_rows).to(dev)
    knn = np.empty((n, k), dtype=np.int64) if k else None
    penalty = torch.zeros(work.n_layouts, dtype=torch.float64, device=dev)
    W = code = sil_rows = None
    if sil is not None:
        sil_rows = torch.from_numpy(sil.rows).to(dev)
        if sil.n_cls <= _DENSE_CLASSES:
            W = torch.zeros(n, sil.n_cls, dtype=Xt.dtype, device=dev)
            at = np.flatnonzero(sil.rows)
            W[torch.from_numpy(at).to(dev), torch.from_numpy(sil.code[at]).to(dev)] = 1
        else:  # rows outside the subset go to a spare class, dropped after the sums
            code = torch.from_numpy(np.where(sil.code < 0, sil.n_cls, sil.code)).to(dev)
    step = chunk_rows(Xt.element_size() * n, at_least=16,
                      budget=None if dev.type == "cpu" else _DEVICE_CHUNK_BYTES)
    for s in range(0, n, step):
        e = min(n, s + step)
        rows = torch.arange(e - s, device=dev)
        C = torch.addmm(sq[s:e, None], Xt[s:e], Xt.T, alpha=-2.0)
        C += sq[None, :]
        C.clamp_(min=0)
        C[rows, rows + s] = 0
        if sil is not None and sil_rows is not None:
            C.sqrt_()
            loc = torch.nonzero(sil_rows[s:e]).flatten()
            D = C if loc.numel() == e - s else C[loc]
            if W is not None:
                sums = D @ W
            else:
                assert code is not None
                sums = torch.zeros(D.shape[0], sil.n_cls + 1, dtype=D.dtype, device=dev)
                sums.index_add_(1, code, D)
                sums = sums[:, : sil.n_cls]
            sil.add_sums(sums.double().cpu().numpy(), s + loc.cpu().numpy())
        C[rows, rows + s] = math.inf  # a point is not its own neighbour
        if knn is not None:
            knn[s:e] = torch.topk(C, k, dim=1, largest=False, sorted=True).indices.cpu().numpy()
        if need is not None:
            Cs, nr = C, need[s:e]
            if trust_rows is not None:
                sel = torch.nonzero(trust_rows[s:e]).flatten()
                Cs, nr = C[sel], nr[sel]
            if Cs.shape[0]:
                thr = Cs.gather(1, nr)
                ranks = torch.searchsorted(torch.sort(Cs, dim=1).values, thr)  # strictly less
                over = (ranks + 1 - kt).clamp_(min=0).reshape(-1, work.n_layouts, kt)
                penalty += over.sum(dim=(0, 2)).double()
    return knn, penalty.cpu().numpy()


def knn(X: np.ndarray, k: int, device: Device | None = None) -> np.ndarray:
    """``(N, k)`` nearest neighbours of each row of ``X`` (itself excluded), nearest first.

    Example:
        >>> knn(np.array([[0.0], [1.0], [5.0]]), 1).ravel().tolist()
        [1, 0, 1]
    """
    return cast(np.ndarray, scan(X, k, device=device).knn)


def vote(neighbours: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Majority label code among each row's neighbours; ties go to the nearest tied neighbour.

    Example:
        >>> vote(np.array([[1, 2, 3]]), np.array([0, 1, 0, 0])).tolist()
        [0]
    """
    nb = codes[neighbours]
    counts = (nb[:, :, None] == nb[:, None, :]).sum(axis=2)
    return nb[np.arange(nb.shape[0]), counts.argmax(axis=1)]
