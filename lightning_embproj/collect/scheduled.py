"""The scheduled path: host batches whose ids are their positions (no ``id_key``).

Which positions enter the bottom-k never changes, so it is simulated once per fit
(:class:`~lightning_embproj.collect.schedule.Schedule`, kept in the owner's
:class:`~lightning_embproj.collect.schedule.ScheduleCache`) and each batch replays its plan: a
finiteness check of the rows the streaming path would look at, and a copy of the rows that stay.
The buffers then hold exactly what streaming would hold, so a batch the plan cannot take (a NaN /
Inf among the rows looked at, a value float16 storage cannot hold, another loader, more rows
than ``max_samples``, a position past the schedule's limit) is handed to the streaming path,
which goes on from there for the rest of the run.

Example:
    >>> import torch
    >>> from lightning_embproj.collect.collection import Offered, Placement
    >>> from lightning_embproj.collect.schedule import ScheduleCache
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = ScheduledCollection(ProjectorOptions(max_samples=5), ScheduleCache())
    >>> z = torch.randn(3, 2)
    >>> c.add(Offered({"embeddings": z}, {}, None, 3, 0, Placement(), 0, 0))
    True
    >>> z[0, 0] = float("nan")  # a row the next batch looks at: it needs the streaming path
    >>> c.add(Offered({"embeddings": z}, {}, None, 3, 0, Placement(), 3, 3))
    False
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.buffer import EMBEDDINGS
from lightning_embproj.collect.collection import DL, ID, Collection, Offered, host_view
from lightning_embproj.collect.schedule import BatchPlan, Schedule, ScheduleCache
from lightning_embproj.options import ProjectorOptions


class ScheduledCollection(Collection):
    """Replay the plans of a simulated schedule (see the module).

    Args:
        options: the projector's options (``id_key`` None).
        schedules: where the schedule of the run's loader is found, or simulated and kept.
    """

    path = "scheduled"

    def __init__(self, options: ProjectorOptions, schedules: ScheduleCache) -> None:
        super().__init__(options)
        self.schedules = schedules
        self._schedule: Schedule | None = None
        self._dl = -1

    def add(self, offered: Offered) -> bool:
        """Replay the batch's plan; False (nothing changed) when the plan cannot take it."""
        k, start, n = self.options.max_samples, offered.start, offered.n
        if self._schedule is None:
            if offered.row or start:  # the schedule starts from an empty buffer
                return False
            where = offered.where
            self._dl = offered.dl
            self._schedule = self.schedules.get(k, offered.dl, where.rank, where.world_size,
                                                where.dataset_len)
        schedule, end = self._schedule, start + n
        if offered.dl != self._dl or n > k or not schedule.ensure(end):
            return False
        metadata = self.metadata(offered)
        plan = schedule.plan(start, end)
        candidates = {}
        for name, vec in offered.vectors.items():
            looked = self._looked(vec, plan, n)
            if looked is None:
                return False
            candidates[name] = looked
        shared = {ID: plan.ids, DL: plan.dataloader}
        if plan.local.size:
            shared.update(self.metadata_rows(metadata, plan.local))
        for name in offered.vectors:
            rows = {EMBEDDINGS: candidates[name][plan.inside], **shared}
            self.buffers[name].place(plan.slots, plan.keys, rows, count=min(k, end))
        return True

    def _looked(self, vec: Any, plan: BatchPlan, n: int) -> np.ndarray | None:
        """The rows the streaming buffer would look at; None when one of them is NaN / Inf (or
        beyond float16 with that storage): it would be counted and change which rows stay."""
        view = host_view(vec)
        if plan.looked is None:
            looked = view if view is not None else self.take(vec, np.arange(n))
        else:
            looked = view[plan.looked] if view is not None else self.take(vec, plan.looked)
        # One sum instead of a test per value (NaN / Inf propagate; a finite sum that overflows
        # only sends the batch to the streaming path, which tests every row); with float16
        # storage, its max and min.
        if self.limit is None:
            return looked if np.isfinite(looked.sum()) else None
        if looked.size and not (looked.max() < self.limit and looked.min() > -self.limit):
            return None  # NaN fails both comparisons
        return looked
