"""Bottom-k of position-derived ids, simulated once: a batch is one binary search and a row copy.

Without ``id_key`` the ``p``-th row a process sees in a validation run of loader ``dl`` has a
known id (:func:`~lightning_embproj.collect.hashing.derived_ids`), hence a known key, the same
in every run. Feeding those keys in order into a bottom-k buffer that starts empty is
deterministic, so :class:`Schedule` simulates it once, lazily and in growing chunks as far as the
positions reached, and :func:`schedule_for` caches it across validation runs. It records, for
every row that ever enters, the buffer slot it takes and the position whose smaller key evicts it,
and for every position the k-th smallest key so far. A batch ``[start, end)`` then needs no
hashing: the rows that beat the threshold at ``start`` (the ones the streaming buffer would look
at) and the rows still kept at ``end`` are slices of these arrays. The state after any batch is
exactly the streaming buffer's, so a run that stops early (``limit_val_batches``) keeps the same
rows.

Example:
    >>> s = Schedule(k=2, dataloader_idx=0)
    >>> rows, slots, keys = s.kept(0, 5)  # rows 0..4 of the first batch: which 2 stay, where
    >>> len(rows), sorted(slots.tolist())
    (2, [0, 1])
    >>> bool((np.sort(keys) == np.sort(hash_ids(np.arange(5), 0))[:2]).all())
    True
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from lightning_embproj.collect.hashing import hash_ids, position_ids

NEVER = np.iinfo(np.int64).max
"""Threshold while the buffer is not full, and the eviction position of a row never evicted."""
MAX_POSITIONS = 1 << 22
"""Positions simulated at most per loader (5 int64 arrays of this length at worst: ~170 MB);
beyond it the collector streams as before."""
_SLOT, _KEY, _LEAVE = 0, 1, 2
_FIRST_CHUNK = 4096
_BLOCK = 512
_CACHE: OrderedDict[tuple[int, int, int, int, int], Schedule] = OrderedDict()
_CACHE_SIZE = 8
# Batch plans kept per schedule (a validation run's batches recur in every run of the fit);
# each holds a few int64 arrays of the rows its batch looks at and keeps.
_PLANS = 16_384


@dataclass(frozen=True)
class BatchPlan:
    """What batch ``[start, end)`` does to the buffer, the same in every run of a fit.

    ``looked``: the rows the streaming buffer would look at (None: all rows of the batch);
    ``inside``: the kept rows' positions within ``looked`` (within the batch when None);
    ``local``, ``slots``, ``keys``, ``ids``: the kept rows in the batch, their buffer slots,
    keys and derived ids; ``dataloader``: the loader index once per kept row.
    """

    looked: np.ndarray | None
    inside: np.ndarray
    local: np.ndarray
    slots: np.ndarray
    keys: np.ndarray
    ids: np.ndarray
    dataloader: np.ndarray


class Schedule:
    """The streaming bottom-k of one loader's derived ids on one rank, simulated ahead.

    Args:
        k: ``max_samples``.
        dataloader_idx: salts the keys.
        rank, world_size, dataset_len: as in :func:`~lightning_embproj.collect.hashing.derived_ids`;
            under DDP a rank sees ``ceil(dataset_len / world_size)`` positions at most.
    """

    def __init__(self, k: int, dataloader_idx: int, rank: int = 0, world_size: int = 1,
                 dataset_len: int | None = None) -> None:
        self.k, self.dl = k, dataloader_idx
        self.rank, self.world_size, self.dataset_len = rank, world_size, dataset_len
        self.limit = MAX_POSITIONS
        if world_size > 1 and dataset_len:
            self.limit = min(self.limit, -(-dataset_len // world_size))
        self.covered = 0
        self.keys = np.empty(0, dtype=np.int64)  # key of every position
        self.threshold = np.empty(0, dtype=np.int64)  # k-th smallest key after each position
        # Rows that ever enter, in position order: their positions, and one row each of
        # (slot, key, evicting position), so that a batch takes its rows in one gather.
        self._cap = 0
        self.pos = np.empty(0, dtype=np.int64)
        self.table = np.empty((0, 3), dtype=np.int64)
        self.entries = 0
        self._heap: list[tuple[int, int]] = []  # (-key, entry index): the largest kept key first
        self._plans: dict[tuple[int, int], BatchPlan] = {}

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """The derived ids of local positions (the sample's index in the dataset)."""
        return position_ids(positions, rank=self.rank, world_size=self.world_size,
                            dataset_len=self.dataset_len)

    def ensure(self, end: int) -> bool:
        """Simulate up to position ``end`` (exclusive); False when that is past :attr:`limit`."""
        if end <= self.covered:
            return True
        if end > self.limit:
            return False
        target = min(self.limit, max(end, _FIRST_CHUNK, 2 * self.covered))
        start = self.covered
        keys = hash_ids(self.ids(np.arange(start, target, dtype=np.int64)), self.dl)
        events = np.full(target - start, NEVER, dtype=np.int64)
        for block in range(start, target, _BLOCK):
            self._simulate(keys, start, block, min(target, block + _BLOCK), events)
        before = self.threshold[-1] if self.covered else NEVER
        # The threshold only falls: a running minimum fills the positions between entries.
        threshold = np.minimum.accumulate(np.concatenate([[before], events]))[1:]
        self.keys = np.concatenate([self.keys, keys])
        self.threshold = np.concatenate([self.threshold, threshold])
        self.covered = target
        return True

    def _simulate(self, keys: np.ndarray, base: int, lo: int, hi: int,
                  events: np.ndarray) -> None:
        heap, k = self._heap, self.k
        bar = -heap[0][0] if len(heap) >= k else NEVER
        # Only keys below the threshold at the block's start can enter (it falls within it).
        for i in (np.flatnonzero(keys[lo - base : hi - base] < bar) + lo).tolist():
            key = int(keys[i - base])
            if len(heap) < k:
                slot = len(heap)
                heapq.heappush(heap, (-key, self._entry(i, slot, key)))
            elif key < -heap[0][0]:
                entry = self._entry(i, -1, key)
                _, out = heapq.heapreplace(heap, (-key, entry))
                self.table[out, _LEAVE] = i
                self.table[entry, _SLOT] = self.table[out, _SLOT]
            else:
                continue
            if len(heap) >= k:
                events[i - base] = -heap[0][0]

    def _entry(self, position: int, slot: int, key: int) -> int:
        if self.entries == self._cap:
            self._cap = max(1024, 2 * self._cap)
            pos, table = self.pos, self.table
            self.pos = np.full(self._cap, NEVER, dtype=np.int64)
            self.table = np.full((self._cap, 3), NEVER, dtype=np.int64)
            self.pos[: pos.size], self.table[: table.shape[0]] = pos, table
        e = self.entries
        self.pos[e] = position
        self.table[e, _SLOT], self.table[e, _KEY] = slot, key
        self.entries += 1
        return e

    def threshold_before(self, start: int) -> int:
        """Keys at or above this cannot enter at position ``start`` (:data:`NEVER`: not full)."""
        return NEVER if start == 0 else int(self.threshold[start - 1])

    def kept(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of batch ``[start, end)`` still kept after it: ``(rows in the batch, slots,
        keys)``; every other slot keeps its row. Requires :meth:`ensure` ``(end)``."""
        if not self.ensure(end):
            raise ValueError(f"position {end} is past the schedule's {self.limit} positions")
        lo, hi = self.pos[: self.entries].searchsorted((start, end))
        block = self.table[lo:hi]
        alive = block[:, _LEAVE] >= end
        kept = block[alive]
        return self.pos[lo:hi][alive] - start, kept[:, _SLOT], kept[:, _KEY]

    def plan(self, start: int, end: int) -> BatchPlan:
        """The :class:`BatchPlan` of batch ``[start, end)``, worked out once and then cached.
        Requires :meth:`ensure` ``(end)``.

        Example:
            >>> s = Schedule(k=2, dataloader_idx=0)
            >>> p = s.plan(0, 5)
            >>> p.looked is None, p.local.tolist() == p.inside.tolist(), s.plan(0, 5) is p
            (True, True, True)
        """
        found = self._plans.get((start, end))
        if found is not None:
            return found
        local, slots, keys = self.kept(start, end)
        threshold = self.threshold_before(start)
        if threshold == NEVER:
            looked, inside = None, local
        else:
            looked = np.flatnonzero(self.keys[start:end] < threshold)
            inside = np.searchsorted(looked, local)
        found = BatchPlan(looked, inside, local, slots, keys, self.ids(local + start),
                          np.full(local.size, self.dl, dtype=np.int64))
        for array in vars(found).values():
            if array is not None:
                array.flags.writeable = False  # shared by every run: nobody may change it
        if len(self._plans) < _PLANS:
            self._plans[(start, end)] = found
        return found


def schedule_for(k: int, dataloader_idx: int, rank: int = 0, world_size: int = 1,
                 dataset_len: int | None = None) -> Schedule:
    """The cached :class:`Schedule` of a loader and rank (simulated once per fit, not per run).

    Example:
        >>> schedule_for(5, 0) is schedule_for(5, 0), schedule_for(5, 0) is schedule_for(5, 1)
        (True, False)
    """
    # One process: the ids are the positions whatever the dataset's length.
    length = dataset_len or 0 if world_size > 1 else 0
    key = (k, dataloader_idx, rank, world_size, length)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = Schedule(k, dataloader_idx, rank, world_size, dataset_len)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return found
