"""The one owner of what spans validation runs: counters, pending runs, the chain, the ledger.

Every part is declared in :data:`~lightning_embproj.chain.parts.PARTS` with how it is saved
and what each Trainer entry point does to it. A *chain* is the runs of one ``fit`` /
``validate`` call: they are aligned, warm started and compared with each other, never with
another chain's.

- a new ``fit`` / ``validate`` starts a chain (:meth:`ChainState.start_chain`);
- ``fit(ckpt_path=...)`` continues the checkpoint's chain exactly (:meth:`ChainState.restore`
  with ``fn="fit"``): runs the checkpoint held as pending are processed first, and runs the
  interrupted process performed after the checkpoint are performed again under their old
  ``val_index`` (:attr:`ChainState.resumed_from` says from which one);
- ``validate`` / ``test`` / ``predict`` with ``ckpt_path`` never rewind anything: the run
  counter only moves forward (to the checkpoint's count when that is higher), the run is labelled
  with the checkpoint's epoch and global step, and the chain stays the fresh one.

Example:
    >>> from lightning_embproj.options import ProjectorOptions
    >>> state, opts = ChainState(), ProjectorOptions(every_n_epochs=2)
    >>> state.start_chain("fit")
    >>> [state.next_run(e, 10 * e, opts).selected for e in range(3)]
    [True, False, True]
    >>> saved = state.state_dict()
    >>> later = ChainState()
    >>> later.start_chain("validate")
    >>> later.restore(saved, fn="validate")  # a validate with ckpt_path: no rewind
    >>> later.next_run(0, 0, opts).val_index, later.next_run(0, 0, opts).chain
    (3, 0)
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from lightning_embproj.chain.checkpoint import (
    projection_from_state,
    projection_to_state,
    rehash,
    sample_from_state,
    sample_to_state,
)
from lightning_embproj.chain.ledger import (
    DROPPED,
    EMPTY,
    FAILED,
    INTERRUPTED,
    NOT_SELECTED,
    PROJECTED,
    QUEUED,
    Ledger,
    RunRecord,
)
from lightning_embproj.chain.parts import PARTS, Part
from lightning_embproj.chain.selection import RunCounter
from lightning_embproj.collect.hashing import HASH_VERSION
from lightning_embproj.evolve.set_chain import SetChain
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.sinks.view.history import ViewHistory
from lightning_embproj.sinks.wandb_history import WandbHistory


@dataclass(frozen=True)
class Run:
    """A validation run that starts now; ``selected``: it is projected."""

    identity: RunIdentity
    selected: bool

    @property
    def val_index(self) -> int:
        return self.identity.val_index

    @property
    def chain(self) -> int:
        return self.identity.chain


class ChainState:
    """Everything that spans runs, behind one lock (the worker and the training thread share it).

    Rank zero alone records the ledger and pending runs; every rank counts runs, so that
    selection agrees everywhere.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.counter = RunCounter()
        self.stage = "fit"
        self.previous: dict[str, RunResult] = {}
        self.clusters: dict[str, SetChain] = {}
        self.next_cluster_id: dict[str, int] = {}
        self.pending: dict[tuple[str, int], tuple[EpochSample, RunIdentity]] = {}
        self.ledger = Ledger()
        self.run_id = uuid.uuid4().hex
        self.chain_uid = ""  # the current chain's id, unique across processes
        self.wandb_run = ""  # the W&B run the written runs were logged to
        self.root = ""  # where the written runs' local files are
        self.resumed_from: int | None = None  # val_index a resumed fit continues from
        self.restored_pending: list[tuple[EpochSample, RunIdentity]] = []
        self.label: tuple[int, int] | None = None  # (epoch, step) of a checkpoint validated
        self.history: WandbHistory | None = None
        self.view: ViewHistory | None = None
        self.monitored: dict[str, float] = {}  # key -> the `monitor` value logged last

    # -- entry points -------------------------------------------------------------------
    def start_chain(self, stage: str) -> None:
        """A new ``fit`` / ``validate``: a fresh chain; ``val_index`` counts on."""
        with self.lock:
            for (name, v), (_, identity) in self.pending.items():
                # Only an exception leaves runs here; they were marked interrupted then.
                if self.ledger.get(name, v) is None:
                    self.ledger.record(name, v, identity.epoch, identity.step, identity.chain,
                                       identity.stage, INTERRUPTED, "a new chain started",
                                       run_id=self.run_id)
            for name, chain in self.clusters.items():
                self.next_cluster_id[name] = chain.clusters.next_id
            self.pending, self.previous, self.clusters = {}, {}, {}
            self.monitored = {}
            self.restored_pending, self.resumed_from, self.label = [], None, None
            self.stage = stage
            self.chain_uid = uuid.uuid4().hex
            self.counter.start_chain()

    def restore(self, state: dict[str, Any], fn: str, label: tuple[int, int] | None = None,
                warn: Any = None) -> None:
        """Load a checkpoint's state: a resumed ``fit`` continues it; another entry point
        (``validate`` / ``test`` / ``predict`` with ``ckpt_path``) only moves the run counter
        forward and labels its runs with the checkpoint's ``label`` (epoch, global step)."""
        total = int(state.get("runs", {}).get("total", 0))
        if fn != "fit":
            with self.lock:
                self.counter.total = max(self.counter.total, total)
                self.run_id = str(state.get("run_id", self.run_id))
                self.label = label
            return
        version = int(state.get("hash_version", 1))  # 0.1.0 checkpoints had no version
        rekey = version != HASH_VERSION
        previous = {n: projection_from_state(p, rekey)
                    for n, p in state.get("previous", {}).items()}
        pending = [(sample_from_state(e["sample"]), RunIdentity.from_state(e))
                   for e in state.get("pending", [])]
        clusters = {n: SetChain.from_state_dict(c) for n, c in state.get("chains", {}).items()}
        if rekey:
            # Keys are a hash of the ids the samples carry: recompute them, so the resumed run
            # aligns on the points both samples share (the tracked subset itself may change).
            if warn is not None:
                warn("resume:hash",
                     f"the checkpoint's projector state used id hash version {version} (this "
                     f"version uses {HASH_VERSION}); its keys were recomputed, and the tracked "
                     f"points may differ from the ones before the checkpoint")
            pending = [(rehash(sample), identity) for sample, identity in pending]
            clusters = {}  # cluster ids were matched on the old keys: start the lineage afresh
        with self.lock:
            self.counter.load_state_dict(state.get("runs", {}))
            if "runs" not in state:  # a 0.1.0 checkpoint: count on after the runs it holds
                held = [p.val_index for p in previous.values()]
                held += [identity.val_index for _, identity in pending]
                self.counter.total = max(held, default=-1) + 1
            self.previous, self.clusters = previous, clusters
            self.next_cluster_id = {n: int(v) for n, v in state.get("next_cluster_id", {}).items()}
            self.pending = {}
            self.restored_pending = sorted(pending, key=lambda p: p[1].val_index)
            self.ledger.load_state_dict(list(state.get("ledger", [])))
            self.run_id = str(state.get("run_id", self.run_id))
            self.chain_uid = str(state.get("chain_uid", self.chain_uid))
            self.wandb_run = str(state.get("wandb_run", ""))
            self.root = str(state.get("root", ""))
            self.resumed_from = self.counter.total
            self.monitored = {str(k): float(v) for k, v in state.get("monitored", {}).items()}
            self.label = None
            self.stage = "fit"

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and builtins: loads with ``torch.load(weights_only=True)``."""
        with self.lock:
            pending = sorted(self.pending.items(), key=lambda item: item[0][1])
            return {
                "previous": {n: projection_to_state(p) for n, p in self.previous.items()},
                "chains": {n: c.state_dict() for n, c in self.clusters.items()},
                "next_cluster_id": dict(self.next_cluster_id),
                "pending": [{**identity.to_state(), "sample": sample_to_state(sample)}
                            for _, (sample, identity) in pending],
                "runs": self.counter.state_dict(),
                "ledger": self.ledger.state_dict(),
                "run_id": self.run_id,
                "chain_uid": self.chain_uid,
                "wandb_run": self.wandb_run,
                "root": self.root,
                "hash_version": HASH_VERSION,
                "monitored": dict(self.monitored),
            }

    # -- runs ---------------------------------------------------------------------------
    def next_run(self, epoch: int, step: int, options: ProjectorOptions) -> Run:
        """Count the validation run that starts now. Outside ``fit`` with a checkpoint, the
        run is labelled with the checkpoint's epoch and step."""
        with self.lock:
            if self.label is not None:
                epoch, step = self.label
            counted = self.counter.next(epoch, options)
            identity = RunIdentity(counted.val_index, epoch, step, self.counter.chain,
                                   self.stage)
            return Run(identity, counted.selected)

    def not_selected(self, names: list[str], identity: RunIdentity) -> None:
        for name in names:
            self._record(name, identity, NOT_SELECTED, "every_n_epochs / every_n_validations")

    def empty(self, name: str, identity: RunIdentity, reason: str) -> None:
        self._record(name, identity, EMPTY, reason)

    def queue(self, sample: EpochSample, identity: RunIdentity) -> None:
        """A run waits for the worker: pending until written, dropped or failed."""
        with self.lock:
            self.pending[(sample.name, identity.val_index)] = (sample, identity)
            written = self.ledger.get(sample.name, identity.val_index)
            if written is None or written.status != PROJECTED:  # else: written, redone now
                self._record(sample.name, identity, QUEUED)

    def dropped(self, name: str, val_index: int, reason: str) -> None:
        """Skipped by the queue policy: it leaves ``pending`` for good."""
        with self.lock:
            self.pending.pop((name, val_index), None)
            self.ledger.update(name, val_index, DROPPED, reason)

    def failed(self, name: str, val_index: int, reason: str) -> None:
        with self.lock:
            self.pending.pop((name, val_index), None)
            self.ledger.update(name, val_index, FAILED, reason)

    def interrupted(self, name: str, val_index: int, reason: str) -> None:
        """Not finished at shutdown: it stays pending, so a later checkpoint still holds it."""
        with self.lock:
            self.ledger.update(name, val_index, INTERRUPTED, reason)

    def written(self, result: RunResult, chain: SetChain, wandb: str) -> None:
        """A run's outputs are written: it becomes the set's previous run, in one step with
        leaving ``pending``, so a checkpoint holds it either as pending or as previous."""
        name, val_index = result.name, result.val_index
        with self.lock:
            self.previous[name] = result
            self.clusters[name] = chain
            self.pending.pop((name, val_index), None)
            self.ledger.update(name, val_index, PROJECTED, wandb=wandb)
            if wandb:
                self.wandb_run = wandb

    def chain_of(self, name: str) -> SetChain:
        """The set's cluster chain; a new chain's first run continues the free cluster ids."""
        with self.lock:
            chain = self.clusters.get(name)
            if chain is None:
                chain = SetChain()
                chain.clusters.next_id = self.next_cluster_id.get(name, 0)
            return chain

    def wandb_history(self, run_id: str) -> WandbHistory:
        """The history of the W&B run ``run_id``: kept while runs log to it, fresh for another."""
        with self.lock:
            if self.history is None or self.history.run_id != run_id:
                self.history = WandbHistory(run_id)
            return self.history

    def view_history(self, root: str) -> ViewHistory:
        """The HTML view's history of the output root ``root``: kept while runs go there."""
        with self.lock:
            if self.view is None or self.view.root != root:
                self.view = ViewHistory(root)
            return self.view

    def waiting(self) -> list[tuple[EpochSample, RunIdentity]]:
        """Runs not yet written, by ``val_index``."""
        with self.lock:
            return sorted(self.pending.values(), key=lambda p: p[1].val_index)

    def take_restored(self) -> list[tuple[EpochSample, RunIdentity]]:
        """The runs a resumed checkpoint held as pending (once)."""
        with self.lock:
            restored, self.restored_pending = self.restored_pending, []
            return restored

    def _record(self, name: str, identity: RunIdentity, status: str, reason: str = "") -> None:
        with self.lock:
            self.ledger.record(name, identity.val_index, identity.epoch, identity.step,
                               identity.chain, identity.stage, status, reason,
                               run_id=self.run_id, chain_uid=self.chain_uid)

    def renumber_chain(self, number: int) -> None:
        """Give the current chain another number (a number the folder already uses for another
        chain): its runs still waiting are renumbered with it."""
        with self.lock:
            if number == self.counter.chain:
                return
            self.counter.chain = number
            self.restored_pending = [(s, dataclasses.replace(i, chain=number))
                                     for s, i in self.restored_pending]

    def records(self, name: str) -> list[RunRecord]:
        with self.lock:
            return self.ledger.runs(name)


__all__ = ["PARTS", "ChainState", "Part", "Run", "RunIdentity", "DROPPED", "EMPTY", "FAILED"]
