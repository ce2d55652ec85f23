"""W&B sink: one ``wandb.Table`` per validation run and set, scalars, pictures, 3-D clouds.

Logs into the run of the Trainer's ``WandbLogger`` (never creates or finishes a run), with the
``trainer/global_step`` the ``WandbLogger`` uses as step metric, and no explicit wandb ``step``:
a result computed in the background is then never dropped as "step must only increase".

Every table of a set has the same columns in every run: the configured reducers' ``R_x``, ``R_y``
(``R_z``) are always there, ``None`` in a run where that reducer failed, so the evolution table
stays one table and a failure stays local to its run. Each part of a run's payload (tables,
pictures, ...) is built on its own: one that fails is left out of that run with one warning per
kind of failure, and the rest is logged.

Every part is built from the run's precomputed columns (``RunResult.columns``): nothing here
computes the contract table again.

Example:
    >>> sink = WandbSink(run, reducers=["pca", "tsne"])   # doctest: +SKIP
    >>> sink.write(result)                               # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lightning_embproj.results import RunResult
from lightning_embproj.runtime.trace import stage
from lightning_embproj.runtime.warn import WarnOnce
from lightning_embproj.sinks import palette
from lightning_embproj.sinks.columns import (
    VECTOR_COLUMN,
    mover_columns,
    vector_cells,
)
from lightning_embproj.sinks.local import LINEAGE_COLUMNS
from lightning_embproj.sinks.plot import Limits, render, widen
from lightning_embproj.sinks.wandb_history import (
    EVOLUTION_MAX_ROWS,
    WandbHistory,
    evolution_due,
)
from lightning_embproj.sinks.wandb_tables import (
    build_table,
    first_rows,
    fixed_columns,
    installed_row_limit,
    plain_cell,
)

PREFIX = "embproj"
STEP_METRIC = "trainer/global_step"


def table_key(name: str) -> str:
    """W&B key of a set's per-epoch table: ``embproj/NAME``."""
    return f"{PREFIX}/{name}"


def metric_key(name: str, metric: str) -> str:
    """W&B key of one scalar: ``embproj/NAME/<metric>``."""
    return f"{PREFIX}/{name}/{metric}"


def label_rgb(labels: np.ndarray | None, n: int) -> np.ndarray:
    """``(n, 3)`` RGB (0-255) of each point for W&B's point clouds: the labels' colours of
    the one palette (:mod:`lightning_embproj.sinks.palette`), as in every other picture."""
    if labels is None:
        return np.tile(np.array(palette.hex_rgb(palette.SINGLE), dtype=np.float64), (n, 1))
    return np.array([palette.hex_rgb(c) for c in palette.colours(list(labels))],
                    dtype=np.float64).reshape(n, 3)


class WandbSink:
    """Log projections into an existing W&B run, plus one evolution table per set.

    Per run and set: the table ``embproj/NAME``, the movers table ``embproj/NAME/movers``, the
    scalars ``embproj/NAME/<metric>``, a picture per reducer ``embproj/NAME/R_plot`` (with
    matplotlib: fixed axes and colours across runs, for W&B's image slider), ``R_3d`` clouds in
    3-D, and the evolution table ``embproj/NAME/evolution``: every kept validation run's rows
    (no images), thinned by :class:`EvolutionHistory` to stay below the run-file row limit,
    with the lineage table ``embproj/NAME/lineage`` (every run's cluster events), both logged
    at a set's runs 1-4, 6, 8, 12, 16, ... (:func:`evolution_due`) and, complete, by
    :meth:`finish`.
    With ``view``, :meth:`finish` logs each set's final slider view (``view(NAME)``: the view
    sink's last page, never read back from its file) as ``wandb.Html`` under
    ``embproj/NAME/view``: once, since each copy is ~5 MB.

    Args:
        run: the W&B run (``WandbLogger.experiment``).
        warn: warns once per topic.
        max_rows: rows of the evolution table (capped at the installed ``wandb.Table.MAX_ROWS``).
        view: set name -> the view's last page (None: no page).
        reducers: the configured reducers: their columns are in every table.
        n_components: 2 or 3, the layout columns per reducer.
        plots: log the ``R_plot`` pictures.
        history: the evolution and lineage rows logged to this W&B run so far (kept by the
            chain owner across ``fit`` / ``validate`` calls; a new one when None).
        vectors: the most dims of the per-run table's ``embedding`` column (each point's
            vector, PCA above that; :func:`~lightning_embproj.sinks.columns.vector_cells`);
            0: no such column. Only the per-run table has it (not movers, not evolution).
    """

    def __init__(
        self, run: Any, warn: WarnOnce | None = None, max_rows: int = EVOLUTION_MAX_ROWS,
        view: Callable[[str], str | None] | None = None, reducers: Sequence[str] = (),
        n_components: int = 2,
        plots: bool = True, history: WandbHistory | None = None, vectors: int = 0,
    ) -> None:
        self.run = run
        self.warn = warn or WarnOnce()
        self.row_limit = installed_row_limit()
        self.max_rows = min(max_rows, self.row_limit)
        self.view = view
        self.reducers = list(reducers)
        self.n_components = n_components
        self.plots = plots
        self.vectors = vectors
        self.history = history or WandbHistory(str(getattr(run, "id", "")), self.max_rows)
        if not self.history.sets:
            self.history.max_rows = self.max_rows
        self.last_step: dict[str, int] = {}  # sets written by this sink: their views are logged
        self.limits: dict[tuple[str, str], Limits] = {}
        # finish may run on the training thread while a late job still writes (an exception
        # whose drain timed out): one at a time.
        self._lock = threading.Lock()

    @property
    def run_id(self) -> str:
        """The W&B run's id."""
        return str(getattr(self.run, "id", "") or "")

    def write(self, projection: RunResult) -> None:
        """Log one validation run of one set (the ``run.log`` call itself may raise)."""
        with self._lock:
            self._write(projection)

    def remember(self, projection: RunResult) -> None:
        """Add a run this W&B run already got (before a kill) to the evolution and lineage
        history without logging it again; :meth:`finish` sends the tables."""
        with self._lock:
            columns = fixed_columns(projection, self._reducers_of(projection), self.n_components)
            self._evolution(projection, columns, {})
            self.history.of(projection.name).behind = True
            self.last_step[projection.name] = projection.step

    def _reducers_of(self, projection: RunResult) -> list[str]:
        for reducer in projection.layouts:  # without configured reducers: those seen so far
            if reducer not in self.reducers:
                self.reducers.append(reducer)
        return self.reducers

    def _write(self, projection: RunResult) -> None:
        name = projection.name
        columns = fixed_columns(projection, self._reducers_of(projection), self.n_components)
        payload: dict[str, Any] = {}
        self._part("table", projection, lambda: self._table(projection, columns, payload))
        self._part("movers", projection, lambda: self._movers(projection, columns, payload))
        for metric, value in projection.metrics.items():
            payload[metric_key(name, metric)] = value
        payload[metric_key(name, "epoch")] = projection.epoch
        self._part("3-D cloud", projection, lambda: self._clouds(projection, payload))
        if self.plots:
            self._part("plot", projection, lambda: self._plots(projection, columns, payload))
        self._part("evolution", projection,
                   lambda: self._evolution(projection, columns, payload))
        self._part("per-label table", projection, lambda: self._per_label(projection, payload))
        payload[STEP_METRIC] = projection.step
        try:
            with stage("W&B log"):
                self.run.log(payload)
        except BaseException:
            self.history.of(name).behind = True  # the tables this call carried did not land
            raise
        self.last_step[name] = projection.step

    def _history_tables(self, name: str) -> dict[str, Any]:
        """The evolution table and, with clusters, the lineage table of every run so far."""
        kept = self.history.of(name)
        out = {metric_key(name, "evolution"): build_table(kept.evolution.columns())}
        if kept.lineage:
            columns = dict(zip(LINEAGE_COLUMNS, map(list, zip(*kept.lineage, strict=True)),
                               strict=True))
            out[metric_key(name, "lineage")] = build_table(columns)
        return out

    def _per_label(self, p: RunResult, out: dict[str, Any]) -> None:
        if not p.per_label:
            return
        names = list(p.per_label[0])
        columns = {c: [plain_cell(row[c]) for row in p.per_label] for c in names}
        out[metric_key(p.name, "per_label")] = build_table(columns)

    def _part(self, what: str, projection: RunResult, build: Callable[[], None]) -> None:
        """Build one part of the payload; a failure leaves it out of this run, one warning."""
        try:
            with stage(f"W&B {what}"):
                build()
        except Exception as err:  # noqa: BLE001 - one part must not stop the others
            self.warn(
                f"wandb:{what}:{type(err).__name__}",
                f"the W&B {what} of {projection.name!r} failed at validation run "
                f"{projection.val_index} (epoch {projection.epoch}) and is left out of that run "
                f"({type(err).__name__}: {err}); the rest is logged and training continues",
            )

    def _table(self, p: RunResult, columns: dict[str, list[Any]], out: dict[str, Any]) -> None:
        if self.vectors:
            columns = {**columns, VECTOR_COLUMN: vector_cells(p.sample.embeddings, self.vectors)}
        if len(p.sample) > self.row_limit:
            self.warn(
                f"wandb:rows:{p.name}",
                f"{len(p.sample)} points of {p.name!r} exceed W&B's {self.row_limit}-row "
                f"table limit; the W&B table keeps {self.row_limit} of them (the same points "
                f"every run), the local files keep all",
            )
            columns = first_rows(columns, p.sample.keys, self.row_limit)
        out[table_key(p.name)] = build_table(columns, p.image_columns)

    def _movers(self, p: RunResult, columns: dict[str, list[Any]], out: dict[str, Any]) -> None:
        if p.movers is None or not p.movers["index"].size:
            return
        out[metric_key(p.name, "movers")] = build_table(mover_columns(p, columns),
                                                        p.image_columns)

    def _clouds(self, p: RunResult, out: dict[str, Any]) -> None:
        import wandb

        rgb = label_rgb(p.sample.labels, len(p.sample))
        for reducer, layout in p.layouts.items():
            if layout.shape[1] == 3:
                cloud = np.column_stack([layout, rgb])
                out[metric_key(p.name, f"{reducer}_3d")] = wandb.Object3D(cloud)

    def _plots(self, p: RunResult, columns: dict[str, list[Any]], out: dict[str, Any]) -> None:
        import wandb

        colour_by = "label" if "label" in columns else "cluster" if "cluster" in columns else None
        labels = columns[colour_by] if colour_by else None
        for reducer, layout in p.layouts.items():
            key = (p.name, reducer)
            self.limits[key] = widen(self.limits.get(key), layout)
            title = (f"{p.name} {reducer}: epoch {p.epoch}, step {p.step}, "
                     f"validation run {p.val_index}")
            try:
                image = render(layout, self.limits[key], title, labels,
                               legend_title=colour_by or "")
            except ImportError as err:
                self.plots = False
                self.warn(
                    "wandb:plot:import",
                    f"W&B pictures (R_plot) need matplotlib (pip install "
                    f"'lightning-embproj[view]'); they are skipped: {err}",
                )
                return
            out[metric_key(p.name, f"{reducer}_plot")] = wandb.Image(image)

    def _evolution(
        self, p: RunResult, columns: dict[str, list[Any]], out: dict[str, Any]
    ) -> None:
        kept = self.history.of(p.name)
        history = kept.evolution
        images = set(p.image_columns)  # the per-run table's columns, without images
        columns = {c: v for c, v in columns.items() if c not in images}
        run = (p.val_index, p.epoch, p.step)  # unique even where val_index is left at 0
        if p.lineage is not None:
            kept.add_lineage(p.val_index, [[p.val_index, p.epoch, p.step,
                                            *(r[c] for c in LINEAGE_COLUMNS[3:])]
                                           for r in p.lineage], self.max_rows)
        if history.add(run, columns, p.sample.keys.tolist()):
            self.warn(
                f"wandb:evolution:{p.name}",
                f"the evolution table of {p.name!r} {history.note()}; the per-run tables and "
                f"local files keep all",
            )
        kept.step = p.step
        kept.projected += 1
        kept.behind = not evolution_due(kept.projected)
        if not kept.behind:
            out.update(self._history_tables(p.name))

    def finish(self) -> None:
        """Log the evolution tables that missed their newest runs and the slider view of every
        set written so far (the view only with ``view``). A set whose log fails does not
        stop the others; the first failure is raised at the end."""
        with self._lock:
            failed: list[BaseException] = []
            for name, kept in sorted(self.history.sets.items()):
                if not kept.behind:
                    continue
                try:
                    self.run.log({**self._history_tables(name), STEP_METRIC: kept.step})
                    kept.behind = False
                except Exception as err:  # noqa: BLE001 - raised below, after the other sets
                    failed.append(err)
            try:
                self._log_views()
            except Exception as err:  # noqa: BLE001
                failed.append(err)
            if failed:
                raise failed[0]

    def _log_views(self) -> None:
        if self.view is None:
            return
        import wandb

        for name, step in self.last_step.items():
            page = self.view(name)
            if page is not None:
                html = wandb.Html(page, inject=False)
                self.run.log({metric_key(name, "view"): html, STEP_METRIC: step})
