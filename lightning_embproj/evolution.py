"""All validation runs in one table, kept under W&B's run-file row limit by a thinning rule.

A ``wandb.Table`` logged with ``run.log`` is cut without error to ``wandb.Table.MAX_ROWS``
(10,000 in wandb 0.31.0, ``wandb/sdk/data_types/table.py``) in the run-file copy the UI shows;
the 200,000 of ``MAX_ARTIFACT_ROWS`` only holds for tables logged as artifacts. The evolution
history therefore keeps at most ``max_rows`` rows (default :data:`EVOLUTION_MAX_ROWS`, 9,000),
one chunk per validation run, keyed by the run's identity ``(val_index, epoch, step)`` (several
runs can share an epoch, so an epoch key would let them overwrite each other), oldest first:

- rows per run: the ``rows_per_run`` tracked points with the smallest keys, the same points in
  every run (``max_rows // 2`` at most, so at least two runs fit);
- runs: every ``stride``-th projected run is kept, plus the newest; when they no longer fit, the
  stride doubles (1, 2, 4, ...) and the runs off the new stride are dropped, so the kept runs
  stay evenly spaced from the first one and memory stays bounded.

Example:
    >>> h = EvolutionHistory(max_rows=12)
    >>> for run in range(6):
    ...     _ = h.add(run, {"sample_id": [0, 1, 2], "val_index": [run] * 3}, keys=[5, 1, 3])
    >>> h.runs
    [0, 2, 4, 5]
    >>> h.rows_per_run, h.stride
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

WANDB_MAX_ROWS = 10_000
"""``wandb.Table.MAX_ROWS`` of wandb 0.31.0: the run-file copy of a table is cut to this."""
EVOLUTION_MAX_ROWS = 9_000
"""Default cap of the evolution table, below :data:`WANDB_MAX_ROWS`."""


def evolution_due(count: int) -> bool:
    """Whether a set's ``count``-th projected run (1-based) logs the evolution table: runs 1-4,
    then 6, 8, 12, 16, 24, 32, ... (two per doubling). Logging it every run rebuilds and
    re-sends every kept row each time, O(rows x runs) over a fit (0.4 s per run at 8,000 rows
    for the build alone); this way O(rows x log runs). The sink logs it once more at the end.

    Example:
        >>> [c for c in range(1, 50) if evolution_due(c)]
        [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]
    """
    if count <= 4:
        return True
    while count % 2 == 0:
        count //= 2
    return count in (1, 3)


class EvolutionHistory:
    """Per-validation-run column chunks of one embedding set, thinned to fit ``max_rows``."""

    def __init__(self, max_rows: int = EVOLUTION_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self.rows_per_run = 0
        self.stride = 1
        self._count = 0  # runs added so far: their arrival index decides the stride
        self._chunks: dict[Hashable, dict[str, list[Any]]] = {}
        self._index: dict[Hashable, int] = {}
        self.thinned = False

    @property
    def runs(self) -> list[Hashable]:
        """The key of each kept run, oldest (first added) first."""
        return sorted(self._chunks, key=self._index.__getitem__)

    def add(self, run: Hashable, columns: dict[str, list[Any]], keys: Sequence[int]) -> bool:
        """Add one validation run's columns; True when this call thinned rows or runs.

        ``run`` identifies the run (the sink uses ``(val_index, epoch, step)``); adding a run
        already kept replaces its rows.
        """
        n = len(keys)
        if not self.rows_per_run:
            self.rows_per_run = min(n, max(1, self.max_rows // 2))
        keep = np.argsort(np.asarray(keys), kind="stable")[: self.rows_per_run]
        thinned = keep.size < n
        self._chunks[run] = {c: [v[i] for i in keep] for c, v in columns.items()}
        if run not in self._index:
            self._index[run] = self._count
            self._count += 1
        max_runs = max(2, self.max_rows // max(1, self.rows_per_run))
        while True:
            on_stride = [r for r in self._chunks if self._index[r] % self.stride == 0]
            if len(on_stride) < max_runs or (len(on_stride) == max_runs and run in on_stride):
                break
            self.stride *= 2
        for r in list(self._chunks):
            if self._index[r] % self.stride and r != run:
                del self._chunks[r], self._index[r]
                thinned = True
        self.thinned |= thinned
        return thinned

    def columns(self) -> dict[str, list[Any]]:
        """The kept runs' rows, oldest first, as one set of columns.

        Every column any run has, in first-seen order; a run without a column gets None cells
        there, so the columns always line up.
        """
        names: dict[str, None] = {}
        for run in self.runs:
            names.update(dict.fromkeys(self._chunks[run]))
        out: dict[str, list[Any]] = {c: [] for c in names}
        for run in self.runs:
            chunk = self._chunks[run]
            n = len(next(iter(chunk.values()), []))
            for col in names:
                out[col].extend(chunk.get(col, [None] * n))
        return out

    def __len__(self) -> int:
        return sum(len(next(iter(c.values()), [])) for c in self._chunks.values())
