"""Metrics that steer training: a few scores of a run's tracked sample, in torch, on the
training thread, so ``ModelCheckpoint`` / ``EarlyStopping`` can monitor them.

The background pipeline writes the same metrics later, in numpy
(:mod:`~lightning_embproj.metrics.scores`, :mod:`~lightning_embproj.metrics.health`); the
functions here give the same values (within float32 rounding) from the same sample, fast enough
to run at every projected validation end (see ``benchmarks/bench_monitor.py``). One chunked
pass over the Gram matrix ``X X^T`` serves the kNN vote, the silhouette and the uniformity;
RankMe takes the eigenvalues of the small ``D x D`` (or ``N x N``) Gram matrix. Memory is
``O(chunk * N)``, never ``N x N``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> noise = torch.randn(40, 5, generator=g) * 0.1
    >>> X, y = noise + 5 * (torch.arange(40) // 20)[:, None], torch.arange(40) // 20
    >>> m = monitor_metrics(X, ["knn_accuracy", "silhouette", "rankme"], y)
    >>> m["knn_accuracy"], round(m["silhouette"], 2), round(m["rankme"]) < 2
    (1.0, 0.97, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_embproj.checks import chunk_rows
from lightning_embproj.metrics.health import UNIFORMITY_MAX_POINTS
from lightning_embproj.metrics.neighbours import SILHOUETTE_MAX_POINTS
from lightning_embproj.metrics.sizing import fixed_subset

#: What ``monitor=[...]`` accepts: cheap enough for the training thread and defined at every
#: projected run (``drift/knn_overlap``, ``cka_previous`` and the layout metrics are not: they
#: need a previous run or a layout, and stay in the background).
MONITOR_METRICS: tuple[str, ...] = ("knn_accuracy", "silhouette", "rankme", "uniformity")
#: The ones that need ``label_key``.
LABEL_METRICS: tuple[str, ...] = ("knn_accuracy", "silhouette")
KNN_K = 10
#: Bytes of one block of Gram rows on the CPU (see ``benchmarks/bench_monitor.py``).
CPU_BLOCK_BYTES = 4 * 2**20


def monitor_metrics(
    X: torch.Tensor, metrics: Sequence[str], labels: torch.Tensor | np.ndarray | None = None,
    k: int = KNN_K,
) -> dict[str, float]:
    """The ``metrics`` (names in :data:`MONITOR_METRICS`) of one run's ``(N, D)`` embeddings.

    Computed in torch on ``X.device``: the values equal the background pipeline's
    (``score_run`` / ``health_metrics``) within float32 rounding; NaN where those are NaN
    (fewer than 2 points; silhouette with fewer than 2 labels or as many labels as points).
    ``labels``: ``(N,)`` int codes (any ints, strings as a numpy array), needed by
    ``knn_accuracy`` and ``silhouette``.

    Example:
        >>> X = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> monitor_metrics(X, ["knn_accuracy"], torch.tensor([0, 0, 1, 1]), k=1)
        {'knn_accuracy': 1.0}
    """
    unknown = [m for m in metrics if m not in MONITOR_METRICS]
    if unknown:
        raise ValueError(f"unknown monitor metrics {unknown}; allowed: {list(MONITOR_METRICS)}")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (N, D) tensor, got shape {tuple(X.shape)}")
    want = set(metrics)
    codes = None
    if want & set(LABEL_METRICS):
        if labels is None:
            raise ValueError(f"{sorted(want & set(LABEL_METRICS))} need labels")
        codes = _codes(labels, X.shape[0], X.device)
    X = _floats(X)
    out: dict[str, float] = {}
    n = X.shape[0]
    if "rankme" in want:
        out["rankme"] = rankme(X)
    gram: set[str] = {m for m in ("knn_accuracy", "silhouette", "uniformity") if m in want}
    if gram:
        out.update(_gram_pass(X, gram, codes, k))
    for m in metrics:  # in the order asked
        out.setdefault(m, math.nan)
    return {m: out[m] for m in metrics} if n else dict.fromkeys(metrics, math.nan)


def _floats(X: torch.Tensor) -> torch.Tensor:
    """float32 (float64 on CUDA when the matmul precision allows TF32: the distances need
    their mantissa), detached, contiguous."""
    X = X.detach()
    tf32 = X.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    dtype = torch.float64 if tf32 or X.dtype == torch.float64 else torch.float32
    return X.to(dtype).contiguous()


def _codes(labels: Any, n: int, device: torch.device) -> torch.Tensor:
    """Labels as int64 codes 0..C-1 on ``device`` (strings and mixed types via numpy)."""
    if isinstance(labels, torch.Tensor):
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            labels = labels.long() if labels.dtype == torch.bool else labels
        return torch.unique(labels.to(device), return_inverse=True)[1].long()
    from lightning_embproj.checks import label_codes

    return torch.from_numpy(label_codes(labels, n)).to(device)


def rankme(X: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023) of ``X`` as it is (not centred): ``exp(-sum p log p)``
    with ``p = s / sum(s) + eps`` over the singular values, from the eigenvalues of the
    smaller Gram matrix in float64. NaN for an empty or all-zero matrix.

    Example:
        >>> round(rankme(torch.eye(4)), 3), round(rankme(torch.ones(5, 3)), 3)
        (4.0, 1.0)
    """
    if X.numel() == 0:
        return math.nan
    X = X.detach()
    G = X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T
    s = torch.linalg.eigvalsh(G.double()).clamp_(min=0.0).sqrt_()
    total = float(s.sum())
    if total <= 0.0:
        return math.nan
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def _gram_pass(
    X: torch.Tensor, want: set[str], codes: torch.Tensor | None, k: int
) -> dict[str, float]:
    """kNN accuracy, silhouette and uniformity from one chunked pass over ``X X^T``."""
    n, dev = X.shape[0], X.device
    out: dict[str, float] = {}
    sq = (X * X).sum(dim=1)
    kk = min(k, n - 1)
    knn_on = "knn_accuracy" in want and codes is not None and kk >= 1
    if "knn_accuracy" in want and not knn_on:
        out["knn_accuracy"] = math.nan
    sil = _SilhouetteSums(codes, n, dev, X.dtype) if "silhouette" in want and codes is not None \
        else None
    if sil is not None and not sil.defined:
        out["silhouette"] = math.nan
        sil = None
    uni = _Uniformity(n, sq, dev) if "uniformity" in want else None
    if uni is not None and uni.m < 2:
        out["uniformity"] = math.nan
        uni = None
    correct = 0
    # on the CPU, blocks of ~4 MiB stay in cache through the dozen passes over them (1.2-1.45x
    # faster than 16 MiB blocks at 2,000 x 256-d on 2 threads); the GPU wants big blocks
    step = chunk_rows(X.element_size() * n, at_least=256 if dev.type == "cpu" else 16,
                      budget=CPU_BLOCK_BYTES if dev.type == "cpu" else 256 * 2**20)
    full = knn_on or sil is not None  # full rows of distances; uniformity alone: half
    # one buffer each, reused by every block rather than a fresh allocation per block
    g_buf = torch.empty(min(step, n), n, dtype=X.dtype, device=dev)
    c_buf = torch.empty_like(g_buf) if full else None
    for s in range(0, n, step):
        e = min(n, s + step)
        col0 = 0 if full else s
        G = torch.mm(X[s:e], X[col0:].T, out=g_buf[: e - s, : n - col0])
        rows = torch.arange(e - s, device=dev)
        C = None
        if c_buf is not None:  # squared distances, before G is reused in place
            C = torch.add(sq[None, :], G, alpha=-2.0, out=c_buf[: e - s])
            C += sq[s:e, None]
            C.clamp_(min=0)
        if uni is not None:
            uni.add(G, s, e, col0)
        if C is None:
            continue
        if knn_on:
            assert codes is not None
            C[rows, rows + s] = math.inf  # a point is not its own neighbour
            nbr = torch.topk(C, kk, dim=1, largest=False, sorted=True).indices
            nb = codes[nbr]
            counts = (nb[:, :, None] == nb[:, None, :]).sum(dim=2)
            # ties go to the nearest tied neighbour: argmax takes the first maximum
            guess = nb.gather(1, counts.argmax(dim=1, keepdim=True)).squeeze(1)
            correct += int((guess == codes[s:e]).sum())
        if sil is not None:
            C[rows, rows + s] = 0
            sil.add(C.sqrt_(), s, e)
    if knn_on:
        out["knn_accuracy"] = correct / n
    if sil is not None:
        out["silhouette"] = sil.result()
    if uni is not None:
        out["uniformity"] = uni.result()
    return out


class _SilhouetteSums:
    """Per-class distance sums of the silhouette subset's rows (as ``neighbours._Silhouette``:
    a fixed subset of 10,000 rows above that, labels re-coded on it)."""

    def __init__(self, codes: torch.Tensor, n: int, dev: torch.device, dtype: torch.dtype):
        rows = fixed_subset(n, SILHOUETTE_MAX_POINTS)
        self.every = rows is None
        self.mask = torch.ones(n, dtype=torch.bool, device=dev)
        if rows is not None:
            self.mask.zero_()
            self.mask[torch.from_numpy(rows).to(dev)] = True
        sub = torch.unique(codes[self.mask], return_inverse=True)[1]
        self.n_cls = int(sub.max()) + 1 if sub.numel() else 0
        m = int(sub.numel())
        self.defined = n >= 3 and 2 <= self.n_cls <= m - 1
        self.code = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.code[self.mask] = sub
        self.sizes = torch.bincount(sub, minlength=self.n_cls).to(torch.float64)
        self.Wt = torch.zeros(max(self.n_cls, 1), n, dtype=dtype, device=dev)  # one-hot, (C, N)
        self.Wt[sub, torch.nonzero(self.mask).flatten()] = 1
        self.total = torch.zeros((), dtype=torch.float64, device=dev)
        self.count = 0

    def add(self, D: torch.Tensor, s: int, e: int) -> None:
        """Add the rows ``s..e`` of the distance matrix ``D`` (rows ``s..e`` x all points)."""
        # (W^T D^T)^T, not D W: BLAS is ~2x faster with the one-hot matrix on the left
        if self.every:
            loc = torch.arange(e - s, device=D.device)
            sums = (self.Wt @ D.T).T.double()
        else:
            loc = torch.nonzero(self.mask[s:e]).flatten()
            if loc.numel() == 0:
                return
            sums = (self.Wt @ D[loc].T).T.double()
        own = self.code[s + loc]
        at = torch.arange(loc.numel(), device=D.device)
        own_size = self.sizes[own]
        a = sums[at, own] / (own_size - 1).clamp(min=1)
        mean = sums / self.sizes
        mean[at, own] = math.inf
        b = mean.min(dim=1).values
        sv = torch.nan_to_num((b - a) / torch.maximum(a, b))  # 0/0 (all points equal) -> 0
        sv[own_size == 1] = 0.0  # singleton classes score 0, as in scikit-learn
        self.total += sv.sum()
        self.count += int(loc.numel())

    def result(self) -> float:
        return float(self.total) / self.count


class _Uniformity:
    """``log mean exp(-2 ||u - v||^2)`` over pairs of L2-normalised rows of the fixed
    2,048-row subset (all rows up to that), from the Gram matrix's rows."""

    def __init__(self, n: int, sq: torch.Tensor, dev: torch.device) -> None:
        rows = fixed_subset(n, UNIFORMITY_MAX_POINTS)
        self.mask = torch.ones(n, dtype=torch.bool, device=dev)
        if rows is not None:
            self.mask.zero_()
            self.mask[torch.from_numpy(rows).to(dev)] = True
        self.m = int(self.mask.sum())
        norm = sq.sqrt()
        self.inv = torch.where(norm > 0, 1.0 / norm.clamp(min=1e-300), torch.zeros_like(norm))
        self.unit = (norm > 0).to(sq.dtype)  # squared norm after normalising: 1, or 0
        self.all_unit = bool((norm > 0).all())
        self.cols = torch.nonzero(self.mask).flatten()
        self.place = torch.full((n,), -1, dtype=torch.long, device=dev)  # row -> its column
        self.place[self.cols] = torch.arange(self.m, device=dev)
        # before[r]: how many subset rows come before row r (r = 0..n)
        self.before = torch.cat([torch.zeros(1, dtype=torch.long, device=dev),
                                 torch.cumsum(self.mask, 0)]).cpu()
        self.total = 0.0

    def add(self, G: torch.Tensor, s: int, e: int, col0: int = 0) -> None:
        """Add the pairs of the rows ``s..e`` of the Gram matrix, given from column ``col0``
        on (``G`` is overwritten).

        Only the columns from ``s`` on: a pair with both rows in the block is seen from both
        rows, a pair with the second row after the block is counted twice here and never again
        (half the exponentials of the full rows).
        """
        first, split = int(self.before[s]), int(self.before[e])  # subset columns < s, < e
        if self.cols.numel() == self.mask.numel():  # every row: no copy
            i, cols, E = torch.arange(s, e, device=G.device), self.cols[s:], G[:, s - col0:]
        else:
            loc = torch.nonzero(self.mask[s:e]).flatten()
            if loc.numel() == 0:
                return
            cols = self.cols[first:]
            i, E = s + loc, G[loc][:, cols - col0]
        # -2 ||u - v||^2 = 4 cos - 2 |u|^2 - 2 |v|^2, |u|^2 = 1 (0 for a zero row); <= 0
        E.mul_(4.0 * self.inv[i, None]).mul_(self.inv[None, cols])  # x4 is exact
        scale = 1.0
        if self.all_unit:  # the usual case: exp(4 cos - 4) = e^-4 exp(4 cos), two passes fewer
            scale = math.exp(-4.0)
            E.clamp_(max=4.0).exp_()
        else:
            E.sub_(2.0 * self.unit[i, None]).sub_(2.0 * self.unit[None, cols])
            E.clamp_(max=0.0).exp_()
        # ordered pairs, less the diagonal (a row with itself): the block's own columns once
        # each way, the later columns twice (torch sums float32 pairwise on the CPU: float64
        # accuracy is not needed here)
        inside = split - first
        diag = E[torch.arange(i.numel(), device=E.device), self.place[i] - first]
        self.total += scale * (float(E[:, :inside].sum()) + 2.0 * float(E[:, inside:].sum())
                               - float(diag.sum()))

    def result(self) -> float:
        return math.log(self.total / (self.m * (self.m - 1)))
