"""What lands in W&B: fixed columns when a reducer fails once, one evolution row group per
validation run, and one picture per reducer and run with fixed axes.

Real fits log into an offline ``WandbLogger`` run; the run's files and its ``run-*.wandb`` log
are read back (tests/wandb_records.py). Sink-level tests feed real projections from the pipeline
into a real offline run.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.loggers import WandbLogger
from wandb_records import history, scalars

import lightning_embproj.reduce.dispatch as reduce_module
from lightning_embproj import EmbeddingProjector
from lightning_embproj.metrics.scores import epoch_metrics
from lightning_embproj.reduce.project import ReduceSettings, reduce_layouts
from lightning_embproj.results import EpochSample, Projection, RunIdentity, RunResult
from lightning_embproj.runtime.warn import ProjectorWarning, WarnOnce
from lightning_embproj.sinks import palette
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.plot import HEIGHT, WIDTH, render, widen
from lightning_embproj.sinks.wandb_history import EvolutionHistory
from lightning_embproj.sinks.wandb_sink import WandbSink
from lightning_embproj.sinks.wandb_tables import fixed_columns

IMAGE_BUDGET = 150 * 1024


def _images(root: Any, name: str, reducer: str) -> list[str]:
    media = os.path.join(str(root), "**", "offline-run-*", "files", "media", "images")
    return glob.glob(os.path.join(media, "embproj", name, f"{reducer}_plot_*.png"),
                     recursive=True)


def _finish() -> None:
    """Finish the run and stop wandb's service: only then is the offline run log complete
    (``wandb.finish`` alone returned with the last 10-30 KB of ``run-*.wandb`` unwritten)."""
    import wandb

    wandb.finish()
    wandb.teardown()


def _projector_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]


def _write_all(sink: WandbSink, projections: list[RunResult]) -> list[str]:
    """Write every projection, finish the run; the projector warnings that were raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in projections:
            sink.write(p)
    _finish()
    return _projector_warnings(caught)


# -- a reducer failing once, on a real fit --------------------------------------------------------
@pytest.mark.parametrize("failed", [1, 0], ids=["second-run", "first-run"])
def test_tsne_failing_in_one_run_stays_local_in_wandb(
    tmp_path, wandb_offline, monkeypatch, failed
):
    import matplotlib.pyplot as plt

    import lightning_embproj.reduce.project as pipeline_module

    calls: list[int] = []

    def failing_once(real: Any) -> Any:
        def tsne(*args: Any, **kwargs: Any) -> np.ndarray:
            calls.append(1)
            if len(calls) == failed + 1:
                raise FloatingPointError("gradient of the KL divergence is NaN")
            return real(*args, **kwargs)
        return tsne

    # the first run's t-SNE is reduce.tsne, later runs continue it with tsne_next
    monkeypatch.setattr(reduce_module, "tsne", failing_once(reduce_module.tsne))
    monkeypatch.setattr(pipeline_module, "tsne_next", failing_once(pipeline_module.tsne_next))
    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=60,
                                   output_dir=str(tmp_path / "out"))
    train, val = loaders(n_train=128, n_val=60, batch_size=32)
    t = trainer(tmp_path, [projector], max_epochs=4, limit_train_batches=2, logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DigitsModel(), train, val)
        assert projector.flush(timeout=120)
    _finish()

    assert len(calls) == 4
    warned = _projector_warnings(caught)
    assert len(warned) == 1 and "reducer 'tsne' failed" in warned[0]
    assert "(FloatingPointError: gradient of the KL divergence is NaN)" in warned[0]
    # every run's table, with the same columns; the failed run's t-SNE cells are null
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert len(tables) == 4
    columns = tables[0]["columns"]
    assert columns[-7:] == ["pca_x", "pca_y", "tsne_x", "tsne_y", "knn_kept", "pca_moved",
                            "tsne_moved"]
    assert all(table["columns"] == columns for table in tables)
    tsne = [columns.index("tsne_x"), columns.index("tsne_y")]
    moved = columns.index("tsne_moved")
    for run, table in enumerate(tables):
        cells = [row[j] for row in table["data"] for j in tsne]
        assert len(table["data"]) == 60
        if run == failed:
            assert cells == [None] * 120
        else:
            assert all(isinstance(v, float) for v in cells)
        # t-SNE motion needs this run's and the previous run's t-SNE layouts
        known = run not in (0, failed, failed + 1)
        assert all((row[moved] is not None) == known for row in table["data"])
    # the later runs' scalars are all logged, with the trainer's step
    steps = [step for step, _ in scalars(wandb_offline, "embproj/embeddings/silhouette")]
    assert len(steps) == 4 and steps == sorted(steps)
    trust = scalars(wandb_offline, "embproj/embeddings/tsne/trustworthiness")
    assert [step for step, _ in trust] == [s for run, s in enumerate(steps) if run != failed]
    # the movers of every run, with the run's table columns after the movers' own
    movers = wandb_tables(wandb_offline, "embproj/embeddings/movers")
    assert len(movers) == 4
    for table in movers:
        assert table["columns"] == ["kind", "overlap", "foreign_fraction", *columns]
    # the evolution table grows by one run each time, columns aligned, the failure kept local
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    assert [len(table["data"]) for table in evolution] == [60, 120, 180, 240]
    last = evolution[-1]
    assert last["columns"] == columns
    epoch_col = columns.index("epoch")
    for row in last["data"]:
        lost = row[epoch_col] == failed  # one validation run per epoch here
        assert (row[tsne[0]] is None) == lost and (row[tsne[1]] is None) == lost
    # one picture per reducer and run that has its layout, each within the budget
    pca_images, tsne_images = (_images(wandb_offline, "embeddings", r) for r in ("pca", "tsne"))
    assert len(pca_images) == 4 and len(tsne_images) == 3
    assert all(0 < os.path.getsize(f) < IMAGE_BUDGET for f in pca_images + tsne_images)
    logged = [row for row in history(wandb_offline) if "embproj/embeddings/silhouette" in row]
    assert [row.get("embproj/embeddings/pca_plot/_type") for row in logged] == ["image-file"] * 4
    assert [row.get("embproj/embeddings/tsne_plot/_type") for row in logged] == [
        None if run == failed else "image-file" for run in range(4)
    ]
    assert plt.get_fignums() == []  # rendered without pyplot's global figures


def test_several_validation_runs_per_epoch_each_keep_their_rows(tmp_path, wandb_offline):
    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30)
    train, val = loaders(n_train=128, n_val=30, batch_size=16)
    t = trainer(tmp_path, [projector], max_epochs=2, val_check_interval=0.5, logger=logger)
    t.fit(DigitsModel(), train, val)
    assert projector.flush(timeout=60)
    _finish()

    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert len(tables) == 4  # two validation runs in each of two epochs
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    cols = evolution[-1]["columns"]
    runs = {(row[cols.index("epoch")], row[cols.index("step")]) for row in evolution[-1]["data"]}
    assert len(evolution[-1]["data"]) == 4 * 30
    assert sorted(runs) == [(0, 4), (0, 8), (1, 12), (1, 16)]
    assert len(_images(wandb_offline, "embeddings", "pca")) == 4


# -- the sink on a real offline run ------------------------------------------------------------
def _projections(n_runs: int, n: int = 80, seed: int = 0) -> list[RunResult]:
    """Consecutive real projections (PCA + t-SNE) of drifting clustered embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    base = rng.normal(size=(4, 8))[labels] * 4 + rng.normal(size=(n, 8))
    out: list[RunResult] = []
    previous = None
    for run in range(n_runs):
        x = (base + 0.3 * run * rng.normal(size=base.shape)).astype(np.float32)
        sample = EpochSample("emb", np.arange(n, dtype=np.int64) * 7 + 3, list(range(n)), x,
                             labels=labels)
        identity = RunIdentity(run, epoch=run // 2, step=10 * (run + 1))
        layouts = reduce_layouts(sample, previous,
                                 ReduceSettings(["pca", "tsne"], perplexity=10.0))
        metrics = epoch_metrics(Projection(sample, identity.epoch, identity.step, layouts),
                                previous)
        p = run_result(sample, identity, layouts, metrics=metrics)
        out.append(p)
        previous = p
    return out


def _without(result: RunResult, reducer: str) -> RunResult:
    """``result`` as if ``reducer`` had failed in that run."""
    layouts = {r: v for r, v in result.layouts.items() if r != reducer}
    return run_result(result.sample, result.identity, layouts, metrics=result.metrics)


@pytest.fixture
def offline_run(wandb_offline):
    import wandb

    run = wandb.init(project="embproj-test", dir=str(wandb_offline), mode="offline")
    yield run
    _finish()


def test_evolution_table_is_logged_twice_per_doubling_and_complete_at_the_end(
    wandb_offline, offline_run
):
    """Runs 1-4, 6, 8, then once more by finish: the last table holds all 9 runs, each row
    group at the step of its own run; the per-run tables are logged every run."""
    runs = _projections(9, n=30)
    sink = WandbSink(offline_run, WarnOnce(), reducers=["pca", "tsne"], n_components=2)
    for p in runs:
        sink.write(p)
    sink.finish()
    _finish()
    assert len(wandb_tables(wandb_offline, "embproj/emb")) == 9
    evolution = wandb_tables(wandb_offline, "embproj/emb/evolution")
    assert [len(t["data"]) for t in evolution] == [30 * r for r in (1, 2, 3, 4, 6, 8, 9)]
    cols = evolution[-1]["columns"]
    assert sorted({row[cols.index("step")] for row in evolution[-1]["data"]}) == [
        p.step for p in runs
    ]
    logged = [row["trainer/global_step"] for row in history(wandb_offline)
              if any(k.startswith("embproj/emb/evolution") for k in row)]
    assert logged == [runs[i - 1].step for i in (1, 2, 3, 4, 6, 8, 9)]


def test_first_run_without_tsne_still_has_its_columns(wandb_offline, offline_run):
    runs = _projections(3)
    runs[0] = _without(runs[0], "tsne")  # t-SNE failed in the very first run
    sink = WandbSink(offline_run, WarnOnce(), reducers=["pca", "tsne"], n_components=2)
    for p in runs:
        sink.write(p)
    _finish()
    tables = wandb_tables(wandb_offline, "embproj/emb")
    assert [t["columns"][-7:] for t in tables] == [
        ["pca_x", "pca_y", "tsne_x", "tsne_y", "knn_kept", "pca_moved", "tsne_moved"]] * 3
    assert all(row[-4] is None and row[-5] is None for row in tables[0]["data"])
    evolution = wandb_tables(wandb_offline, "embproj/emb/evolution")
    assert [len(t["data"]) for t in evolution] == [80, 160, 240]
    assert evolution[-1]["columns"] == tables[0]["columns"]
    assert len(_images(wandb_offline, "emb", "tsne")) == 2
    assert len(_images(wandb_offline, "emb", "pca")) == 3


def test_a_failing_log_call_does_not_poison_later_runs(wandb_offline, offline_run):
    real_log, calls = offline_run.log, []

    def log_failing_once(data: dict, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("backend went away")
        real_log(data, *args, **kwargs)

    offline_run.log = log_failing_once
    sink = WandbSink(offline_run, WarnOnce(), reducers=["pca", "tsne"])
    errors = []
    for p in _projections(4):
        try:
            sink.write(p)
        except ConnectionError as err:
            errors.append(err)
    _finish()
    assert len(errors) == 1
    evolution = wandb_tables(wandb_offline, "embproj/emb/evolution")
    # the run whose log call failed still joins the evolution table of the next run
    assert [len(t["data"]) for t in evolution] == [80, 240, 320]
    assert len(wandb_tables(wandb_offline, "embproj/emb")) == 3
    assert len(scalars(wandb_offline, "embproj/emb/silhouette")) == 3


def test_tables_follow_the_installed_row_limit(wandb_offline, offline_run, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb.Table, "MAX_ROWS", 50)
    sink = WandbSink(offline_run, WarnOnce(), reducers=["pca", "tsne"])
    msgs = _write_all(sink, _projections(3))
    assert sink.max_rows == 50
    assert [len(t["data"]) for t in wandb_tables(wandb_offline, "embproj/emb")] == [50] * 3
    assert all(len(t["data"]) <= 50
               for t in wandb_tables(wandb_offline, "embproj/emb/evolution"))
    assert len(msgs) == 2 and "50-row table limit" in msgs[0] and "thinned" in msgs[1]


def test_without_matplotlib_the_pictures_are_skipped_with_one_warning(
    wandb_offline, offline_run, monkeypatch
):

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    sink = WandbSink(offline_run, WarnOnce(), reducers=["pca", "tsne"])
    msgs = _write_all(sink, _projections(2))
    assert len(msgs) == 1 and "need matplotlib" in msgs[0]
    assert _images(wandb_offline, "emb", "pca") == []
    assert len(wandb_tables(wandb_offline, "embproj/emb")) == 2


# -- pure parts ------------------------------------------------------------------------------
def test_axis_limits_start_with_a_margin_widen_when_needed_and_never_shrink():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(200, 2))
    limits = widen(None, first, margin=0.05)
    span = first.max(0) - first.min(0)
    np.testing.assert_allclose(limits, [first[:, 0].min() - 0.05 * span[0],
                                        first[:, 0].max() + 0.05 * span[0],
                                        first[:, 1].min() - 0.05 * span[1],
                                        first[:, 1].max() + 0.05 * span[1]])
    for scale in [0.5, 1.0, 3.0, 0.2, 5.0]:
        points = rng.normal(size=(200, 2)) * scale + 0.5
        new = widen(limits, points)
        assert new[0] <= limits[0] and new[1] >= limits[1]
        assert new[2] <= limits[2] and new[3] >= limits[3]
        assert (points[:, 0] > new[0]).all() and (points[:, 0] < new[1]).all()
        assert (points[:, 1] > new[2]).all() and (points[:, 1] < new[3]).all()
        lo, hi = points.min(axis=0), points.max(axis=0)
        if lo[0] >= limits[0] and hi[0] <= limits[1] and lo[1] >= limits[2] and hi[1] <= limits[3]:
            assert new == limits  # nothing outside: the axes stay put
        limits = new
    nan_only = np.full((3, 2), np.nan)
    assert widen(limits, nan_only) == limits


def test_palette_colours_follow_the_value_not_the_order_seen():
    first = palette.colour_map(["b", "a", "c", 3, 12])
    again = palette.colour_map([12, "c", 3, "a", "b", "zebra"])
    assert all(again[k] == first[k] for k in first)  # same value, same colour, any order
    assert palette.colours([3, 3.0, "3", np.int64(3), True, 1]) == [palette.CATEGORICAL[3]] * 4 + [
        palette.CATEGORICAL[1]] * 2
    assert palette.colours([-1, None, float("nan")]) == [palette.NOISE] + [palette.MISSING] * 2
    # 32 live ids never look alike, whatever they are: ids that share a home colour move on.
    live = [0, 32, 64, 5, 37, 100, 131, 7, 40, 1000]
    assert len(set(palette.colour_map(live).values())) == len(live)
    assert len(set(palette.colour_map(range(32)).values())) == 32


def test_render_draws_an_image_without_pyplot_figures():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(300, 3))  # a 3-D layout is drawn by its first two axes
    image = render(xy, widen(None, xy), "emb pca: epoch 0", rng.integers(0, 30, 300).tolist())
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
    assert (image != 255).any() and plt.get_fignums() == []


def test_fixed_columns_fill_a_missing_reducer_with_none():
    p = _without(_projections(1, n=40)[0], "tsne")
    cols = fixed_columns(p, ["pca", "tsne"], 2)
    assert list(cols)[-7:] == ["pca_x", "pca_y", "tsne_x", "tsne_y", "knn_kept", "pca_moved",
                               "tsne_moved"]
    assert cols["tsne_x"] == [None] * 40 and all(isinstance(v, float) for v in cols["pca_y"])
    assert cols["tsne_moved"] == [None] * 40
    # the configured order, whatever order the layouts came in
    assert list(fixed_columns(p, ["tsne", "pca"], 2))[-7:] == [
        "tsne_x", "tsne_y", "pca_x", "pca_y", "knn_kept", "tsne_moved", "pca_moved"]


def test_evolution_history_keys_runs_not_epochs():
    h = EvolutionHistory(max_rows=1_000)
    for run in range(8):  # eight validation runs over two epochs
        h.add((run, run // 4, 10 * run), {"val_index": [run] * 5}, keys=list(range(5)))
    assert len(h.runs) == 8 and len(h) == 40
    assert h.columns()["val_index"] == [run for run in range(8) for _ in range(5)]
    h.add((7, 1, 70), {"val_index": [7] * 5}, keys=list(range(5)))  # the same run again
    assert len(h) == 40
    mixed = EvolutionHistory()
    mixed.add(0, {"a": [1], "b": [2]}, keys=[0])
    mixed.add(1, {"a": [3]}, keys=[0])
    assert mixed.columns() == {"a": [1, 3], "b": [2, None]}
