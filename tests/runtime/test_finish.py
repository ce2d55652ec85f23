"""No silent wait at the end of fit: the queued projections are reported while they finish.

Jobs are held until training is over (``Worker.wait_training_over``), so there is always
something to wait for when the report starts; no test depends on timing.
"""

from __future__ import annotations

import io
import threading

import lightning.pytorch as L
from digits import DigitsModel, loaders, trainer

from lightning_embproj import EmbeddingProjector
from lightning_embproj.runtime.progress import finish_with_progress, job_label, show_progress
from lightning_embproj.runtime.worker import Worker

WAIT = 30.0  # an upper bound for gates: reached only if something is broken


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def held(w: Worker, done: list[str], name: str, wait: float = WAIT):
    """A job that ends only once training is over, recording what it saw."""

    def run() -> None:
        assert w.wait_training_over(wait)
        done.append(f"{name} threads={w.job_threads()}")

    return run


def test_the_bar_names_the_queued_jobs_and_counts_them_done():
    w, done, out = Worker(max_pending=10), [], io.StringIO()
    first = job_label("embeddings", 4000, ["pca", "tsne"], 2)
    w.submit("embeddings", held(w, done, "a"), label=first)
    w.submit("embeddings", held(w, done, "b"), label=job_label("embeddings", 4000, ["tsne"], 3))
    assert finish_with_progress(w, file=out) is True
    text = out.getvalue()
    assert "lightning-embproj: finishing 2 queued projections" in text
    assert "PCA + t-SNE 4,000 points, set embeddings, validation run 2" in text
    assert ": 2/2 [" in text.split("\r")[-1]  # the bar's last state: both done
    assert len(done) == 2 and all(d.endswith(f"threads={w.job_threads()}") for d in done)
    assert w.pending() == 0 and w.training_over


def test_disabled_it_waits_just_the_same_without_a_word():
    w, done, out = Worker(max_pending=10), [], io.StringIO()
    w.submit("emb", held(w, done, "a"))
    assert finish_with_progress(w, enabled=False, file=out) is True
    assert done and out.getvalue() == ""


def test_nothing_queued_shows_nothing():
    out = io.StringIO()
    assert finish_with_progress(Worker(), file=out) is True
    assert finish_with_progress(Worker(background=False), file=out) is True
    assert out.getvalue() == ""


def test_a_timeout_returns_false_and_leaves_the_job_running():
    w, gate, done, out = Worker(max_pending=10), threading.Event(), [], io.StringIO()
    w.submit("emb", lambda: (gate.wait(WAIT), done.append("late")), label="stuck t-SNE")
    assert finish_with_progress(w, timeout=0.05, file=out) is False
    assert "stuck t-SNE" in out.getvalue() and done == []
    gate.set()
    assert w.close(WAIT) and done == ["late"]


def test_shown_where_lightning_shows_bars_or_on_a_terminal(tmp_path):
    with_bar = trainer(tmp_path, [], enable_progress_bar=True)
    without = trainer(tmp_path, [], enable_progress_bar=False)
    assert show_progress(with_bar, io.StringIO()) is True
    assert show_progress(without, io.StringIO()) is False
    assert show_progress(without, Tty()) is True


def test_a_real_fit_reports_what_it_waits_for(tmp_path, capsys):
    projector = EmbeddingProjector(label_key="labels", reducers=["pca"], output_dir=str(tmp_path))
    done: list[str] = []

    class HoldOne(L.Callback):
        def on_train_end(self, trainer, pl_module):
            projector.worker.submit(
                "embeddings", held(projector.worker, done, "held", wait=5.0), label="held job"
            )

    train, val = loaders(n_train=128, n_val=128)
    tr = trainer(tmp_path, [projector, HoldOne()], max_epochs=1, enable_progress_bar=True)
    tr.fit(DigitsModel(), train, val)
    err = capsys.readouterr().err
    assert "lightning-embproj: finishing" in err
    assert done == [f"held threads={projector.worker.job_threads()}"]


def test_a_run_started_while_training_takes_every_core_once_it_ends(tmp_path, monkeypatch):
    """The thread count reaches the reducers as a function read during the run: the n_jobs
    option while training runs, every core as soon as it is over (same job, no restart)."""
    import lightning_embproj.pipeline as pipeline_module

    projector = EmbeddingProjector(label_key="labels", reducers=["pca"], n_jobs=1,
                                   output_dir=str(tmp_path))
    seen: list[int] = []
    started = threading.Event()
    real = pipeline_module.process_run

    def spy(*args, n_jobs, **kwargs):
        seen.append(n_jobs())
        started.set()
        assert projector.worker.wait_training_over(WAIT)
        seen.append(n_jobs())
        return real(*args, n_jobs=n_jobs, **kwargs)

    class HoldTraining(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # the first run's job has begun, training goes on
                assert started.wait(WAIT)

    monkeypatch.setattr(pipeline_module, "process_run", spy)
    train, val = loaders(n_train=128, n_val=128)
    tr = trainer(tmp_path, [projector, HoldTraining()], max_epochs=2, num_sanity_val_steps=0)
    tr.fit(DigitsModel(), train, val)
    assert seen[:2] == [1, projector.worker.job_threads()]
