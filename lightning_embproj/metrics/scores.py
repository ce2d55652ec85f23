"""Score one epoch: cluster quality, faithfulness of each layout, drift since the last epoch.

Pure numpy functions (scikit-learn only for the kNN of the 2-D/3-D layouts). Everything that
needs the original space's distances is computed in one chunked pass over the rows
(:func:`lightning_embproj.metrics.neighbours.scan`): memory is ``O(chunk * N)``, never ``N x N``,
and the pass is shared by the metrics of an epoch; with ``device="cuda"`` the pass runs in
torch on the GPU. kNN indices are memoised by the content
of the array, so the previous epoch's neighbours (and :func:`movers` after
:func:`epoch_metrics`) cost a hash, not a pass.

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

import math
from collections.abc import Sequence

import numpy as np

from lightning_embproj.evolve.clusters import shared_rows
from lightning_embproj.metrics.neighbours import (
    SILHOUETTE_MAX_POINTS,
    Device,
    as_matrix,
    knn,
    knn_k,
    scan,
)
from lightning_embproj.results import Projection

METRIC_DOCS: dict[str, str] = {
    "silhouette": "Mean silhouette coefficient of the labels in the original embedding space "
    "(Euclidean, -1..1, higher = tighter and better separated classes; deterministic subsample "
    "of 10,000 points above that).",
    "knn_accuracy": "Leave-one-out accuracy of a majority vote among the k=10 nearest "
    "neighbours in the original space (0..1; ties go to the class of the nearest tied neighbour).",
    "<reducer>/trustworthiness": "Trustworthiness (k=10, scikit-learn's definition) of the "
    "reducer's layout: 1 = neighbours in the layout are also neighbours in the original space "
    "(above 5,000 points estimated on a fixed subset of 5,000 points, each ranked against all).",
    "drift/knn_overlap": "Mean fraction of each tracked point's k=10 nearest neighbours in the "
    "original space that it kept since the previous epoch (1 = unchanged).",
    "<reducer>/displacement": "Mean distance tracked points moved in the aligned layout since "
    "the previous epoch, divided by the RMS radius of the previous layout (0 = unchanged).",
}

def _codes(labels: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    """Labels (ints, strings, mixed) -> int codes ``0..C-1``."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the embeddings, got {lab.shape}")
    try:
        return np.unique(lab, return_inverse=True)[1].reshape(-1)
    except TypeError:  # mixed types (e.g. ints and None) do not sort: compare their text
        return np.unique(lab.astype(str), return_inverse=True)[1].reshape(-1)


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
    X = as_matrix(X, "X")
    return scan(X, labels=_codes(labels, X.shape[0]), max_points=max_points).silhouette


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
    X = as_matrix(X, "X")
    codes = _codes(labels, X.shape[0])
    if X.shape[0] < 2:
        return math.nan
    return float((_vote(knn(X, knn_k(X.shape[0], k)), codes) == codes).mean())


def trustworthiness(
    X: np.ndarray, layout: np.ndarray, k: int = 10, max_points: int | None = None,
    device: Device | None = None,
) -> float:
    """``sklearn.manifold.trustworthiness(X, layout, n_neighbors=k)`` in ``O(chunk * N)`` memory.

    ``k`` shrinks below ``N / 2``; NaN with fewer than 3 points. ``max_points``: above that many
    rows, an unbiased estimate from a fixed subset of rows, each ranked against all points
    (``epoch_metrics`` uses 5,000); None: exact.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> trustworthiness(X, X[:, :2], k=5) > trustworthiness(X, X[::-1, :2], k=5)
        True
    """
    X, layout = as_matrix(X, "X"), as_matrix(layout, "layout")
    if layout.shape[0] != X.shape[0]:
        raise ValueError(f"layout has {layout.shape[0]} rows, X has {X.shape[0]}: rows must match")
    knn_k(X.shape[0], k)
    return scan(X, layouts=[layout], trust_k=k, trust_max_points=max_points, device=device).trust[0]


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
    X_prev, X = as_matrix(X_prev, "X_prev"), as_matrix(X, "X")
    if X_prev.shape[0] != X.shape[0]:
        raise ValueError(f"X_prev has {X_prev.shape[0]} rows, X has {X.shape[0]}: rows must match")
    n = X.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    kk = knn_k(n, k)
    return _overlap(knn(X_prev, kk), knn(X, kk))


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
    P, L = as_matrix(prev_layout, "prev_layout"), as_matrix(layout, "layout")
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
    # current order, so the current kNN comes from the memo
    ip, ic = shared_rows(np.asarray(previous.sample.keys), np.asarray(current.sample.keys))
    return ic, ip


def _drift_overlap(
    current: Projection, previous: Projection, k: int, device: Device | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(current rows, previous rows, per-row overlap) on the tracked points of both epochs."""
    ic, ip = _shared_rows(current, previous)
    if ic.size < 2:
        return ic, ip, np.full(ic.size, np.nan)
    Xc = as_matrix(current.sample.embeddings, "current.sample.embeddings")
    Xp = as_matrix(previous.sample.embeddings, "previous.sample.embeddings")
    kk = knn_k(ic.size, k)
    subc = Xc if ic.size == Xc.shape[0] else Xc[ic]
    subp = Xp if np.array_equal(ip, np.arange(Xp.shape[0])) else Xp[ip]
    return ic, ip, _overlap(knn(subp, kk, device), knn(subc, kk, device))


def epoch_metrics(
    current: Projection, previous: Projection | None = None, k: int = 10,
    device: Device | None = None,
) -> dict[str, float]:
    """All scalar metrics of one epoch, named as in :data:`METRIC_DOCS`.

    ``silhouette`` and ``knn_accuracy`` with labels; ``R/trustworthiness`` per layout; with
    ``previous``: ``drift/knn_overlap`` and ``R/displacement`` per reducer present in both,
    on the rows whose ``sample.keys`` appear in both epochs (any order, partial overlap).
    ``device``: where the distance pass runs (None: numpy on the CPU; ``"cuda"``: torch on
    the GPU; see :func:`lightning_embproj.metrics.neighbours.scan`).

    Example:
        >>> from lightning_embproj.results import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X, labels=np.arange(40) % 2)
        >>> p = Projection(s, epoch=0, step=0, layouts={"pca": X[:, :2]})
        >>> sorted(epoch_metrics(p, p))[:3]
        ['drift/knn_overlap', 'knn_accuracy', 'pca/displacement']
    """
    X = as_matrix(current.sample.embeddings, "current.sample.embeddings")
    n = X.shape[0]
    labels = current.sample.labels
    codes = None if labels is None else _codes(labels, n)
    names = list(current.layouts)
    layouts = [as_matrix(current.layouts[r], f"layouts[{r!r}]") for r in names]
    for r, L in zip(names, layouts, strict=True):
        if L.shape[0] != n:
            raise ValueError(f"layouts[{r!r}] has {L.shape[0]} rows, the sample has {n}")
    kk = knn_k(n, k) if n >= 2 else 0
    first = scan(X, kk, layouts, k, codes, device=device)  # kNN memoised for drift and movers
    out: dict[str, float] = {}
    if codes is not None:
        out["silhouette"] = first.silhouette
        out["knn_accuracy"] = (
            float((_vote(first.knn, codes) == codes).mean()) if first.knn is not None else math.nan
        )
    for r, t in zip(names, first.trust, strict=True):
        out[f"{r}/trustworthiness"] = t
    if previous is not None:
        ic, ip, ov = _drift_overlap(current, previous, k, device)
        out["drift/knn_overlap"] = float(ov.mean()) if ic.size >= 2 else math.nan
        for r in names:
            if r in previous.layouts:
                prev_l = as_matrix(previous.layouts[r], f"previous.layouts[{r!r}]")
                out[f"{r}/displacement"] = (
                    mean_displacement(prev_l[ip], current.layouts[r][ic]) if ic.size else math.nan
                )
    return out


def movers(
    current: Projection, previous: Projection | None = None, k: int = 10, top: int = 20,
    device: Device | None = None,
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
        >>> from lightning_embproj.results import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6))
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X)
        >>> movers(Projection(s, 0, 0), Projection(s, 0, 0))["index"].size
        0
    """
    X = as_matrix(current.sample.embeddings, "current.sample.embeddings")
    n = X.shape[0]
    overlap = np.full(n, np.nan)
    if previous is not None:
        ic, _, ov = _drift_overlap(current, previous, k, device)
        overlap[ic] = ov
    foreign = np.full(n, np.nan)
    if current.sample.labels is not None and n >= 2:
        codes = _codes(current.sample.labels, n)
        foreign = (codes[knn(X, knn_k(n, k), device)] != codes[:, None]).mean(axis=1)
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
