"""30 epochs with W&B and the background thread: live memory and files stay bounded.

"Bounded" (docs/what-happens-when.md): between epochs the projector holds one projection per
set, and each run's CSV has at most ``max_samples`` rows. One thing grows on purpose: the W&B
evolution table keeps every run's rows (no vectors, a few numbers per point) up to a cap of
9,000 rows. So live memory, measured after the worker finished each epoch, may grow by about
that table's rows and nothing more. The embeddings are 256-d so that a leak of one epoch's
sample per epoch (100 points x 256 x 4 bytes = 100 kB a time) is ten times what the evolution
table adds (100 rows, ~10 kB a time).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from memory import live_bytes
from torch import nn

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections

EPOCHS = 30
POINTS = 100
DIM = 256
TRACE_FROM = 10  # the first epochs (first W&B calls, imports, first view) are not traced
EVOLUTION_ROW_BYTES = 250  # generous: ~7 cells per row, lists + floats + ints
NOISE_PER_EPOCH = 15_000  # bytes


class WideModel(DigitsModel):
    """DigitsModel with 256-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, DIM), nn.ReLU())
        self.head = nn.Linear(DIM, 10)


class LiveMemory(Callback):
    """After the projector's epoch end: wait for its worker, then measure live memory."""

    def __init__(self, projector: EmbeddingProjector) -> None:
        self.projector = projector
        self.live: dict[int, int] = {}

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        assert self.projector.flush()
        epoch = trainer.current_epoch
        if epoch == TRACE_FROM - 1:
            tracemalloc.start()
        elif epoch >= TRACE_FROM:
            self.live[epoch] = live_bytes()


def growth_per_epoch(live: dict[int, int]) -> float:
    """Least-squares slope of live bytes over epochs: robust to one noisy epoch."""
    epochs = np.array(sorted(live), dtype=float)
    return float(np.polyfit(epochs, [live[int(e)] for e in epochs], 1)[0])


@pytest.mark.slow
def test_thirty_epochs_with_wandb_and_the_worker_keep_memory_flat(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=POINTS,
                                   background=True)
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
    # each run's CSV holds the same points: the folder grows by a constant per epoch
    sizes = np.array([f.stat().st_size
                      for f in Path(projector.root, "embproj", "embeddings").glob("*.csv")])
    assert len(sizes) == EPOCHS and sizes.max() < 1.2 * sizes.min()

    # live memory grows by the evolution table's new rows per epoch, and by nothing else
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    rows = [len(table["data"]) for table in evolution]
    assert rows == [POINTS * (e + 1) for e in range(EPOCHS)]  # under the cap: no thinning yet
    slope = growth_per_epoch(probe.live)
    allowed = POINTS * EVOLUTION_ROW_BYTES + NOISE_PER_EPOCH
    leak = POINTS * DIM * 4  # what keeping every epoch's sample would add per epoch
    print(f"live memory growth per epoch {slope / 1e3:.1f} kB (allowed {allowed / 1e3:.0f} kB, "
          f"a kept sample per epoch {leak / 1e3:.0f} kB); epochs {TRACE_FROM}-{EPOCHS - 1}: "
          f"{[round((v - probe.live[TRACE_FROM]) / 1e3) for _, v in sorted(probe.live.items())]}")
    assert allowed < leak / 2  # the bound can catch that leak
    assert slope < allowed, slope
