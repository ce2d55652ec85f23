"""What a metric can use at a sample size: ``k`` shrunk to the rows there are, and a fixed
subset of rows above a size (the same rows for the same ``n``, run after run).

Example:
    >>> knn_k(5, 10), trustworthiness_k(5, 10), fixed_subset(10, 3).tolist()
    (4, 2, [5, 6, 9])
"""

from __future__ import annotations

import math

import numpy as np


def knn_k(n: int, k: int) -> int:
    """``k`` neighbours as ``n`` rows allow (``n - 1`` at most); ``k < 1`` raises."""
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return min(k, n - 1)


def trustworthiness_k(n: int, k: int) -> int:
    """``k`` for trustworthiness: below ``n / 2`` as well, as scikit-learn requires."""
    return min(knn_k(n, k), math.ceil(n / 2) - 1)


def fixed_subset(n: int, max_points: int | None) -> np.ndarray | None:
    """A fixed sorted subset of ``max_points`` of ``n`` rows (seed 0: the same for the same
    ``n``), or None when every row is kept.

    Example:
        >>> fixed_subset(10, 3).tolist(), fixed_subset(10, None)
        ([5, 6, 9], None)
    """
    if max_points is None or n <= max_points:
        return None
    return np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))


def subset_mask(n: int, max_points: int | None) -> np.ndarray | None:
    """:func:`fixed_subset` as a boolean mask of the ``n`` rows."""
    rows = fixed_subset(n, max_points)
    if rows is None:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask
