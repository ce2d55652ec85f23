"""One process of a chain test: Trainer calls on one projector, as a user's script makes them.

``python chain_script.py PLAN.json`` runs ``plan["ops"]`` in order, each a dict:

- ``{"op": "fit", "epochs": 3, "resume": true}``: ``fit`` for ``epochs`` more epochs, from
  ``last.ckpt`` when ``resume`` (and one exists);
- ``{"op": "validate", "ckpt": true}`` / ``{"op": "test", "ckpt": true}``: with ``last.ckpt``
  when ``ckpt``;
- a fault on a fit, at its E-th epoch (0: the first this call trains): ``"fail_at": E``
  (``training_step`` raises), ``"interrupt_at": E`` (a ``KeyboardInterrupt``: Lightning's
  graceful shutdown, then ``sys.exit(1)``), ``"kill_at": E`` (SIGKILL at the end of that
  epoch's validation run, before its checkpoint);
  ``"hold": true`` holds the worker from the first run on, so runs are still queued at the
  fault (otherwise the worker is flushed first), until epoch ``"release_at"`` starts.

Every scan of the native libraries is recorded with its thread in ``scans.json`` next to
``root`` (see :func:`record_scans`).

Next to the projector, the :class:`Performed` callback is the oracle: the runs the Trainer
performed, in order, as ``[chain, stage]`` pairs, kept in ``performed.json``. Its own rule is
the one the ledger must follow: a resumed fit drops the runs its chain had after the
checkpoint (they are performed again); a new ``fit`` / ``validate`` is a new chain.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from digits import DigitsModel, loaders
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

import lightning_embproj.callback as callback_module
import lightning_embproj.pipeline as pipeline_module
import lightning_embproj.reduce.dispatch as reduce_module
from lightning_embproj import EmbeddingProjector
from lightning_embproj.reduce.tsne import threads_now


class Performed(Callback):
    """The oracle: ``[chain, stage]`` of every validation run performed, in ``path``; a chain
    is a random id made when a fit / validate starts (kept by a checkpoint)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[list[Any]] = json.loads(path.read_text()) if path.exists() else []
        self.chain, self.fn = "", "fit"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.fn = str(getattr(stage, "value", stage))
        if self.fn in ("fit", "validate"):
            self.chain = uuid.uuid4().hex

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.runs.append([self.chain, self.fn])
            self._save()

    def state_dict(self) -> dict[str, Any]:
        return {"count": len(self.runs), "chain": self.chain}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.fn != "fit":
            return
        count, chain = int(state["count"]), str(state["chain"])
        self.runs = [r for i, r in enumerate(self.runs) if i < count or r[0] != chain]
        self.chain = chain
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs))
        os.replace(tmp, self.path)


class Fault(Callback):
    def __init__(self, op: dict[str, Any], projector: EmbeddingProjector,
                 hold: threading.Event, start: int) -> None:
        self.op, self.projector, self.hold, self.start = op, projector, hold, start

    def at(self, trainer: Any, fault: str) -> bool:
        return fault in self.op and trainer.current_epoch == self.start + self.op[fault]

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.at(trainer, "release_at"):
            self.hold.clear()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        if self.at(trainer, "fail_at"):
            raise RuntimeError("bug in training_step")
        if self.at(trainer, "interrupt_at"):
            raise KeyboardInterrupt

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.hold.clear()  # teardown waits for the worker

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # Before ModelCheckpoint's own on_validation_end (Lightning runs checkpoints last):
        # this run is in no checkpoint.
        if trainer.sanity_checking or not self.at(trainer, "kill_at"):
            return
        if not self.hold.is_set():  # not held (any more): every queued run is written first
            assert self.projector.flush(timeout=120)
        os.kill(os.getpid(), signal.SIGKILL)


def slow_tsne(real: Any) -> Any:
    """A t-SNE that takes long, with a stopping point every 0.1 s, as openTSNE's chunks have."""

    def run(*args: Any, **kwargs: Any) -> Any:
        for _ in range(600):
            threads_now(kwargs.get("n_jobs", 1))
            time.sleep(0.1)
        return real(*args, **kwargs)

    return run


def record_scans(path: Path) -> list[str]:
    """The thread of every scan of the native libraries (threadpoolctl), appended to ``path``
    (a JSON list) as it happens: only the training thread may scan (see runtime/native.py)."""
    import threadpoolctl

    scans: list[str] = json.loads(path.read_text()) if path.exists() else []
    real_init = threadpoolctl.ThreadpoolController.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        scans.append(threading.current_thread().name)
        path.write_text(json.dumps(scans))
        real_init(self, *args, **kwargs)

    threadpoolctl.ThreadpoolController.__init__ = recording_init  # type: ignore[method-assign]
    return scans


def main(plan: dict[str, Any]) -> None:
    root, ckpt = Path(plan["root"]), Path(plan["ckpt"])
    root.mkdir(parents=True, exist_ok=True)
    record_scans(root.parent / "scans.json")
    hold = threading.Event()
    real = pipeline_module.process_run

    def project(sample: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
        while hold.is_set():
            projector.worker.check_cancelled()  # a stopping point, as t-SNE's chunks are
            time.sleep(0.05)  # held: the run stays queued (a kill finds it there)
        return real(sample, identity, *args, **kwargs)

    pipeline_module.process_run = project  # type: ignore[assignment]
    if plan.get("slow_tsne"):
        reduce_module.tsne = slow_tsne(reduce_module.tsne)  # type: ignore[assignment]
    if "drain_s" in plan:
        callback_module.EXCEPTION_DRAIN_S = float(plan["drain_s"])
    projector = EmbeddingProjector(
        label_key="labels", reducers=plan.get("reducers", ["pca"]), max_samples=30,
        output_dir=str(root), seed=0,
    )
    performed = Performed(root / "performed.json")
    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    train = torch.utils.data.DataLoader(train.dataset, batch_size=20)
    torch.manual_seed(0)
    model = DigitsModel(lr=0.1)
    done_epochs = 0
    for op in plan["ops"]:
        logger: Any = False
        if plan.get("wandb_id"):
            from lightning.pytorch.loggers import WandbLogger

            logger = WandbLogger(project="embproj-chain", id=plan["wandb_id"], resume="allow",
                                 save_dir=plan["wandb_dir"])
        last = ckpt / "last.ckpt"
        use_ckpt = op.get("resume") or op.get("ckpt")
        if op.get("hold"):
            hold.set()
        if op["op"] == "fit":
            done_epochs = 0
            if use_ckpt and last.exists():
                done_epochs = int(torch.load(last, weights_only=True)["epoch"]) + 1
        fault = Fault(op, projector, hold, start=done_epochs)
        callbacks = [performed, projector, fault,
                     ModelCheckpoint(dirpath=ckpt, save_last=True)]
        if "fail_at" in op or "interrupt_at" in op:
            # (only then: with it, Lightning resumes a plain fit from `last` by itself)
            callbacks.append(OnExceptionCheckpoint(dirpath=ckpt, filename="last"))
        t = Trainer(default_root_dir=str(root), max_epochs=done_epochs + op.get("epochs", 2),
                    accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=1, limit_train_batches=2)
        path = str(last) if use_ckpt and last.exists() else None
        try:
            if op["op"] == "fit":
                t.fit(model, train, val, ckpt_path=path)
            elif op["op"] == "validate":
                t.validate(model, val, ckpt_path=path)
            else:
                t.test(model, val, ckpt_path=path)
        except RuntimeError as err:
            if "bug in training_step" not in str(err):
                raise
        finally:
            hold.clear()
        if logger:
            import wandb

            wandb.finish()


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
