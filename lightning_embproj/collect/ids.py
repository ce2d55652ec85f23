"""A batch's sample ids as one host array: what ``id_key`` names, checked.

Example:
    >>> as_ids([4, 2], "id", 2).tolist()
    [4, 2]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.extract import Key, host_numpy, is_array

# Largest integer that each float dtype holds exactly: a float id above it may be rounded into
# another sample's id (bfloat16 keeps only 8 significant bits).
_EXACT_INT = {"bfloat16": 2**8, "float16": 2**11, "float32": 2**24, "float64": 2**53}


def as_ids(value: Any, key: Key, n: int) -> np.ndarray:
    """``n`` sample ids as a 1-D host array: int64 (uint64 kept) or an object array of str.

    Floating ids (a float tensor, or ints cast to bfloat16 by autocast) become int64 when they
    hold whole numbers that the dtype stores exactly; anything else raises.

    Example:
        >>> import torch
        >>> as_ids(torch.tensor([3.0, 7.0], dtype=torch.bfloat16), "id", 2).tolist()
        [3, 7]
        >>> as_ids(["img_7", "img_10000"], "id", 2).tolist()
        ['img_7', 'img_10000']
    """
    dtype_name = str(getattr(value, "dtype", "")).replace("torch.", "")
    if is_array(value):
        arr = host_numpy(value)
    else:
        items = list(value)
        if items and hasattr(items[0], "item"):  # a list of 0-d tensors or numpy scalars
            items = [v.item() if hasattr(v, "item") else v for v in items]
        arr = np.asarray(items)
    arr = arr.reshape(-1) if arr.size == n else arr
    if arr.ndim != 1:
        raise ValueError(
            f"id_key={key!r}: expected one id per row, shape ({n},), got shape {arr.shape}"
        )
    if arr.dtype.kind == "f":
        limit = _EXACT_INT.get(dtype_name or arr.dtype.name, 2**53)
        whole = np.isfinite(arr).all() and bool((arr == np.round(arr)).all())
        if not whole or (arr.size and float(np.abs(arr).max()) > limit):
            raise ValueError(
                f"id_key={key!r}: float ids must be whole numbers below {limit} (the largest "
                f"that {dtype_name or arr.dtype.name} stores exactly), got e.g. "
                f"{arr[:3].tolist()}; pass ids as an int tensor (ints are not cast by autocast)"
                f" or as strings"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind in "iub":
        return arr if arr.dtype == np.uint64 else arr.astype(np.int64)
    out = np.empty(arr.shape[0], dtype=object)
    out[:] = arr.astype(np.str_).tolist() if arr.dtype.kind in "US" else [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()
    ]
    return out
