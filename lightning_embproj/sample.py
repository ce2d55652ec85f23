"""Deterministic bottom-k sampling: keep the ``max_samples`` ids with the smallest hash.

The hash of an id is the same in every epoch and on every rank, so the kept subset is the same
everywhere without any communication, and the union of per-rank bottom-k sets contains the
global bottom-k.

Example:
    >>> import numpy as np
    >>> keys = hash_ids(np.arange(10), dataloader_idx=0)
    >>> bool((keys >= 0).all()), keys.dtype.name
    (True, 'int64')
    >>> bool((hash_ids(np.arange(10), 0) == keys).all())
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

_MASK63 = np.uint64((1 << 63) - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (well-defined wrap-around in numpy)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN  # a new array: the in-place steps below never touch the input
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
        return z


def _string_hash(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def hash_ids(ids: np.ndarray | Sequence[Any], dataloader_idx: int) -> np.ndarray:
    """Non-negative int64 keys for sample ids (ints or strings) of one dataloader.

    Integer ids are mixed with SplitMix64; other ids (strings, ...) hash their ``str`` with
    BLAKE2b. The dataloader index is mixed in, so equal ids of different loaders differ.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind in "iub":
        raw = arr.astype(np.int64).view(np.uint64)
    else:
        raw = np.fromiter((_string_hash(str(v)) for v in arr.ravel()), np.uint64, arr.size)
    salt = _splitmix64(np.array([dataloader_idx], dtype=np.uint64))[0]  # one value per loader
    return (_splitmix64(raw ^ salt) & _MASK63).view(np.int64)


def derived_ids(
    start: int, count: int, *, rank: int = 0, world_size: int = 1, dataset_len: int | None = None
) -> np.ndarray:
    """Ids for a loader without ``id_key``: the sample's position in the validation dataset.

    On one process this is the running position ``start .. start + count``. Under DDP with
    Lightning's non-shuffled ``DistributedSampler``, rank ``r`` sees dataset indices
    ``r, r + W, r + 2W, ...`` (wrapping around for padding), so the local position ``p`` maps to
    ``(p * W + r) % len(dataset)``, and a padded duplicate gets the id of the sample it repeats.
    """
    pos = np.arange(start, start + count, dtype=np.int64)
    if world_size > 1:
        pos = pos * world_size + rank
        if dataset_len:
            pos %= dataset_len
    return pos
