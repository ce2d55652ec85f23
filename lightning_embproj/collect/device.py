"""The device path: the bottom-k kept where the embeddings are, with no host sync per batch.

Ids derived on the device (``torch.arange``) or given as an int tensor there are hashed there
(:func:`~lightning_embproj.collect.hashing.hash_ids_torch`) and each set's bottom-k lives in a
:class:`~lightning_embproj.collect.device_buffer.DeviceBuffer`; one copy to the host when the
samples are read. Tensor labels and metadata on the same device ride along; other metadata (lists
of str, numpy arrays, tensors elsewhere) stay on the host, one reference per batch until the end
(memory grows with the number of batches for those columns only), and are looked up for the kept
rows. Ids that are not an int tensor on that device (strings, lists, float tensors), embeddings
on another device, or a metadata column moving between the device and the host make
:meth:`DeviceCollection.add` return False: the collector then hands over to the streaming path.

Example:
    >>> import torch
    >>> from lightning_embproj.collect.collection import Offered, Placement
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = DeviceCollection(ProjectorOptions(max_samples=2), torch.device("cpu"))
    >>> c.add(Offered({"embeddings": torch.randn(3, 4)}, {}, None, 3, 0, Placement(), 0, 0))
    True
    >>> sorted(c.samples(several_loaders=False)["embeddings"].sample_ids)  # one copy to the host
    [0, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.buffer import EMBEDDINGS
from lightning_embproj.collect.collection import DL, ID, ROW, Collection, Metadata, Offered
from lightning_embproj.collect.device_buffer import DeviceBuffer
from lightning_embproj.collect.extract import (
    ImageLayout,
    check_length,
    lookup,
    take,
    to_uint8_images,
)
from lightning_embproj.collect.hashing import hash_ids_torch, position_ids
from lightning_embproj.options import ProjectorOptions

_INT_DTYPES = ("torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint8")


def single_device(vectors: dict[str, Any]) -> Any:
    """The one torch device all the sets' embeddings are on; None for arrays or several.

    Example:
        >>> import torch
        >>> single_device({"a": torch.zeros(1)}), single_device({"a": np.zeros(1)})
        (device(type='cpu'), None)
    """
    devices = {getattr(v, "device", None) for v in vectors.values()}
    device = devices.pop() if len(devices) == 1 else None
    return device if device is not None and hasattr(device, "type") else None


class DeviceCollection(Collection):
    """Keep each set's bottom-k on ``device`` (see the module).

    Args:
        options: the projector's options.
        device: the embeddings' torch device.
    """

    path = "device"

    def __init__(self, options: ProjectorOptions, device: Any) -> None:
        super().__init__(options)
        self.device = device
        self._kept: dict[str, DeviceBuffer] = {}
        self._columns: set[str] | None = None  # the columns that ride along on the device
        self._host_batches: list[tuple[int, dict[str, Any]]] = []  # (first row, host columns)
        self._layouts: dict[str, ImageLayout | None] = {}
        self._bad: Any = None  # (non-finite, overflow) counts on the device
        self._moved = False  # the rows went to the host: later batches need another path

    def add(self, offered: Offered) -> bool:
        """Offer the batch to the device buffers; False (nothing changed) when it needs the
        host."""
        import torch

        if self._moved or single_device(offered.vectors) != self.device:
            return False
        ids = self._ids(offered)
        if ids is None:
            return False
        keys = hash_ids_torch(ids, offered.dl)
        n, row = offered.n, offered.row
        columns = {ID: ids, DL: torch.full((n,), offered.dl, dtype=torch.int64, device=ids.device),
                   ROW: torch.arange(row, row + n, device=ids.device)}
        host = self._split(self.metadata(offered), columns)
        if self._columns is None:
            self._columns = set(columns)
        elif set(columns) != self._columns:
            return False  # a column moved between the device and the host
        if host:
            self._host_batches.append((row, host))
        for name, vec in offered.vectors.items():
            finite = torch.isfinite(vec).all(dim=1)
            # `abs() < limit` is False for NaN / Inf too. In bfloat16 the limit rounds to
            # 65,536, the next bfloat16 above 65,504: still exactly the values float16 loses.
            ok = finite if self.limit is None else (vec.abs() < self.limit).all(dim=1)
            buffer = self._kept.setdefault(name, DeviceBuffer(self.options.max_samples))
            left = buffer.offer(keys, {EMBEDDINGS: vec, **columns}, ok)
            bad = torch.stack([(left & ~finite).sum(), (left & finite).sum()])
            self._bad = bad if self._bad is None else self._bad + bad
        return True

    def _ids(self, offered: Offered) -> Any:
        """The batch's ids as an int64 tensor on the device; None when they must be hashed
        (and checked) on the host."""
        import torch

        id_key, n, where = self.options.id_key, offered.n, offered.where
        if id_key is None:
            positions = torch.arange(offered.start, offered.start + n, device=self.device)
            return position_ids(positions, rank=where.rank, world_size=where.world_size,
                                dataset_len=where.dataset_len)
        value = lookup(id_key, offered.outputs, offered.batch, "id_key")
        check_length(value, id_key, "id_key", n)
        tensor = hasattr(value, "detach") and hasattr(value, "device")
        if not tensor or value.device != self.device or str(value.dtype) not in _INT_DTYPES:
            return None  # strings, lists, floats
        if value.numel() != n:
            return None  # the host path names the expected shape
        return value.detach().reshape(-1).to(torch.int64)

    def _split(self, metadata: Metadata, columns: dict[str, Any]) -> dict[str, Any]:
        """Add the metadata on the device to ``columns``; return the rest (kept on the host)."""
        host = {}
        for column, (value, layout) in metadata.items():
            if getattr(value, "device", None) == self.device and hasattr(value, "detach"):
                columns[column] = value.detach()
            else:
                host[column] = value
            self._layouts[column] = layout
        return host

    def counts(self) -> tuple[int, int]:
        """Rows left out so far; reading them copies two numbers from the device."""
        if self._bad is not None:
            nonfinite, overflow = (int(v) for v in self._bad.tolist())
            self.nonfinite += nonfinite
            self.overflow += overflow
            self._bad = None
        return self.nonfinite, self.overflow

    def to_host(self) -> None:
        """Move the device buffers to the host buffers (one copy per column)."""
        self._moved = True
        kept, self._kept = self._kept, {}
        for name, buffer in kept.items():
            keys, cols = buffer.to_host()
            if keys.size == 0:
                continue
            rows = cols.pop(ROW)
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
