"""Bottom-k rows kept on the tensors' device, updated with fixed-shape ops only: no host sync.

On an accelerator every ``.cpu()``, ``.item()`` or data-dependent shape (boolean indexing,
``nonzero``) stalls the queue until the device catches up. :class:`DeviceBuffer` keeps the
``k`` smallest keys and their rows in device tensors of a fixed size: per batch it concatenates
the buffer's keys with the batch's, masks duplicates (a stable sort puts an earlier copy first)
and non-finite rows to the largest int64, finds the ``k`` smallest (a sort), and writes the
incoming rows into the evicted slots in place. Empty slots hold the largest int64. The rows
come to the host once, in :meth:`DeviceBuffer.to_host`.

The result is the host :class:`~lightning_embproj.collect.buffer.SampleBuffer`'s: the same keys, the
same first copy of a repeated key, the same rows left out (non-finite) among those that could
enter.

Example:
    >>> import torch
    >>> buf = DeviceBuffer(2)
    >>> left = buf.offer(torch.tensor([5, 1, 9]), {"e": torch.eye(3)}, torch.ones(3, dtype=bool))
    >>> keys, cols = buf.to_host()
    >>> keys.tolist(), cols["e"].tolist(), left.tolist()
    ([1, 5], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [False, False, False])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.extract import host_numpy

EMPTY = np.iinfo(np.int64).max
"""Key of an empty slot (and of a row masked out of a batch)."""


class DeviceBuffer:
    """The ``k`` smallest keys offered so far and their rows, all on one device.

    Columns and per-row shapes are fixed by the first batch; a later batch with a wider dtype
    promotes the column on the device (``torch.promote_types``).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.keys: Any = None
        self.rows: dict[str, Any] = {}

    def offer(self, keys: Any, rows: dict[str, Any], finite: Any) -> Any:
        """Offer a batch; returns the ``(n,)`` bool mask, on the device, of the rows that could
        have entered but were left out because ``finite`` is False for them (the caller counts
        them by reason and reads the counts once at the end).

        Args:
            keys: ``(n,)`` int64 keys on the device.
            rows: column -> ``(n, ...)`` tensor on the device.
            finite: ``(n,)`` bool, False for a row that must not enter (NaN / Inf embeddings,
                or values the storage dtype cannot hold).
        """
        import torch

        k, n = self.k, int(keys.shape[0])
        if self.keys is None:
            self.keys = torch.full((k,), EMPTY, dtype=torch.int64, device=keys.device)
            self.rows = {c: v.new_zeros((k, *v.shape[1:])) for c, v in rows.items()}
        self._check(rows)
        pool = torch.cat([self.keys, keys])
        ordered, order = torch.sort(pool, stable=True)
        # Equal keys sit side by side; the stable sort puts the buffer's copy (or the batch's
        # first) first, and every later copy is masked.
        repeat = torch.cat([ordered.new_zeros(1, dtype=torch.bool), ordered[1:] == ordered[:-1]])
        dup = torch.zeros_like(repeat)
        dup[order] = repeat
        fresh = ~dup[k:]
        could = fresh & (keys < self.keys.max())  # the largest kept key; EMPTY while not full
        if n > k:  # the host buffer looks at the k smallest candidates of a batch only
            low = torch.sort(torch.where(could, keys, EMPTY), stable=True)[1][:k]
            could = could & torch.zeros_like(could).index_fill_(0, low, True)
        left_out = could & ~finite
        masked = torch.where(finite & fresh, keys, EMPTY)
        # A sort, not topk: topk degrades on the many equal EMPTY keys of a buffer filling up.
        keep = torch.sort(torch.cat([self.keys, masked]), stable=True)[1][:k]
        # index_fill_, not `kept[keep] = True`: that wraps True in a host tensor first.
        kept = torch.zeros_like(repeat).index_fill_(0, keep, True)
        # The evicted slots take the incoming rows in place (both lists first, same count);
        # the rest of the first min(k, n) pairs write a slot's own row back.
        m = min(k, n)
        slots = torch.sort(kept[:k].to(torch.int8), stable=True)[1][:m]
        incoming = torch.sort((~kept[k:]).to(torch.int8), stable=True)[1][:m]
        new = kept[k:][incoming]
        self.keys[slots] = torch.where(new, masked[incoming], self.keys[slots])
        for c, v in rows.items():
            target = self.rows[c]
            pick = new.view(-1, *([1] * (target.ndim - 1)))
            target[slots] = torch.where(pick, v[incoming].to(target.dtype), target[slots])
        return left_out

    def _check(self, rows: dict[str, Any]) -> None:
        import torch

        if set(rows) != set(self.rows):
            raise ValueError(
                f"columns changed between batches: first batch had {sorted(self.rows)}, "
                f"this batch has {sorted(rows)}"
            )
        for name, value in rows.items():
            target = self.rows[name]
            if tuple(value.shape[1:]) != tuple(target.shape[1:]):
                raise ValueError(
                    f"{name!r} changed shape between batches: expected rows of shape "
                    f"{tuple(target.shape[1:])}, got {tuple(value.shape[1:])}"
                )
            if value.dtype != target.dtype:
                self.rows[name] = target.to(torch.promote_types(target.dtype, value.dtype))

    def to_host(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The kept keys and rows as host numpy arrays in key order, empty slots dropped (one
        copy per column)."""
        if self.keys is None:
            return np.empty(0, dtype=np.int64), {}
        keys = host_numpy(self.keys)
        filled = np.flatnonzero(keys != EMPTY)
        filled = filled[np.argsort(keys[filled], kind="stable")]
        return keys[filled], {c: host_numpy(v)[filled] for c, v in self.rows.items()}
