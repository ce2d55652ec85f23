"""100 epochs of a small model: memory, file sizes and the projector's time per epoch stay bounded.

"Bounded" (docs/what-happens-when.md): the projector holds one epoch per set; each epoch's CSV
has at most ``max_samples`` rows, so it has the same size every epoch (the folder grows by that
constant per projected epoch: ``every_n_epochs`` sets the rate); ``metrics.jsonl`` has one line
per epoch; ``view.html`` shows at most 50 epochs (the first, the last and evenly spaced ones
between), so its size and the time to rewrite it stop growing after 50 epochs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from digits import DigitsModel, loaders, trainer
from lightning.pytorch import Callback

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections

EPOCHS = 100


def _heap_mb() -> float:
    """Resident memory after handing freed heap pages back to the OS (glibc): live memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Probe(Callback):
    """Around the projector's epoch-end hook: its time, then the files and memory after it."""

    def __init__(self, projector: EmbeddingProjector, folder: Path) -> None:
        self.projector, self.folder = projector, folder
        self.started = 0.0
        self.seconds: list[float] = []
        self.view_bytes: list[int] = []
        self.memory: dict[int, float] = {}

    def start(self) -> Callback:
        probe = self

        class Start(Callback):
            def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                probe.started = time.perf_counter()

        return Start()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self.seconds.append(time.perf_counter() - self.started)
        self.view_bytes.append((self.folder / "view.html").stat().st_size)
        if trainer.current_epoch in (19, EPOCHS - 1):
            self.memory[trainer.current_epoch] = _heap_mb()


def test_hundred_epochs_stay_bounded(tmp_path):
    folder = tmp_path / "embproj" / "embeddings"
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=16,
                                   background=False)
    probe = Probe(projector, folder)
    train, val = loaders(n_train=32, n_val=16, batch_size=32)
    t = trainer(tmp_path, [probe.start(), projector, probe], max_epochs=EPOCHS,
                limit_train_batches=1, num_sanity_val_steps=0)
    t.fit(DigitsModel(), train, val)

    # everything was written: one CSV and one metrics line per epoch
    df = read_projections(t.log_dir)
    assert df.groupby("epoch").size().tolist() == [16] * EPOCHS
    assert read_metrics(t.log_dir)["epoch"].tolist() == list(range(EPOCHS))

    # each epoch's file has the same size (the same 16 points): the folder grows by a constant
    sizes = np.array([f.stat().st_size for f in sorted(folder.glob("val_*.csv"))])
    assert len(sizes) == EPOCHS and sizes.max() < 1.2 * sizes.min()
    # the view is thinned to 50 frames: it stops growing after 50 epochs
    assert max(probe.view_bytes[60:]) < 1.02 * probe.view_bytes[59]
    page = (folder / "view.html").read_text(encoding="utf-8")
    assert "showing 50 of 100 epochs" in page
    assert len(re.findall(r'"method":"animate","args":\[\["\d+"\]', page)) == 50

    # the projector keeps one epoch per set between epochs; live memory does not grow
    assert list(projector.previous) == ["embeddings"] and projector.pending == {}
    assert projector._collector is None and projector.worker.pending() == 0
    assert probe.memory[EPOCHS - 1] - probe.memory[19] < 40

    # the projector's time per epoch stops growing once the view has its 50 frames
    seconds = np.array(probe.seconds)
    first, middle, last = (np.median(seconds[s]) for s in
                           (slice(1, 11), slice(50, 60), slice(EPOCHS - 10, EPOCHS)))
    print(f"projector s/epoch: epochs 1-10 {first:.3f}, 50-59 {middle:.3f}, 90-99 {last:.3f}; "
          f"memory MB at 20: {probe.memory[19]:.0f}, at 100: {probe.memory[EPOCHS - 1]:.0f}; "
          f"folder {sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MB")
    assert last < 1.5 * middle + 0.02
