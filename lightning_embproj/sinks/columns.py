"""The table layout of the output contract, shared by every sink, and the one definition of
every column name the projector generates (metadata columns must not reuse them). A run's table
is computed once, by :func:`run_result`, into the frozen result every sink gets.

Example:
    >>> layout_columns("tsne", 3)
    ['tsne_x', 'tsne_y', 'tsne_z']
    >>> generated_column("umap_z")
    'a layout column (R_x, R_y, R_z of every reducer: pca, tsne, umap)'
    >>> generated_column("text") is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_embproj.reduce.dispatch import REDUCERS
from lightning_embproj.results import EpochSample, RunIdentity, RunResult, frozen_sample

AXES = ("x", "y", "z")
IDENTITY_COLUMNS = ("sample_id", "epoch", "step", "val_index", "dataloader_idx")
"""Which run and which point a row is: the first columns of every table."""
LABEL_COLUMN = "label"
CLUSTER_COLUMN = "cluster"
KNN_KEPT_COLUMN = "knn_kept"
"""Real motion: the share of a point's k=10 original-space neighbours kept since the previous
run (empty for a point new in this run, and in a chain's first run)."""
MOVED_SUFFIX = "_moved"
MOVER_COLUMNS = ("kind", "overlap", "foreign_fraction")
"""The movers table's own columns, before the run table's columns."""
INTERNAL_PREFIX = "__"
"""Columns the collector keeps next to the metadata (ids, labels, the vectors) start with it."""
VECTOR_COLUMN = "embedding"
"""The W&B table's raw vector column, with the ``vectors`` option (W&B only, never the CSV)."""
MAX_VECTOR_DIMS = 150
"""W&B moves a longer vector cell to an ``.npz`` file and shows ``None`` in the table JSON."""


def layout_columns(reducer: str, n_components: int) -> list[str]:
    """Column names of one reducer's layout: ``R_x``, ``R_y`` (and ``R_z`` in 3-D)."""
    return [f"{reducer}_{axis}" for axis in AXES[:n_components]]


def moved_column(reducer: str) -> str:
    """Apparent motion of a point in one reducer's aligned layout since the previous run:
    ``R_moved`` (normalised as ``R/displacement``, whose mean over the shared points it is)."""
    return f"{reducer}{MOVED_SUFFIX}"


def motion_columns(reducers: Sequence[str]) -> list[str]:
    """``knn_kept``, then ``R_moved`` per reducer: the last columns of every table."""
    return [KNN_KEPT_COLUMN, *(moved_column(r) for r in reducers)]


def generated_column(name: str) -> str | None:
    """Which generated column ``name`` is (a phrase for an error), or None when a metadata
    column may use it. Layout columns of every reducer count, chosen or not."""
    if name in IDENTITY_COLUMNS:
        return f"an identity column ({', '.join(IDENTITY_COLUMNS)})"
    if name == LABEL_COLUMN:
        return "the label column (label_key)"
    if name == CLUSTER_COLUMN:
        return "the cluster column (clusters)"
    if name in {c for r in REDUCERS for c in layout_columns(r, len(AXES))}:
        return f"a layout column (R_x, R_y, R_z of every reducer: {', '.join(REDUCERS)})"
    if name == KNN_KEPT_COLUMN or name in {moved_column(r) for r in REDUCERS}:
        return (f"a motion column ({KNN_KEPT_COLUMN}, R{MOVED_SUFFIX} of every reducer: "
                f"{', '.join(REDUCERS)})")
    if name in MOVER_COLUMNS:
        return f"a column of the movers table ({', '.join(MOVER_COLUMNS)})"
    if name.startswith(INTERNAL_PREFIX):
        return f"the projector's internal columns (names starting with {INTERNAL_PREFIX!r})"
    return None


def _cell(value: Any) -> Any:
    """A plain Python value for a table cell (numpy scalars and arrays are not)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _motion_cell(value: Any) -> float | None:
    """A motion cell: a float, or None (empty) where it is not known."""
    v = float(value)
    return v if np.isfinite(v) else None


def table_columns(sample: EpochSample, identity: RunIdentity, clusters: np.ndarray | None,
                  layouts: Mapping[str, np.ndarray], knn_kept: np.ndarray | None = None,
                  moved: Mapping[str, np.ndarray] | None = None) -> dict[str, list[Any]]:
    """The contract's columns, in order, as plain lists of length N.

    ``sample_id``, ``epoch``, ``step``, ``val_index``, ``dataloader_idx`` (with several
    validation dataloaders), each metadata key, ``label`` (when labels are set), ``cluster``
    (when clusters are computed), then ``R_x``, ``R_y`` (``R_z``) per reducer, then the motion
    columns: ``knn_kept`` and ``R_moved`` per reducer (None where unknown: a new point, a
    chain's first run, or ``knn_kept`` / ``moved`` not given). Image columns hold uint8
    ``(H, W, C)`` arrays. :func:`run_result` calls it once per run; sinks read the result's
    ``columns``.
    """
    n = len(sample)
    sample_id, epoch, step, val_index, dataloader_idx = IDENTITY_COLUMNS
    cols: dict[str, list[Any]] = {
        sample_id: [_cell(v) for v in sample.sample_ids],
        epoch: [identity.epoch] * n,
        step: [identity.step] * n,
        val_index: [identity.val_index] * n,
    }
    if sample.dataloader_idx is not None:
        cols[dataloader_idx] = [int(v) for v in sample.dataloader_idx]
    images = set(sample.image_columns())
    for key, values in sample.metadata.items():
        cols[key] = list(values) if key in images else [_cell(v) for v in values]
    if sample.labels is not None:
        cols[LABEL_COLUMN] = [_cell(v) for v in sample.labels]
    if clusters is not None:
        cols[CLUSTER_COLUMN] = [_cell(v) for v in clusters]
    for reducer, layout in layouts.items():
        for j, col in enumerate(layout_columns(reducer, layout.shape[1])):
            cols[col] = [float(v) for v in layout[:, j]]
    empty: list[Any] = [None] * n
    cols[KNN_KEPT_COLUMN] = empty if knn_kept is None else [_motion_cell(v) for v in knn_kept]
    for reducer in layouts:
        values = (moved or {}).get(reducer)
        cols[moved_column(reducer)] = empty if values is None else [
            _motion_cell(v) for v in values]
    return cols


def run_result(
    sample: EpochSample, identity: RunIdentity, layouts: Mapping[str, np.ndarray] | None = None,
    *, metrics: Mapping[str, float] | None = None, clusters: np.ndarray | None = None,
    lineage: Sequence[Mapping[str, Any]] | None = None,
    per_label: Sequence[Mapping[str, Any]] | None = None,
    movers: Mapping[str, np.ndarray] | None = None, knn: np.ndarray | None = None,
    knn_kept: np.ndarray | None = None, moved: Mapping[str, np.ndarray] | None = None,
) -> RunResult:
    """The frozen :class:`~lightning_embproj.results.RunResult` of one run, its contract
    columns computed here, once, for every sink. ``knn_kept`` and ``moved`` (reducer ->
    per-point displacement): the run's motion since the previous run
    (:class:`~lightning_embproj.metrics.scores.RunScores`), the motion columns' values.

    Example:
        >>> from lightning_embproj.results import EpochSample, RunIdentity
        >>> s = EpochSample("z", np.array([5, 9]), ["a", "b"], np.zeros((2, 3), np.float32))
        >>> r = run_result(s, RunIdentity(val_index=4, epoch=1, step=30),
        ...                {"pca": np.array([[0.0, 1.0], [2.0, 3.0]])})
        >>> r.columns["val_index"], r.columns["pca_y"]
        ((4, 4), (1.0, 3.0))
        >>> r.metrics["silhouette"] = 1.0
        Traceback (most recent call last):
        ...
        TypeError: 'mappingproxy' object does not support item assignment
    """
    sample = frozen_sample(sample)
    layouts = dict(layouts or {})
    return RunResult(
        sample, identity.epoch, identity.step, layouts, knn, val_index=identity.val_index,
        chain=identity.chain, stage=identity.stage, metrics=dict(metrics or {}),
        clusters=clusters, lineage=lineage, per_label=per_label, movers=movers,
        columns=table_columns(sample, identity, clusters, layouts, knn_kept, moved),
        image_columns=tuple(sample.image_columns()),
    )


def vector_cells(embeddings: np.ndarray, max_dims: int = MAX_VECTOR_DIMS) -> list[list[float]]:
    """Each point's vector as a list of floats for a table cell: as it is with at most
    ``max_dims`` dims; else its first ``max_dims`` principal components (PCA of this run's
    points, centred, each component's sign fixed so its largest loading is positive; fewer
    points than ``max_dims`` pad with zeros), so W&B's own 2D projection panel can use it.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
        >>> len(vector_cells(x)[0]), len(vector_cells(x, 4)[0])
        (6, 4)
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[1] > max_dims:
        centred = x - x.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        vt = vt[:max_dims]
        vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
        reduced = centred @ vt.T
        x = np.zeros((len(x), max_dims))
        x[:, : reduced.shape[1]] = reduced
    # 6 significant digits of the largest value: short JSON, finer than float16 storage
    top = float(np.abs(x).max()) if x.size else 0.0
    decimals = max(0, 6 - int(np.ceil(np.log10(top)))) if top > 0 else 6
    return np.round(x, decimals).tolist()


def mover_columns(result: RunResult, columns: Mapping[str, Sequence[Any]] | None = None,
                  ) -> dict[str, list[Any]]:
    """The movers of a run with their contract columns: ``kind``, ``overlap``,
    ``foreign_fraction``, then the run's table columns (``columns``, default the result's
    own) for those rows."""
    movers = result.movers or {}
    index = [int(i) for i in movers.get("index", [])]
    kind, overlap, foreign = MOVER_COLUMNS
    cols: dict[str, list[Any]] = {
        kind: [str(v) for v in movers.get(kind, [])],
        overlap: [_cell(v) for v in movers.get(overlap, [])],
        foreign: [_cell(v) for v in movers.get(foreign, [])],
    }
    for name, values in (result.columns if columns is None else columns).items():
        cols[name] = [values[i] for i in index]
    return cols
