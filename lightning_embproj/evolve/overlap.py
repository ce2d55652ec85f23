"""Two runs' clusterings side by side: cluster ids checked, rows matched by tracking key, and
their contingency table (:func:`overlap_counts`), noise (:data:`NOISE`) left out.

Example:
    >>> ip, ic = shared_rows(np.array([10, 11, 12]), np.array([12, 10]))
    >>> overlap_counts(np.array([0, 0, 1])[ip], np.array([5, -1])[ic])[2].tolist()
    [[0], [1]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOISE = -1


def check_ids(ids: np.ndarray | Sequence[int], n: int, name: str) -> np.ndarray:
    """Cluster ids as ``(n,)`` int64 with values ``>= -1``; bad input raises naming ``name``.

    Example:
        >>> check_ids([0, -1, 3], 3, "ids").tolist()
        [0, -1, 3]
    """
    a = np.asarray(ids)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the keys, got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cluster ids, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < NOISE:
        raise ValueError(f"{name} must be >= 0 (or -1 for noise), got {int(a.min())}")
    return a


def shared_rows(prev_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(ip, ic)`` of the keys present in both runs, in the current run's order.

    Example:
        >>> ip, ic = shared_rows(np.array([5, 1, 3]), np.array([3, 4, 5]))
        >>> ip.tolist(), ic.tolist()
        ([2, 0], [0, 2])
    """
    _, ic, ip = np.intersect1d(keys, prev_keys, assume_unique=True, return_indices=True)
    order = np.argsort(ic, kind="stable")
    return ip[order].astype(np.int64), ic[order].astype(np.int64)


def overlap_counts(
    prev_ids: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contingency of two clusterings of the same rows, noise left out of the table.

    Returns ``(prev_u, cur_u, n, a, b)``: the previous and current cluster numbers (sorted,
    no ``-1``), ``n[i, j]`` rows in both ``prev_u[i]`` and ``cur_u[j]``, ``a[i]`` rows in
    ``prev_u[i]``, ``b[j]`` rows in ``cur_u[j]`` (rows that are noise on the other side count
    in ``a`` / ``b``, so a cluster dissolving into noise loses overlap).
    """
    prev_u, pi = np.unique(prev_ids, return_inverse=True)
    cur_u, ci = np.unique(ids, return_inverse=True)
    pi, ci = pi.reshape(-1), ci.reshape(-1)
    table = np.zeros((prev_u.size, cur_u.size), dtype=np.int64)
    np.add.at(table, (pi, ci), 1)
    keep_p, keep_c = prev_u != NOISE, cur_u != NOISE
    a = table.sum(axis=1)[keep_p]
    b = table.sum(axis=0)[keep_c]
    return prev_u[keep_p], cur_u[keep_c], table[np.ix_(keep_p, keep_c)], a, b
