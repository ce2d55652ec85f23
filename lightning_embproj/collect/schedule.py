"""Bottom-k of position-derived ids, simulated once: a batch is one binary search and a row copy.

Without ``id_key`` the ``p``-th row a process sees in a validation run of loader ``dl`` has a
known id (:func:`~lightning_embproj.collect.hashing.derived_ids`), hence a known key, the same
in every run. Feeding those keys in order into a bottom-k buffer that starts empty is
deterministic, so :class:`Schedule` simulates it once, lazily and never past the dataset's end
(in growing chunks up to it when its length is known, else exactly as far as the positions
reached), and a :class:`ScheduleCache`, held by its owner (the callback, across the validation
runs of its fits), keeps it for every later run. It records, for
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
from collections.abc import Iterator
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
            a rank sees ``ceil(dataset_len / world_size)`` positions (under DDP: at most).
            Known, the schedule is simulated ahead in growing chunks up to there, never past.
        max_positions: positions simulated at most (:data:`MAX_POSITIONS`).
    """

    def __init__(self, k: int, dataloader_idx: int, rank: int = 0, world_size: int = 1,
                 dataset_len: int | None = None, max_positions: int = MAX_POSITIONS) -> None:
        self.k, self.dl = k, dataloader_idx
        self.rank, self.world_size, self.dataset_len = rank, world_size, dataset_len
        self.limit = max_positions
        # The positions a run of this rank reaches, when the dataset's length is known.
        self.share = -(-dataset_len // world_size) if dataset_len else None
        if world_size > 1 and self.share is not None:
            self.limit = min(self.limit, self.share)
        self.covered = 0
        # Key of every position and k-th smallest key after it, in arrays that double when
        # full: a first run extends them batch by batch without copying them every batch.
        self._keys = np.empty(0, dtype=np.int64)
        self._threshold = np.empty(0, dtype=np.int64)
        # Rows that ever enter, in position order: their positions, and one row each of
        # (slot, key, evicting position), so that a batch takes its rows in one gather.
        self._cap = 0
        self.pos = np.empty(0, dtype=np.int64)
        self.table = np.empty((0, 3), dtype=np.int64)
        self.entries = 0
        self._heap: list[tuple[int, int]] = []  # (-key, entry index): the largest kept key first
        self._plans: dict[tuple[int, int], BatchPlan] = {}

    @property
    def keys(self) -> np.ndarray:
        """The key of every position simulated so far."""
        return self._keys[: self.covered]

    @property
    def threshold(self) -> np.ndarray:
        """The k-th smallest key after each position simulated so far (:data:`NEVER` until
        the buffer is full)."""
        return self._threshold[: self.covered]

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """The derived ids of local positions (the sample's index in the dataset)."""
        return position_ids(positions, rank=self.rank, world_size=self.world_size,
                            dataset_len=self.dataset_len)

    def ensure(self, end: int) -> bool:
        """Simulate up to position ``end`` (exclusive) at least, never past the dataset's end:
        False when ``end`` is past :attr:`limit`.

        Example:
            >>> s = Schedule(k=2, dataloader_idx=0, max_positions=100)
            >>> s.ensure(30), s.covered, s.ensure(101), s.covered  # length unknown: exactly
            (True, 30, False, 30)
            >>> s = Schedule(k=2, dataloader_idx=0, dataset_len=9000)
            >>> s.ensure(30), s.covered, s.ensure(5000), s.covered  # ahead, up to its end
            (True, 4096, True, 8192)
        """
        start = self.covered
        if end <= start:
            return True
        if end > self.limit:
            return False
        stop, bound = end, self.limit
        if self.share is not None:  # far fewer, larger steps for a first run (numpy calls)
            bound = min(bound, max(end, self.share))
            stop = max(end, min(bound, max(_FIRST_CHUNK, 2 * start)))
        keys = hash_ids(self.ids(np.arange(start, stop, dtype=np.int64)), self.dl)
        events = np.full(stop - start, NEVER, dtype=np.int64)
        for block in range(start, stop, _BLOCK):
            self._simulate(keys, start, block, min(stop, block + _BLOCK), events)
        before = self._threshold[start - 1] if start else NEVER
        # The threshold only falls: a running minimum fills the positions between entries.
        threshold = np.minimum.accumulate(np.concatenate([[before], events]))[1:]
        if stop > self._keys.size:
            size = min(bound, max(stop, 2 * self._keys.size))
            self._keys = _grown(self._keys, start, size)
            self._threshold = _grown(self._threshold, start, size)
        self._keys[start:stop], self._threshold[start:stop] = keys, threshold
        self.covered = stop
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
        return NEVER if start == 0 else int(self._threshold[start - 1])

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
            looked = np.flatnonzero(self._keys[start:end] < threshold)
            inside = np.searchsorted(looked, local)
        found = BatchPlan(looked, inside, local, slots, keys, self.ids(local + start),
                          np.full(local.size, self.dl, dtype=np.int64))
        for array in vars(found).values():
            if array is not None:
                array.flags.writeable = False  # shared by every run: nobody may change it
        if len(self._plans) < _PLANS:
            self._plans[(start, end)] = found
        return found


def _grown(values: np.ndarray, used: int, size: int) -> np.ndarray:
    """``values[:used]`` at the start of a new array of ``size`` (the rest not yet written)."""
    out = np.empty(size, dtype=values.dtype)
    out[:used] = values[:used]
    return out


class ScheduleCache:
    """The schedules one owner has simulated, kept for its later validation runs.

    The callback holds one for its lifetime and hands it to the collector of every run, so a
    loader's bottom-k is simulated by the first run of a fit and replayed by every later one; a
    collector built without one gets its own (the schedule then lives for that run only). It
    keeps the last ``size`` schedules used.

    Args:
        max_positions: positions simulated at most per loader; a run that goes past them
            streams from that batch on (``0``: never schedule, every batch streams).
        size: schedules kept (a loader and rank each, for a ``max_samples``).

    Example:
        >>> cache = ScheduleCache()
        >>> cache.get(5, 0) is cache.get(5, 0), cache.get(5, 0) is cache.get(5, 1)
        (True, False)
        >>> cache.get(5, 0) is ScheduleCache().get(5, 0)  # another owner: its own schedules
        False
    """

    def __init__(self, max_positions: int = MAX_POSITIONS, size: int = 8) -> None:
        self.max_positions = max_positions
        self.size = size
        self._schedules: OrderedDict[tuple[int, int, int, int, int], Schedule] = OrderedDict()

    def __len__(self) -> int:
        return len(self._schedules)

    def __iter__(self) -> Iterator[Schedule]:
        return iter(list(self._schedules.values()))

    def get(self, k: int, dataloader_idx: int, rank: int = 0, world_size: int = 1,
            dataset_len: int | None = None) -> Schedule:
        """The :class:`Schedule` of a loader and rank: the one simulated before, or a new one."""
        key = (k, dataloader_idx, rank, world_size, dataset_len or 0)
        found = self._schedules.get(key)
        if found is None:
            found = self._schedules[key] = Schedule(k, dataloader_idx, rank, world_size,
                                                    dataset_len, self.max_positions)
            while len(self._schedules) > self.size:
                self._schedules.popitem(last=False)
        self._schedules.move_to_end(key)
        return found
