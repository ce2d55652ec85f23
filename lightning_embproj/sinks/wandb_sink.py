"""W&B sink: one ``wandb.Table`` per epoch and set, scalar metrics, 3-D point clouds.

Logs into the run of the Trainer's ``WandbLogger`` (never creates or finishes a run), with the
``trainer/global_step`` the ``WandbLogger`` uses as step metric, and no explicit wandb ``step``:
a result computed in the background is then never dropped as "step must only increase".

Example:
    >>> sink = WandbSink(run)                     # doctest: +SKIP
    >>> sink.write(projection)                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.columns import table_columns
from lightning_embproj.types import Projection

PREFIX = "embproj"
STEP_METRIC = "trainer/global_step"


def table_key(name: str) -> str:
    """W&B key of a set's per-epoch table: ``embproj/NAME``."""
    return f"{PREFIX}/{name}"


def metric_key(name: str, metric: str) -> str:
    """W&B key of one scalar: ``embproj/NAME/<metric>``."""
    return f"{PREFIX}/{name}/{metric}"


def build_table(projection: Projection) -> Any:
    """The contract's table; image columns become ``wandb.Image`` thumbnails."""
    import wandb

    cols = table_columns(projection)
    for key in projection.sample.image_columns():
        cols[key] = [_image(img) for img in cols[key]]
    rows = [list(row) for row in zip(*cols.values(), strict=True)]
    return wandb.Table(columns=list(cols), data=rows)


def _image(img: np.ndarray) -> Any:
    import wandb

    return wandb.Image(img[..., 0] if img.shape[-1] == 1 else img)


def label_categories(labels: np.ndarray | None, n: int) -> np.ndarray:
    """W&B point-cloud categories (1..14, its colour palette) for the labels, in order seen."""
    if labels is None:
        return np.ones(n)
    _, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return (codes % 14 + 1).astype(np.float64)


def build_payload(projection: Projection) -> dict[str, Any]:
    """Everything one epoch logs for one set, keyed as in the output contract."""
    import wandb

    name = projection.name
    payload: dict[str, Any] = {table_key(name): build_table(projection)}
    for metric, value in projection.metrics.items():
        payload[metric_key(name, metric)] = value
    payload[metric_key(name, "epoch")] = projection.epoch
    categories = label_categories(projection.sample.labels, len(projection.sample))
    for reducer, layout in projection.layouts.items():
        if layout.shape[1] == 3:
            cloud = np.column_stack([layout, categories])
            payload[metric_key(name, f"{reducer}_3d")] = wandb.Object3D(cloud)
    payload[STEP_METRIC] = projection.step
    return payload


class WandbSink:
    """Log projections into an existing W&B run."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(self, projection: Projection) -> None:
        self.run.log(build_payload(projection))
