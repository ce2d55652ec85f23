"""A run's layout as compact codes the page decodes: uint16 over the run's own range per axis,
or float32 / float64 offsets where outliers would leave the bulk too few codes.

Example:
    >>> xy = np.array([[0.0, 1.0], [2.0, 3.0], [np.nan, 5.0]])
    >>> run = encode_run(xy)
    >>> run["enc"], run["lo"], run["hi"]
    ('u2', [0.0, 1.0], [2.0, 5.0])
    >>> np.allclose(decode_run(run, 2), xy, equal_nan=True)
    True
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

MISSING = 65535  # uint16 code of a missing coordinate
LEVELS = 65534  # codes 0..65534 span each axis' range in one run
# Largest decode error allowed, as a fraction of a run's spread on that axis (the README
# promises 0.1%; the margin covers spreads measured on few points).
MAX_ERROR = 2.5e-4


def b64(values: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of ``values`` as ``dtype``, base64 (decoded by typed arrays in JS)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def spread(values: np.ndarray) -> float:
    """A run's spread on one axis: the range of its central 98% of points (an outlier row
    does not widen it), or the whole range where that is 0.

    >>> spread(np.r_[np.linspace(0, 1, 1000), 1e6])
    0.98...
    """
    lo, hi = np.percentile(values, [1, 99])
    return float(hi - lo) or float(values.max() - values.min())


def decode_run(run: dict[str, Any], dims: int) -> np.ndarray:
    """One encoded run back to (N, dims) float64, computed as the page's script does."""
    raw = base64.b64decode(run["data"])
    kind = run["enc"]
    if kind == "u2":
        q = np.frombuffer(raw, "<u2").reshape(-1, dims).astype(np.float64)
        lo = np.array([np.nan if v is None else v for v in run["lo"]])
        hi = np.array([np.nan if v is None else v for v in run["hi"]])
        out = lo + q * (hi - lo) / LEVELS
        out[q == MISSING] = np.nan
        return out
    q = np.frombuffer(raw, "<f4" if kind == "f4" else "<f8").reshape(-1, dims)
    return np.asarray(run["off"], dtype=np.float64) + q.astype(np.float64)


def encode_run(c: np.ndarray) -> dict[str, Any]:
    """One run's (N, dims) layout -> ``{"enc", "lo", "hi", "data"}`` (+ ``"off"`` for floats).

    ``enc`` is the smallest of ``u2`` (uint16 codes over this run's own [lo, hi] per axis;
    NaN -> MISSING), ``f4`` (float32 offsets from the run's median) and ``f8`` whose decode
    error is at most ``MAX_ERROR`` of the run's :func:`spread` on every axis. ``lo`` / ``hi``
    are each axis' finite min / max (``None`` without any): the page's axis ranges.
    """
    dims = c.shape[1]
    finite = np.isfinite(c)
    lo: list[float | None] = [None] * dims
    hi: list[float | None] = [None] * dims
    tol = np.zeros(dims)
    codes = np.full(c.shape, MISSING, dtype=np.uint16)
    for j in range(dims):
        ok = finite[:, j]
        if not ok.any():
            continue
        axis = c[ok, j]
        a, b = float(axis.min()), float(axis.max())
        lo[j], hi[j], tol[j] = a, b, MAX_ERROR * spread(axis)
        codes[ok, j] = np.round((axis - a) / ((b - a) or 1.0) * LEVELS).astype(np.uint16)

    def fits(run: dict[str, Any]) -> bool:
        err = np.abs(decode_run(run, dims) - c)
        return bool(np.all(np.where(finite, err, 0.0) <= tol))

    run = {"enc": "u2", "lo": lo, "hi": hi, "data": b64(codes, "<u2")}
    if fits(run):
        return run
    off = [float(np.median(c[finite[:, j], j])) if finite[:, j].any() else 0.0
           for j in range(dims)]
    run = {"enc": "f4", "lo": lo, "hi": hi, "off": off, "data": b64(c - np.array(off), "<f4")}
    if fits(run):
        return run
    return {"enc": "f8", "lo": lo, "hi": hi, "off": [0.0] * dims, "data": b64(c, "<f8")}
