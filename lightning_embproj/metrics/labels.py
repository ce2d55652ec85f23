"""One row per label: its size, silhouette, kNN accuracy and how far its centroid moved.

The silhouette is the one of :func:`~lightning_embproj.metrics.neighbours.scan` (each row's
value, as ``sklearn.metrics.silhouette_samples`` gives it); the kNN accuracy uses the run's kNN
when the caller has it (``Projection.knn``), with the vote of
:func:`~lightning_embproj.metrics.neighbours.vote`.

Example:
    >>> X = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> [r["count"] for r in per_label_table([1, 2, 3, 4], X, ["a", "a", "b", "b"], k=1)]
    [2, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import shared_rows
from lightning_embproj.metrics.neighbours import knn, scan, vote
from lightning_embproj.metrics.sizing import fixed_subset, knn_k

PER_LABEL_COLUMNS: tuple[str, ...] = (
    "label", "count", "silhouette", "knn_accuracy", "centroid_shift",
)
PER_LABEL_SILHOUETTE_MAX_POINTS = 5000


def per_label_table(
    keys: np.ndarray | Sequence[int],
    X: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    X_prev: np.ndarray | None = None,
    k: int = 10,
    max_points: int | None = PER_LABEL_SILHOUETTE_MAX_POINTS,
    *,
    neighbours: np.ndarray | None = None,
    check_input: bool = True,
) -> list[dict[str, Any]]:
    """One row per label (sorted), columns :data:`PER_LABEL_COLUMNS`.

    - ``count``: points with the label.
    - ``silhouette``: mean silhouette of the label's points (above ``max_points`` rows, over a
      fixed random subset, seed 0); NaN when the silhouette is undefined (fewer than 2 labels)
      or the label has no point in the subset.
    - ``knn_accuracy``: leave-one-out kNN vote accuracy (``k`` neighbours) of the label's
      points; the count-weighted mean over labels equals
      :func:`lightning_embproj.metrics.scores.knn_accuracy` (same neighbours, same tie rule).
      ``neighbours``: the ``(N, k)`` kNN of ``X`` when known (``Projection.knn``), else
      computed.
    - ``centroid_shift``: Euclidean distance between the centroid of the label's points in the
      previous run and in this run, over the keys present in both (labels of this run); NaN
      without a previous run or without shared points of that label.

    ``check_input=False``: the arrays are a checked run's (see :mod:`lightning_embproj.checks`).

    Example:
        >>> X = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> rows = per_label_table([1, 2, 3, 4], X, [0, 0, 1, 1], [1, 2, 3, 4], X + 1.0, k=1)
        >>> [(r["label"], r["count"], r["knn_accuracy"], r["centroid_shift"]) for r in rows]
        [(0, 2, 1.0, 1.0), (1, 2, 1.0, 1.0)]
    """
    if check_input:
        X = checks.matrix(X, "X")
        keys = checks.keys(keys, "keys", rows=X.shape[0])
    n = X.shape[0]
    codes = checks.label_codes(labels, n)
    lab = np.asarray(labels)
    uniq_rows = np.unique(codes, return_index=True)[1]
    n_cls = uniq_rows.size
    counts = np.bincount(codes, minlength=n_cls)
    sil = _silhouettes(X, codes, n_cls, max_points)

    acc = _knn_accuracies(X, codes, counts, k, neighbours)

    shift = np.full(n_cls, math.nan)
    if prev_keys is not None and X_prev is not None:
        if check_input:
            X_prev = checks.matrix(X_prev, "X_prev")
            prev_keys = checks.keys(prev_keys, "prev_keys", rows=X_prev.shape[0], of="X_prev")
        shift = _centroid_shifts(np.asarray(keys), X, codes, n_cls, np.asarray(prev_keys),
                                 np.asarray(X_prev))

    out = []
    for c in range(n_cls):
        value = lab[uniq_rows[c]]
        out.append({
            "label": value.item() if isinstance(value, np.generic) else value,
            "count": int(counts[c]),
            "silhouette": float(sil[c]),
            "knn_accuracy": float(acc[c]),
            "centroid_shift": float(shift[c]),
        })
    return out


def _knn_accuracies(
    X: np.ndarray, codes: np.ndarray, counts: np.ndarray, k: int, known: np.ndarray | None
) -> np.ndarray:
    """Leave-one-out kNN vote accuracy per label code (``known``: the kNN of ``X``, if any)."""
    n = X.shape[0]
    if n < 2:
        return np.full(counts.size, math.nan)
    kk = knn_k(n, k)
    near = known if known is not None and known.shape == (n, kk) else knn(X, kk)
    hit = (vote(near, codes) == codes).astype(np.float64)
    return np.bincount(codes, weights=hit, minlength=counts.size) / counts


def _silhouettes(
    X: np.ndarray, codes: np.ndarray, n_cls: int, max_points: int | None
) -> np.ndarray:
    """Mean silhouette per label code over the fixed subset of rows (NaN: undefined)."""
    rows = fixed_subset(X.shape[0], max_points)
    sub_codes = codes if rows is None else codes[rows]
    values = scan(X if rows is None else X[rows], labels=sub_codes,
                  max_points=None).silhouette_values
    if values is None:
        return np.full(n_cls, math.nan)
    sums = np.bincount(sub_codes, weights=values, minlength=n_cls)
    cnt = np.bincount(sub_codes, minlength=n_cls)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, sums / np.maximum(cnt, 1), math.nan)


def _centroid_shifts(
    keys: np.ndarray, X: np.ndarray, codes: np.ndarray, n_cls: int, prev_keys: np.ndarray,
    X_prev: np.ndarray,
) -> np.ndarray:
    """Per label code, how far the centroid of its shared points moved (NaN: none shared)."""
    if X_prev.shape[1] != X.shape[1]:
        raise ValueError(f"X_prev has {X_prev.shape[1]} dims, X has {X.shape[1]}: must match")
    ip, ic = shared_rows(prev_keys, keys)
    if not ip.size:
        return np.full(n_cls, math.nan)
    c = codes[ic]
    cnt = np.bincount(c, minlength=n_cls)[:, None]
    mean_now = np.zeros((n_cls, X.shape[1]))
    mean_prev = np.zeros((n_cls, X.shape[1]))
    np.add.at(mean_now, c, X[ic].astype(np.float64))
    np.add.at(mean_prev, c, X_prev[ip].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.linalg.norm((mean_now - mean_prev) / cnt, axis=1)
    return np.where(cnt[:, 0] > 0, d, math.nan)
