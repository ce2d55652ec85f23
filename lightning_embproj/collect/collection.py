"""What the three collection paths share: a batch as they see it, metadata checks, the host
buffers and their counts of rows left out, and the samples read from them.

A path (:class:`Collection` subclass) takes one pooled batch at a time (:class:`Offered`) and
keeps the bottom-k of every set; :meth:`Collection.add` returns False, changing nothing, when a
batch needs another path. Then :meth:`Collection.to_host` leaves everything it kept in
:attr:`Collection.buffers` with :meth:`Collection.counts`, from which the next path goes on.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c = Collection(ProjectorOptions(max_samples=2))
    >>> c.storable(np.array([[1.0, 2.0], [np.nan, 0.0], [7e4, 0.0]])).tolist()
    [True, False, True]
    >>> c.counts(), c.samples(several_loaders=False)
    ((0, 0), {})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lightning_embproj.collect.buffer import EMBEDDINGS, SampleBuffer
from lightning_embproj.collect.extract import (
    ImageLayout,
    Key,
    check_length,
    check_metadata,
    lookup,
    take,
    to_uint8_images,
)
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.results import EpochSample

ID, LABEL, DL, ROW = "__id", "__label", "__dataloader_idx", "__row"
"""Internal column names: the sample id, the label, the loader index, the row in the run."""
FLOAT16_OVERFLOW = 65520.0
"""The smallest magnitude that float16 rounds to Inf (its largest finite value is 65,504): with
``storage_dtype="float16"`` a row holding such a value is left out like a NaN / Inf row."""
# Tensor dtypes numpy can view without a conversion (filled on first use: torch is imported by
# then, since tensors arrived): numpy has no bfloat16, `take` converts half tensors.
_VIEWABLE: dict[str, frozenset[Any]] = {}

Metadata = dict[str, tuple[Any, ImageLayout | None]]
"""Column -> (the batch's value, its image layout or None)."""


@dataclass
class Placement:
    """Where this process's rows sit in the dataset: for ids derived without ``id_key``."""

    rank: int = 0
    world_size: int = 1
    dataset_len: int | None = None


@dataclass(slots=True)
class Offered:
    """One validation batch as a path sees it.

    ``vectors``: set name -> ``(n, D)`` pooled embeddings; ``outputs``, ``batch``: what the step
    returned and got (ids and metadata are looked up there); ``dl``: the loader index;
    ``start``: the position of its first row in that loader's run; ``row``: rows offered before
    it in this run, all loaders together.
    """

    vectors: dict[str, Any]
    outputs: Any
    batch: Any
    n: int
    dl: int
    where: Placement
    start: int
    row: int


class Collection:
    """The base of the collection paths: host buffers, counts, metadata, samples.

    Args:
        options: the projector's options.
        buffers: the host buffers to go on from (a path handing over); None: empty ones.
        counts: rows left out so far, ``(non-finite, float16 overflow)``.
    """

    path: ClassVar[str] = ""
    """``"device"``, ``"scheduled"`` or ``"streaming"``."""

    def __init__(self, options: ProjectorOptions, buffers: dict[str, SampleBuffer] | None = None,
                 counts: tuple[int, int] = (0, 0)) -> None:
        self.options = options
        dtype = np.float16 if options.storage_dtype == "float16" else np.float32
        self.buffers = buffers if buffers is not None else {
            name: SampleBuffer(options.max_samples, dtype) for name in options.set_names}
        self.nonfinite, self.overflow = counts
        # Rows whose values float16 storage would turn into Inf are left out and counted.
        self.limit = FLOAT16_OVERFLOW if options.storage_dtype == "float16" else None
        self._images = set(options.image_keys or [])

    def add(self, offered: Offered) -> bool:
        """Keep what the batch brings; False (nothing changed) when it needs another path."""
        raise NotImplementedError

    def to_host(self) -> None:
        """Leave every kept row in :attr:`buffers` (the host paths keep them there already)."""

    def counts(self) -> tuple[int, int]:
        """Rows left out so far that could have entered: ``(non-finite, float16 overflow)``."""
        return self.nonfinite, self.overflow

    def metadata(self, offered: Offered) -> Metadata:
        """The label and metadata columns of a batch, checked (every batch, whatever it keeps)."""
        found: Metadata = {}
        options = self.options
        keys: dict[str, Key] = dict(options.metadata_keys)
        if options.label_key is not None:
            keys[LABEL] = options.label_key
        for column, key in keys.items():
            option = "label_key" if column == LABEL else "metadata_keys"
            value = lookup(key, offered.outputs, offered.batch, option)
            check_length(value, key, option, offered.n)
            if column == LABEL:
                found[column] = (_as_labels(value, key), None)
                continue
            layout = check_metadata(value, key, column, option, column in self._images)
            found[column] = (value, layout)
        return found

    def metadata_rows(self, metadata: Metadata, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``idx`` of every metadata column (images as uint8, channels last)."""
        rows = {}
        for column, (value, layout) in metadata.items():
            taken = self.take(value, idx)
            rows[column] = taken if layout is None else to_uint8_images(taken, layout)
        return rows

    def take(self, value: Any, idx: np.ndarray) -> np.ndarray:
        """:func:`~lightning_embproj.collect.extract.take` with a shortcut for the common host
        case (a float / int CPU tensor or numeric array): one numpy gather, no checks."""
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "biuf":
                return value[idx]
        elif (hasattr(value, "detach") and value.dtype in _viewable("numbers")
              and value.device.type == "cpu"):
            return value.detach().numpy()[idx]
        return take(value, idx, self.options.max_text_length)

    def storable(self, rows: np.ndarray) -> np.ndarray:
        """Per row: finite, and within float16's range when that is the storage dtype."""
        if self.limit is None:
            return np.isfinite(rows).all(axis=1)
        return (np.abs(rows) < self.limit).all(axis=1)  # False for NaN and Inf too

    def samples(self, several_loaders: bool) -> dict[str, EpochSample]:
        """The tracked points per set from the host buffers (empty sets left out);
        ``several_loaders``: give each point's loader index."""
        self.to_host()
        out = {}
        for name, buffer in self.buffers.items():
            if len(buffer) == 0:
                continue
            keys, cols = buffer.columns()
            labels = cols.pop(LABEL, None)
            dl = cols.pop(DL)
            ids = cols.pop(ID)
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


def host_view(value: Any) -> np.ndarray | None:
    """A float numpy view of a host array or CPU tensor (no copy); None for anything else.

    Example:
        >>> host_view(np.zeros(2)).dtype, host_view(np.zeros(2, dtype=np.int64))
        (dtype('float64'), None)
    """
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
