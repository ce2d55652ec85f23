"""Score one epoch: cluster quality, faithfulness of each layout, drift since the last epoch.

Pure numpy functions (scikit-learn only for the kNN of the 2-D/3-D layouts). Everything that
needs the original space's distances is computed in one chunked pass over the rows
(:func:`lightning_embproj.metrics.neighbours.scan`): memory is ``O(chunk * N)``, never ``N x N``,
and the pass is shared by the metrics of an epoch; with ``device="cuda"`` the pass runs in
torch on the GPU. That pass also gives the run's kNN (:attr:`RunScores.knn`, kept as
``Projection.knn``): drift against the next run and :func:`movers` reuse it instead of a second
pass. A run's :class:`~lightning_embproj.results.Projection` holds a sample checked where it
entered the pipeline (``checks.sample``); the functions taking plain arrays check them.

Metrics are NaN only when undefined: silhouette with fewer than 2 labels (or fewer than 3
points, or as many labels as points), any kNN metric with fewer than 2 points,
trustworthiness with fewer than 3 points, drift with fewer than 2 tracked points shared by
the two epochs, ``R/motion_explained`` with fewer than 3 shared points or when nothing moved
(or everything moved alike) in the embedding or in the layout. ``k`` shrinks to what ``N``
allows (``N - 1``; for trustworthiness below ``N / 2``, as scikit-learn requires).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 0.1, (20, 5)), rng.normal(5, 0.1, (20, 5))]
    >>> y = np.repeat([0, 1], 20)
    >>> round(silhouette(X, y), 2), knn_accuracy(X, y)
    (0.97, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import shared_rows
from lightning_embproj.metrics.motion import motion_explained, point_displacement
from lightning_embproj.metrics.neighbours import (
    SILHOUETTE_MAX_POINTS,
    Device,
    knn,
    scan,
    vote,
)
from lightning_embproj.metrics.sizing import knn_k
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
    "<reducer>/motion_explained": "Spearman correlation, over the points tracked in both runs, "
    "between each point's real motion (1 - knn_kept: the share of its k=10 original-space "
    "neighbours it lost) and its motion in the aligned layout (R_moved); -1..1, 1 = the points "
    "that move most in the picture are those whose neighbourhoods changed most; NaN when "
    "either side is constant (a frozen model) or fewer than 3 points are shared.",
}

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
    X = checks.matrix(X, "X")
    return scan(X, labels=checks.label_codes(labels, X.shape[0]), max_points=max_points).silhouette


def knn_accuracy(X: np.ndarray, labels: Sequence[object] | np.ndarray, k: int = 10) -> float:
    """Leave-one-out accuracy of a majority vote of the ``k`` nearest neighbours (NaN if N < 2).

    Example:
        >>> knn_accuracy(np.array([[0.0], [0.1], [5.0], [5.1]]), [0, 0, 1, 1], k=1)
        1.0
    """
    X = checks.matrix(X, "X")
    codes = checks.label_codes(labels, X.shape[0])
    if X.shape[0] < 2:
        return math.nan
    return float((vote(knn(X, knn_k(X.shape[0], k)), codes) == codes).mean())


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
    X, layout = checks.matrix(X, "X"), checks.matrix(layout, "layout")
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
    X_prev, X = checks.matrix(X_prev, "X_prev"), checks.matrix(X, "X")
    if X_prev.shape[0] != X.shape[0]:
        raise ValueError(f"X_prev has {X_prev.shape[0]} rows, X has {X.shape[0]}: rows must match")
    n = X.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    kk = knn_k(n, k)
    return _overlap(knn(X_prev, kk), knn(X, kk))


class RunScores(NamedTuple):
    """What :func:`score_run` gives: the metrics, the run's kNN for whatever reuses it, and
    each point's real and apparent motion since the previous run (the ``knn_kept`` and
    ``R_moved`` columns; NaN for a point new in this run, every point without ``previous``)."""

    metrics: dict[str, float]
    knn: np.ndarray | None  # (N, k) original-space neighbours, nearest first (None: N < 2)
    knn_kept: np.ndarray | None = None  # (N,) share of its k neighbours a point kept
    moved: Mapping[str, np.ndarray] | None = None  # reducer -> (N,) normalised displacement


def _neighbours(
    X: np.ndarray, rows: np.ndarray, k: int, known: np.ndarray | None, device: Device | None
) -> np.ndarray:
    """The ``k`` nearest neighbours within ``X[rows]``: ``known`` (the kNN of all of ``X``)
    when ``rows`` is every row in order and ``known`` has ``k`` columns, else one pass."""
    every = rows.size == X.shape[0] and bool((rows == np.arange(rows.size)).all())
    if every and known is not None and known.shape == (X.shape[0], k):
        return known
    return knn(X if every else X[rows], k, device)


def _drift_overlap(
    current: Projection, previous: Projection, k: int, device: Device | None = None,
    known: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(current rows, previous rows, per-row overlap) on the tracked points of both runs;
    ``known``: the current run's kNN when it is not ``current.knn`` yet."""
    ip, ic = shared_rows(np.asarray(previous.sample.keys), np.asarray(current.sample.keys))
    if ic.size < 2:
        return ic, ip, np.full(ic.size, np.nan)
    kk = knn_k(ic.size, k)
    now = _neighbours(checks.floats(current.sample.embeddings), ic, kk,
                      current.knn if known is None else known, device)
    before = _neighbours(checks.floats(previous.sample.embeddings), ip, kk, previous.knn, device)
    return ic, ip, _overlap(before, now)


def score_run(
    current: Projection, previous: Projection | None = None, k: int = 10,
    device: Device | None = None,
) -> RunScores:
    """All scalar metrics of one run, named as in :data:`METRIC_DOCS`, and its kNN.

    ``silhouette`` and ``knn_accuracy`` with labels; ``R/trustworthiness`` per layout; with
    ``previous``: ``drift/knn_overlap`` and ``R/displacement`` per reducer present in both,
    on the rows whose ``sample.keys`` appear in both runs (any order, partial overlap).
    ``device``: where the distance pass runs (None: numpy on the CPU; ``"cuda"``: torch on
    the GPU; see :func:`lightning_embproj.metrics.neighbours.scan`). The one distance pass
    gives this run's kNN too (:attr:`RunScores.knn`); the previous run's comes from
    ``previous.knn`` when it was kept, else from a second pass.

    Example:
        >>> from lightning_embproj.results import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X, labels=np.arange(40) % 2)
        >>> scores = score_run(Projection(s, epoch=0, step=0, layouts={"pca": X[:, :2]}))
        >>> sorted(scores.metrics), scores.knn.shape
        (['knn_accuracy', 'pca/trustworthiness', 'silhouette'], (40, 10))
    """
    X = checks.floats(current.sample.embeddings)
    n = X.shape[0]
    labels = current.sample.labels
    codes = None if labels is None else checks.label_codes(labels, n)
    names = list(current.layouts)
    layouts = [np.asarray(current.layouts[r]) for r in names]
    for r, L in zip(names, layouts, strict=True):
        if L.shape[0] != n:
            raise ValueError(f"layouts[{r!r}] has {L.shape[0]} rows, the sample has {n}")
    kk = knn_k(n, k) if n >= 2 else 0
    first = scan(X, kk, layouts, k, codes, device=device)
    out: dict[str, float] = {}
    if codes is not None:
        out["silhouette"] = first.silhouette
        out["knn_accuracy"] = (
            float((vote(first.knn, codes) == codes).mean()) if first.knn is not None else math.nan
        )
    for r, t in zip(names, first.trust, strict=True):
        out[f"{r}/trustworthiness"] = t
    kept = np.full(n, np.nan)
    moved = {r: np.full(n, np.nan) for r in names}
    if previous is not None:
        ic, ip, ov = _drift_overlap(current, previous, k, device, known=first.knn)
        out["drift/knn_overlap"] = float(ov.mean()) if ic.size >= 2 else math.nan
        kept[ic] = ov
        for r in names:
            if r in previous.layouts:
                prev_l, now_l = np.asarray(previous.layouts[r]), np.asarray(current.layouts[r])
                if ic.size:
                    moved[r][ic] = point_displacement(prev_l[ip], now_l[ic])
                out[f"{r}/displacement"] = float(moved[r][ic].mean()) if ic.size else math.nan
                out[f"{r}/motion_explained"] = motion_explained(kept[ic], moved[r][ic])
    return RunScores(out, first.knn, kept, moved)


def epoch_metrics(
    current: Projection, previous: Projection | None = None, k: int = 10,
    device: Device | None = None,
) -> dict[str, float]:
    """The metrics of :func:`score_run`, without the kNN.

    Example:
        >>> from lightning_embproj.results import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X, labels=np.arange(40) % 2)
        >>> p = Projection(s, epoch=0, step=0, layouts={"pca": X[:, :2]})
        >>> sorted(epoch_metrics(p, p))[:3]
        ['drift/knn_overlap', 'knn_accuracy', 'pca/displacement']
    """
    return score_run(current, previous, k, device).metrics


def movers(
    current: Projection, previous: Projection | None = None, k: int = 10, top: int = 20,
    device: Device | None = None, kept: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The points worth a look after an epoch, as parallel arrays of length ``M <= 2 * top``.

    Keys: ``index`` (int64 row of ``current``), ``key`` (int64 ``sample.keys``), ``kind``
    (str: ``"changed"`` or ``"mislabelled-neighbourhood"``), ``overlap`` (float, fraction of
    the row's k nearest neighbours kept since ``previous``; NaN without ``previous`` or when
    the row is new), ``foreign_fraction`` (float, fraction of its k nearest neighbours with
    another label; NaN without labels). ``"changed"`` rows come first: the ``top`` shared
    rows with the lowest overlap below 1, lowest first. Then the ``top`` rows whose foreign
    fraction exceeds 0.5, highest first. A row can appear once under each kind; ties go to
    the lower index. The kNN of both runs come from ``current.knn`` / ``previous.knn`` when
    they were kept (:func:`score_run` computes them), else from a distance pass; ``kept``:
    the overlap per row when known already (:attr:`RunScores.knn_kept`, the ``knn_kept``
    column), so the ranking is the column's.

    Example:
        >>> from lightning_embproj.results import EpochSample
        >>> X = np.random.default_rng(0).normal(size=(40, 6))
        >>> s = EpochSample("z", np.arange(40), list(range(40)), X)
        >>> movers(Projection(s, 0, 0), Projection(s, 0, 0))["index"].size
        0
    """
    X = checks.floats(current.sample.embeddings)
    n = X.shape[0]
    overlap = np.full(n, np.nan)
    if previous is not None and kept is not None and len(kept) == n:
        overlap = np.asarray(kept, dtype=np.float64)
    elif previous is not None:
        ic, _, ov = _drift_overlap(current, previous, k, device)
        overlap[ic] = ov
    foreign = np.full(n, np.nan)
    if current.sample.labels is not None and n >= 2:
        codes = checks.label_codes(current.sample.labels, n)
        near = _neighbours(X, np.arange(n), knn_k(n, k), current.knn, device)
        foreign = (codes[near] != codes[:, None]).mean(axis=1)
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
