"""UMAP as a reducer in a real fit: warm-started, aligned, computed off the training thread.

Needs the ``umap`` extra; without it, tests/test_optional_deps.py checks what a user sees.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer
from layouts import disparity
from lightning.pytorch import Callback, seed_everything

import lightning_embproj.reduce.dispatch as reduce_module
from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning

pytest.importorskip("umap", reason="the `umap` extra (umap-learn) is not installed")


class UmapCalls:
    """Wraps the UMAP reducer: records the thread of each call. The first call waits until the
    projector's epoch-end hook has returned (``hook_returned``): a projector that ran UMAP inside
    its hook would instead be recorded as a call on the training thread, and not wait."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.training_thread = threading.get_ident()
        self.threads: list[int] = []
        self.hook_returned = threading.Event()
        real = reduce_module.umap

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.get_ident())
            if threading.get_ident() != self.training_thread:
                self.hook_returned.wait()
            return real(*args, **kwargs)

        monkeypatch.setattr(reduce_module, "umap", wrapped)


class AfterProjectorHook(Callback):
    """Placed after the projector: its epoch-end hook runs once the projector's has returned."""

    def __init__(self, calls: UmapCalls) -> None:
        self.calls = calls

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.calls.hook_returned.set()


@pytest.mark.slow
def test_umap_fit_warm_started_and_off_the_training_thread(tmp_path, monkeypatch):
    """Each epoch's UMAP starts from the last one and is aligned to it: the picture moves
    only as much as the embeddings do."""
    seed_everything(0)  # how far the layout may move depends on how far the model moves
    calls = UmapCalls(monkeypatch)
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "umap"], max_samples=150)
    train, val = loaders(n_train=200, n_val=200)
    t = trainer(tmp_path, [projector, AfterProjectorHook(calls)], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DigitsModel(lr=0.01), train, val)
    assert not [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]

    # one UMAP per epoch, none of them on the training thread
    assert len(calls.threads) == 3
    assert calls.training_thread not in calls.threads

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
