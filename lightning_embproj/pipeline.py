"""Rank zero's validation runs, from the queue to the ledger.

A run's sample is queued on the worker (:class:`Runs`); its job runs the stages of
:func:`process_run`, reduce -> score -> evolve, each returning its values, into one frozen
:class:`~lightning_embproj.results.RunResult`; gives that one result to every sink
(:class:`~lightning_embproj.sinks.Sinks`); then records it with the chain owner (the set's
previous run and cluster chain) and in the ledger files. The stages read the chain's previous
run and cluster chain and change neither.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.evolve.set_chain import EvolveSettings, SetChain
    >>> from lightning_embproj.reduce.project import ReduceSettings
    >>> from lightning_embproj.results import EpochSample, RunIdentity
    >>> rng = np.random.default_rng(0)
    >>> s = EpochSample("z", np.arange(60), list(range(60)),
    ...                 rng.normal(size=(60, 8)).astype(np.float32), labels=np.arange(60) % 3)
    >>> stages = Stages(ReduceSettings(["pca"]), EvolveSettings(n_clusters=3))
    >>> result, chain = process_run(s, RunIdentity(0, epoch=0, step=10), None, SetChain(), stages)
    >>> list(result.columns)  # doctest: +NORMALIZE_WHITESPACE
    ['sample_id', 'epoch', 'step', 'val_index', 'label', 'cluster', 'pca_x', 'pca_y',
     'knn_kept', 'pca_moved']
    >>> later, _ = process_run(s, RunIdentity(1, epoch=1, step=20), result, chain, stages)
    >>> later.metrics["drift/knn_overlap"], later.lineage[0]["event"]
    (1.0, 'survive')
    >>> set(later.columns["knn_kept"]), set(later.columns["pca_moved"])
    ({1.0}, {0.0})
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

from lightning_embproj import checks
from lightning_embproj import sinks as sink_factory
from lightning_embproj.chain.owner import ChainState
from lightning_embproj.chain.settle import rebuild_histories, settle
from lightning_embproj.evolve.set_chain import EvolveSettings, SetChain, evolve
from lightning_embproj.metrics.scores import RunScores, movers, score_run
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.reduce.dispatch import Threads
from lightning_embproj.reduce.project import ReduceSettings, reduce_layouts
from lightning_embproj.results import EpochSample, Projection, RunIdentity, RunResult
from lightning_embproj.runtime.jobs import QUEUE_POLICY, JobCancelled
from lightning_embproj.runtime.preload import preload, ready_for_jobs
from lightning_embproj.runtime.progress import job_label
from lightning_embproj.runtime.trace import Trace, stage
from lightning_embproj.runtime.warn import WarnOnce, guarded
from lightning_embproj.runtime.worker import Worker
from lightning_embproj.sinks import Sinks
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.local import run_file_name, set_dir

Warn = Callable[[str, str], None]
MAX_TRACES = 256


def _no_warn(topic: str, message: str) -> None:
    """Default for ``warn``: stay silent."""


@dataclass(frozen=True)
class Stages:
    """How each stage runs: reducers, clusters, and where the metrics pass runs (None: numpy;
    ``"cuda"``: torch on the GPU)."""

    reduce: ReduceSettings
    evolve: EvolveSettings
    device: str | None = None


def score(current: Projection, previous: Projection | None, device: str | None = None,
          warn: Warn = _no_warn) -> tuple[RunScores, Any]:
    """The score stage: metrics, the run's kNN, each point's motion, and the movers of
    ``current`` (each None / empty with one warning when it fails). The kNN come from the
    metrics' distance pass and are handed on: the movers, the per-label table and the next
    run's drift reuse them; the movers rank by the ``knn_kept`` column's values."""
    scores = RunScores({}, None)
    try:
        with stage("kNN + metrics"):
            scores = score_run(current, previous, device=device)
    except Exception as err:  # noqa: BLE001 - the layouts are still worth writing
        warn(f"score:{type(err).__name__}", f"metrics failed at epoch {current.epoch} for "
             f"{current.name!r} ({type(err).__name__}: {err})")
    known = replace(current, knn=scores.knn)
    with stage("movers"):
        found = guarded(warn, "movers", "the movers table",
                        lambda: movers(known, previous, device=device, kept=scores.knn_kept))
    return scores, found


def process_run(
    sample: EpochSample, identity: RunIdentity, previous: RunResult | None, chain: SetChain,
    stages: Stages, warn: Warn = _no_warn, n_jobs: Threads = 1,
) -> tuple[RunResult, SetChain]:
    """Run every stage for one run; returns its frozen result and the next cluster chain.

    ``previous``: the chain's last written run of this set (alignment, warm starts, drift), or
    None at a chain's start. ``n_jobs``: t-SNE threads, or a function giving them (read again
    during the run; it is also where a run asked to stop at shutdown stops).
    """
    with stage("check"):
        sample = checks.sample(sample)  # the one check: the stages take its arrays as they are
    layouts = reduce_layouts(sample, previous, stages.reduce, warn, n_jobs=n_jobs,
                             epoch=identity.epoch, check_input=False)
    current = Projection(sample, identity.epoch, identity.step, layouts)
    scores, found = score(current, previous, stages.device, warn)
    current = replace(current, knn=scores.knn)
    with stage("clusters + evolve"):
        evolved = evolve(current, previous, chain, stages.evolve, warn, identity.val_index)
    with stage("result"):
        result = run_result(
            sample, identity, layouts, metrics={**scores.metrics, **evolved.metrics},
            clusters=evolved.clusters, lineage=evolved.lineage, per_label=evolved.per_label,
            movers=found, knn=scores.knn, knn_kept=scores.knn_kept, moved=scores.moved,
        )
    return result, evolved.chain


class Runs:
    """Rank zero's runs: each queued on one background :class:`Worker`, whose job processes
    it, hands the result to every sink and records it; every set's ``ledger.jsonl`` mirrors the
    chain's ledger. ``sinks``, ``stages`` and ``root`` are set anew at each ``setup``.
    """

    def __init__(self, chain: ChainState, options: ProjectorOptions, stages: Stages,
                 warn: WarnOnce) -> None:
        self.chain, self.options, self.stages, self.warn = chain, options, stages, warn
        self.worker = Worker(options.background, max_pending=options.max_queued_epochs,
                             warn=warn, on_drop=self.on_drop, nice=options.worker_nice,
                             training_threads=options.training_threads())
        self.sinks = Sinks()
        self.root = options.output_dir or "."
        self.is_zero = True
        self.deadline_s = 30.0  # the shutdown deadline, for the reasons given
        self.written: dict[str, int] = {}  # set -> runs whose local files this call wrote
        self._ledger_lock = threading.Lock()
        #: Each job's stage timings (:class:`~lightning_embproj.runtime.trace.Trace`), the
        #: last :data:`MAX_TRACES`, newest last; ``finish`` traces the sinks' end of fit.
        self.traces: collections.deque[Trace] = collections.deque(maxlen=MAX_TRACES)
        self._preloaded: threading.Thread | None = None  # the libraries' imports, once

    def preload(self) -> None:
        """Import the background stages' libraries on a niced thread (once per callback)."""
        if self.options.background and self._preloaded is None:
            self._preloaded = preload(nice=self.options.worker_nice)

    def start_chain(self, fn: str, device: Any) -> None:
        """A fit / validate starts its own chain (warnings afresh); the metrics pass runs in
        torch on ``device`` when it is a GPU."""
        self.chain.start_chain(fn)
        self.warn.reset()
        self.worker.start_training()
        self.written = {}
        self.stages = Stages(self.stages.reduce, self.stages.evolve,
                             str(device) if getattr(device, "type", "") == "cuda" else None)

    def build_sinks(self, trainer: Any) -> None:
        """Every sink of this call, with the histories the chain holds for them."""
        self.sinks = sink_factory.build(
            trainer, self.root, self.warn, self.options.max_text_length,
            settings=self.stages.reduce, wandb_history=self.chain.wandb_history,
            view_history=self.chain.view_history(self.root), vectors=self.options.vectors,
            view_deferred=lambda name: self.worker.waiting(name) > 0,
        )

    def settle(self) -> None:
        """Settle the chain with the folder's files (the sinks' histories too), then queue the
        runs a resumed checkpoint held as pending."""
        names, wandb_run = self.options.set_names, self.sinks.wandb_run
        resumed = self.chain.resumed_from is not None
        logged = guarded(self.warn, "settle", "reading the output folder", partial(
            settle, self.chain, self.root, names, resumed, self.warn)) or []
        rebuild_histories(self.chain, self.root, names, wandb_run, self.warn)
        self.chain.root = self.root
        self.write_ledgers()
        already = {(name, v) for name, v, run in logged if run == wandb_run}
        for sample, identity in self.chain.take_restored():
            self.submit(sample, identity, restored=True,
                        log_wandb=(sample.name, identity.val_index) not in already)

    def submit(self, sample: EpochSample, identity: RunIdentity, log_wandb: bool = True,
               restored: bool = False) -> None:
        """Queue a run; ``restored``: accepted before a checkpoint, never dropped now."""
        # Every job's libraries are scanned here, on the submitting thread, never on the worker
        # (a scan there can deadlock against an import: see runtime/native.py).
        ready_for_jobs(self._preloaded)
        self.chain.queue(sample, identity)
        trace = Trace(f"{sample.name} run {identity.val_index} (epoch {identity.epoch})",
                      queued_at=time.perf_counter())
        self.worker.submit(
            sample.name, partial(self.job, sample, identity, log_wandb, trace),
            label=job_label(sample.name, len(sample), self.stages.reduce.reducers,
                            identity.val_index),
            token=(sample.name, identity.val_index), droppable=not restored,
        )

    def on_drop(self, token: object, reason: str) -> None:
        """The worker dropped a queued run: say which and why, in the ledger."""
        name, val_index = cast(tuple[str, int], token)
        if reason == QUEUE_POLICY:
            self.chain.dropped(name, val_index, f"skipped by the queue policy: more than "
                               f"max_queued_epochs={self.options.max_queued_epochs} runs waited")
        else:
            self.chain.interrupted(name, val_index, f"not started within the "
                                   f"{self.deadline_s:g} s shutdown deadline")

    def job(self, sample: EpochSample, identity: RunIdentity, log_wandb: bool,
            trace: Trace | None = None) -> None:
        """One run on the worker: the stages, then every sink gets the result, then it is
        recorded (the set's previous run, its cluster chain, the ledger). Each stage is timed
        into ``trace`` (kept in :attr:`traces`, newest last)."""
        trace = trace if trace is not None else Trace(
            f"{sample.name} run {identity.val_index} (epoch {identity.epoch})")
        self.traces.append(trace)
        with trace.active():
            self._job(sample, identity, log_wandb)

    def _job(self, sample: EpochSample, identity: RunIdentity, log_wandb: bool) -> None:
        name, val_index = sample.name, identity.val_index
        try:
            result, chain = process_run(
                sample, identity, self.chain.previous.get(name), self.chain.chain_of(name),
                self.stages, self.warn, n_jobs=self.threads,
            )
        except JobCancelled:
            self.chain.interrupted(name, val_index, "stopped at shutdown, before it was written")
            self.write_ledgers([name])
            raise
        except Exception as err:  # noqa: BLE001 - recorded and warned; training goes on
            self.chain.failed(name, val_index, f"{type(err).__name__}: {err}")
            self.write_ledgers([name])
            raise
        wandb = self.sinks.write(result, self.warn, log_wandb)
        if (set_dir(self.root, name) / run_file_name(result)).is_file():
            self.written[name] = self.written.get(name, 0) + 1
        with stage("record"):
            self.chain.written(result, chain, wandb)
            self.write_ledgers([name])

    def threads(self) -> int:
        """Threads a job may use now: the ``n_jobs`` option while training runs (with
        ``priority="fair"`` at least half the cores), every core once it is over (read again
        during a run, so a queued t-SNE speeds up at the end). Also where a run in progress
        stops when shutdown asks it to."""
        self.worker.check_cancelled()
        return self.worker.job_threads()

    def shutdown(self, exception: BaseException, drain_s: float, cancel_s: float) -> None:
        """After ``exception``: finish the queued runs within one deadline (on every core), then
        stop the running one at its next stopping point; the runs left are marked interrupted
        (they stay pending, so a checkpoint saved now holds them) with one warning."""
        self.deadline_s = drain_s
        self.worker.end_training()
        if not self.worker.drain(timeout=drain_s):
            self.worker.cancel()  # t-SNE stops within 50 iterations
            self.worker.wait_idle(timeout=cancel_s)
        left = self.chain.waiting()
        error = type(exception).__name__
        for sample, identity in left:
            self.chain.interrupted(sample.name, identity.val_index, f"not written within the "
                                   f"{drain_s:g} s shutdown deadline after {error}")
        if left and self.is_zero:
            runs = ", ".join(f"{s.name!r} run {i.val_index} (epoch {i.epoch})" for s, i in left)
            self.warn(
                "shutdown",
                f"after {error}, {len(left)} validation run(s) were not written within the "
                f"{drain_s:g} s shutdown deadline: {runs}. A run whose reduction still ends is "
                f"written if the process lives on; the others stay in the callback's "
                f"checkpoint state: a checkpoint saved now (Lightning's OnExceptionCheckpoint) "
                f"holds them, and fit(ckpt_path=...) processes them. read_ledger lists them as "
                f"'interrupted'",
            )

    def finish_call(self, fn: str) -> None:
        """The end of a ``fit`` / ``validate`` (or an exception): the sinks' ``finish`` and the
        ledgers, traced as one more entry of :attr:`traces`."""
        trace = Trace(f"end of {fn}: the sinks' finish")
        self.traces.append(trace)
        with trace.active():
            self.sinks.finish(self.warn)
            with stage("ledgers"):
                self.write_ledgers()

    def write_ledgers(self, names: list[str] | None = None) -> None:
        """Mirror the ledger of each set to its ``ledger.jsonl`` (rank zero)."""
        if not self.is_zero:
            return
        for name in names or self.chain.ledger.names():
            with self._ledger_lock:  # a snapshot is written whole, never an older one last
                # The ledger is one of the local files: one warning for both when the disk fails.
                guarded(self.warn, "sink:local files", "writing to local files", partial(
                    self.chain.ledger.write, set_dir(self.root, name), name))

    def append_ledgers(self, val_index: int) -> None:
        """Record a run just performed in each set's ``ledger.jsonl`` (one line, on the
        training thread): a process killed before the run is written still leaves it there."""
        for name in self.options.set_names:
            with self._ledger_lock:
                guarded(self.warn, "sink:local files", "writing to local files", partial(
                    self.chain.ledger.append, set_dir(self.root, name), name, val_index))
