"""W&B sink: one ``wandb.Table`` per epoch and set, scalar metrics, 3-D point clouds.

Logs into the run of the Trainer's ``WandbLogger`` (never creates or finishes a run), with the
``trainer/global_step`` the ``WandbLogger`` uses as step metric, and no explicit wandb ``step``:
a result computed in the background is then never dropped as "step must only increase".

Example:
    >>> sink = WandbSink(run)                     # doctest: +SKIP
    >>> sink.write(projection)                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj.columns import mover_columns, table_columns
from lightning_embproj.evolution import WANDB_MAX_ROWS, EvolutionHistory
from lightning_embproj.types import Projection
from lightning_embproj.warn import WarnOnce

PREFIX = "embproj"
STEP_METRIC = "trainer/global_step"


def table_key(name: str) -> str:
    """W&B key of a set's per-epoch table: ``embproj/NAME``."""
    return f"{PREFIX}/{name}"


def metric_key(name: str, metric: str) -> str:
    """W&B key of one scalar: ``embproj/NAME/<metric>``."""
    return f"{PREFIX}/{name}/{metric}"


def build_table(columns: dict[str, list[Any]], image_columns: Sequence[str] = ()) -> Any:
    """A ``wandb.Table`` of the given columns; image columns become ``wandb.Image`` cells."""
    import wandb

    cols = dict(columns)
    for key in image_columns:
        cols[key] = [_image(img) for img in cols[key]]
    rows = [list(row) for row in zip(*cols.values(), strict=True)]
    return wandb.Table(columns=list(cols), data=rows)


def _first_rows(columns: dict[str, list[Any]], keys: np.ndarray, n: int) -> dict[str, list[Any]]:
    """The ``n`` rows with the smallest keys (the same points every epoch), in table order."""
    keep = np.sort(np.argsort(keys, kind="stable")[:n])
    return {c: [v[i] for i in keep] for c, v in columns.items()}


def _image(img: np.ndarray) -> Any:
    import wandb

    return wandb.Image(img[..., 0] if img.shape[-1] == 1 else img)


def label_categories(labels: np.ndarray | None, n: int) -> np.ndarray:
    """W&B point-cloud categories (1..14, its colour palette) for the labels, in order seen."""
    if labels is None:
        return np.ones(n)
    _, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return (codes % 14 + 1).astype(np.float64)


def build_payload(projection: Projection, max_rows: int = WANDB_MAX_ROWS) -> dict[str, Any]:
    """Everything one epoch logs for one set, keyed as in the output contract."""
    import wandb

    name = projection.name
    columns = table_columns(projection)
    if len(projection.sample) > max_rows:
        columns = _first_rows(columns, projection.sample.keys, max_rows)
    images = projection.sample.image_columns()
    payload: dict[str, Any] = {table_key(name): build_table(columns, images)}
    if projection.movers is not None and projection.movers["index"].size:
        payload[metric_key(name, "movers")] = build_table(mover_columns(projection), images)
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
    """Log projections into an existing W&B run, plus one evolution table per set.

    The evolution table ``embproj/NAME/evolution`` holds every kept epoch's rows (no images),
    thinned by :class:`EvolutionHistory` to stay below W&B's row limit. With ``view_root``,
    :meth:`finish` logs each set's final slider view (``<view_root>/embproj/NAME/view.html``)
    as ``wandb.Html`` under ``embproj/NAME/view``: once, since each copy is ~5 MB.
    """

    def __init__(
        self, run: Any, warn: WarnOnce | None = None, max_rows: int = 9_000,
        view_root: str | None = None,
    ) -> None:
        self.run = run
        self.warn = warn or WarnOnce()
        self.max_rows = max_rows
        self.view_root = view_root
        self.history: dict[str, EvolutionHistory] = {}
        self.last_step: dict[str, int] = {}

    def write(self, projection: Projection) -> None:
        name = projection.name
        if len(projection.sample) > WANDB_MAX_ROWS:
            self.warn(
                f"wandb:rows:{name}",
                f"{len(projection.sample)} points of {name!r} exceed W&B's {WANDB_MAX_ROWS}-row "
                f"table limit; the W&B table keeps {WANDB_MAX_ROWS} of them (the same points "
                f"every epoch), the local files keep all",
            )
        payload = build_payload(projection)
        history = self.history.setdefault(name, EvolutionHistory(self.max_rows))
        if history.add(projection.epoch, table_columns(projection, include_images=False),
                       projection.sample.keys.tolist()):
            self.warn(
                f"wandb:evolution:{name}",
                f"the evolution table of {name!r} is thinned to stay under {self.max_rows} "
                f"rows: {history.rows_per_epoch} points per epoch, every {history.stride}. "
                f"epoch kept (plus the newest); the per-epoch tables and local files keep all",
            )
        payload[metric_key(name, "evolution")] = build_table(history.columns())
        self.run.log(payload)
        self.last_step[name] = projection.step

    def finish(self) -> None:
        """Log the slider view of every set written so far (no-op without ``view_root``)."""
        if self.view_root is None:
            return
        import wandb

        from lightning_embproj.sinks.html_view import VIEW_FILE
        from lightning_embproj.sinks.local import set_dir

        for name, step in self.last_step.items():
            path = set_dir(self.view_root, name) / VIEW_FILE
            if path.is_file():
                html = wandb.Html(path.read_text(encoding="utf-8"), inject=False)
                self.run.log({metric_key(name, "view"): html, STEP_METRIC: step})
