"""The table layout of the output contract, shared by every sink.

Example:
    >>> layout_columns("tsne", 3)
    ['tsne_x', 'tsne_y', 'tsne_z']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.types import Projection

AXES = ("x", "y", "z")


def layout_columns(reducer: str, n_components: int) -> list[str]:
    """Column names of one reducer's layout: ``R_x``, ``R_y`` (and ``R_z`` in 3-D)."""
    return [f"{reducer}_{axis}" for axis in AXES[:n_components]]


def _cell(value: Any) -> Any:
    """A plain Python value for a table cell (numpy scalars and arrays are not)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def table_columns(projection: Projection, include_images: bool = True) -> dict[str, list[Any]]:
    """The contract's columns, in order, as plain lists of length N.

    ``sample_id``, ``epoch``, ``step``, ``val_index``, ``dataloader_idx`` (with several
    validation dataloaders), each metadata key, ``label`` (when labels are set), ``cluster``
    (when clusters are computed), then ``R_x``,
    ``R_y`` (``R_z``) per reducer. Image columns hold uint8 ``(H, W, C)`` arrays;
    ``include_images=False`` drops them.
    """
    sample = projection.sample
    n = len(sample)
    cols: dict[str, list[Any]] = {
        "sample_id": [_cell(v) for v in sample.sample_ids],
        "epoch": [projection.epoch] * n,
        "step": [projection.step] * n,
        "val_index": [projection.val_index] * n,
    }
    if sample.dataloader_idx is not None:
        cols["dataloader_idx"] = [int(v) for v in sample.dataloader_idx]
    images = set(sample.image_columns())
    for key, values in sample.metadata.items():
        if key in images:
            if include_images:
                cols[key] = list(values)
            continue
        cols[key] = [_cell(v) for v in values]
    if sample.labels is not None:
        cols["label"] = [_cell(v) for v in sample.labels]
    if projection.clusters is not None:
        cols["cluster"] = [_cell(v) for v in projection.clusters]
    for reducer, layout in projection.layouts.items():
        for j, col in enumerate(layout_columns(reducer, layout.shape[1])):
            cols[col] = [float(v) for v in layout[:, j]]
    return cols


def mover_columns(projection: Projection) -> dict[str, list[Any]]:
    """The movers of an epoch with their contract columns: ``kind``, ``overlap``,
    ``foreign_fraction``, then the same columns as the epoch's table for those rows."""
    movers = projection.movers or {}
    index = [int(i) for i in movers.get("index", [])]
    cols: dict[str, list[Any]] = {
        "kind": [str(v) for v in movers.get("kind", [])],
        "overlap": [_cell(v) for v in movers.get("overlap", [])],
        "foreign_fraction": [_cell(v) for v in movers.get("foreign_fraction", [])],
    }
    for name, values in table_columns(projection).items():
        cols[name] = [values[i] for i in index]
    return cols
