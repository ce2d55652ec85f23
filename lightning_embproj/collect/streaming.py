"""The streaming path: any batch on the host. Its ids are hashed (vectorised) and only the rows
whose key beats the buffer's threshold are copied.

It takes every batch, so it is where the other paths hand over: the device path when ids are not
an int tensor on the embeddings' device, the scheduled path when a batch it looks at holds a NaN
/ Inf row (or a value float16 storage cannot hold) or goes past the schedule's positions.

Example:
    >>> import torch
    >>> from lightning_embproj.collect.collection import Offered, Placement
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = StreamingCollection(ProjectorOptions(id_key="id", max_samples=3))
    >>> z = torch.tensor([[0.0], [float("nan")], [2.0]])
    >>> c.add(Offered({"embeddings": z}, {"id": ["a", "b", "c"]}, None, 3, 0, Placement(), 0, 0))
    True
    >>> s = c.samples(several_loaders=False)["embeddings"]
    >>> sorted(s.sample_ids), c.counts()  # "b" could have entered: left out and counted
    (['a', 'c'], (1, 0))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.buffer import EMBEDDINGS
from lightning_embproj.collect.collection import DL, ID, Collection, Offered
from lightning_embproj.collect.extract import check_length, lookup
from lightning_embproj.collect.hashing import derived_ids, hash_ids
from lightning_embproj.collect.ids import as_ids


class StreamingCollection(Collection):
    """Hash every batch's ids, copy the rows that may enter (see the module)."""

    path = "streaming"

    def add(self, offered: Offered) -> bool:
        """Keep the batch's rows that beat the threshold; always True."""
        ids = self._ids(offered)
        metadata = self.metadata(offered)
        keys = hash_ids(ids, offered.dl)
        for name, vec in offered.vectors.items():
            buffer = self.buffers[name]
            idx = buffer.select(keys)
            if idx.size == 0:
                continue
            embeddings = self.take(vec, idx)
            ok = self.storable(embeddings)
            if not ok.all():
                finite = np.isfinite(embeddings).all(axis=1)
                self.nonfinite += int((~finite).sum())
                self.overflow += int((finite & ~ok).sum())
                idx, embeddings = idx[ok], embeddings[ok]
                if idx.size == 0:
                    continue
            rows = {EMBEDDINGS: embeddings, ID: ids[idx],
                    DL: np.full(idx.size, offered.dl, dtype=np.int64)}
            rows.update(self.metadata_rows(metadata, idx))
            buffer.add(keys[idx], rows, preselected=True)
        return True

    def _ids(self, offered: Offered) -> Any:
        id_key, where = self.options.id_key, offered.where
        if id_key is None:
            return derived_ids(offered.start, offered.n, rank=where.rank,
                               world_size=where.world_size, dataset_len=where.dataset_len)
        value = lookup(id_key, offered.outputs, offered.batch, "id_key")
        check_length(value, id_key, "id_key", offered.n)
        return as_ids(value, id_key, offered.n)
