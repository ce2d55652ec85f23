"""Deterministic bottom-k sampling: keep the ``max_samples`` ids with the smallest hash.

The hash of an id is the same in every epoch and on every rank, so the kept subset is the same
everywhere without any communication, and the union of per-rank bottom-k sets contains the
global bottom-k. An id hashes the same whether it comes as a Python list, a numpy array or a
tensor, as int32 or int64.

Example:
    >>> import numpy as np
    >>> keys = hash_ids(np.arange(10), dataloader_idx=0)
    >>> bool((keys >= 0).all()), keys.dtype.name
    (True, 'int64')
    >>> bool((hash_ids(np.arange(10), 0) == keys).all())
    True
    >>> a, b = hash_ids(["img_7", "img_10000"], 0), hash_ids(np.array(["img_10000", "img_7"]), 0)
    >>> bool((a == b[::-1]).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HASH_VERSION = 2
"""Version of the id -> key hash. Keys of one version never change; stored in checkpoints so a
resume can tell that keys (hence the sampled ids) changed. 1: BLAKE2b per string id;
2: vectorised string hash (:func:`string_hash`). Int ids use SplitMix64 in both."""

_MASK63 = np.uint64((1 << 63) - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STRING_DOMAIN = np.uint64(0x5EED_57A1_6B0D_1E5D)  # strings and ints hash in separate domains
_CHUNK_CHARS = 16_384
_POSITIONS: dict[int, np.ndarray] = {}  # per-word position salts, by word count


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (well-defined wrap-around in numpy); a new array.

    Example:
        >>> splitmix64(np.array([0, 1], dtype=np.uint64)).dtype.name
        'uint64'
    """
    with np.errstate(over="ignore"):
        z = x + _GOLDEN  # a new array: the in-place steps below never touch the input
        shifted = np.empty_like(z)  # one scratch array: fresh big arrays cost page faults
        z ^= np.right_shift(z, np.uint64(30), out=shifted)
        z *= _MIX1
        z ^= np.right_shift(z, np.uint64(27), out=shifted)
        z *= _MIX2
        z ^= np.right_shift(z, np.uint64(31), out=shifted)
        return z


def _position_salts(words: int) -> np.ndarray:
    salts = _POSITIONS.get(words)
    if salts is None:
        salts = splitmix64(np.arange(words, dtype=np.uint64) ^ _STRING_DOMAIN)
        _POSITIONS[words] = salts
    return salts


def string_hash(values: np.ndarray) -> np.ndarray:
    """uint64 hashes of a numpy unicode array, vectorised: the same for a string at any width.

    The UTF-32 code points are paired into 64-bit words; each non-zero word is mixed with its
    position and the words are XOR-ed, then mixed again. Zero-padding (a wider array) adds only
    zero words, which are skipped, so ``"img_7"`` hashes the same in a ``<U5`` and a ``<U9``
    array. About 30x faster than one BLAKE2b call per id.

    Example:
        >>> a = string_hash(np.array(["img_7"]))
        >>> bool(a[0] == string_hash(np.array(["img_7", "img_10000"]))[0])
        True
    """
    values = np.ascontiguousarray(values, dtype=np.str_)
    n, width = values.shape[0], values.dtype.itemsize // 4
    if n * width > _CHUNK_CHARS:  # small blocks stay in cache and skip fresh-page faults
        step = max(1, _CHUNK_CHARS // max(width, 1))
        return np.concatenate([string_hash(values[i : i + step]) for i in range(0, n, step)])
    # Character positions along the first axis: each step below is one pass over N values.
    codes = np.zeros((width + width % 2, n), dtype=np.uint64)
    if width:
        codes[:width] = values.view(np.uint32).reshape(n, width).T
    # Arithmetic pairing, not a byte view: the same words on any byte order.
    words = codes[0::2] | (codes[1::2] << np.uint64(32))
    mixed = splitmix64(words ^ _position_salts(words.shape[0])[:, None])
    mixed[words == 0] = 0
    return splitmix64(np.bitwise_xor.reduce(mixed, axis=0) ^ _STRING_DOMAIN)


def hash_ids(ids: np.ndarray | Sequence[Any], dataloader_idx: int) -> np.ndarray:
    """Non-negative int64 keys for sample ids (ints or strings) of one dataloader.

    Integer ids are mixed with SplitMix64; other ids (strings, or any object by its ``str``)
    with :func:`string_hash`. The dataloader index is mixed in, so equal ids of different
    loaders differ. ``"000123"`` and ``123`` are different ids.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind in "iub":
        raw = arr.reshape(-1).astype(np.int64).view(np.uint64)
    else:
        raw = string_hash(arr.reshape(-1).astype(np.str_))
    salt = np.int64(loader_salt(dataloader_idx)).view(np.uint64)  # one value per loader
    return (splitmix64(raw ^ salt) & _MASK63).view(np.int64)


def keys_of(ids: Sequence[Any], loaders: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The tracking keys of rows from their ids and dataloader indices (None: all loader 0),
    as the collector makes them; a column of Python ints hashes as ints.

    Example:
        >>> bool((keys_of([3, 4]) == hash_ids(np.array([3, 4]), 0)).all())
        True
    """
    n = len(ids)
    dls = np.zeros(n, dtype=np.int64) if loaders is None else np.asarray(loaders, np.int64)
    column = np.empty(n, dtype=object)
    column[:] = list(ids)
    keys = np.empty(n, dtype=np.int64)
    for dl in np.unique(dls):
        rows = np.flatnonzero(dls == dl)
        part = column[rows]
        if all(isinstance(v, (int, np.integer)) for v in part):
            part = part.astype(np.int64)
        keys[rows] = hash_ids(part, int(dl))
    return keys


def loader_salt(dataloader_idx: int) -> int:
    """The per-loader salt XOR-ed into every raw id before mixing, as a signed int64 value.

    Example:
        >>> loader_salt(0) == int(np.uint64(splitmix64(np.zeros(1, np.uint64))[0]).view(np.int64))
        True
    """
    salt = splitmix64(np.array([dataloader_idx], dtype=np.uint64))
    return int(salt.view(np.int64)[0])


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 with the same bits (torch scalars must fit in int64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_T_GOLDEN, _T_MIX1, _T_MIX2 = (_signed(int(c)) for c in (_GOLDEN, _MIX1, _MIX2))


def _shr(z: Any, bits: int) -> Any:
    # Logical (unsigned) right shift of int64: the arithmetic shift copies the sign bit into
    # the top `bits` bits; the mask clears them.
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64_torch(x: Any) -> Any:
    """:func:`splitmix64` on an int64 tensor, on its device: the same 64 bits, as int64.

    Two's complement addition and multiplication wrap exactly as uint64 does, so only the right
    shifts need care (:func:`_shr`). Fixed shapes, no host copy: safe between CUDA kernels.

    Example:
        >>> import torch
        >>> a = splitmix64_torch(torch.tensor([0, 1, -5]))
        >>> b = splitmix64(np.array([0, 1, -5]).astype(np.int64).view(np.uint64))
        >>> a.tolist() == b.view(np.int64).tolist()
        True
    """
    z = x + _T_GOLDEN
    z = z ^ _shr(z, 30)
    z = z * _T_MIX1
    z = z ^ _shr(z, 27)
    z = z * _T_MIX2
    return z ^ _shr(z, 31)


def hash_ids_torch(ids: Any, dataloader_idx: int) -> Any:
    """:func:`hash_ids` of an integer tensor on its device: bit-identical int64 keys.

    Example:
        >>> import torch
        >>> ids = torch.tensor([0, 1, 2, 123456789, -5], dtype=torch.int32)
        >>> hash_ids_torch(ids, 1).tolist() == hash_ids(ids.numpy(), 1).tolist()
        True
    """
    import torch

    raw = ids.reshape(-1).to(torch.int64)
    return splitmix64_torch(raw ^ loader_salt(dataloader_idx)) & ((1 << 63) - 1)


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
    return position_ids(pos, rank=rank, world_size=world_size, dataset_len=dataset_len)


def position_ids(pos: Any, *, rank: int = 0, world_size: int = 1,
                 dataset_len: int | None = None) -> Any:
    """The dataset index of local positions ``pos`` (a numpy or torch int array), as in
    :func:`derived_ids`: ``(p * W + r) % len(dataset)`` under DDP, ``p`` on one process.

    Example:
        >>> position_ids(np.arange(4), rank=1, world_size=2, dataset_len=5).tolist()
        [1, 3, 0, 2]
    """
    if world_size > 1:
        pos = pos * world_size + rank
        if dataset_len:
            pos = pos % dataset_len
    return pos
