"""Per-batch collection: ids, hashes, and the rows that enter each set's bounded buffer.

Per batch and set: the embeddings are pooled to ``(B, D)`` on their device (``pooling``), ids
are hashed, and only rows whose key may enter the bounded sample are kept. Metadata shapes are
checked on every batch, so an error never depends on which rows are kept. Three paths, one result
(the same keys, rows and values):

- **device** (embeddings on an accelerator, or forced with ``device_path=True`` /
  ``EMBPROJ_DEVICE_PATH=1``): ids derived on the device (``torch.arange``) or given as an int
  tensor there are hashed there (:func:`~lightning_embproj.collect.hashing.hash_ids_torch`)
  and the bottom-k lives in a :class:`~lightning_embproj.collect.device_buffer.DeviceBuffer`:
  no host sync per batch, one copy to the host when the samples are read. Tensor labels and
  metadata on the same device ride along; other metadata (lists of str, numpy arrays, tensors
  elsewhere) stay on the host, one reference per batch until the end (memory grows with the number
  of batches for those columns only), and are looked up for the kept rows. Ids that are not an int
  tensor on that device (strings, lists, float tensors) make the collector use the host path from
  that batch on.
- **scheduled** (host, ids derived from positions): the bottom-k of the positions is simulated
  once per fit (:mod:`~lightning_embproj.collect.schedule`, kept in the ``schedules`` the
  callback holds), so a batch is a binary search and a row copy.
- **streaming** (host, anything else): ids hashed vectorised, rows that beat the threshold copied.

Example:
    >>> import torch
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = Collector(ProjectorOptions(label_key="y", max_samples=3))
    >>> c.add_batch({"embeddings": torch.randn(4, 5)}, {"y": torch.arange(4)}, None, 0)
    >>> s = c.samples()["embeddings"]
    >>> len(s), s.embeddings.shape
    (3, (3, 5))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_embproj.collect.buffer import EMBEDDINGS, SampleBuffer
from lightning_embproj.collect.device_buffer import DeviceBuffer
from lightning_embproj.collect.extract import (
    ImageLayout,
    Key,
    as_embeddings,
    as_ids,
    check_length,
    check_metadata,
    lookup,
    take,
    to_uint8_images,
)
from lightning_embproj.collect.hashing import derived_ids, hash_ids, hash_ids_torch, position_ids
from lightning_embproj.collect.pooling import as_mask, check_masks, pool
from lightning_embproj.collect.schedule import Schedule, ScheduleCache
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.results import EpochSample
from lightning_embproj.runtime.warn import ProjectorWarning

__all__ = ["Collector", "Placement", "ScheduleCache"]

_ID, _LABEL, _DL, _ROW = "__id", "__label", "__dataloader_idx", "__row"
DEVICE_PATH_ENV = "EMBPROJ_DEVICE_PATH"
"""``1``: collect through the device path even for CPU tensors (tests); ``0``: never."""
_INT_DTYPES = ("torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint8")
# Tensor dtypes numpy can view without a conversion (filled on first use: torch is imported by
# then, since tensors arrived): numpy has no bfloat16, `take` converts half tensors.
_VIEWABLE: dict[str, frozenset[Any]] = {}
LARGE_BUFFER_BYTES = 256_000_000
"""A set whose buffer may grow past this (``max_samples`` x D x bytes) gets one warning."""
FLOAT16_OVERFLOW = 65520.0
"""The smallest magnitude that float16 rounds to Inf (its largest finite value is 65,504): with
``storage_dtype="float16"`` a row holding such a value is left out like a NaN / Inf row."""


@dataclass
class Placement:
    """Where this process's rows sit in the dataset: for ids derived without ``id_key``."""

    rank: int = 0
    world_size: int = 1
    dataset_len: int | None = None


class Collector:
    """Holds one bottom-k buffer per embedding set for the current validation run.

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
        self.schedules = schedules if schedules is not None else ScheduleCache()
        dtype = np.float16 if options.storage_dtype == "float16" else np.float32
        self.buffers = {n: SampleBuffer(options.max_samples, dtype) for n in options.set_names}
        self.positions: dict[int, int] = {}
        self.seen = 0
        if device_path is None:
            env = os.environ.get(DEVICE_PATH_ENV, "").strip().lower()
            device_path = {"1": True, "true": True, "0": False, "false": False}.get(env)
        self.device_path = device_path
        self._mode: str | None = None  # "device" or "host", fixed by the first batch
        self._device: dict[str, DeviceBuffer] = {}
        self._device_cols: set[str] | None = None
        self._host_batches: list[tuple[int, dict[str, Any]]] = []  # (first row, host columns)
        self._layouts: dict[str, ImageLayout | None] = {}
        # Rows whose values float16 storage would turn into Inf are left out and counted.
        self._limit = FLOAT16_OVERFLOW if options.storage_dtype == "float16" else None
        self._bad: Any = None  # (non-finite, overflow) counts on the device
        self._masks_later: list[Any] = []  # float / int masks on the device, checked at the end
        self._nonfinite = 0
        self._overflow = 0
        self._schedule: Schedule | None = None
        self._schedule_dl = -1
        self._streaming = False  # the scheduled path was left (or never applied)
        self.batches = 0
        self.dims: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._warn = warn
        self._warned: set[str] = set()
        self._images = set(options.image_keys or [])

    def _warn_once(self, topic: str, message: str) -> None:
        if self._warn is not None:
            self._warn(topic, message)
        elif topic not in self._warned:
            self._warned.add(topic)
            warnings.warn(f"lightning-embproj: {message}", ProjectorWarning, stacklevel=3)

    def _ids(self, outputs: Any, batch: Any, n: int, dl: int, where: Placement) -> np.ndarray:
        if self.options.id_key is None:
            start = self.positions.get(dl, 0)
            return derived_ids(
                start, n, rank=where.rank, world_size=where.world_size,
                dataset_len=where.dataset_len,
            )
        value = lookup(self.options.id_key, outputs, batch, "id_key")
        check_length(value, self.options.id_key, "id_key", n)
        return as_ids(value, self.options.id_key, n)

    def _metadata(
        self, outputs: Any, batch: Any, n: int
    ) -> dict[str, tuple[Any, ImageLayout | None]]:
        found: dict[str, tuple[Any, ImageLayout | None]] = {}
        keys: dict[str, Key] = dict(self.options.metadata_keys)
        if self.options.label_key is not None:
            keys[_LABEL] = self.options.label_key
        for column, key in keys.items():
            option = "label_key" if column == _LABEL else "metadata_keys"
            value = lookup(key, outputs, batch, option)
            check_length(value, key, option, n)
            if column == _LABEL:
                found[column] = (_as_labels(value, key), None)
                continue
            layout = check_metadata(value, key, column, option, column in self._images)
            found[column] = (value, layout)
        return found

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
        self._read_counts()
        return self._nonfinite

    @property
    def overflow(self) -> int:
        """Rows that could have entered a sample but hold a value that ``storage_dtype``
        float16 would store as Inf (|value| >= 65,520; left out). Always 0 with float32."""
        self._read_counts()
        return self._overflow

    def _read_counts(self) -> None:
        if self._bad is not None:
            nonfinite, overflow = (int(v) for v in self._bad.tolist())
            self._nonfinite += nonfinite
            self._overflow += overflow
            self._bad = None

    def _storable(self, rows: np.ndarray) -> np.ndarray:
        """Per row: finite, and within float16's range when that is the storage dtype."""
        if self._limit is None:
            return np.isfinite(rows).all(axis=1)
        return (np.abs(rows) < self._limit).all(axis=1)  # False for NaN and Inf too

    def add_batch(
        self,
        embeddings: dict[str, Any],
        outputs: Any,
        batch: Any,
        dataloader_idx: int,
        where: Placement | None = None,
    ) -> None:
        """Offer one batch: ``embeddings`` maps set name -> raw tensor of that set."""
        where = where or Placement()
        vectors = self._pooled(embeddings, outputs, batch)
        n = next(iter(vectors.values())).shape[0]
        for name, value in vectors.items():
            if value.shape[0] != n:
                raise ValueError(
                    f"embeddings {name!r} has {value.shape[0]} rows but the batch has {n}"
                )
        self.batches += 1
        if self._mode is None:
            self._mode = "device" if self._device_ready(vectors) is not None else "host"
        if self._mode == "device" and not self._add_on_device(
            vectors, outputs, batch, n, dataloader_idx, where
        ):
            self._leave_device()
        if self._mode == "host":
            self._add_on_host(vectors, outputs, batch, n, dataloader_idx, where)
        self.positions[dataloader_idx] = self.positions.get(dataloader_idx, 0) + n
        self.seen += n

    # -- host: scheduled (derived ids) or streaming ---------------------------------------------
    def _add_on_host(
        self, vectors: dict[str, Any], outputs: Any, batch: Any, n: int, dl: int, where: Placement
    ) -> None:
        if self.options.id_key is None and not self._streaming:
            metadata = self._metadata(outputs, batch, n)
            if self._add_scheduled(vectors, metadata, n, dl, where):
                return
            self._streaming = True
            ids = self._ids(outputs, batch, n, dl, where)
        else:
            ids = self._ids(outputs, batch, n, dl, where)
            metadata = self._metadata(outputs, batch, n)
        keys = hash_ids(ids, dl)
        for name, vec in vectors.items():
            buffer = self.buffers[name]
            idx = buffer.select(keys)
            if idx.size == 0:
                continue
            rows = {EMBEDDINGS: self._take(vec, idx)}
            ok = self._storable(rows[EMBEDDINGS])
            if not ok.all():
                finite = np.isfinite(rows[EMBEDDINGS]).all(axis=1)
                self._nonfinite += int((~finite).sum())
                self._overflow += int((finite & ~ok).sum())
                idx, rows[EMBEDDINGS] = idx[ok], rows[EMBEDDINGS][ok]
                if idx.size == 0:
                    continue
            rows[_ID] = ids[idx]
            rows[_DL] = np.full(idx.size, dl, dtype=np.int64)
            rows.update(self._metadata_rows(metadata, idx))
            buffer.add(keys[idx], rows, preselected=True)

    def _metadata_rows(
        self, metadata: dict[str, tuple[Any, ImageLayout | None]], idx: np.ndarray
    ) -> dict[str, np.ndarray]:
        rows = {}
        for column, (value, layout) in metadata.items():
            taken = self._take(value, idx)
            rows[column] = taken if layout is None else to_uint8_images(taken, layout)
        return rows

    def _take(self, value: Any, idx: np.ndarray) -> np.ndarray:
        """:func:`~lightning_embproj.collect.extract.take` with a shortcut for the common host case
        (a float / int CPU tensor or numeric array): one numpy gather, no checks."""
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "biuf":
                return value[idx]
        elif (hasattr(value, "detach") and value.dtype in _viewable("numbers")
              and value.device.type == "cpu"):
            return value.detach().numpy()[idx]
        return take(value, idx, self.options.max_text_length)

    def _add_scheduled(
        self, vectors: dict[str, Any], metadata: dict[str, tuple[Any, ImageLayout | None]],
        n: int, dl: int, where: Placement,
    ) -> bool:
        """One batch through the precomputed schedule; False when it does not apply (then this
        collector streams from this batch on: the buffers hold exactly the streaming state)."""
        k, start = self.options.max_samples, self.positions.get(dl, 0)
        if self._schedule is None:
            if self.seen or start:  # the schedule starts from an empty buffer
                return False
            self._schedule_dl = dl
            self._schedule = self.schedules.get(k, dl, where.rank, where.world_size,
                                                where.dataset_len)
        schedule, end = self._schedule, start + n
        if dl != self._schedule_dl or n > k or not schedule.ensure(end):
            return False
        plan = schedule.plan(start, end)
        candidates = {}
        for name, vec in vectors.items():
            # Only the rows the streaming buffer would look at: a NaN / Inf among them (or a
            # value float16 storage cannot hold) is counted and changes which rows stay, so
            # that batch streams instead. One sum instead of a test per value (NaN / Inf
            # propagate; a finite overflow only sends the batch down the streaming path, which
            # tests every row); with float16 storage, its max and min.
            view = _host_view(vec)
            if plan.looked is None:
                looked = view if view is not None else self._take(vec, np.arange(n))
            else:
                looked = view[plan.looked] if view is not None else self._take(vec, plan.looked)
            if self._limit is None:
                if not np.isfinite(looked.sum()):
                    return False
            elif looked.size and not (looked.max() < self._limit and looked.min() > -self._limit):
                return False  # NaN fails both comparisons
            candidates[name] = looked
        shared = {_ID: plan.ids, _DL: plan.dataloader}
        if plan.local.size:
            shared.update(self._metadata_rows(metadata, plan.local))
        for name in vectors:
            rows = {EMBEDDINGS: candidates[name][plan.inside], **shared}
            self.buffers[name].place(plan.slots, plan.keys, rows, count=min(k, end))
        return True

    # -- device: fixed shapes, no host sync -----------------------------------------------------
    def _device_ready(self, vectors: dict[str, Any]) -> Any:
        """The device of the embeddings when the device path applies to them, else None."""
        if self.device_path is False:
            return None
        devices = {getattr(v, "device", None) for v in vectors.values()}
        device = devices.pop() if len(devices) == 1 else None
        if device is None or not hasattr(device, "type"):
            return None
        return device if self.device_path or device.type != "cpu" else None

    def _device_ids(self, outputs: Any, batch: Any, n: int, dl: int, where: Placement,
                    device: Any) -> Any:
        import torch

        if self.options.id_key is None:
            start = self.positions.get(dl, 0)
            return position_ids(torch.arange(start, start + n, device=device), rank=where.rank,
                                world_size=where.world_size, dataset_len=where.dataset_len)
        value = lookup(self.options.id_key, outputs, batch, "id_key")
        check_length(value, self.options.id_key, "id_key", n)
        tensor = hasattr(value, "detach") and hasattr(value, "device")
        if not tensor or value.device != device or str(value.dtype) not in _INT_DTYPES:
            return None  # strings, lists, floats: hashed (and checked) on the host
        if value.numel() != n:
            return None  # the host path names the expected shape
        return value.detach().reshape(-1).to(torch.int64)

    def _add_on_device(
        self, vectors: dict[str, Any], outputs: Any, batch: Any, n: int, dl: int, where: Placement
    ) -> bool:
        """One batch on the device; False (nothing changed) when it needs the host path."""
        import torch

        device = self._device_ready(vectors)
        if device is None:
            return False
        ids = self._device_ids(outputs, batch, n, dl, where, device)
        if ids is None:
            return False
        keys = hash_ids_torch(ids, dl)
        metadata = self._metadata(outputs, batch, n)
        columns = {_ID: ids, _DL: torch.full((n,), dl, dtype=torch.int64, device=device),
                   _ROW: torch.arange(self.seen, self.seen + n, device=device)}
        host = {}
        for column, (value, layout) in metadata.items():
            if getattr(value, "device", None) == device and hasattr(value, "detach"):
                columns[column] = value.detach()
            else:
                host[column] = value
            self._layouts[column] = layout
        if self._device_cols is None:
            self._device_cols = set(columns)
        elif set(columns) != self._device_cols:
            return False  # a column moved between the device and the host
        if host:
            self._host_batches.append((self.seen, host))
        for name, vec in vectors.items():
            finite = torch.isfinite(vec).all(dim=1)
            # `abs() < limit` is False for NaN / Inf too. In bfloat16 the limit rounds to
            # 65,536, the next bfloat16 above 65,504: still exactly the values float16 loses.
            ok = finite if self._limit is None else (vec.abs() < self._limit).all(dim=1)
            buffer = self._device.setdefault(name, DeviceBuffer(self.options.max_samples))
            left = buffer.offer(keys, {EMBEDDINGS: vec, **columns}, ok)
            bad = torch.stack([(left & ~finite).sum(), (left & finite).sum()])
            self._bad = bad if self._bad is None else self._bad + bad
        return True

    def _leave_device(self) -> None:
        """Move the device buffers to the host buffers (one copy) and collect there from now."""
        self._mode = "host"
        self._streaming = True  # the host buffers are not empty: no schedule
        device, self._device = self._device, {}
        for name, buffer in device.items():
            keys, cols = buffer.to_host()
            if keys.size == 0:
                continue
            rows = cols.pop(_ROW)
            for column, layout in self._layouts.items():
                if column in cols:
                    if layout is not None:
                        cols[column] = to_uint8_images(cols[column], layout)
                else:
                    cols[column] = self._host_rows(column, rows)
            cols[EMBEDDINGS] = cols[EMBEDDINGS].astype(np.float32, copy=False)
            self.buffers[name].add(keys, cols)
        self._host_batches = []

    def _host_rows(self, column: str, rows: np.ndarray) -> np.ndarray:
        """The kept rows of a column that stayed on the host, looked up by batch and row."""
        starts = np.array([first for first, _ in self._host_batches], dtype=np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        layout, pieces, order = self._layouts[column], [], []
        for b in np.unique(which).tolist():
            picked = np.flatnonzero(which == b)
            taken = take(self._host_batches[b][1][column], rows[picked] - starts[b],
                         self.options.max_text_length)
            pieces.append(taken if layout is None else to_uint8_images(taken, layout))
            order.append(picked)
        return np.concatenate(pieces)[np.argsort(np.concatenate(order))]

    def check(self) -> None:
        """Raise what per-batch checks left for the end of the run (float / int masks on the
        device: checking them per batch would wait for the device every batch)."""
        later, self._masks_later = self._masks_later, []
        if self.options.mask_key is not None:
            check_masks(self.options.mask_key, later)

    def samples(self) -> dict[str, EpochSample]:
        """The epoch's tracked points per set (empty sets left out)."""
        self.check()
        if self._mode == "device":
            self._leave_device()
        out = {}
        several_loaders = len(self.positions) > 1
        for name, buffer in self.buffers.items():
            if len(buffer) == 0:
                continue
            keys, cols = buffer.columns()
            labels = cols.pop(_LABEL, None)
            dl = cols.pop(_DL)
            ids = cols.pop(_ID)
            out[name] = EpochSample(
                name=name,
                keys=keys,
                sample_ids=[v.item() if hasattr(v, "item") else v for v in ids],
                embeddings=cols.pop(EMBEDDINGS),
                labels=labels,
                metadata=cols,
                dataloader_idx=dl if several_loaders else None,
            )
        return out


def _viewable(kind: str) -> frozenset[Any]:
    """Torch dtypes a CPU tensor of which numpy views as is: ``"floats"`` or ``"numbers"``."""
    if not _VIEWABLE:
        import torch

        floats = frozenset({torch.float32, torch.float64})
        ints = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                          torch.bool})
        _VIEWABLE.update(floats=floats, numbers=floats | ints)
    return _VIEWABLE[kind]


def _host_view(value: Any) -> np.ndarray | None:
    """A float numpy view of a host array or CPU tensor (no copy); None for anything else."""
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind == "f" else None
    if (hasattr(value, "detach") and value.dtype in _viewable("floats")
            and value.device.type == "cpu"):
        return value.detach().numpy()
    return None


def _as_labels(value: Any, key: Key) -> Any:
    """One label per row: ``(B, 1)`` is squeezed, wider values refused (metrics need one)."""
    shape = tuple(getattr(value, "shape", ()))
    if len(shape) == 2 and shape[1] == 1:
        return value[:, 0]
    if len(shape) >= 2:
        raise ValueError(
            f"label_key={key!r}: expected one label per row, shape (B,), got shape {shape}; "
            f"pass class indices (e.g. .argmax(dim=1) of one-hot targets) or put the values in "
            f"metadata_keys"
        )
    return value
