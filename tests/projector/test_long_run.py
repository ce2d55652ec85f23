"""24 epochs with W&B and the background thread: live memory stays flat, every epoch is written.

"Bounded" (docs/what-happens-when.md): between epochs the projector holds one projection per
set, and each run's CSV has at most ``max_samples`` rows. One thing grows on purpose: the W&B
evolution table keeps every run's rows (no vectors, a few numbers per point) up to a cap of
9,000 rows. So live memory, measured after the worker finished each epoch, may grow by about
that table's new rows and nothing more. The embeddings are 1024-d so that keeping one epoch's
sample per epoch (64 points x 1024 x 4 bytes = 262 kB a time) is far above that allowance
(64 rows x 250 bytes + 50 kB noise = 66 kB a time). Measured slopes: 16 kB per epoch (wandb
0.31) and 30 kB (wandb 0.16); with such a leak planted (every submitted sample appended to a
list), 281 kB per epoch.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from memory import live_bytes
from torch import nn

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.sinks.wandb_history import evolution_due

EPOCHS = 24
POINTS = 64
DIM = 1024
TRACE_FROM = 8  # the first epochs (first W&B calls, imports, first view) are not traced
EVOLUTION_ROW_BYTES = 250  # generous: ~7 cells per row, lists + floats + ints
NOISE_PER_EPOCH = 50_000  # bytes; wandb 0.16 alone keeps ~15 kB more per epoch than 0.31


class WideModel(DigitsModel):
    """DigitsModel with 1024-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, DIM), nn.ReLU())
        self.head = nn.Linear(DIM, 10)


class LiveMemory(Callback):
    """After the projector's epoch end: wait for its worker, then measure live memory."""

    def __init__(self, projector: EmbeddingProjector) -> None:
        self.projector = projector
        self.live: dict[int, int] = {}
        self.wandb_cached: dict[int, int] = {}

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        assert self.projector.flush()
        epoch = trainer.current_epoch
        if epoch == TRACE_FROM - 1:
            tracemalloc.start()
        elif epoch >= TRACE_FROM:
            self.wandb_cached[epoch] = forget_wandb_artifacts()
            self.live[epoch] = live_bytes()


def forget_wandb_artifacts() -> int:
    """Empty wandb's module-level cache of the last 100 logged artifacts; returns how many it
    held. Each ``run.log`` of a ``wandb.Table`` makes an artifact that keeps the table (rows and
    all) alive in that cache: memory that is wandb's, capped at 100 tables, and would hide a
    leak of ours until the cache is full."""
    from wandb.sdk.artifacts import artifact_instance_cache as module

    caches = [v for v in vars(module).values() if type(v).__name__ == "CappedDict"]
    assert caches, "wandb's artifact cache moved: find what keeps logged tables alive"
    held = max(len(c) for c in caches)
    for cache in caches:
        cache.clear()
    return held


def growth_per_epoch(live: dict[int, int]) -> float:
    """Least-squares slope of live bytes over epochs: robust to one noisy epoch."""
    epochs = np.array(sorted(live), dtype=float)
    return float(np.polyfit(epochs, [live[int(e)] for e in epochs], 1)[0])


@pytest.mark.slow
def test_many_epochs_with_wandb_and_the_worker_keep_memory_flat(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=POINTS,
                                   background=True)
    # Memory, not priority, is under test: waiting for a niced worker every epoch on a busy
    # machine would take minutes (test_collection checks the priority).
    projector.worker.nice = 0
    probe = LiveMemory(projector)
    train, val = loaders(n_train=64, n_val=POINTS, batch_size=50)
    t = trainer(tmp_path, [projector, probe], max_epochs=EPOCHS, limit_train_batches=1,
                num_sanity_val_steps=0, logger=logger)
    assert not tracemalloc.is_tracing()
    try:
        t.fit(WideModel(), train, val)
    finally:
        tracemalloc.stop()
    wandb.finish()

    # every epoch was written, locally and to W&B, by the background thread
    df = read_projections(projector.root)
    assert df.groupby("epoch").size().tolist() == [POINTS] * EPOCHS
    assert read_metrics(projector.root)["epoch"].tolist() == list(range(EPOCHS))
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert [len(table["data"]) for table in tables] == [POINTS] * EPOCHS

    # live memory grows by the evolution table's new rows per epoch, and by nothing else
    # (logged at runs 1-4, 6, 8, 12, 16, 24, and complete at the end; under the cap: no thinning)
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    rows = [len(table["data"]) for table in evolution]
    due = [r for r in range(1, EPOCHS + 1) if evolution_due(r)]
    assert rows == [POINTS * r for r in due + ([EPOCHS] if EPOCHS not in due else [])]
    slope = growth_per_epoch(probe.live)
    allowed = POINTS * EVOLUTION_ROW_BYTES + NOISE_PER_EPOCH
    leak = POINTS * DIM * 4  # what keeping every epoch's sample would add per epoch
    print(f"live memory growth per epoch {slope / 1e3:.1f} kB (allowed {allowed / 1e3:.0f} kB, "
          f"a kept sample per epoch {leak / 1e3:.0f} kB); epochs {TRACE_FROM}-{EPOCHS - 1}: "
          f"{[round((v - probe.live[TRACE_FROM]) / 1e3) for _, v in sorted(probe.live.items())]}"
          f"; wandb cached up to {max(probe.wandb_cached.values())} artifacts per epoch")
    assert allowed < leak / 2  # the bound can catch that leak
    assert slope < allowed, slope
