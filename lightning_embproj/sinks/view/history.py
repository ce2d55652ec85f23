"""What the HTML view shows of each set, kept in memory from run to run (bounded).

The view sink renders the page from this history, never from another sink's files. Per set it
keeps every run's metrics row (the metric curves show every run), and the tables, lineage rows
of a bounded number of runs: every ``stride``-th run from the first, plus the newest, at most
``2 * max_runs`` (the stride doubles, 1, 2, 4, ..., when more would be kept); the page shows
``max_runs`` of them, the first, the last and evenly spaced ones between
(:func:`~lightning_embproj.sinks.view.encode.thin_runs`). Up to ``2 * max_runs`` runs that is
every run, so the page is the one the set's local files give. At a chain's start in a new
process, the chain owner seeds the history from the set's files
(:func:`lightning_embproj.chain.settle.seed_view`), so a resumed run still shows the runs before.

Example:
    >>> h = SetView(max_runs=2)  # keeps up to 4 runs
    >>> for run in range(7):
    ...     h.put(run, frame=None, metrics={"epoch": run, "step": run})
    >>> sorted(h.frames), h.stride, len(h.metrics)
    ([0, 2, 4, 6], 2, 7)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_embproj.results import RunResult
from lightning_embproj.sinks.local import LINEAGE_COLUMNS
from lightning_embproj.sinks.view import render_view
from lightning_embproj.sinks.view.images import add_thumbnails

MAX_RUNS = 50
"""Runs on the view's slider."""


class SetView:
    """One set's runs as the view shows them.

    ``runs``: every run of the set (``val_index``, sorted); ``frames``: the kept runs' tables
    (the contract columns without images, as ``read_projections`` reads them back);
    ``metrics``: every run's row (``val_index``, ``epoch``, ``step``, ``chain``, ``stage``, the
    metrics, as ``read_metrics``); ``lineage``: the kept runs' lineage rows; ``images``: point
    key -> thumbnail (``images.json``), ``images_column`` the column they come from and
    ``images_new`` whether some are not in the file yet; ``seeded``: the folder's earlier runs
    were read (or there were none).
    """

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self.max_runs = max_runs
        self.stride = 1
        self.runs: list[int] = []
        self.frames: dict[int, Any] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.lineage: dict[int, list[list[Any]]] = {}
        self.images: dict[str, str] = {}
        self.images_column = ""
        self.images_new = False
        self.seeded = False

    @property
    def keep(self) -> int:
        """Most runs whose tables are kept."""
        return 2 * self.max_runs

    def add(self, result: RunResult) -> None:
        """Add one run (a run performed again replaces its earlier version)."""
        import pandas as pd

        identity = result.identity.to_state()
        run = [result.val_index, result.epoch, result.step]
        self.put(result.val_index, pd.DataFrame(result.table(images=False)),
                 {**identity, **result.metrics},
                 None if result.lineage is None else
                 [[*run, *(r[c] for c in LINEAGE_COLUMNS[3:])] for r in result.lineage])
        column = add_thumbnails(self.images, result.sample)
        if column is not None:
            self.images_column, self.images_new = column, True

    def put(self, run: int, frame: Any, metrics: dict[str, Any],
            lineage: list[list[Any]] | None = None) -> None:
        """Keep run ``run``'s table, metrics row and lineage rows, then thin the kept runs."""
        at = bisect.bisect_left(self.runs, run)
        if at == len(self.runs) or self.runs[at] != run:
            self.runs.insert(at, run)
        self.frames[run], self.metrics[run] = frame, metrics
        self.lineage.pop(run, None)
        if lineage:
            self.lineage[run] = lineage
        self._thin()

    def _thin(self) -> None:
        def drop_off_stride() -> None:
            for i, run in enumerate(self.runs[:-1]):  # the newest always stays
                if i % self.stride:
                    self.frames.pop(run, None)
                    self.lineage.pop(run, None)

        drop_off_stride()
        while len(self.frames) > self.keep:
            self.stride *= 2
            drop_off_stride()

    def forget(self, runs: Iterable[int]) -> None:
        """Leave out runs whose files a resumed fit removed (they are performed again)."""
        for run in set(runs):
            if run in self.runs:
                self.runs.remove(run)
            self.frames.pop(run, None)
            self.metrics.pop(run, None)
            self.lineage.pop(run, None)

    def to_read(self, runs: Sequence[int]) -> list[int]:
        """Of the runs ``runs`` in a set's folder, those :meth:`seed` keeps: what to read."""
        self.runs = sorted(int(r) for r in runs)
        self.stride = 1
        while len(self.runs[:-1:self.stride]) + 1 > self.keep:
            self.stride *= 2
        return sorted({*self.runs[:-1:self.stride], *self.runs[-1:]})

    def seed(self, runs: Sequence[int], points: Any, metrics: Any, lineage: Any,
             images: Mapping[str, str]) -> None:
        """Fill from the set's local files (``runs``: every run; ``points``: the tables of
        :meth:`to_read`'s runs; ``metrics``, ``lineage``: the readers' tables)."""
        self.to_read(runs)
        self.metrics = {int(r["val_index"]): r for r in metrics.to_dict("records")}
        for run, frame in points.groupby("val_index", sort=True):
            self.frames[int(run)] = frame.reset_index(drop=True)
        for row in lineage[list(LINEAGE_COLUMNS)].itertuples(index=False):
            if int(row[0]) in self.frames:
                self.lineage.setdefault(int(row[0]), []).append(list(row))
        self.images = dict(images)
        self._thin()

    def page(self, title: str) -> str:
        """The view's page of the kept runs (see :func:`~lightning_embproj.sinks.view.
        render_view`)."""
        import pandas as pd

        kept = sorted(self.frames)
        points = pd.concat([self.frames[r] for r in kept], ignore_index=True)
        metrics = pd.DataFrame([self.metrics[r] for r in sorted(self.metrics)])
        rows = [row for r in kept for row in self.lineage.get(r, [])]
        lineage = pd.DataFrame(rows, columns=list(LINEAGE_COLUMNS)) if rows else None
        return render_view(points, metrics, title=title, max_runs=self.max_runs,
                           n_runs=len(self.runs), lineage=lineage, images=self.images)


class ViewHistory:
    """The views of the sets under one output root (kept by the chain owner across ``fit`` /
    ``validate`` calls, while the root stays the same)."""

    def __init__(self, root: str, max_runs: int = MAX_RUNS) -> None:
        self.root = root
        self.max_runs = max_runs
        self.sets: dict[str, SetView] = {}

    def of(self, name: str) -> SetView:
        if name not in self.sets:
            self.sets[name] = SetView(self.max_runs)
        return self.sets[name]

    def title(self, name: str) -> str:
        """The page's heading: the set and the root folder's name."""
        return f"{name} \u2014 {Path(self.root).name}"
