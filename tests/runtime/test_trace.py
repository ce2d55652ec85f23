"""Per-stage traces of the background jobs, the W&B writes per run, and the ``priority`` option,
on real fits (a small digits MLP; W&B offline)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import lightning.pytorch as L
import pytest
from digits import DigitsModel, loaders, trainer
from lightning.pytorch.loggers import WandbLogger

from lightning_embproj import EmbeddingProjector
from lightning_embproj.runtime import trace as trace_module
from lightning_embproj.runtime.trace import QUEUE_WAIT, Trace, stage

RUN_STAGES = {
    QUEUE_WAIT, "check", "PCA", "PCA layout", "t-SNE", "t-SNE affinities", "t-SNE chunk",
    "kNN + metrics", "movers", "clusters + evolve", "result", "sink: local files",
    "sink: W&B", "W&B table", "W&B plot", "W&B evolution", "W&B log", "record",
}


def test_stages_nest_and_do_nothing_without_a_trace():
    with stage("nobody listens"):
        pass  # no trace active: nothing recorded, no error
    t = Trace("run", queued_at=time.perf_counter())
    with t.active():
        assert trace_module.current() is t
        with stage("outer"):
            with stage("inner"):
                time.sleep(0.01)
            with stage("inner"):
                pass
    assert trace_module.current() is None
    totals = t.totals()
    assert list(totals) == [QUEUE_WAIT, "outer", "inner"]  # in order of start: parts under
    assert totals["inner"][:2] == (1, 2) and totals["outer"][:2] == (0, 1)
    assert totals["outer"][2] >= totals["inner"][2] >= 0.01
    assert t.stage_sum() <= t.wall
    assert "inner x2" in t.format()


def test_a_real_fit_traces_every_stage_and_logs_once_per_run(tmp_path, wandb_offline):
    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    run = logger.experiment
    calls: list[str | None] = []  # the trace (job) each run.log call came from
    real_log = run.log

    def counting_log(*args: Any, **kwargs: Any) -> Any:
        current = trace_module.current()
        calls.append(current.label if current is not None else None)
        return real_log(*args, **kwargs)

    run.log = counting_log
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=120,
                                   output_dir=str(tmp_path / "out"))
    train, val = loaders(n_train=128, n_val=120, batch_size=40)
    t = trainer(tmp_path, [projector], max_epochs=3, limit_train_batches=2, logger=logger)
    started = time.perf_counter()
    t.fit(DigitsModel(), train, val)
    ended = time.perf_counter()

    jobs = [tr for tr in projector.traces if tr.label.startswith("embeddings run")]
    assert [tr.label for tr in jobs] == [
        "embeddings run 0 (epoch 0)", "embeddings run 1 (epoch 1)", "embeddings run 2 (epoch 2)"]
    for tr in jobs:
        names = {s.name for s in tr.spans}
        assert names >= RUN_STAGES, sorted(RUN_STAGES - names)
        assert started <= tr.start <= tr.end <= ended
        assert tr.stage_sum() <= tr.wall + 1e-6
        # the stages account for the job: only the glue between them is left out
        assert tr.wall - tr.stage_sum() < 0.05 + 0.05 * tr.wall
        nested = [s for s in tr.spans if s.depth > 0]
        assert all(s.name.startswith(("t-SNE ", "W&B ")) for s in nested)
    finish = projector.traces[-1]
    assert finish.label == "end of fit: the sinks' finish"
    assert {"finish: W&B", "ledgers"} <= {s.name for s in finish.spans}
    # one run.log per projected run, from that run's job; the rest at the end of fit
    for tr in jobs:
        assert calls.count(tr.label) == 1
    assert all(c in {tr.label for tr in jobs} | {finish.label} for c in calls)


def test_bad_priority_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"priority must be one of \['training', 'fair'\], "
                                         r"got 'high'"):
        EmbeddingProjector(priority="high")  # type: ignore[arg-type]


class WorkerState(L.Callback):
    """The projector's worker as seen from the training loop, after the first projected run."""

    def __init__(self, projector: EmbeddingProjector) -> None:
        self.projector = projector
        self.seen: list[tuple[int | None, int, bool]] = []

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        worker = self.projector.worker
        if trainer.current_epoch >= 1:
            worker.flush(timeout=60)  # the first run's job ran; its thread waits for more
            self.seen.append((worker.thread_nice(), worker.job_threads(),
                              worker.training_over))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("priority", ["training", "fair"])
def test_priority_sets_the_workers_nice_and_threads_while_training(tmp_path, priority):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the training thread's nice value
    projector = EmbeddingProjector(label_key="labels", reducers=["pca"], max_samples=60,
                                   output_dir=str(tmp_path / "out"), priority=priority)
    state = WorkerState(projector)
    train, val = loaders(n_train=128, n_val=60, batch_size=32)
    t = trainer(tmp_path, [projector, state], max_epochs=2, limit_train_batches=2)
    t.fit(DigitsModel(), train, val)

    assert state.seen
    cores = os.cpu_count() or 1
    want = (min(19, base + 10), 1) if priority == "training" else (base, max(1, cores // 2))
    assert {(nice, threads) for nice, threads, _ in state.seen} == {want}
    assert not any(over for _, _, over in state.seen)
    assert projector.worker.job_threads() == cores  # training over: every core
