"""Plain data passed between pipeline stages: numpy arrays and lists, no torch, no Lightning.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Projection:
    """One epoch of one embedding set after reduction, alignment and scoring.

    Attributes:
        sample: the points.
        epoch: the trainer's ``current_epoch`` when they were collected.
        step: the trainer's ``global_step`` when they were collected.
        clusters: ``(N,)`` stable cluster id per point (``-1`` = HDBSCAN noise, ``None`` cells
            when clustering failed), or None with ``clusters=None``.
        lineage: this run's cluster lineage rows (``cluster``, ``event``, ``from_clusters``,
            ``size``, ``overlap``), or None.
        per_label: one row per label (``label``, ``count``, ``silhouette``, ``knn_accuracy``,
            ``centroid_shift``), or None without labels.
        val_index: which validation run of this callback it is (0, 1, 2, ...; the sanity check
            is not counted). With ``epoch`` and ``step`` it identifies the run: several
            validation runs can share an epoch (``val_check_interval``) or a step.
        layouts: reducer name -> ``(N, n_components)`` float array, aligned with the previous
            epoch, rows in the order of ``sample``.
        metrics: scalar metrics by name (``silhouette``, ``tsne/trustworthiness``, ...).
        movers: the points worth a look (see :func:`lightning_embproj.metrics.scores.movers`):
            parallel arrays ``index``, ``kind``, ``overlap``, ``foreign_fraction``; None if not
            computed.
        chain: which chain of this callback the run belongs to (0, 1, ...): every ``fit`` /
            ``validate`` starts a new one, a resumed ``fit`` continues its checkpoint's. Runs
            of one chain are aligned and compared with each other, never across chains.
        stage: the Trainer entry point that ran it: ``"fit"`` or ``"validate"``.
        knn: ``(N, k)`` nearest neighbours of each point in the original space (k = 10, nearest
            first), from the distance pass of the run's metrics; the movers, the per-label
            table and the next run's drift reuse it. None when not computed (then they compute
            it).
    """

    sample: EpochSample
    epoch: int
    step: int
    layouts: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    movers: dict[str, np.ndarray] | None = None
    val_index: int = 0
    clusters: np.ndarray | None = None
    lineage: list[dict[str, Any]] | None = None
    per_label: list[dict[str, Any]] | None = None
    chain: int = 0
    stage: str = "fit"
    knn: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.sample.name
