"""Per-batch collection: ids, hashes, and the rows that enter each set's bounded buffer.

Per batch and set: the embeddings are pooled to ``(B, D)`` on their device (``pooling``), ids
are hashed, and only rows whose key may enter the bounded sample are copied to the host.
Metadata shapes are checked on every batch, so an error never depends on which rows are kept.

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

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_embproj.buffer import EMBEDDINGS, SampleBuffer
from lightning_embproj.extract import (
    ImageLayout,
    Key,
    as_embeddings,
    as_ids,
    as_mask,
    check_length,
    check_metadata,
    lookup,
    pool,
    take,
    to_uint8_images,
)
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.sample import derived_ids, hash_ids
from lightning_embproj.types import EpochSample
from lightning_embproj.warn import ProjectorWarning

_ID, _LABEL, _DL = "__id", "__label", "__dataloader_idx"
LARGE_BUFFER_BYTES = 256_000_000
"""A set whose buffer may grow past this (``max_samples`` x D x bytes) gets one warning."""


@dataclass
class Placement:
    """Where this process's rows sit in the dataset: for ids derived without ``id_key``."""

    rank: int = 0
    world_size: int = 1
    dataset_len: int | None = None


class Collector:
    """Holds one :class:`SampleBuffer` per embedding set for the current epoch.

    Args:
        options: the projector's options.
        warn: ``warn(topic, message)`` hook, called once per topic and run by the callback's
            :class:`~lightning_embproj.warn.WarnOnce`; without it, ``warnings.warn`` with a
            :class:`~lightning_embproj.warn.ProjectorWarning`, once per collector.
    """

    def __init__(
        self, options: ProjectorOptions, warn: Callable[[str, str], None] | None = None
    ) -> None:
        self.options = options
        dtype = np.float16 if options.storage_dtype == "float16" else np.float32
        self.buffers = {n: SampleBuffer(options.max_samples, dtype) for n in options.set_names}
        self.positions: dict[int, int] = {}
        self.nonfinite = 0
        self.seen = 0
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
                mask = as_mask(mask_value, mask_key, name, tuple(value.shape),
                               getattr(value, "device", "cpu"))
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
        ids = self._ids(outputs, batch, n, dataloader_idx, where)
        keys = hash_ids(ids, dataloader_idx)
        metadata = self._metadata(outputs, batch, n)
        self.positions[dataloader_idx] = self.positions.get(dataloader_idx, 0) + n
        self.seen += n
        for name, vec in vectors.items():
            buffer = self.buffers[name]
            idx = buffer.select(keys)
            if idx.size == 0:
                continue
            rows = {EMBEDDINGS: take(vec, idx, self.options.max_text_length)}
            finite = np.isfinite(rows[EMBEDDINGS]).all(axis=1)
            if not finite.all():
                self.nonfinite += int((~finite).sum())
                idx, rows[EMBEDDINGS] = idx[finite], rows[EMBEDDINGS][finite]
                if idx.size == 0:
                    continue
            rows[_ID] = ids[idx]
            rows[_DL] = np.full(idx.size, dataloader_idx, dtype=np.int64)
            for column, (value, layout) in metadata.items():
                taken = take(value, idx, self.options.max_text_length)
                rows[column] = taken if layout is None else to_uint8_images(taken, layout)
            buffer.add(keys[idx], rows, preselected=True)

    def samples(self) -> dict[str, EpochSample]:
        """The epoch's tracked points per set (empty sets left out)."""
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
