"""UMAP as a reducer in a real fit: warm-started, aligned, computed off the training thread."""

from __future__ import annotations

import glob
import os
import sys
import time

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer
from lightning.pytorch import Callback, seed_everything

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.align import disparity
from lightning_embproj.warn import ProjectorWarning

pytest.importorskip("umap", reason="the `umap` extra (umap-learn) is not installed")


class EpochEndClock(Callback):
    """Wall time at which this callback's ``on_validation_epoch_end`` runs, per epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.times.append(time.time())


@pytest.mark.slow
def test_umap_fit_warm_started_and_off_the_training_thread(tmp_path):
    """Each epoch's UMAP starts from the last one and is aligned to it: the picture moves
    only as much as the embeddings do."""
    seed_everything(0)  # how far the layout may move depends on how far the model moves
    before, after = EpochEndClock(), EpochEndClock()
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "umap"], max_samples=150)
    train, val = loaders(n_train=200, n_val=200)
    t = trainer(tmp_path, [before, projector, after], max_epochs=3)
    with pytest.warns() as caught:  # collect, then check that none is ours
        t.fit(DigitsModel(lr=0.01), train, val)
    assert not [w for w in caught if issubclass(w.category, ProjectorWarning)]

    df = read_projections(t.log_dir)
    assert {"umap_x", "umap_y"} <= set(df.columns)
    layouts = [g.sort_values("sample_id")[["umap_x", "umap_y"]].to_numpy()
               for _, g in df.groupby("epoch")]
    assert len(layouts) == 3 and all(np.isfinite(lay).all() for lay in layouts)
    for prev, later in zip(layouts[:-1], layouts[1:], strict=True):
        # warm start + Procrustes: same place, same orientation as the epoch before
        spread = np.linalg.norm(prev - prev.mean(0), axis=1).mean()
        moved = np.linalg.norm(later - prev, axis=1).mean() / spread
        print(f"umap: disparity {disparity(prev, later):.3f}, moved {moved:.3f} of the spread")
        assert disparity(prev, later) < 0.05 and moved < 0.25
    metrics = read_metrics(t.log_dir)
    assert metrics["umap/trustworthiness"].min() > 0.8

    # The projector's own epoch-end hook (between the two clocks) returned at once, while
    # epoch 0's UMAP (with umap-learn's first-call compilation) finished later on the worker.
    hook = [b - a for a, b in zip(before.times, after.times, strict=True)]
    folder = os.path.join(t.log_dir, "embproj", "embeddings")
    first_done = os.path.getmtime(glob.glob(os.path.join(folder, "val_0000_epoch_0000_*.csv"))[0])
    worker_seconds = first_done - after.times[0]
    print(f"projector hook on the training thread: {max(hook):.3f} s; epoch 0 reduced "
          f"(PCA + first UMAP call) {worker_seconds:.1f} s later on the worker")
    assert max(hook) < 1.0
    assert worker_seconds > 0


def test_missing_umap_extra_is_named_and_the_rest_still_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "umap"], max_samples=50)
    train, val = loaders(n_train=200, n_val=100)
    t = trainer(tmp_path, [projector], max_epochs=2)
    with pytest.warns(ProjectorWarning, match=r"pip install \"lightning-embproj\[umap\]\"") as rec:
        t.fit(DigitsModel(), train, val)
    assert len([w for w in rec if "umap" in str(w.message)]) == 1  # once, not every epoch
    df = read_projections(t.log_dir)
    assert list(df.columns) == [
        "sample_id", "epoch", "step", "val_index", "label", "cluster", "pca_x", "pca_y"
    ]
    assert df["epoch"].unique().tolist() == [0, 1]
