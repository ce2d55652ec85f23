"""All validation runs in one table, kept under W&B's run-file row limit by a thinning rule.

A ``wandb.Table`` logged with ``run.log`` is cut without error to ``wandb.Table.MAX_ROWS``
(10,000 in wandb 0.31.0, ``wandb/sdk/data_types/table.py``) in the run-file copy the UI shows;
the 200,000 of ``MAX_ARTIFACT_ROWS`` only holds for tables logged as artifacts. The evolution
history therefore keeps at most ``max_rows`` rows (default :data:`EVOLUTION_MAX_ROWS`, 9,000),
one chunk per validation run, keyed by the run's identity ``(val_index, epoch, step)`` (several
runs can share an epoch, so an epoch key would let them overwrite each other), oldest first:

- points: every run keeps all its tracked points until one run has more than
  ``max_rows // 2`` (so at least two runs fit). From then on every run, earlier ones too, keeps
  only its points whose tracking key is below one cutoff: the ``max_rows // 2``-th smallest key
  of the largest such run. The rows follow the same points from run to run (a point kept in one
  run is kept in every run that tracks it), and the cutoff only ever goes down, so a point once
  left out stays out. Runs with fewer points keep fewer rows; a run whose tracked points
  changed to larger keys can keep few of them;
- runs: every ``stride``-th projected run is kept, plus the newest; when their rows no longer
  fit, the stride doubles (1, 2, 4, ...) and the runs off the new stride are dropped, so the
  kept runs stay evenly spaced from the first one and memory stays bounded.

Example:
    >>> h = EvolutionHistory(max_rows=12)
    >>> for run in range(6):
    ...     _ = h.add(run, {"sample_id": [0, 1, 2], "val_index": [run] * 3}, keys=[5, 1, 3])
    >>> h.runs
    [0, 2, 4, 5]
    >>> h.rows_per_run, h.stride
    (3, 2)
    >>> grown = EvolutionHistory(max_rows=12)
    >>> grown.add(0, {"sample_id": [0, 1]}, keys=[9, 1])  # two points: all of them
    False
    >>> grown.add(1, {"sample_id": list(range(8))}, keys=[7, 6, 5, 4, 3, 2, 1, 0])
    True
    >>> grown.columns()["sample_id"], grown.key_cutoff  # 6 per run; run 0 keeps key 1, not 9
    ([1, 7, 6, 5, 4, 3, 2], 6)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
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
    """Per-validation-run column chunks of one embedding set, thinned to fit ``max_rows``.

    ``key_cutoff``: rows are kept for the points whose tracking key is below it (None: all
    points); ``stride``: every ``stride``-th run is kept, plus the newest; ``thinned``: rows or
    runs were ever left out.
    """

    def __init__(self, max_rows: int = EVOLUTION_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self.stride = 1
        self.key_cutoff: int | None = None
        self.thinned = False
        self._count = 0  # runs added so far: their arrival index decides the stride
        self._chunks: dict[Hashable, dict[str, list[Any]]] = {}
        self._keys: dict[Hashable, np.ndarray] = {}  # each chunk's keys, ascending like its rows
        self._points: dict[Hashable, int] = {}  # each run's tracked points before thinning
        self._index: dict[Hashable, int] = {}

    @property
    def run_cap(self) -> int:
        """The most rows one run may keep: half the table, so that at least two runs fit."""
        return max(1, self.max_rows // 2)

    @property
    def runs(self) -> list[Hashable]:
        """The key of each kept run, oldest (first added) first."""
        return sorted(self._chunks, key=self._index.__getitem__)

    @property
    def rows_per_run(self) -> int:
        """Rows the newest run keeps (all its points, or those below :attr:`key_cutoff`)."""
        runs = self.runs
        return int(self._keys[runs[-1]].size) if runs else 0

    def add(self, run: Hashable, columns: dict[str, list[Any]], keys: Sequence[int]) -> bool:
        """Add one validation run's columns; True when this call left out rows or runs.

        ``run`` identifies the run (the sink uses ``(val_index, epoch, step)``); adding a run
        already kept replaces its rows. ``keys``: the tracking key of each row.
        """
        keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
        order = np.argsort(keys_arr, kind="stable")
        ordered = keys_arr[order]
        if ordered.size > self.run_cap:
            bound = int(ordered[self.run_cap])
            if self.key_cutoff is None or bound < self.key_cutoff:
                self.key_cutoff = bound
        keep = order[: self._below_cutoff(ordered)]
        thinned = keep.size < ordered.size
        self._chunks[run] = {c: [v[i] for i in keep] for c, v in columns.items()}
        self._keys[run] = ordered[: keep.size]
        self._points[run] = int(ordered.size)
        if run not in self._index:
            self._index[run] = self._count
            self._count += 1
        for r in self._chunks:  # earlier runs follow a lowered cutoff: the same points
            m = self._below_cutoff(self._keys[r])
            if m < self._keys[r].size:
                self._chunks[r] = {c: v[:m] for c, v in self._chunks[r].items()}
                self._keys[r] = self._keys[r][:m]
                thinned = True
        while self._rows(r for r in self._chunks
                         if self._index[r] % self.stride == 0 or r == run) > self.max_rows:
            self.stride *= 2
        for r in list(self._chunks):
            if self._index[r] % self.stride and r != run:
                thinned |= self._keys[r].size > 0
                del self._chunks[r], self._keys[r], self._points[r], self._index[r]
        self.thinned |= thinned
        return thinned

    def _below_cutoff(self, ordered_keys: np.ndarray) -> int:
        if self.key_cutoff is None:
            return int(ordered_keys.size)
        return int(np.searchsorted(ordered_keys, self.key_cutoff, side="left"))

    def _rows(self, runs: Iterable[Hashable]) -> int:
        return sum(int(self._keys[r].size) for r in runs)

    def note(self) -> str:
        """What the table keeps now, in words (the warning when it thins).

        Example:
            >>> h = EvolutionHistory(max_rows=4)
            >>> _ = h.add(0, {"a": [1, 2, 3]}, keys=[3, 1, 2])
            >>> h.note()  # doctest: +NORMALIZE_WHITESPACE
            'is thinned to stay under 4 rows: every run keeps only its points whose tracking
            key is below one cutoff, the same points in every run (at most 2 per run; the
            newest run keeps 2 of its 3); the one run so far kept, and once they no longer fit,
            every 2nd, 4th, ... run from the first, plus the newest'
        """
        runs = self.runs
        if self.key_cutoff is None:
            points = "every run keeps all its points"
        else:
            newest = (f"; the newest run keeps {self._keys[runs[-1]].size} of its "
                      f"{self._points[runs[-1]]}") if runs else ""
            points = (f"every run keeps only its points whose tracking key is below one cutoff, "
                      f"the same points in every run (at most {self.run_cap} per run{newest})")
        if self.stride == 1:
            so_far = f"all {self._count} runs" if self._count > 1 else "the one run"
            kept = (f"{so_far} so far kept, and once they no longer fit, every 2nd, 4th, ... "
                    f"run from the first, plus the newest")
        else:
            kept = (f"every {_ordinal(self.stride)} run from the first is kept, plus the newest "
                    f"({len(runs)} of {self._count} runs so far; the spacing doubles whenever "
                    f"they no longer fit)")
        return f"is thinned to stay under {self.max_rows} rows: {points}; {kept}"

    def forget(self, val_indexes: set[int]) -> None:
        """Drop the kept runs whose key starts with one of ``val_indexes`` (runs a resumed fit
        performs again); the others keep their rows and spacing."""
        for r in [r for r in self._chunks if isinstance(r, tuple) and r[0] in val_indexes]:
            del self._chunks[r], self._keys[r], self._points[r], self._index[r]

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
            n = int(self._keys[run].size)
            for col in names:
                out[col].extend(chunk.get(col, [None] * n))
        return out

    def __len__(self) -> int:
        return self._rows(self._chunks)


def _ordinal(n: int) -> str:
    """``2nd``, ``4th``, ``32nd``, ...

    Example:
        >>> [_ordinal(n) for n in (2, 4, 11, 32, 1024)]
        ['2nd', '4th', '11th', '32nd', '1024th']
    """
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class SetHistory:
    """One set's history in one W&B run: the evolution rows, every lineage row so far, how many
    runs were logged, and whether the newest ones still wait to be sent."""

    def __init__(self, max_rows: int = EVOLUTION_MAX_ROWS) -> None:
        self.evolution = EvolutionHistory(max_rows)
        self.lineage: list[list[Any]] = []  # (val_index, epoch, step, *event fields)
        self.projected = 0
        self.behind = False  # the evolution / lineage tables lack the newest runs
        self.step = 0  # trainer/global_step of the newest run

    def forget(self, val_indexes: set[int]) -> None:
        """Drop runs a resumed fit performs again, from both tables."""
        if any(isinstance(r, tuple) and r[0] in val_indexes for r in self.evolution.runs):
            self.evolution.forget(val_indexes)
            self.behind = True
        kept = [r for r in self.lineage if r[0] not in val_indexes]
        self.behind |= len(kept) != len(self.lineage)
        self.lineage = kept

    def add_lineage(self, val_index: int, rows: list[list[Any]], max_rows: int) -> None:
        """Replace run ``val_index``'s lineage rows; keep the newest ``max_rows`` rows."""
        kept = [r for r in self.lineage if r[0] != val_index] + rows
        kept.sort(key=lambda r: r[0])
        self.lineage = kept[-max_rows:]


class WandbHistory:
    """What the W&B sink carries across validation runs of one W&B run, per set.

    Owned by :class:`~lightning_embproj.chain.owner.ChainState` (it spans ``fit`` / ``validate``
    calls logging to the same W&B run) and rebuilt from the local files when a resumed fit
    logs to the W&B run its checkpoint logged to.

    Example:
        >>> h = WandbHistory("abc123")
        >>> h.of("z").projected
        0
    """

    def __init__(self, run_id: str, max_rows: int = EVOLUTION_MAX_ROWS) -> None:
        self.run_id = run_id
        self.max_rows = max_rows
        self.sets: dict[str, SetHistory] = {}

    def of(self, name: str) -> SetHistory:
        if name not in self.sets:
            self.sets[name] = SetHistory(self.max_rows)
        return self.sets[name]
