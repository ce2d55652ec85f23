"""All epochs in one table, kept under W&B's 10,000-row limit by a documented thinning rule.

W&B silently cuts a table to 10,000 rows. The evolution history keeps at most
``max_rows`` (default 9,000) rows:

- rows per epoch: the ``rows_per_epoch`` tracked points with the smallest keys, the same points
  in every epoch (``max_rows // 2`` at most, so at least two epochs fit);
- epochs: every ``stride``-th projected epoch is kept, plus the newest; when they no longer fit,
  the stride doubles (1, 2, 4, ...) and the epochs off the new stride are dropped, so the kept
  epochs stay evenly spaced from the first one and memory stays bounded.

Example:
    >>> h = EvolutionHistory(max_rows=12)
    >>> for e in range(6):
    ...     _ = h.add(e, {"sample_id": [0, 1, 2], "epoch": [e] * 3}, keys=[5, 1, 3])
    >>> h.epochs
    [0, 2, 4, 5]
    >>> h.rows_per_epoch, h.stride
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WANDB_MAX_ROWS = 10_000


class EvolutionHistory:
    """Per-epoch column chunks of one embedding set, thinned to fit ``max_rows``."""

    def __init__(self, max_rows: int = 9_000) -> None:
        self.max_rows = max_rows
        self.rows_per_epoch = 0
        self.stride = 1
        self._count = 0  # epochs added so far: their arrival index decides the stride
        self._chunks: dict[int, dict[str, list[Any]]] = {}
        self._index: dict[int, int] = {}
        self.thinned = False

    @property
    def epochs(self) -> list[int]:
        return sorted(self._chunks)

    def add(self, epoch: int, columns: dict[str, list[Any]], keys: Sequence[int]) -> bool:
        """Add one epoch's columns; returns True when this call thinned rows or epochs."""
        n = len(keys)
        if not self.rows_per_epoch:
            self.rows_per_epoch = min(n, max(1, self.max_rows // 2))
        keep = np.argsort(np.asarray(keys), kind="stable")[: self.rows_per_epoch]
        thinned = keep.size < n
        self._chunks[epoch] = {c: [v[i] for i in keep] for c, v in columns.items()}
        self._index[epoch] = self._count
        self._count += 1
        max_epochs = max(2, self.max_rows // max(1, self.rows_per_epoch))
        while True:
            on_stride = [e for e in self._chunks if self._index[e] % self.stride == 0]
            if len(on_stride) < max_epochs or (
                len(on_stride) == max_epochs and epoch in on_stride
            ):
                break
            self.stride *= 2
        for e in list(self._chunks):
            if self._index[e] % self.stride and e != epoch:
                del self._chunks[e], self._index[e]
                thinned = True
        self.thinned |= thinned
        return thinned

    def columns(self) -> dict[str, list[Any]]:
        """The kept epochs' rows, oldest first, as one set of columns."""
        out: dict[str, list[Any]] = {}
        for epoch in self.epochs:
            for col, values in self._chunks[epoch].items():
                out.setdefault(col, []).extend(values)
        return out

    def __len__(self) -> int:
        return sum(len(next(iter(c.values()), [])) for c in self._chunks.values())
