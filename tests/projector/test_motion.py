"""Real vs apparent motion per point (``knn_kept``, ``R_moved``, ``R/motion_explained``), the
local movers / per-label files, on real Trainer.fit runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from browser import launch_chromium
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.loggers import WandbLogger

from lightning_embproj import (
    EmbeddingProjector,
    read_metrics,
    read_movers,
    read_per_label,
    read_projections,
)

MOVING = 3  # the label whose embeddings move


class OneClassMoves(DigitsModel):
    """Frozen weights; the embeddings of label 3 only get an offset that grows with the epoch
    (a fixed random direction per sample, so their neighbourhoods change, not only their
    place)."""

    def __init__(self) -> None:
        super().__init__(frozen=True)
        self.offsets = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx, dataloader_idx)
        x, y = batch
        rows = torch.arange(len(y)) + batch_idx * 64  # the loader's batch size, unshuffled
        z = out["embeddings"].detach().clone()
        moving = y == MOVING
        z[moving] += 0.6 * self.current_epoch * self.offsets[rows[moving]]
        return {**out, "embeddings": z}


def _fit(tmp_path: Path, model: DigitsModel, **kw: Any) -> str:
    """Three validation runs of a fit; returns the projector's root."""
    train, val = loaders(n_val=300)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=300)
    t = trainer(tmp_path, [projector], max_epochs=3, **kw)
    t.fit(model, train, val)
    return str(projector.root)


def test_frozen_model_nothing_moves_and_tables_carry_the_columns(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    root = _fit(tmp_path, DigitsModel(frozen=True), logger=logger)
    wandb.finish()
    df = read_projections(root)
    first, later = df[df["val_index"] == 0], df[df["val_index"] > 0]
    assert first["knn_kept"].isna().all() and first["pca_moved"].isna().all()
    assert len(later) == 600 and (later["knn_kept"] == 1.0).all()
    moved = float(later["pca_moved"].abs().max())
    print(f"frozen model: max pca_moved from the second run on = {moved:.3g}")
    assert moved <= 1e-6
    metrics = read_metrics(root)
    assert metrics["pca/displacement"].iloc[1:].abs().max() <= 1e-6
    assert all(math.isnan(v) for v in metrics["pca/motion_explained"].iloc[1:])  # undefined
    # W&B: the run table and the movers table have the motion columns; a first run's are None
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert len(tables) == 3
    for k, table in enumerate(tables):
        assert table["columns"][-4:] == ["pca_x", "pca_y", "knn_kept", "pca_moved"]
        kept = [row[-2] for row in table["data"]]
        assert kept == ([None] * 300 if k == 0 else [1.0] * 300)
    # nothing changed: no "changed" movers, locally and in W&B
    movers = read_movers(root)
    assert set(movers["kind"]) <= {"mislabelled-neighbourhood"}
    # per label: one row per digit per run, counts adding up to the tracked points
    per_label = read_per_label(root)
    assert per_label.groupby("val_index")["count"].sum().tolist() == [300, 300, 300]
    assert sorted(per_label["label"].unique().tolist()) == list(range(10))
    assert (per_label.loc[per_label["val_index"] > 0, "centroid_shift"] <= 1e-6).all()


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("moved")
    return Path(_fit(tmp, OneClassMoves()))


def test_one_moving_class_dominates_the_movers(moved_run: Path) -> None:
    df = read_projections(moved_run)
    later = df[df["val_index"] > 0]
    real = (1 - later["knn_kept"]).groupby(later["label"] == MOVING).mean()
    layout = later["pca_moved"].groupby(later["label"] == MOVING).mean()
    print(f"1 - knn_kept: label {MOVING} {real[True]:.3f}, others {real[False]:.3f}; "
          f"pca_moved: label {MOVING} {layout[True]:.3f}, others {layout[False]:.3f}")
    assert real[True] > 0.5 and real[True] > 4 * real[False]
    assert layout[True] > 2 * layout[False]
    movers = read_movers(moved_run)
    changed = movers[movers["kind"] == "changed"]
    assert sorted(changed["val_index"].unique().tolist()) == [1, 2]
    for _, run in changed.groupby("val_index"):
        share = float((run["label"] == MOVING).mean())
        print(f"run {int(run['val_index'].iloc[0])}: {share:.0%} of the changed movers are "
              f"label {MOVING}")
        assert share >= 0.8
        # ranked by real motion: lowest knn_kept first, and overlap is that column
        assert run["overlap"].is_monotonic_increasing
        np.testing.assert_allclose(run["overlap"], run["knn_kept"])
    metrics = read_metrics(moved_run)
    explained = metrics["pca/motion_explained"].iloc[1:].tolist()
    print(f"pca/motion_explained: {explained}")
    # measured 0.35, 0.45; 0.18, 0.46 with the floors' libraries (see README): clearly positive
    assert all(0.1 < v <= 1.0 for v in explained)
    # the mean of R_moved over the shared points is R/displacement
    means = later.groupby("val_index")["pca_moved"].mean().tolist()
    np.testing.assert_allclose(means, metrics["pca/displacement"].iloc[1:], rtol=1e-6)


def test_view_colours_by_real_and_layout_motion_in_browser(moved_run: Path) -> None:
    df = read_projections(moved_run)
    label_of = dict(zip(df["sample_id"].astype(str), df["label"], strict=False))
    view = moved_run / "embproj" / "embeddings" / "view.html"
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error {e}"))
        page.goto(view.as_uri())
        page.wait_for_selector("#embproj-view[data-ready='1']", timeout=60_000)
        options = page.eval_on_selector_all("#colour option", "els => els.map(e => e.value)")
        assert "__moved_embedding__" in options and "__moved__" in options
        assert "knn_kept" not in options and "pca_moved" not in options  # offered by meaning
        ids = page.evaluate("JSON.parse(document.getElementById('embproj-data').textContent)"
                            ".points.ids")
        moving = np.array([label_of[i] == MOVING for i in ids])
        for option, legend in (("__moved_embedding__", "moved in the embedding"),
                               ("__moved__", "moved in the layout")):
            page.select_option("#colour", option)
            page.wait_for_function("document.getElementById('legend').textContent"
                                   f".includes({legend!r})")
            values = np.array(page.evaluate("Array.from(window.embproj.state.info.values)"))
            assert np.isfinite(values).all()
            assert values[moving].mean() > 2 * values[~moving].mean(), option
        # the first run has no previous run: no value there
        page.evaluate("window.embproj.setFrame(0)")
        page.wait_for_function("Array.from(window.embproj.state.info.values)"
                               ".every(v => Number.isNaN(v))")
        assert problems == []
