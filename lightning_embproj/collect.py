"""Per-batch collection: ids, hashes, and the rows that enter each set's bounded buffer.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_embproj.buffer import EMBEDDINGS, SampleBuffer
from lightning_embproj.extract import (
    Key,
    as_embeddings,
    check_length,
    is_image,
    lookup,
    take,
    to_uint8_images,
)
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.sample import derived_ids, hash_ids
from lightning_embproj.types import EpochSample

_ID, _LABEL, _DL = "__id", "__label", "__dataloader_idx"


@dataclass
class Placement:
    """Where this process's rows sit in the dataset: for ids derived without ``id_key``."""

    rank: int = 0
    world_size: int = 1
    dataset_len: int | None = None


class Collector:
    """Holds one :class:`SampleBuffer` per embedding set for the current epoch."""

    def __init__(self, options: ProjectorOptions) -> None:
        self.options = options
        dtype = np.float16 if options.storage_dtype == "float16" else np.float32
        self.buffers = {n: SampleBuffer(options.max_samples, dtype) for n in options.set_names}
        self.positions: dict[int, int] = {}
        self.nonfinite = 0
        self.seen = 0
        self.batches = 0
        self.dims: dict[str, int] = {}

    def _ids(self, outputs: Any, batch: Any, n: int, dl: int, where: Placement) -> np.ndarray:
        if self.options.id_key is None:
            start = self.positions.get(dl, 0)
            return derived_ids(
                start, n, rank=where.rank, world_size=where.world_size,
                dataset_len=where.dataset_len,
            )
        value = lookup(self.options.id_key, outputs, batch, "id_key")
        check_length(value, self.options.id_key, "id_key", n)
        if hasattr(value, "detach"):
            return value.detach().cpu().numpy().reshape(n)
        return np.asarray(list(value) if not isinstance(value, np.ndarray) else value)

    def _metadata(self, outputs: Any, batch: Any, n: int) -> dict[str, Any]:
        found: dict[str, Any] = {}
        keys: dict[str, Key] = dict(self.options.metadata_keys)
        if self.options.label_key is not None:
            keys[_LABEL] = self.options.label_key
        for column, key in keys.items():
            option = "label_key" if column == _LABEL else "metadata_keys"
            value = lookup(key, outputs, batch, option)
            check_length(value, key, option, n)
            found[column] = value
        return found

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
        vectors = {name: as_embeddings(value, name) for name, value in embeddings.items()}
        n = next(iter(vectors.values())).shape[0]
        for name, value in vectors.items():
            if value.shape[0] != n:
                raise ValueError(
                    f"embeddings {name!r} has {value.shape[0]} rows but the batch has {n}"
                )
            # Checked on every batch, not only when rows enter the buffer, so the error does
            # not depend on which rows the sample happens to keep.
            dim = int(value.shape[1])
            if self.dims.setdefault(name, dim) != dim:
                raise ValueError(
                    f"embeddings {name!r} changed dimension at validation batch {self.batches}: "
                    f"earlier batches had {self.dims[name]} values per row, this one has {dim}; "
                    f"every batch must give (B, D) embeddings with the same D"
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
            for column, value in metadata.items():
                taken = take(value, idx, self.options.max_text_length)
                rows[column] = to_uint8_images(taken) if is_image(value) else taken
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
