"""Plain data passed between pipeline stages: numpy arrays and lists, no torch, no Lightning.

- :class:`EpochSample`: the tracked points of one set for one validation run (collect's output);
- :class:`RunIdentity`: which validation run it is;
- :class:`Projection`: a run's points and their aligned layouts, what the stages compare with
  the previous run (alignment, drift, stability);
- :class:`RunResult`: everything one run produced, built once after the last stage and handed,
  frozen, to every sink (see :func:`lightning_embproj.sinks.columns.run_result`).

Example:
    >>> import numpy as np
    >>> s = EpochSample(
    ...     name="embeddings",
    ...     keys=np.array([11, 22], dtype=np.int64),
    ...     sample_ids=[0, 1],
    ...     embeddings=np.zeros((2, 4), dtype=np.float32),
    ... )
    >>> len(s)
    2
    >>> p = Projection(s, epoch=0, step=10, layouts={"pca": np.zeros((2, 2))})
    >>> p.layouts["pca"][0, 0] = 1.0
    Traceback (most recent call last):
    ...
    ValueError: assignment destination is read-only
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np


@dataclass
class EpochSample:
    """The tracked points of one embedding set for one validation epoch.

    Attributes:
        name: embedding set name (the ``embedding_key`` or the layer name).
        keys: ``(N,)`` int64 tracking keys, unique, equal for the same sample in every epoch
            (a hash of dataloader index and sample id). Alignment and drift match on these.
        sample_ids: ``N`` user-facing ids (ints or strings), the ``sample_id`` column.
        embeddings: ``(N, D)`` float32 vectors in the original space.
        labels: ``(N,)`` labels (ints or strings) or ``None`` without ``label_key``.
        metadata: other columns, each of length ``N``: a list (texts, numbers) or an array.
            Image columns are uint8 arrays of shape ``(N, H, W, C)``.
        dataloader_idx: ``(N,)`` int array, or ``None`` with a single validation dataloader.
    """

    name: str
    keys: np.ndarray
    sample_ids: list[Any]
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    dataloader_idx: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def image_columns(self) -> list[str]:
        """Names of metadata columns that hold images (uint8 ``(N, H, W, C)`` arrays)."""
        return [
            k for k, v in self.metadata.items()
            if isinstance(v, np.ndarray) and v.ndim == 4 and v.dtype == np.uint8
        ]


@dataclass(frozen=True)
class RunIdentity:
    """Which validation run: ``(val_index, epoch, step)``, its chain and stage.

    ``val_index`` counts every validation run of the callback (the sanity check is not one);
    several runs can share an epoch (``val_check_interval``) or a step. ``chain``: every
    ``fit`` / ``validate`` starts one (a resumed ``fit`` continues its checkpoint's); runs of
    one chain are aligned and compared with each other, never across chains. ``stage``: the
    Trainer entry point, ``"fit"`` or ``"validate"``.
    """

    val_index: int
    epoch: int
    step: int
    chain: int = 0
    stage: str = "fit"

    def to_state(self) -> dict[str, Any]:
        return {"val_index": self.val_index, "epoch": self.epoch, "step": self.step,
                "chain": self.chain, "stage": self.stage}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RunIdentity:
        # checkpoints written before validation runs were counted knew only the epoch
        return cls(int(state.get("val_index", state["epoch"])), int(state["epoch"]),
                   int(state["step"]), int(state.get("chain", 0)), str(state.get("stage", "fit")))


def read_only(value: Any) -> Any:
    """A read-only view of an array (the caller's array stays writable); other values as given."""
    if isinstance(value, np.ndarray) and value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


def _plain_fields(obj: Any) -> dict[str, Any]:
    """A frozen object's fields with read-only mappings as dicts (pickle refuses
    ``mappingproxy``); its constructor freezes them again."""
    def plain(value: Any) -> Any:
        if isinstance(value, MappingProxyType):
            return dict(value)
        if isinstance(value, tuple) and value and isinstance(value[0], MappingProxyType):
            return [dict(v) for v in value]
        return value

    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _rebuild(cls: type, fields: dict[str, Any]) -> Any:
    return cls(**fields)


class ReadOnlySample(EpochSample):
    """An :class:`EpochSample` that cannot be changed: attributes cannot be set, arrays are
    read-only views, ids and list columns are tuples, ``metadata`` a read-only mapping. What
    a :class:`Projection` holds (see :func:`frozen_sample`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), _plain_fields(self))


def _frozen_column(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else read_only(value)


def frozen_sample(sample: EpochSample) -> EpochSample:
    """A :class:`ReadOnlySample` of ``sample``'s data (views and tuples: no array is copied)."""
    if isinstance(sample, ReadOnlySample):
        return sample
    return ReadOnlySample(
        sample.name, read_only(sample.keys), tuple(sample.sample_ids),
        read_only(sample.embeddings), read_only(sample.labels),
        MappingProxyType({k: _frozen_column(v)
                          for k, v in sample.metadata.items()}),
        read_only(sample.dataloader_idx),
    )


@dataclass(frozen=True)
class Projection:
    """A run's tracked points and their layouts, aligned with the previous run's: what reduce
    returns, and what scores, evolution and the next run's alignment compare.

    Attributes:
        sample: the points.
        epoch: the trainer's ``current_epoch`` when they were collected.
        step: the trainer's ``global_step`` when they were collected.
        layouts: reducer name -> ``(N, n_components)`` float array, rows in the order of
            ``sample`` (read-only).
        knn: ``(N, k)`` nearest neighbours of each point in the original space (k = 10, nearest
            first), from the distance pass of the run's metrics; the movers, the per-label
            table and the next run's drift reuse it. None when not computed (then they compute
            it).
    """

    sample: EpochSample
    epoch: int
    step: int
    layouts: Mapping[str, np.ndarray] = field(default_factory=dict)
    knn: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample", frozen_sample(self.sample))
        object.__setattr__(self, "layouts", MappingProxyType(
            {k: read_only(v) for k, v in self.layouts.items()}))
        object.__setattr__(self, "knn", read_only(self.knn))

    @property
    def name(self) -> str:
        return self.sample.name

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), _plain_fields(self))


def _rows(rows: Any) -> tuple[Mapping[str, Any], ...] | None:
    return None if rows is None else tuple(MappingProxyType(dict(r)) for r in rows)


@dataclass(frozen=True, kw_only=True)
class RunResult(Projection):
    """Everything one validation run of one set produced, frozen: every sink gets this same
    object, and none can change what another sees (attributes, mappings, arrays and columns
    are read-only). Built once per run by :func:`lightning_embproj.sinks.columns.run_result`;
    the previous run of a chain (:attr:`EmbeddingProjector.previous`) is one too.

    Attributes (beside :class:`Projection`'s):
        val_index, chain, stage: the rest of the run's identity (see :class:`RunIdentity`).
        metrics: scalar metrics by name (``silhouette``, ``tsne/trustworthiness``, ...).
        clusters: ``(N,)`` stable cluster id per point (``-1`` = HDBSCAN noise, ``None`` cells
            when clustering failed), or None with ``clusters=None``.
        lineage: this run's cluster lineage rows (``cluster``, ``event``, ``from_clusters``,
            ``size``, ``overlap``), or None.
        per_label: one row per label (``label``, ``count``, ``silhouette``, ``knn_accuracy``,
            ``centroid_shift``), or None without labels.
        movers: the points worth a look (see :func:`lightning_embproj.metrics.scores.movers`):
            parallel arrays ``index``, ``kind``, ``overlap``, ``foreign_fraction``; or None.
        columns: the output contract's table of this run (see
            :func:`lightning_embproj.sinks.columns.table_columns`): column name -> one plain
            Python value per point, as a tuple; image columns hold uint8 ``(H, W, C)`` arrays.
        image_columns: which of ``columns`` hold images.
    """

    val_index: int = 0
    chain: int = 0
    stage: str = "fit"
    metrics: Mapping[str, float] = field(default_factory=dict)
    clusters: np.ndarray | None = None
    lineage: Sequence[Mapping[str, Any]] | None = None
    per_label: Sequence[Mapping[str, Any]] | None = None
    movers: Mapping[str, np.ndarray] | None = None
    columns: Mapping[str, Sequence[Any]]
    image_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        set_ = object.__setattr__
        set_(self, "metrics", MappingProxyType(dict(self.metrics)))
        set_(self, "clusters", read_only(self.clusters))
        set_(self, "lineage", _rows(self.lineage))
        set_(self, "per_label", _rows(self.per_label))
        if self.movers is not None:
            set_(self, "movers", MappingProxyType({k: read_only(np.asarray(v))
                                                  for k, v in self.movers.items()}))
        set_(self, "image_columns", tuple(self.image_columns))
        set_(self, "columns", MappingProxyType({
            k: tuple(map(read_only, v)) if k in self.image_columns else tuple(v)
            for k, v in self.columns.items()}))

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.val_index, self.epoch, self.step, self.chain, self.stage)

    def table(self, images: bool = True) -> dict[str, list[Any]]:
        """The contract columns as lists (a new dict: the caller may change it), with or
        without the image columns. Nothing is computed again."""
        return {name: list(values) for name, values in self.columns.items()
                if images or name not in self.image_columns}
