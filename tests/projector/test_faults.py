"""Faults on real fits: training finishes, earlier epochs' data stays intact, one warning each.

Faults are simulated at the boundary the projector does not own: the W&B run's ``log``, the
t-SNE library call, the file system (``os.replace`` failing with ENOSPC, a folder path that runs
through a regular file), and the user's ``training_step`` raising.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

import lightning_embproj.reduce.dispatch as reduce_module
from lightning_embproj import EmbeddingProjector, read_ledger, read_metrics, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning


def _fit(tmp_path, projector, model=None, epochs=3, callbacks=(), **kw):
    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    t = trainer(tmp_path, [projector, *callbacks], max_epochs=epochs, limit_train_batches=2,
                **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t.fit(model or DigitsModel(), train, val)
        finally:
            projector.flush(timeout=60)
    return t, [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]


def _leftovers(root: Any) -> list[str]:
    """Temporary files of interrupted atomic writes."""
    return [str(p) for p in Path(root).rglob("*.tmp")]


def _workers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "embproj-worker" and t.is_alive()]


# -- W&B and other loggers -----------------------------------------------------------------
@pytest.mark.parametrize("fail_calls", [1, 99], ids=["first-epoch", "every-epoch"])
def test_wandb_log_raising_keeps_training_and_local_files(tmp_path, wandb_offline, fail_calls):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    run = logger.experiment
    real_log, calls = run.log, []

    def flaky_log(data: dict, *args: Any, **kwargs: Any) -> None:
        calls.append(sorted(data))
        if len(calls) <= fail_calls:
            raise ConnectionError("wandb backend went away")
        real_log(data, *args, **kwargs)

    run.log = flaky_log
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   output_dir=str(tmp_path / "out"))
    t, warned = _fit(tmp_path, projector, logger=logger)
    wandb.finish()

    assert t.current_epoch == 3
    assert sum("embproj/embeddings" in keys for keys in calls) == 3  # one log call per epoch
    df = read_projections(tmp_path / "out")
    assert df.groupby("epoch").size().to_dict() == {0: 30, 1: 30, 2: 30}
    wandb_epochs = [tab["data"][0][1] for tab in wandb_tables(wandb_offline, "embproj/embeddings")]
    assert wandb_epochs == ([1, 2] if fail_calls == 1 else [])
    failed = ("W&B failed (ConnectionError: wandb backend went away); the other outputs are "
              "still written and training continues")
    # With W&B down to the end, the complete evolution table that finish sends fails as well.
    expected = ["writing to " + failed] + (["finishing " + failed] if fail_calls == 99 else [])
    assert warned == [f"lightning-embproj: {w}" for w in expected]


def test_an_exception_past_the_drain_deadline_still_sends_the_whole_evolution_table(
    tmp_path, wandb_offline, monkeypatch
):
    """Training fails after run 6 while run 6's job is stuck: the drain gives up, yet finish
    sends the evolution table with runs 1-5 (run 5 is not one it is sent at); the stuck job,
    released, stops at its next stopping point (shutdown cancelled it): run 6 is written
    nowhere, and the ledger says it was interrupted."""
    import wandb

    import lightning_embproj.callback as callback_module
    import lightning_embproj.pipeline as pipeline_module

    started, release = threading.Event(), threading.Event()
    real = pipeline_module.process_run

    def held(sample, identity, *args, **kwargs):
        if identity.epoch == 5:
            started.set()
            assert release.wait(60)
        return real(sample, identity, *args, **kwargs)

    class Boom(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 6:
                assert started.wait(60)  # runs 1-5 are written, run 6's job is stuck
                raise RuntimeError("bug in training")

    monkeypatch.setattr(pipeline_module, "process_run", held)
    monkeypatch.setattr(callback_module, "EXCEPTION_DRAIN_S", 0.5)
    monkeypatch.setattr(callback_module, "CANCEL_WAIT_S", 0.5)
    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30)
    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    t = trainer(tmp_path, [projector, Boom()], max_epochs=8, limit_train_batches=2,
                logger=logger)
    with pytest.raises(RuntimeError, match="bug in training"):
        t.fit(DigitsModel(), train, val)
    release.set()
    assert projector.worker.flush(timeout=60)
    wandb.finish()
    rows = [len(tab["data"]) for tab in wandb_tables(wandb_offline, "embproj/embeddings/evolution")]
    assert rows == [30 * r for r in (1, 2, 3, 4, 5)]
    ledger = read_ledger(projector.root)
    assert ledger["status"].tolist() == ["projected"] * 5 + ["interrupted"]
    assert read_projections(projector.root)["val_index"].unique().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_without_wandb_local_files_are_written(tmp_path, logger):
    lg = CSVLogger(str(tmp_path)) if logger == "csv" else False
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30)
    t, warned = _fit(tmp_path, projector, epochs=2, logger=lg)
    assert read_projections(t.log_dir).groupby("epoch").size().to_dict() == {0: 30, 1: 30}
    assert os.path.isfile(os.path.join(t.log_dir, "embproj", "embeddings", "view.html"))
    assert warned == []


# -- reducer failure ---------------------------------------------------------------------------
def test_reducer_failing_for_one_epoch_keeps_the_others(tmp_path, monkeypatch):
    import lightning_embproj.reduce.project as pipeline_module

    calls: list[int] = []

    def failing_at_epoch_1(real: Any) -> Any:
        def tsne(*args: Any, **kwargs: Any) -> np.ndarray:
            calls.append(1)
            if len(calls) == 2:
                raise FloatingPointError("gradient of the KL divergence is NaN")
            return real(*args, **kwargs)
        return tsne

    # the first run's t-SNE is reduce.tsne, later runs continue it with tsne_next
    monkeypatch.setattr(reduce_module, "tsne", failing_at_epoch_1(reduce_module.tsne))
    monkeypatch.setattr(pipeline_module, "tsne_next", failing_at_epoch_1(pipeline_module.tsne_next))
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=40)
    t, warned = _fit(tmp_path, projector)

    assert t.current_epoch == 3 and len(calls) == 3
    df = read_projections(t.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 40, 1: 40, 2: 40}
    by_epoch = {e: g for e, g in df.groupby("epoch")}
    assert by_epoch[1][["tsne_x", "tsne_y"]].isna().all().all()
    assert np.isfinite(by_epoch[1][["pca_x", "pca_y"]].to_numpy()).all()
    for epoch in (0, 2):
        assert np.isfinite(by_epoch[epoch][["tsne_x", "tsne_y"]].to_numpy()).all()
    metrics = read_metrics(t.log_dir).set_index("epoch")
    assert metrics["silhouette"].notna().all()
    assert np.isnan(metrics.loc[1, "tsne/trustworthiness"])
    assert metrics.loc[[0, 2], "tsne/trustworthiness"].notna().all()
    assert warned == [
        "lightning-embproj: reducer 'tsne' failed at epoch 1 for 'embeddings' and is left out "
        "of that epoch (FloatingPointError: gradient of the KL divergence is NaN)"
    ]


# -- the disk ----------------------------------------------------------------------------------
def test_unwritable_output_dir_warns_and_training_continues(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file where a folder should be")
    projector = EmbeddingProjector(reducers="pca", max_samples=20,
                                   output_dir=str(blocker / "out"))
    t, warned = _fit(tmp_path, projector)
    assert t.current_epoch == 3
    local = [w for w in warned if "writing to local files failed" in w]
    assert len(local) == 1 and "training continues" in local[0]
    # one warning per output, not one per epoch
    assert len(warned) == len(set(w.split(" failed")[0] for w in warned)) <= 2


class DiskFullAt(Callback):
    """``os.replace`` into ``folder`` fails with ENOSPC while epoch ``epoch`` is written."""

    def __init__(self, folder: Path, epoch: int) -> None:
        self.folder, self.epoch, self.full = str(folder), epoch, False

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.full = trainer.current_epoch == self.epoch and not trainer.sanity_checking

    def install(self, monkeypatch: Any) -> None:
        real = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            if self.full and str(dst).startswith(self.folder):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            real(src, dst, **kw)

        monkeypatch.setattr(os, "replace", replace)


def test_disk_full_for_one_epoch_keeps_earlier_files_and_recovers(tmp_path, monkeypatch):
    out = tmp_path / "out"
    disk = DiskFullAt(out, epoch=1)
    disk.install(monkeypatch)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=20,
                                   output_dir=str(out), background=False)
    t, warned = _fit(tmp_path, projector, callbacks=[disk])
    assert t.current_epoch == 3
    assert read_projections(out).groupby("epoch").size().to_dict() == {0: 20, 2: 20}
    assert read_metrics(out)["epoch"].tolist() == [0, 2]
    assert _leftovers(out) == []
    local = [w for w in warned if "local files" in w]
    assert len(local) == 1 and re.fullmatch(
        re.escape(
            "lightning-embproj: writing to local files failed (OSError: [Errno 28] No space left "
            f"on device: '{out}/embproj/embeddings/val_0001_epoch_0001_step_"
        ) + r"\d+"
        + re.escape(".csv'); the other outputs are still written and training continues"),
        local[0],
    ), local


# -- interruption ------------------------------------------------------------------------------
class StopInTraining(DigitsModel):
    """Raises ``error`` in the first training step of epoch ``at``, once earlier epochs are done."""

    def __init__(self, error: BaseException, at: int, projector: EmbeddingProjector,
                 wait: bool = True) -> None:
        super().__init__()
        self.error, self.at, self.projector, self.wait = error, at, projector, wait

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.current_epoch == self.at:
            if self.wait:
                assert self.projector.flush(timeout=60)
            raise self.error
        return super().training_step(batch, batch_idx)


@pytest.fixture
def restore_sigint():
    # Lightning ignores SIGINT after a KeyboardInterrupt ("graceful shutdown"): put it back.
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("bug in training_step")],
                         ids=["keyboard-interrupt", "exception"])
def test_interrupted_training_leaves_no_worker_and_readable_files(
    tmp_path, restore_sigint, error
):
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30)
    model = StopInTraining(error, at=2, projector=projector)
    # Lightning turns a KeyboardInterrupt into a graceful shutdown and sys.exit(1)
    expected = SystemExit if isinstance(error, KeyboardInterrupt) else RuntimeError
    with pytest.raises(expected):
        _fit(tmp_path, projector, model, epochs=4)
    assert _workers_alive() == []
    df = read_projections(str(tmp_path))
    assert df.groupby("epoch").size().to_dict() == {0: 30, 1: 30}
    assert read_metrics(str(tmp_path))["epoch"].tolist() == [0, 1]
    assert _leftovers(tmp_path) == []


def test_interrupt_while_the_worker_is_busy_stops_it(tmp_path, monkeypatch, restore_sigint):
    real_tsne, running = reduce_module.tsne, threading.Event()

    def slow_tsne(*args: Any, **kwargs: Any) -> np.ndarray:
        running.set()
        time.sleep(2.0)
        return real_tsne(*args, **kwargs)

    monkeypatch.setattr(reduce_module, "tsne", slow_tsne)
    projector = EmbeddingProjector(reducers=["pca", "tsne"], max_samples=30)

    class InterruptWhileBusy(DigitsModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 1:
                assert running.wait(timeout=60)  # epoch 0's t-SNE is running now
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    with pytest.raises(SystemExit):
        _fit(tmp_path, projector, InterruptWhileBusy(), epochs=3)
    # the running epoch was finished (at most 30 s are waited for), nothing runs any more
    assert _workers_alive() == []
    assert read_projections(str(tmp_path))["epoch"].unique().tolist() == [0]
    assert _leftovers(tmp_path) == []


def test_interrupt_with_a_stuck_job_waits_one_deadline_then_says_which_runs_are_left(
    tmp_path, monkeypatch, restore_sigint
):
    import lightning_embproj.callback as callback_module

    monkeypatch.setattr(callback_module, "EXCEPTION_DRAIN_S", 0.5)
    monkeypatch.setattr(callback_module, "CANCEL_WAIT_S", 0.5)
    real_tsne, running, release = reduce_module.tsne, threading.Event(), threading.Event()

    def stuck_tsne(*args: Any, **kwargs: Any) -> np.ndarray:
        running.set()
        assert release.wait(timeout=60)
        return real_tsne(*args, **kwargs)

    monkeypatch.setattr(reduce_module, "tsne", stuck_tsne)
    projector = EmbeddingProjector(reducers=["pca", "tsne"], max_samples=30)
    raised_at: list[float] = []

    class FailWhileStuck(DigitsModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 2:
                assert running.wait(timeout=60)  # epoch 0's t-SNE holds the worker
                assert projector.worker.pending() == 2  # epoch 1 waits behind it
                raised_at.append(time.monotonic())
                raise RuntimeError("bug in training_step")
            return super().training_step(batch, batch_idx)

    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    t = trainer(tmp_path, [projector], max_epochs=4, limit_train_batches=2)
    try:
        with pytest.warns(ProjectorWarning, match=r"2 validation run\(s\) were not written.*"
                          r"run 0 \(epoch 0\).*run 1 \(epoch 1\)"), \
                pytest.raises(RuntimeError, match="bug in training_step"):
            t.fit(FailWhileStuck(), train, val)
        waited = time.monotonic() - raised_at[0]
    finally:
        release.set()
    # one 0.5 s deadline for the queue and 0.5 s for the running job (not 2 x 30 s)
    assert waited < 15.0
    workers = _workers_alive()
    for thread in workers:
        thread.join(timeout=60)
    assert _workers_alive() == [] and len(workers) <= 1
    # released, the stuck run stopped at its next stopping point instead of running on after
    # the shutdown; neither run was written, both say why, and both stay in the checkpoint state
    ledger = read_ledger(str(tmp_path))
    assert ledger["status"].tolist() == ["interrupted", "interrupted"]
    assert ledger["reason"].str.contains("shutdown").all()
    assert [i.val_index for _, i in projector.chain.waiting()] == [0, 1]
    assert not list(Path(tmp_path, "embproj", "embeddings").glob("val_*.csv"))
    assert _leftovers(tmp_path) == []
