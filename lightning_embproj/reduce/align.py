"""Align stage: make epoch t's layout comparable to epoch t-1's (orthogonal Procrustes,
``scipy.linalg.orthogonal_procrustes`` plus a translation, no scaling), and the RMS radius that
says how big a layout is.

Example:
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).normal(size=(20, 2))
    >>> keys = np.arange(20)
    >>> flipped = ref * [-1.0, 1.0] + 5.0
    >>> bool(np.allclose(procrustes_align(flipped, keys, ref, keys), ref))
    True
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes

from lightning_embproj import checks


def rms_radius(A: np.ndarray) -> float:
    """RMS distance of the rows of ``A`` to their mean (0 for no rows), in float64.

    Example:
        >>> rms_radius(np.array([[0.0, 0.0], [2.0, 0.0]]))
        1.0
    """
    A = np.asarray(A, dtype=np.float64)
    return float(np.sqrt(((A - A.mean(axis=0)) ** 2).sum(axis=1).mean())) if len(A) else 0.0


def procrustes_align(
    layout: np.ndarray, keys: np.ndarray, ref_layout: np.ndarray, ref_keys: np.ndarray, *,
    check_input: bool = True,
) -> np.ndarray:
    """Rotate/reflect and translate ``layout`` onto ``ref_layout`` (no scaling).

    The transform is fitted on the rows whose keys appear in both (any order) and applied to
    every row of ``layout``. With fewer than ``n_components + 1`` shared rows, or when the
    fitted transform is the identity, ``layout`` comes back unchanged (bit-exact).
    ``keys`` are any unique values, one per row (tracking keys, or ids read back from files).
    ``check_input=False``: the layouts are finite float64 and the keys one per row already (a
    reducer's output and a checked run's keys).

    Example:
        >>> ref = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> rot = ref @ np.array([[0.0, 1.0], [-1.0, 0.0]])
        >>> out = procrustes_align(rot[::-1], np.array([2, 1, 0]), ref, np.array([0, 1, 2]))
        >>> out[::-1].round(12) + 0.0
        array([[0., 0.],
               [1., 0.],
               [0., 2.]])
    """
    if check_input:
        layout = checks.matrix(layout, "layout", dtype=np.float64)
        keys = checks.per_row(keys, layout.shape[0], "keys", of="layout")
        ref_layout = checks.matrix(ref_layout, "ref_layout", dtype=np.float64)
        ref_keys = checks.per_row(ref_keys, ref_layout.shape[0], "ref_keys", of="ref_layout")
    layout, ref_layout = np.asarray(layout, np.float64), np.asarray(ref_layout, np.float64)
    k = layout.shape[1]
    if ref_layout.shape[1] != k:
        raise ValueError(
            f"layout has {k} components but ref_layout has {ref_layout.shape[1]}"
        )
    _, ia, ib = np.intersect1d(keys, ref_keys, assume_unique=True, return_indices=True)
    if len(ia) < k + 1:
        return layout.copy()
    a, b = layout[ia], ref_layout[ib]
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    # minimises ||(a - mu_a) @ rot - (b - mu_b)|| over rotations and reflections (no scaling)
    rot, _ = orthogonal_procrustes(a - mu_a, b - mu_b)
    scale = max(float(np.abs(b).max()), 1.0)
    if np.allclose(rot, np.eye(k), rtol=0.0, atol=1e-12) and np.allclose(
        mu_a, mu_b, rtol=0.0, atol=1e-12 * scale
    ):
        # Identity up to rounding: return the input itself so identical epochs stay identical.
        return layout.copy()
    return np.asarray((layout - mu_a) @ rot + mu_b, dtype=np.float64)
