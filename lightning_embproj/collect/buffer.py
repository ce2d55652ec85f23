"""Per-rank storage of at most ``max_samples`` tracked rows: O(max_samples * D) memory.

Each batch only copies the rows whose key beats the current k-th smallest key; they take the
slots of the rows they evict, so nothing grows with the size of the validation set. Texts (numpy
strings of any width, lists) are kept as Python ``str`` in object columns, so a later, longer id
is never cut to the width of the first batch's; a numeric column widens when a later batch needs
it (``int8`` then ``int64``).

Example:
    >>> import numpy as np
    >>> buf = SampleBuffer(max_samples=2)
    >>> buf.add(np.array([5, 1, 9]), {"embeddings": np.eye(3, dtype=np.float32)})
    >>> buf.add(np.array([0]), {"embeddings": np.ones((1, 3), dtype=np.float32)})
    >>> sorted(buf.columns()[0].tolist())
    [0, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.extract import host_numpy

EMBEDDINGS = "__embeddings"
"""Name of the column that holds the vectors (stored in ``float_dtype``); internal (``__``), so
a metadata column named ``embeddings`` is one more column, not the vectors."""


class SampleBuffer:
    """Bottom-k reservoir of rows keyed by int64 hashes, with any number of columns.

    Column names and per-row shapes are fixed by the first batch. Each column is a numpy array
    with the row dimension first; texts and other Python values are stored as object arrays.
    """

    def __init__(self, max_samples: int, float_dtype: Any = np.float32) -> None:
        self.max_samples = max_samples
        self.float_dtype = np.dtype(float_dtype)
        self._keys = np.empty(0, dtype=np.int64)
        # The kept keys, sorted: membership and threshold by binary search, no hashing per batch.
        self._sorted = np.empty(0, dtype=np.int64)
        self._store: dict[str, np.ndarray] = {}
        self._n = 0
        self._stale = False  # rows written by `place`: `_sorted` is rebuilt before it is read

    def __len__(self) -> int:
        return self._n

    def threshold(self) -> int | None:
        """Rows with a key at or above this cannot enter (None while the buffer is not full)."""
        if self._n < self.max_samples:
            return None
        self._resync()
        return int(self._sorted[-1])

    def select(self, keys: np.ndarray) -> np.ndarray:
        """Indices of a batch's rows that may enter: cheap pre-filter before copying the rows.

        Example:
            >>> buf = SampleBuffer(1)
            >>> buf.add(np.array([3]), {"e": np.zeros((1, 2))})
            >>> buf.select(np.array([7, 2, 3])).tolist()
            [1]
        """
        keys = np.asarray(keys, dtype=np.int64)
        self._resync()
        if self._n:
            pos = np.searchsorted(self._sorted, keys).clip(max=self._n - 1)
            mask = self._sorted[pos] != keys
            if self._n >= self.max_samples:
                mask &= keys < self._sorted[-1]
            idx = np.flatnonzero(mask)
        else:
            idx = np.arange(keys.shape[0])
        if idx.size > 1:
            # Keep one row per key inside the batch too (a sampler may repeat a sample).
            ordered = np.sort(keys[idx])
            if (ordered[1:] == ordered[:-1]).any():
                _, first = np.unique(keys[idx], return_index=True)
                idx = idx[np.sort(first)]
        if idx.size > self.max_samples:
            idx = idx[np.argsort(keys[idx], kind="stable")[: self.max_samples]]
        return idx

    def add(self, keys: np.ndarray, columns: dict[str, Any], preselected: bool = False) -> None:
        """Offer rows: keeps the bottom-k overall. ``preselected``: the rows are exactly what
        :meth:`select` returned for this batch, so the filter is not run twice."""
        keys = np.asarray(keys, dtype=np.int64)
        pick = None if preselected else self.select(keys)
        if pick is not None and pick.size == 0 or keys.size == 0:
            return
        self._resync()
        if pick is not None:
            keys = keys[pick]
        rows = {name: self._rows(name, value, pick) for name, value in columns.items()}
        self._check_columns(rows)
        n, k = self._n, self.max_samples
        # Merge two sorted runs (timsort: linear) instead of argsorting the union: the k-th
        # smallest key decides which rows come in and which slots they take.
        merged = np.sort(np.concatenate([self._sorted, keys]), kind="stable")[:k]
        incoming = np.flatnonzero(keys <= merged[-1])
        evicted = np.flatnonzero(self._keys[:n] > merged[-1])
        slots = np.concatenate([np.arange(n, min(k, n + incoming.size)), evicted])
        slots = slots[: incoming.size]
        self._keys[slots] = keys[incoming]
        self._write(slots, rows, incoming)
        self._n = min(k, n + incoming.size)
        self._sorted = merged

    def place(self, slots: np.ndarray, keys: np.ndarray, columns: dict[str, Any],
              count: int) -> None:
        """Write rows into the given slots, decided elsewhere (a precomputed schedule); the
        buffer then holds ``count`` rows in slots ``0 .. count - 1``.

        Example:
            >>> buf = SampleBuffer(2)
            >>> buf.place(np.array([1, 0]), np.array([8, 3]), {"e": np.eye(2)}, count=2)
            >>> buf.columns()[0].tolist(), buf.threshold()
            ([3, 8], 8)
        """
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size:
            rows = {name: self._rows(name, value, None) for name, value in columns.items()}
            self._check_columns(rows)
            self._keys[slots] = keys
            self._write(slots, rows, None)
        self._n = count
        self._stale = True

    def _resync(self) -> None:
        if self._stale:
            self._sorted = np.sort(self._keys[: self._n])
            self._stale = False

    def _check_columns(self, rows: dict[str, np.ndarray]) -> None:
        if not self._store:
            self._allocate(rows)
        elif rows.keys() != self._store.keys():
            raise ValueError(
                f"columns changed between batches: first batch had {sorted(self._store)}, "
                f"this batch has {sorted(rows)}"
            )

    def _write(self, slots: np.ndarray, rows: dict[str, np.ndarray],
               take: np.ndarray | None) -> None:
        for name, value in rows.items():
            target = self._store[name]
            if value.shape[1:] != target.shape[1:]:
                raise ValueError(
                    f"{name!r} changed shape between batches: expected rows of shape "
                    f"{target.shape[1:]}, got {value.shape[1:]}"
                )
            if name != EMBEDDINGS and value.dtype != target.dtype:
                wider = _promote(target.dtype, value.dtype)
                if wider != target.dtype:
                    target = self._store[name] = target.astype(wider)
            target[slots] = value if take is None else value[take]

    def _rows(self, name: str, value: Any, pick: np.ndarray | None) -> np.ndarray:
        if isinstance(value, np.ndarray):
            rows = value if pick is None else value[pick]
        elif hasattr(value, "detach"):  # torch tensor: copy only the selected rows to the host
            import torch

            tensor = value.detach()
            if pick is not None:
                tensor = tensor.index_select(0, torch.as_tensor(pick, device=value.device))
            rows = host_numpy(tensor)
        else:
            items = list(value) if pick is None else [value[i] for i in pick.tolist()]
            rows = np.empty(len(items), dtype=object)
            rows[:] = items
        if rows.dtype.kind in "US":
            # A fixed-width string column would cut later, longer strings to this width.
            text = np.empty(rows.shape, dtype=object)
            text[...] = rows.astype(np.str_).tolist()
            rows = text
        return rows

    def _allocate(self, rows: dict[str, np.ndarray]) -> None:
        self._keys = np.empty(self.max_samples, dtype=np.int64)
        for name, value in rows.items():
            dtype = value.dtype
            if dtype.kind == "f" and name == EMBEDDINGS:
                dtype = self.float_dtype
            self._store[name] = np.empty((self.max_samples, *value.shape[1:]), dtype=dtype)

    def columns(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Keys and columns of the kept rows, ordered by key (copies)."""
        order = np.argsort(self._keys[: self._n], kind="stable")
        keys = self._keys[: self._n][order]
        return keys, {name: arr[: self._n][order] for name, arr in self._store.items()}


def _promote(have: np.dtype, new: np.dtype) -> np.dtype:
    """The column dtype that holds both: numbers widen, anything else becomes object.

    Example:
        >>> _promote(np.dtype(np.int8), np.dtype(np.int64)).name
        'int64'
        >>> _promote(np.dtype(np.int64), np.dtype(np.uint64)).name  # not float64: ids stay exact
        'object'
    """
    if have.kind not in "biuf" or new.kind not in "biuf":
        return np.dtype(object)
    wider = np.result_type(have, new)
    if wider.kind == "f" and have.kind in "biu" and new.kind in "biu":
        return np.dtype(object)
    return wider
