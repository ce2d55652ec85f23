"""Motion of the tracked points between two runs: in the aligned layout (displacement, the
``R_moved`` column and ``R/displacement``) and how much of it the embedding's own change
explains (``R/motion_explained``, against the ``knn_kept`` column). Pure numpy.

Example:
    >>> P = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    >>> mean_displacement(P, P), point_displacement(P, P + [1.0, 0.0], normalize=False).tolist()
    (0.0, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import math

import numpy as np

from lightning_embproj import checks
from lightning_embproj.metrics.stability import spearman
from lightning_embproj.reduce.align import rms_radius


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
    P, L = checks.matrix(prev_layout, "prev_layout"), checks.matrix(layout, "layout")
    if P.shape != L.shape:
        raise ValueError(f"prev_layout {P.shape} and layout {L.shape} must have the same shape")
    if P.shape[0] == 0:
        return math.nan
    return float(point_displacement(P, L, normalize).mean())


def point_displacement(P: np.ndarray, L: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Per matched row, the distance it moved between two aligned layouts; with ``normalize``
    divided as :func:`mean_displacement` divides (its mean is ``R/displacement``): the
    ``R_moved`` column.

    Example:
        >>> P = np.array([[0.0, 0.0], [2.0, 0.0]])
        >>> point_displacement(P, P + [[0.0, 0.5], [0.0, 0.0]]).tolist()
        [0.5, 0.0]
    """
    raw = np.linalg.norm(np.asarray(L, dtype=np.float64) - P, axis=1)
    if not normalize or not raw.any():
        return raw
    return raw / (rms_radius(P) or rms_radius(np.concatenate([P, L])))


def motion_explained(kept: np.ndarray, moved: np.ndarray) -> float:
    """``R/motion_explained``: Spearman correlation of real motion (``1 - kept``) and layout
    motion (``moved``) over the rows where both are known; -1..1, NaN with fewer than 3 such
    rows or when either side is constant (nothing moved in the embedding, or in the layout).

    Example:
        >>> motion_explained(np.array([1.0, 0.8, 0.2, np.nan]), np.array([0.0, 0.1, 0.9, 5.0]))
        1.0
    """
    kept, moved = np.asarray(kept, dtype=np.float64), np.asarray(moved, dtype=np.float64)
    known = np.isfinite(kept) & np.isfinite(moved)
    return spearman(1.0 - kept[known], moved[known])
