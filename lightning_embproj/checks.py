"""The one check of the arrays, keys and labels that enter the pipeline, and its block size.

A run's data enters once, in :func:`sample` (``pipeline.process_run`` calls it); the
stages after it take the checked arrays as they are. Functions that take arrays from a caller
(``cluster_points``, ``tsne_next``, ``rankme``, ...) check them with :func:`matrix`,
:func:`keys`, :func:`per_row` and :func:`label_codes` unless told the input is checked already
(``check_input=False``, as scikit-learn names it). Bad input raises a ``ValueError`` that names
the argument. Passes over big arrays (this check, distances, PCA) work in blocks of at most
:data:`CHUNK_BYTES`, so memory stays ``O(block)``, not ``O(N x D)`` or ``O(N x N)``.

Example:
    >>> X = matrix([[1.0, 2.0], [3.0, 4.0]], "X")
    >>> X.dtype.name, keys([7, 3], "keys", rows=2).tolist()
    ('float64', [7, 3])
    >>> keys([7, 7], "keys")
    Traceback (most recent call last):
    ...
    ValueError: keys must be unique tracking keys; found duplicates
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lightning_embproj.results import EpochSample

#: The most bytes one block of a chunked pass may hold (a block of rows cast to float64, a
#: rows x N block of distances); peak memory is a few of these.
CHUNK_BYTES = 16 * 2**20


def chunk_rows(row_bytes: int, at_least: int = 1, budget: int | None = None) -> int:
    """Rows per block when a row takes ``row_bytes``: the block stays within ``budget``
    (default :data:`CHUNK_BYTES`), with at least ``at_least`` rows.

    Example:
        >>> chunk_rows(8 * 1000), chunk_rows(8 * 10**7, at_least=16)
        (2097, 16)
    """
    limit = CHUNK_BYTES if budget is None else budget
    return max(at_least, limit // max(int(row_bytes), 1))


def components(n_components: int) -> int:
    """``n_components`` (every reducer's output dims) as a positive int, or a ValueError.

    Example:
        >>> components(0)
        Traceback (most recent call last):
        ...
        ValueError: n_components must be a positive int, got 0
    """
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    return int(n_components)


def matrix(X: Any, name: str, *, dtype: Any = None) -> np.ndarray:
    """``X`` as a C-contiguous ``(N, D)`` float array of finite values.

    ``dtype=None`` keeps float32 and float64 input as it is (no copy when already
    C-contiguous) and makes anything else float64; a given ``dtype`` is always used. The
    finiteness scan goes in blocks of :data:`CHUNK_BYTES` (no ``N x D`` boolean array).

    Example:
        >>> matrix(np.zeros((2, 3), np.float32), "X").dtype.name
        'float32'
        >>> matrix([1.0, 2.0], "layout")
        Traceback (most recent call last):
        ...
        ValueError: layout must be a 2-D (N, D) array, got shape (2,)
    """
    a = np.asarray(X)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {a.shape}")
    if dtype is None:
        dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float64
    a = np.ascontiguousarray(a, dtype=dtype)
    step = chunk_rows(a.itemsize * a.shape[1])
    if not all(np.isfinite(a[s : s + step]).all() for s in range(0, a.shape[0], step)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def keys(
    values: np.ndarray | Sequence[int], name: str, *, rows: int | None = None, of: str = "X"
) -> np.ndarray:
    """Tracking keys as a 1-D int64 array of unique values (any integer dtype; empty is fine).

    ``rows``: how many there must be, one per row of ``of``.

    Example:
        >>> keys(np.array([5, 1], np.int32), "keys").dtype.name
        'int64'
        >>> keys([1, 2, 3], "keys", rows=300)
        Traceback (most recent call last):
        ...
        ValueError: keys has 3 entries, X has 300 rows: must match
    """
    k = np.asarray(values)
    if k.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer tracking keys, got shape "
                         f"{k.shape}")
    if k.size and not np.issubdtype(k.dtype, np.integer):
        raise ValueError(f"{name} must hold integer tracking keys, got dtype {k.dtype}")
    if rows is not None and k.size != rows:
        raise ValueError(f"{name} has {k.size} entries, {of} has {rows} rows: must match")
    k = k.astype(np.int64, copy=False)
    if np.unique(k).size != k.size:
        raise ValueError(f"{name} must be unique tracking keys; found duplicates")
    return k


def per_row(
    values: Sequence[object] | np.ndarray, n: int, name: str, of: str = "the embeddings"
) -> np.ndarray:
    """One value (a label, an id) per row of ``of``: ``values`` as an ``(n,)`` array.

    Example:
        >>> per_row(["a", "b"], 3, "labels")
        Traceback (most recent call last):
        ...
        ValueError: labels must have shape (3,) to match the embeddings, got (2,)
    """
    a = np.asarray(values)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match {of}, got {a.shape}")
    return a


def label_codes(values: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    """One label per row (ints, strings, mixed) as int codes ``0..C-1`` in sorted label order.

    Example:
        >>> label_codes(["b", "a", "b"], 3).tolist()
        [1, 0, 1]
        >>> label_codes([1, None], 2).tolist()  # mixed types compare as text
        [0, 1]
    """
    lab = per_row(values, n, "labels")
    try:
        return np.unique(lab, return_inverse=True)[1].reshape(-1)
    except TypeError:  # mixed types (e.g. ints and None) do not sort: compare their text
        return np.unique(lab.astype(str), return_inverse=True)[1].reshape(-1)


def floats(X: Any) -> np.ndarray:
    """The array the stages compute on: float32 / float64 as they are, anything else (a float16
    storage, ints) as float32. A conversion, not a check.

    Example:
        >>> floats(np.ones((2, 2), np.float16)).dtype.name
        'float32'
    """
    a = np.ascontiguousarray(X)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


def sample(s: EpochSample) -> EpochSample:
    """One run's sample checked where it enters the pipeline: finite 2-D embeddings (float
    storage kept as it is, float16 included; anything else made float32), one unique int64 key
    and one label per row.

    Returns ``s`` itself when nothing had to be converted, else a copy with the converted
    arrays.

    Example:
        >>> from lightning_embproj.results import EpochSample
        >>> s = EpochSample("z", np.array([3, 1]), ["a", "b"], np.ones((2, 4), np.float32))
        >>> sample(s) is s
        True
    """
    emb = np.asarray(s.embeddings)
    X = matrix(emb, "embeddings", dtype=emb.dtype if emb.dtype.kind == "f" else np.float32)
    k = keys(s.keys, "keys", rows=X.shape[0], of="embeddings")
    if s.labels is not None:
        per_row(s.labels, X.shape[0], "labels")
    if X is s.embeddings and k is s.keys:
        return s
    return dataclasses.replace(s, keys=k, embeddings=X)
