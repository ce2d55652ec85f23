"""Constructor options of the projector, validated with messages that name the option.

Example:
    >>> opts = ProjectorOptions(reducers="pca")
    >>> opts.reducers
    ['pca']
    >>> ProjectorOptions(n_components=4)
    Traceback (most recent call last):
    ...
    ValueError: n_components must be 2 or 3, got 4
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_embproj.evolve.lineage import check_thresholds
from lightning_embproj.option_values import (
    Key,
    as_list,
    check_key,
    check_set_name,
    layer_keys_of,
    monitor_names,
    positive_int,
)
from lightning_embproj.reduce.dispatch import REDUCERS as KNOWN_REDUCERS  # the one list of names
from lightning_embproj.sinks.columns import MAX_VECTOR_DIMS, VECTOR_COLUMN, generated_column

POOLINGS = ("auto", "flatten", "mean", "first", "last", "max")
# The callback's Literal types: LightningCLI (jsonargparse) lists the choices in --help and
# rejects others.
Reducer = Literal["pca", "tsne", "umap"]
Monitored = Literal["knn_accuracy", "silhouette", "rankme", "uniformity"]
#: ``priority`` choices: while training runs, the background worker is niced (+10) and on
#: ``n_jobs`` threads (``"training"``), or at the trainer's priority on at least half the
#: cores (``"fair"``). Once training is over both use every core.
PRIORITIES = ("training", "fair")


@dataclass
class ProjectorOptions:
    """Validated settings; see :class:`lightning_embproj.EmbeddingProjector` for each one."""

    embedding_key: str = "embeddings"
    layers: Any = None
    label_key: Key | None = None
    id_key: Key | None = None
    metadata_keys: Any = None
    max_samples: int = 2000
    reducers: Any = field(default_factory=lambda: ["pca", "tsne"])
    n_components: int = 2
    every_n_epochs: int = 1
    every_n_validations: int = 1
    clusters: str | None = "kmeans"
    n_clusters: int | None = None
    survive_threshold: float = 0.7
    split_threshold: float = 0.3
    cluster_smoothing: bool = True
    pooling: str = "auto"
    mask_key: Key | None = None
    image_keys: Any = None
    perplexity: float = 30.0
    storage_dtype: str = "float32"
    background: bool = True
    max_queued_epochs: int = 8
    output_dir: str | None = None
    max_text_length: int = 1000
    seed: int = 0
    n_jobs: int = 1
    name: str | None = None
    vectors: Any = False
    monitor: Any = None
    priority: str = "training"

    layer_keys: dict[str, Key | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_keys()
        self._check_layers()
        self.metadata_keys = self._metadata_columns(self.metadata_keys)
        self.max_samples = positive_int(self.max_samples, "max_samples")
        self._check_reducers()
        self.every_n_epochs = positive_int(self.every_n_epochs, "every_n_epochs")
        self.every_n_validations = positive_int(self.every_n_validations, "every_n_validations")
        self._check_clusters()
        self._check_pooling()
        self.image_keys = self._image_columns(self.image_keys)
        self.max_queued_epochs = positive_int(self.max_queued_epochs, "max_queued_epochs")
        if not isinstance(self.perplexity, (int, float)) or not self.perplexity > 0:
            raise ValueError(f"perplexity must be a positive number, got {self.perplexity!r}")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(
                f"storage_dtype must be 'float32' or 'float16', got {self.storage_dtype!r}"
            )
        self.max_text_length = positive_int(self.max_text_length, "max_text_length")
        self.n_jobs = positive_int(self.n_jobs, "n_jobs")
        if self.priority not in PRIORITIES:
            raise ValueError(
                f"priority must be one of {list(PRIORITIES)}, got {self.priority!r}: "
                f"'training' keeps the cores for training while it runs (the background work "
                f"is niced, on n_jobs threads), 'fair' gives it an equal share (normal priority, "
                f"at least half the cores)"
            )
        self.monitor = monitor_names(self.monitor, self.label_key)
        self.vectors = self._vector_dims(self.vectors)

    def _check_keys(self) -> None:
        """``embedding_key``, ``label_key``, ``id_key`` and the set ``name``."""
        check_key(self.embedding_key, "embedding_key")
        if self.name is not None:
            if not isinstance(self.name, str) or not self.name:
                raise TypeError(
                    f"name must be a non-empty string (it names the embedding sets: folder "
                    f"embproj/<name>/ and W&B keys embproj/<name>/...), got {self.name!r}"
                )
            check_set_name(self.name, "name")
        elif self.layers is None and isinstance(self.embedding_key, str):
            check_set_name(self.embedding_key, "embedding_key")
        check_key(self.label_key, "label_key")
        check_key(self.id_key, "id_key")

    def _check_layers(self) -> None:
        """``layers`` as a list of distinct module names (None: no layers), ``layer_keys``."""
        self.layer_keys = layer_keys_of(self.layers)
        layers = list(self.layer_keys) if isinstance(self.layers, Mapping) else as_list(
            self.layers, "layers")
        for layer in layers:
            if not isinstance(layer, str) or not layer:
                raise TypeError(f"layers must be module names such as 'encoder', got {layer!r}")
            check_set_name(layer, "layers")
        dupes = sorted({name for name in layers if layers.count(name) > 1})
        if dupes:
            raise ValueError(f"layers lists {dupes} more than once; each layer is one set")
        self.layers = layers or None

    def _check_reducers(self) -> None:
        """``reducers`` as lower-case known names, once each; ``n_components`` 2 or 3."""
        reducers = [str(r).lower() for r in as_list(self.reducers, "reducers")]
        unknown = [r for r in reducers if r not in KNOWN_REDUCERS]
        if unknown or not reducers:
            raise ValueError(
                f"reducers must be a non-empty list drawn from {list(KNOWN_REDUCERS)}, "
                f"got {as_list(self.reducers, 'reducers')!r}"
            )
        self.reducers = list(dict.fromkeys(reducers))
        if self.n_components not in (2, 3) or isinstance(self.n_components, bool):
            raise ValueError(f"n_components must be 2 or 3, got {self.n_components!r}")

    def _check_clusters(self) -> None:
        """``clusters`` (``'none'`` is None), ``n_clusters``, the thresholds, the smoothing."""
        if isinstance(self.clusters, str) and self.clusters.lower() == "none":
            self.clusters = None
        if self.clusters not in (None, "kmeans", "hdbscan"):
            raise ValueError(
                f"clusters must be 'kmeans', 'hdbscan' or None, got {self.clusters!r}"
            )
        if self.n_clusters is not None:
            self.n_clusters = positive_int(self.n_clusters, "n_clusters")
        self.survive_threshold, self.split_threshold = check_thresholds(
            self.survive_threshold, self.split_threshold
        )
        if not isinstance(self.cluster_smoothing, bool):
            raise ValueError(
                f"cluster_smoothing must be True (k-means seeded from the previous run's "
                f"clusters, a stable HDBSCAN) or False (each run clustered afresh), got "
                f"{self.cluster_smoothing!r}"
            )

    def _check_pooling(self) -> None:
        """``pooling``, and a ``mask_key`` only where the pooling uses it."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        check_key(self.mask_key, "mask_key")
        if self.mask_key is not None and self.pooling in ("flatten", "first"):
            raise ValueError(
                f"mask_key is used by pooling 'auto', 'mean', 'last' and 'max'; with "
                f"pooling={self.pooling!r} it would be ignored: drop mask_key or change pooling"
            )

    def _vector_dims(self, value: Any) -> int:
        """``vectors`` as the most dims of the W&B vector column (0: no column)."""
        if value is None or value is False:
            return 0
        dims = MAX_VECTOR_DIMS if value is True else value
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_VECTOR_DIMS:
            raise ValueError(
                f"vectors must be False, True (vectors of up to {MAX_VECTOR_DIMS} dims, PCA "
                f"above) or an int in 1..{MAX_VECTOR_DIMS} (the most dims; W&B moves a longer "
                f"vector cell out of the table), got {value!r}"
            )
        if VECTOR_COLUMN in self.metadata_keys:
            raise ValueError(
                f"vectors: the W&B table's vector column is named {VECTOR_COLUMN!r}, and "
                f"metadata_keys has a column of that name; rename it with the dict form, "
                f"{{'my_{VECTOR_COLUMN}': {self.metadata_keys[VECTOR_COLUMN]!r}}}"
            )
        return dims

    def training_threads(self, cores: int | None = None) -> int:
        """Threads of the background work while training runs: ``n_jobs``, with ``"fair"``
        at least half the cores.

        Example:
            >>> ProjectorOptions(priority="fair").training_threads(cores=8)
            4
            >>> ProjectorOptions(n_jobs=2).training_threads(cores=8)
            2
        """
        cores = cores or os.cpu_count() or 1
        return max(self.n_jobs, cores // 2) if self.priority == "fair" else self.n_jobs

    @property
    def worker_nice(self) -> int:
        """How much the worker thread is niced while training runs (0 with ``"fair"``)."""
        return 0 if self.priority == "fair" else 10

    def _metadata_columns(self, value: Any) -> dict[str, Key]:
        """Column name -> key. An int key (tuple batch index) is named ``batch_<i>``."""
        if isinstance(value, Mapping):
            items = [(str(col), key) for col, key in value.items()]
        else:
            items = [(key if isinstance(key, str) else f"batch_{key}", key)
                     for key in as_list(value, "metadata_keys")]
        for col, key in items:
            check_key(key, "metadata_keys")
            generated = generated_column(col)
            if generated is not None:
                raise ValueError(
                    f"metadata_keys: column {col!r} clashes with {generated}, which the "
                    f"projector writes itself (one would silently replace the other); pass a "
                    f"dict such as {{'my_{col.lstrip('_')}': {key!r}}} to rename it"
                )
        return dict(items)

    def _image_columns(self, value: Any) -> list[str]:
        """Declared image keys must name metadata columns (they are read like metadata)."""
        names = [k if isinstance(k, str) else f"batch_{k}" for k in as_list(value, "image_keys")]
        unknown = [n for n in names if n not in self.metadata_keys]
        if unknown:
            raise ValueError(
                f"image_keys {unknown} are not metadata columns; list each image key in "
                f"metadata_keys too (columns: {sorted(self.metadata_keys)})"
            )
        return names

    @property
    def sets(self) -> dict[str, str]:
        """Set name -> where its embeddings come from (a layer, or the ``embedding_key``).

        One set per layer, named ``<name>_<layer>`` (the layer name without ``name``), or the
        single set of the ``embedding_key``, named ``name`` (the ``embedding_key`` without).

        Example:
            >>> ProjectorOptions(layers=["encoder", "head"], name="mlp").sets
            {'mlp_encoder': 'encoder', 'mlp_head': 'head'}
            >>> ProjectorOptions(name="z_umap").sets
            {'z_umap': 'embeddings'}
        """
        if self.layers:
            prefix = f"{self.name}_" if self.name is not None else ""
            return {f"{prefix}{layer}": layer for layer in self.layers}
        return {self.name if self.name is not None else self.embedding_key: self.embedding_key}

    @property
    def set_names(self) -> list[str]:
        """The names of the embedding sets (see :attr:`sets`): folders and W&B keys."""
        return list(self.sets)


def check_unique_sets(mine: ProjectorOptions, others: Sequence[ProjectorOptions]) -> None:
    """Refuse a set name that another projector of the same Trainer also writes: their
    folders ``embproj/<set>/`` and W&B keys would mix.

    Example:
        >>> check_unique_sets(ProjectorOptions(), [ProjectorOptions(name="other")])
        >>> check_unique_sets(ProjectorOptions(), [ProjectorOptions(reducers="umap")])
        Traceback (most recent call last):
        ...
        ValueError: name: two EmbeddingProjectors in this Trainer write the embedding set ...
    """
    for other in others:
        shared = [n for n in mine.set_names if n in other.set_names]
        if shared:
            reducers = "_".join(mine.reducers)
            example = reducers if mine.layers else f"{mine.set_names[0]}_{reducers}"
            raise ValueError(
                f"name: two EmbeddingProjectors in this Trainer write the embedding set "
                f"{shared[0]!r} (folder embproj/{shared[0]}/, W&B keys embproj/{shared[0]}/...): "
                f"their files, tables and metrics would mix. Give each its own `name`, e.g. "
                f"EmbeddingProjector(..., name={example!r}) (with `layers`, the sets are named "
                f"<name>_<layer>)"
            )
