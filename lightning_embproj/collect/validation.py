"""The collection side of a callback's validation runs: each run's :class:`Collector`, where
each loader's batches sit among the ranks, the layer hooks, and the schedules kept across runs.

Example:
    >>> import torch
    >>> from lightning_embproj.options import ProjectorOptions
    >>> from lightning_embproj.runtime.warn import WarnOnce
    >>> runs = ValidationCollection(ProjectorOptions(), WarnOnce())
    >>> runs.start(collecting=True)
    >>> runs.collecting
    True
    >>> runs.finish() is not None, runs.collecting
    (True, False)
"""

from __future__ import annotations

from typing import Any

from lightning_embproj.collect.capture import LayerCapture
from lightning_embproj.collect.collector import Collector, Placement, ScheduleCache
from lightning_embproj.collect.extract import lookup
from lightning_embproj.collect.ranks import placement
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.runtime.warn import WarnOnce


class ValidationCollection:
    """One per callback; :meth:`start` / :meth:`add` / :meth:`finish` per validation run."""

    def __init__(self, options: ProjectorOptions, warn: WarnOnce) -> None:
        self.options, self.warn = options, warn
        self.schedules = ScheduleCache()  # simulated by a fit's first run, replayed by the rest
        self._collector: Collector | None = None
        self._placements: dict[int, Placement] = {}  # per loader, for one validation run
        self._capture: LayerCapture | None = None

    @property
    def collecting(self) -> bool:
        """Whether the current validation run collects."""
        return self._collector is not None

    def attach(self, pl_module: Any) -> None:
        """Hook the ``layers`` of ``pl_module`` (once; without ``layers`` nothing)."""
        if self.options.layers and self._capture is None:
            self._capture = LayerCapture(pl_module, dict(self.options.layer_keys))

    def detach(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def start(self, collecting: bool) -> None:
        """A validation run begins; it collects or (not selected) only runs."""
        self._placements = {}
        self._collector = (Collector(self.options, warn=self.warn, schedules=self.schedules)
                           if collecting else None)

    def before_batch(self) -> None:
        if self._capture is not None:
            self._capture.active = self._collector is not None
            self._capture.outputs = {}

    def add(self, trainer: Any, outputs: Any, batch: Any, batch_idx: int,
            dataloader_idx: int) -> None:
        """Collect one validation batch (its layers' outputs, or ``embedding_key``)."""
        if self._collector is None:
            return
        if self._capture is not None:
            raw = self._capture.take(self.options.sets, batch_idx)
        else:
            ((name, key),) = self.options.sets.items()
            raw = {name: lookup(key, outputs, batch, "embedding_key")}
        where = self._placements.get(dataloader_idx)
        if where is None:  # the same for every batch of a loader in one validation run
            where = self._placements[dataloader_idx] = placement(
                trainer, dataloader_idx, ids_derived=self.options.id_key is None
            )
        self._collector.add_batch(raw, outputs, batch, dataloader_idx, where)

    def finish(self) -> Collector | None:
        """The run's collector, checked (a bad mask fails here, in the sanity check too),
        or None when the run did not collect."""
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.check()
        return collector
