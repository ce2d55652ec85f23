"""Per-batch collection: one bottom-k sample per embedding set, through one of three paths.

Per batch and set the embeddings are pooled to ``(B, D)`` on their device (``pooling``) and
their dims checked; metadata shapes are checked on every batch, so an error never depends on
which rows are kept. The :class:`Collector` picks a path from the run's first batch and hands over
to the streaming path when a batch needs it. Every path gives the same result (the same keys,
rows and values); :attr:`Collector.path` says which one is collecting:

- ``"device"`` (embeddings on an accelerator, or forced with ``device_path=True`` /
  ``EMBPROJ_DEVICE_PATH=1``): :class:`~lightning_embproj.collect.device.DeviceCollection`, the
  bottom-k in a fixed-shape buffer on the device, no host sync per batch. Ids that are not an int
  tensor on that device (strings, lists, float tensors) hand over to streaming.
- ``"scheduled"`` (host, ids derived from positions):
  :class:`~lightning_embproj.collect.scheduled.ScheduledCollection`, the bottom-k of the
  positions simulated once per fit (kept in a
  :class:`~lightning_embproj.collect.schedule.ScheduleCache`), so a batch is a binary search and
  a row copy. A NaN / Inf row among those it looks at (or a value float16 storage cannot hold),
  or positions past 2^22, hand over to streaming.
- ``"streaming"`` (host, anything else):
  :class:`~lightning_embproj.collect.streaming.StreamingCollection`, ids hashed vectorised, rows
  that beat the threshold copied.

Example:
    >>> import torch
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = Collector(ProjectorOptions(label_key="y", max_samples=3), device_path=False)
    >>> for _ in range(2):
    ...     c.add_batch({"embeddings": torch.randn(2, 5)}, {"y": torch.arange(2)}, None, 0)
    >>> s = c.samples()["embeddings"]
    >>> len(s), s.embeddings.shape, c.path  # ids are positions, on the host: the schedule
    (3, (3, 5), 'scheduled')
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from lightning_embproj.collect.collection import Collection, Offered, Placement
from lightning_embproj.collect.device import DeviceCollection, single_device
from lightning_embproj.collect.extract import as_embeddings, lookup
from lightning_embproj.collect.pooling import as_mask, check_masks, pool
from lightning_embproj.collect.schedule import ScheduleCache
from lightning_embproj.collect.scheduled import ScheduledCollection
from lightning_embproj.collect.streaming import StreamingCollection
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.results import EpochSample, RunIdentity
from lightning_embproj.runtime.warn import ProjectorWarning

__all__ = ["DEVICE_PATH_ENV", "LARGE_BUFFER_BYTES", "Collector", "Placement", "ScheduleCache"]

DEVICE_PATH_ENV = "EMBPROJ_DEVICE_PATH"
"""``1``: collect through the device path even for CPU tensors (tests); ``0``: never."""
LARGE_BUFFER_BYTES = 256_000_000
"""A set whose buffer may grow past this (``max_samples`` x D x bytes) gets one warning."""


class Collector:
    """Holds one bottom-k sample per embedding set for the current validation run.

    Args:
        options: the projector's options.
        warn: ``warn(topic, message)`` hook, called once per topic and run by the callback's
            :class:`~lightning_embproj.runtime.warn.WarnOnce`; without it, ``warnings.warn`` with a
            :class:`~lightning_embproj.runtime.warn.ProjectorWarning`, once per collector.
        device_path: ``None`` (default): the device path when the first batch's embeddings
            are tensors on an accelerator (or as ``EMBPROJ_DEVICE_PATH`` says); ``True``: for
            any tensors, CPU included; ``False``: never.
        schedules: the schedules of position-derived ids, kept by their owner across runs (the
            callback passes its own, so they are simulated once per fit and replayed by every
            later run); None: a cache of this collector's own, for this run only.
    """

    def __init__(
        self, options: ProjectorOptions, warn: Callable[[str, str], None] | None = None,
        device_path: bool | None = None, schedules: ScheduleCache | None = None,
    ) -> None:
        self.options = options
        if device_path is None:
            env = os.environ.get(DEVICE_PATH_ENV, "").strip().lower()
            device_path = {"1": True, "true": True, "0": False, "false": False}.get(env)
        self.device_path = device_path
        self.schedules = schedules if schedules is not None else ScheduleCache()
        self.positions: dict[int, int] = {}  # rows offered so far, per loader
        self.seen = 0
        self.batches = 0
        self.dims: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._active: Collection | None = None
        self._paths: list[str] = []
        self._masks_later: list[Any] = []  # float / int masks on the device, checked at the end
        self._warn = warn
        self._warned: set[str] = set()

    @property
    def path(self) -> str | None:
        """The path collecting now: ``"device"``, ``"scheduled"`` or ``"streaming"`` (None
        before the first batch)."""
        return self._active.path if self._active is not None else None

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path this run has used, in order: ``("scheduled", "streaming")`` when the
        scheduled path handed over."""
        return tuple(self._paths)

    def add_batch(
        self,
        embeddings: dict[str, Any],
        outputs: Any,
        batch: Any,
        dataloader_idx: int,
        where: Placement | None = None,
    ) -> None:
        """Offer one batch: ``embeddings`` maps set name -> raw tensor of that set."""
        vectors = self._pooled(embeddings, outputs, batch)
        n = next(iter(vectors.values())).shape[0]
        for name, value in vectors.items():
            if value.shape[0] != n:
                raise ValueError(
                    f"embeddings {name!r} has {value.shape[0]} rows but the batch has {n}"
                )
        self.batches += 1
        offered = Offered(vectors, outputs, batch, n, dataloader_idx, where or Placement(),
                          self.positions.get(dataloader_idx, 0), self.seen)
        active = self._active or self._start(self._first_path(vectors))
        while not active.add(offered):  # streaming takes every batch: one hand-over at most
            active.to_host()
            active = self._start(StreamingCollection(
                self.options, active.buffers, active.counts()))
        self.positions[dataloader_idx] = offered.start + n
        self.seen += n

    def _first_path(self, vectors: dict[str, Any]) -> Collection:
        device = None if self.device_path is False else single_device(vectors)
        if device is not None and (self.device_path or device.type != "cpu"):
            return DeviceCollection(self.options, device)
        if self.options.id_key is None:
            return ScheduledCollection(self.options, self.schedules)
        return StreamingCollection(self.options)

    def _start(self, collection: Collection) -> Collection:
        self._active = collection
        self._paths.append(collection.path)
        return collection

    def _warn_once(self, topic: str, message: str) -> None:
        if self._warn is not None:
            self._warn(topic, message)
        elif topic not in self._warned:
            self._warned.add(topic)
            warnings.warn(f"lightning-embproj: {message}", ProjectorWarning, stacklevel=3)

    def _pooled(self, raw: dict[str, Any], outputs: Any, batch: Any) -> dict[str, Any]:
        """Each set as ``(B, D)``, pooled on its device; checks dims against earlier batches."""
        options, mask_key, mask_value = self.options, self.options.mask_key, None
        if mask_key is not None:
            mask_value = lookup(mask_key, outputs, batch, "mask_key")
        vectors = {}
        for name, value in raw.items():
            value = as_embeddings(value, name)
            mask = None
            if mask_key is not None and value.ndim == 3:
                # On an accelerator (or the forced device path) a float or int mask is checked
                # at the end of the run: checking it here would wait for the device every batch.
                device = getattr(mask_value, "device", None)
                later = (self._masks_later if device is not None and hasattr(device, "type")
                         and (device.type != "cpu" or self.device_path) else None)
                mask = as_mask(mask_value, mask_key, name, tuple(value.shape),
                               getattr(value, "device", "cpu"), later=later)
            vectors[name] = pooled = pool(value, name, options.pooling, mask)
            self._check_dim(name, tuple(value.shape), int(pooled.shape[1]))
        return vectors

    def _check_dim(self, name: str, shape: tuple[int, ...], dim: int) -> None:
        # Checked on every batch, not only when rows enter the buffer, so the error does not
        # depend on which rows the sample happens to keep.
        if name not in self.dims:
            self.dims[name], self.shapes[name] = dim, shape
            self._check_size(name, shape, dim)
            return
        if self.dims[name] == dim:
            return
        before = self.shapes[name]
        if self.options.pooling == "flatten" and len(shape) >= 3:
            raise ValueError(
                f"embeddings {name!r} changed dimension at validation batch {self.batches}: "
                f"pooling='flatten' turns shape (B, {', '.join(map(str, before[1:]))}) of "
                f"earlier batches into {self.dims[name]} values per row, this batch's "
                f"(B, {', '.join(map(str, shape[1:]))}) into {dim}. A sequence length or "
                f"image size that varies needs pooling: use pooling='mean' (or 'auto', 'max', "
                f"'first', 'last')"
            )
        raise ValueError(
            f"embeddings {name!r} changed dimension at validation batch {self.batches}: "
            f"earlier batches had {self.dims[name]} values per row, this one has {dim}; "
            f"every batch must give (B, D) embeddings with the same D"
        )

    def _check_size(self, name: str, shape: tuple[int, ...], dim: int) -> None:
        options = self.options
        itemsize = 2 if options.storage_dtype == "float16" else 4
        size = options.max_samples * dim * itemsize
        if size <= LARGE_BUFFER_BYTES:
            return
        self._warn_once(
            f"buffer-size:{name}",
            f"embeddings {name!r} of shape {shape} give {dim} values per row with "
            f"pooling={options.pooling!r}: the sample buffer may reach {size / 1e6:,.0f} MB "
            f"per process (max_samples={options.max_samples} x {dim} x {itemsize} bytes) and "
            f"every reducer works on {dim} dims. Lower it with pooling='auto' or 'mean' (pools "
            f"sequences and feature maps), a smaller max_samples, or storage_dtype='float16'",
        )

    @property
    def nonfinite(self) -> int:
        """Rows that could have entered a sample but had NaN / Inf embeddings (left out).

        On the device path reading it copies two numbers to the host."""
        return self._active.counts()[0] if self._active is not None else 0

    @property
    def overflow(self) -> int:
        """Rows that could have entered a sample but hold a value that ``storage_dtype``
        float16 would store as Inf (|value| >= 65,520; left out). Always 0 with float32."""
        return self._active.counts()[1] if self._active is not None else 0

    def warn_left_out(self, identity: RunIdentity) -> None:
        """One warning per run for rows left out as non-finite or beyond float16."""
        where = (f"validation run {identity.val_index} (epoch {identity.epoch}, "
                 f"step {identity.step})")
        if self.nonfinite:
            self._warn_once(f"nonfinite:{identity.val_index}",
                            f"{self.nonfinite} tracked rows had NaN or Inf embeddings in {where} "
                            f"and were left out of that run")
        if self.overflow:
            self._warn_once(f"overflow:{identity.val_index}",
                            f"{self.overflow} tracked rows had embedding values beyond float16's "
                            f"range (|value| >= 65,520 would be stored as Inf with "
                            f"storage_dtype='float16') in {where} and were left out of that run; "
                            f"use storage_dtype='float32' to keep them")

    def empty_note(self) -> str:
        """Why a set has no sample: ``no tracked rows``, with the rows left out if any.

        Example:
            >>> Collector(ProjectorOptions()).empty_note()
            'no tracked rows'
        """
        left_out = self.nonfinite + self.overflow
        if left_out:
            return f"no tracked rows ({left_out} left out as non-finite or beyond float16)"
        return "no tracked rows"

    def check(self) -> None:
        """Raise what per-batch checks left for the end of the run (float / int masks on the
        device: checking them per batch would wait for the device every batch)."""
        later, self._masks_later = self._masks_later, []
        if self.options.mask_key is not None:
            check_masks(self.options.mask_key, later)

    def samples(self) -> dict[str, EpochSample]:
        """The run's tracked points per set (empty sets left out). On the device path, one copy
        to the host; a batch offered after it goes to the streaming path."""
        self.check()
        if self._active is None:
            return {}
        return self._active.samples(several_loaders=len(self.positions) > 1)
