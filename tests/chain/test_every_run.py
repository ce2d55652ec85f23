"""Every validation run accounted for: the chain owner across fit, validate, resume and faults.

Each test is one sequence users run, on real fits; the queue cases are forced with a gate on
the worker (no sleeps). The ledger (``read_ledger``) must list every run the Trainer performed
exactly once, and every projected run must be in every output exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from digits import DigitsModel, loaders, trainer
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_embproj.pipeline as pipeline_module
from lightning_embproj import (
    EmbeddingProjector,
    list_validations,
    read_ledger,
    read_lineage,
    read_metrics,
    read_movers,
    read_per_label,
)
from lightning_embproj.runtime.warn import ProjectorWarning


def data() -> tuple[Any, Any]:
    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    train = torch.utils.data.DataLoader(train.dataset, batch_size=20)  # no shuffle: replayable
    return train, val


def model() -> DigitsModel:
    torch.manual_seed(0)
    return DigitsModel(lr=0.1)


class Gate:
    """Holds the worker's job for one ``val_index`` until the gate opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, val_index: int) -> None:
        self.open, self.started = threading.Event(), threading.Event()
        real = pipeline_module.process_run

        def held(sample: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
            if identity.val_index == val_index and not self.open.is_set():
                self.started.set()
                assert self.open.wait(60)
            return real(sample, identity, *args, **kwargs)

        monkeypatch.setattr(pipeline_module, "process_run", held)


class OpenAtTrainEnd(Callback):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            assert self.gate.started.wait(60)  # run 0 holds the worker from now on

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.gate.open.set()


def csv_runs(root: Any, name: str = "embeddings") -> list[int]:
    return [v for v, _, _ in list_validations(root, name)]


def metric_runs(root: Any) -> list[int]:
    return read_metrics(root)["val_index"].tolist()


def assert_each_projected_run_once(root: Any) -> None:
    """The ledger's projected runs, exactly once in the CSV files, metrics and lineage."""
    ledger = read_ledger(root)
    assert ledger["val_index"].tolist() == sorted(set(ledger["val_index"]))
    projected = ledger.loc[ledger["status"] == "projected", "val_index"].tolist()
    assert csv_runs(root) == projected
    assert metric_runs(root) == projected
    lineage = read_lineage(root)
    assert sorted(set(lineage["val_index"])) == projected
    # movers.csv and per_label.csv: a run's rows once (a rerun after a resume replaced them)
    per_label = read_per_label(root)
    if len(per_label):
        assert sorted(set(per_label["val_index"])) == projected
        assert not per_label.duplicated(["val_index", "label"]).any()
    movers = read_movers(root)
    assert set(movers["val_index"]) <= set(projected)
    assert not movers.duplicated(["val_index", "kind", "sample_id"]).any()


# -- finding 1: runs skipped by the queue policy --------------------------------------------
def test_runs_skipped_by_the_queue_policy_leave_pending_and_a_resume_never_redoes_them(
    tmp_path, monkeypatch
):
    gate = Gate(monkeypatch, val_index=0)
    out = tmp_path / "out"
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   max_queued_epochs=2, output_dir=str(out))
    ckpt = tmp_path / "ckpt"
    t = trainer(tmp_path, [OpenAtTrainEnd(gate), projector,
                           ModelCheckpoint(dirpath=ckpt, save_last=True)],
                max_epochs=6, enable_checkpointing=True)
    with pytest.warns(ProjectorWarning, match="oldest waiting epoch was skipped"):
        t.fit(model(), *data())
    # runs 1-5 queued behind the held run 0, two at most: 1, 2 and 3 were skipped
    saved = torch.load(ckpt / "last.ckpt", weights_only=True)["callbacks"][projector.state_key]
    assert [p["val_index"] for p in saved["pending"]] == [0, 4, 5]
    ledger = read_ledger(out)
    assert ledger["status"].tolist() == ["projected"] + ["dropped"] * 3 + ["projected"] * 2
    assert ledger.loc[1:3, "reason"].str.contains("max_queued_epochs=2").all()
    assert_each_projected_run_once(out)
    before = read_metrics(out).set_index("val_index")

    resumed = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                 max_queued_epochs=2, output_dir=str(out))
    t = trainer(tmp_path, [resumed], max_epochs=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProjectorWarning)  # a legitimate resume: no warning
        t.fit(DigitsModel(lr=0.1), *data(), ckpt_path=str(ckpt / "last.ckpt"))
    # only the runs pending at the checkpoint were redone (in order, each against the one
    # before it, as the first time), then run 6; the skipped runs were never processed
    ledger = read_ledger(out)
    assert ledger["status"].tolist() == ["projected"] + ["dropped"] * 3 + ["projected"] * 3
    assert_each_projected_run_once(out)
    after = read_metrics(out).set_index("val_index")
    for column in ("drift/knn_overlap", "cka_previous", "pca/displacement"):
        np.testing.assert_allclose(after.loc[[4, 5], column], before.loc[[4, 5], column],
                                   rtol=1e-6, err_msg=column)
    assert not np.isnan(after.loc[6, "drift/knn_overlap"])


# -- finding 2: validate / test with a checkpoint --------------------------------------------
def test_validate_and_test_with_a_checkpoint_never_rewind_and_start_a_fresh_chain(tmp_path):
    out = tmp_path / "out"
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   background=False, output_dir=str(out))
    ckpt = tmp_path / "ckpt"
    t = trainer(tmp_path, [projector, ModelCheckpoint(dirpath=ckpt, save_top_k=-1,
                                                      filename="{epoch}")],
                max_epochs=3, enable_checkpointing=True)
    m = DigitsModel(lr=0.1)
    train, val = data()
    t.fit(m, train, val)
    first = torch.load(ckpt / "epoch=0.ckpt", weights_only=True)
    before = read_metrics(out).set_index("val_index")
    lineage_before = read_lineage(out)

    t.test(m, val, ckpt_path=str(ckpt / "epoch=0.ckpt"))  # restores callback state too
    t.validate(m, val, ckpt_path=str(ckpt / "epoch=0.ckpt"))
    t.validate(m, val)  # the current model: the trainer's own epoch and step

    ledger = read_ledger(out)
    assert ledger["val_index"].tolist() == [0, 1, 2, 3, 4]
    assert ledger["chain"].tolist() == [0, 0, 0, 1, 2]
    assert ledger["stage"].tolist() == ["fit"] * 3 + ["validate"] * 2
    # labelled with the checkpoint's epoch and step, not the trainer's after the fit
    assert (ledger.loc[3, "epoch"], ledger.loc[3, "step"]) == (first["epoch"],
                                                              first["global_step"])
    assert (ledger.loc[4, "epoch"], ledger.loc[4, "step"]) == (t.current_epoch, t.global_step)
    assert_each_projected_run_once(out)
    metrics = read_metrics(out).set_index("val_index")
    # the fit's runs are untouched; the validate runs compare with nothing (fresh chains)
    for column in ("drift/knn_overlap", "cka_previous"):
        np.testing.assert_array_equal(metrics.loc[[0, 1, 2], column], before[column])
        assert metrics.loc[[3, 4], column].isna().all()
    fit_lineage = read_lineage(out).query("val_index < 3").reset_index(drop=True)
    assert fit_lineage.equals(lineage_before)


def test_validate_with_a_checkpoint_in_a_new_process_follows_the_fit_in_its_folder(tmp_path):
    out = tmp_path / "out"
    ckpt = tmp_path / "ckpt"
    fit = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                             background=False, output_dir=str(out))
    t = trainer(tmp_path, [fit, ModelCheckpoint(dirpath=ckpt, save_top_k=-1,
                                                filename="{epoch}")],
                max_epochs=3, enable_checkpointing=True)
    t.fit(model(), *data())
    saved = torch.load(ckpt / "epoch=1.ckpt", weights_only=True)

    # a new process: a new projector and Trainer, the same folder
    fresh = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                               background=False, output_dir=str(out))
    t = trainer(tmp_path, [fresh])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProjectorWarning)  # the fit's own folder: no warning
        t.validate(DigitsModel(), data()[1], ckpt_path=str(ckpt / "epoch=1.ckpt"))
    ledger = read_ledger(out)
    assert ledger["val_index"].tolist() == [0, 1, 2, 3]  # run 3: never over the fit's runs
    last = ledger.iloc[-1]
    assert (last["epoch"], last["step"], last["stage"]) == (saved["epoch"],
                                                           saved["global_step"], "validate")
    assert_each_projected_run_once(out)
    # a cluster id names one cluster in the folder: the new chain's clusters get new ids
    lineage = read_lineage(out)
    fit_ids = set(lineage.loc[lineage["val_index"] < 3, "cluster"])
    new = lineage.loc[lineage["val_index"] == 3]
    assert set(new["event"]) == {"emerge"} and min(new["cluster"]) > max(fit_ids)


def test_another_training_run_in_the_same_folder_is_numbered_after_it_with_a_warning(tmp_path):
    out = tmp_path / "out"
    for expected in ([0, 1], [0, 1, 2, 3]):
        projector = EmbeddingProjector(reducers="pca", max_samples=30, background=False,
                                       output_dir=str(out))
        t = trainer(tmp_path, [projector], max_epochs=2)
        if expected[0] == 0 and len(expected) == 2:
            t.fit(model(), *data())
        else:
            with pytest.warns(ProjectorWarning, match="another training run"):
                t.fit(model(), *data())
        assert read_ledger(out)["val_index"].tolist() == expected
    assert_each_projected_run_once(out)


# -- processes: a real SIGKILL, a real Ctrl+C ----------------------------------------------
SCRIPT = Path(__file__).parents[1] / "support" / "chain_script.py"


def run_process(tmp_path: Path, ops: list[dict[str, Any]], **plan: Any) -> int:
    """Run ``ops`` in a new Python process (see chain_script.py); its exit code."""
    plan = {"root": str(tmp_path / "out"), "ckpt": str(tmp_path / "ckpt"), "ops": ops, **plan}
    path = tmp_path / f"plan_{len(list(tmp_path.glob('plan_*.json')))}.json"
    path.write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent)}
    # Output to a file, not a pipe: after a SIGKILL, W&B's service process (older wandb lets
    # it outlive its parent a while) would hold a pipe open and the wait would never end.
    log = path.with_suffix(".log")
    with log.open("w") as sink:
        done = subprocess.run([sys.executable, str(SCRIPT), str(path)], env=env, timeout=600,
                              stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode not in (0, 1, -9):
        raise AssertionError(log.read_text()[-3000:])
    return done.returncode


def offline_tables(wandb_dir: Path, key: str) -> list[list[dict[str, Any]]]:
    """Per offline W&B process (oldest first), the tables logged under ``key`` as row dicts."""
    from wandb_records import settle

    settle()
    runs = sorted(glob.glob(str(wandb_dir / "**" / "offline-run-*"), recursive=True))
    out = []
    for run in runs:
        *folders, leaf = key.split("/")
        files = glob.glob(os.path.join(run, "files", "media", "table", *folders,
                                       f"{leaf}_*.table.json"))
        files.sort(key=lambda f: int(os.path.basename(f)[len(leaf) + 1:].split("_")[0]))
        tables = []
        for f in files:
            with open(f, encoding="utf-8") as fh:
                table = json.load(fh)
            tables.append([dict(zip(table["columns"], row, strict=True))
                           for row in table["data"]])
        out.append(tables)
    return out


def evolution_runs(wandb_dir: Path) -> dict[int, int]:
    """``val_index`` -> rows in the newest evolution table W&B got."""
    tables = [t for run in offline_tables(wandb_dir, "embproj/embeddings/evolution") for t in run]
    counts: dict[int, int] = {}
    for row in tables[-1]:
        counts[row["val_index"]] = counts.get(row["val_index"], 0) + 1
    return counts


def test_runs_queued_at_a_kill_are_logged_to_the_same_wandb_run_on_resume(
    tmp_path, wandb_offline
):
    plan = {"wandb_id": "killed1", "wandb_dir": str(wandb_offline)}
    assert run_process(tmp_path, [{"op": "fit", "epochs": 3, "hold": True, "kill_at": 2}],
                       **plan) == -9
    out = tmp_path / "out"
    assert not list(out.glob("embproj/embeddings/val_*.csv"))  # nothing written before
    assert run_process(tmp_path, [{"op": "fit", "epochs": 2, "resume": True}], **plan) == 0
    # runs 0 and 1 were pending in last.ckpt: processed on resume AND logged to W&B now
    resumed = offline_tables(wandb_offline, "embproj/embeddings")[-1]
    assert sorted(t[0]["val_index"] for t in resumed) == [0, 1, 2, 3]
    assert evolution_runs(wandb_offline) == {0: 30, 1: 30, 2: 30, 3: 30}
    ledger = read_ledger(out)
    assert ledger["status"].tolist() == ["projected"] * 4
    assert set(ledger["wandb"]) == {"killed1"}
    assert_each_projected_run_once(out)
    # the resumed runs were queued at on_fit_start, before any validation run: the libraries
    # were still scanned on the training thread (a worker scan deadlocked against the imports)
    scans = json.loads((tmp_path / "scans.json").read_text())
    assert scans and set(scans) == {"MainThread"}, scans


def test_a_kill_after_logging_neither_loses_nor_repeats_a_run_in_wandb(tmp_path, wandb_offline):
    plan = {"wandb_id": "killed2", "wandb_dir": str(wandb_offline)}
    # runs 0-1 pending at the last checkpoint (held), then logged; run 2 logged; then a kill
    assert run_process(tmp_path, [{"op": "fit", "epochs": 3, "hold": True, "release_at": 2,
                                   "kill_at": 2}], **plan) == -9
    out = tmp_path / "out"
    assert csv_runs(out) == [0, 1, 2]
    assert run_process(tmp_path, [{"op": "fit", "epochs": 1, "resume": True}], **plan) == 0
    first, resumed = offline_tables(wandb_offline, "embproj/embeddings")
    assert sorted(t[0]["val_index"] for t in first) == [0, 1, 2]
    # 0 and 1 came back from the checkpoint but W&B had them: not logged again; run 2 was
    # performed after the checkpoint, so the resumed fit performed (and logged) it again
    assert sorted(t[0]["val_index"] for t in resumed) == [2]
    assert evolution_runs(wandb_offline) == {0: 30, 1: 30, 2: 30}
    assert read_ledger(out)["status"].tolist() == ["projected"] * 3
    assert_each_projected_run_once(out)


def test_ctrl_c_stops_the_running_reduction_and_a_resume_processes_it(tmp_path):
    # run 0's t-SNE takes a minute; Ctrl+C in epoch 1: one 1 s deadline, then it stops
    code = run_process(tmp_path, [{"op": "fit", "epochs": 4, "interrupt_at": 1}],
                       reducers=["pca", "tsne"], slow_tsne=True, drain_s=1.0)
    assert code == 1  # Lightning's graceful shutdown ends in sys.exit(1)
    out = tmp_path / "out"
    ledger = read_ledger(out)
    assert ledger["status"].tolist() == ["interrupted"]
    assert "shutdown" in ledger.loc[0, "reason"]
    assert not list(out.rglob("*.tmp")) and csv_runs(out) == []
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # on the exception
    (state,) = [v for k, v in saved["callbacks"].items() if "EmbeddingProjector" in k]
    assert [p["val_index"] for p in state["pending"]] == [0]
    assert run_process(tmp_path, [{"op": "fit", "epochs": 1, "resume": True}],
                       reducers=["pca", "tsne"]) == 0
    ledger = read_ledger(out)
    assert ledger["status"].tolist() == ["projected"] * len(ledger) and len(ledger) >= 2
    assert_each_projected_run_once(out)


# -- the ledger invariant over random sequences ----------------------------------------------
def random_sequence(rng: random.Random) -> list[list[dict[str, Any]]]:
    """Processes, each a list of ops: fits (fresh or resumed), validate / test with or without
    a checkpoint, an exception, a Ctrl+C, a kill with runs queued or written."""
    processes: list[list[dict[str, Any]]] = [[]]
    ops = [{"op": "fit", "epochs": rng.choice([2, 3])}]
    for _ in range(rng.randint(3, 5)):
        kind = rng.choice(["resume", "resume", "validate", "test", "fit"])
        if kind in ("resume", "fit"):
            op: dict[str, Any] = {"op": "fit", "epochs": rng.choice([1, 2]),
                                  "resume": kind == "resume"}
        else:
            op = {"op": kind, "ckpt": rng.random() < 0.7}
        ops.append(op)
    # The last call validates cleanly: W&B's evolution table is complete at the end of each
    # fit / validate that ends without a kill (a killed one's finish never runs).
    ops.append({"op": "validate", "ckpt": rng.random() < 0.5})
    for op in ops[:-1]:
        if op["op"] == "fit" and rng.random() < 0.5:
            fault = rng.choice(["fail_at", "kill_at", "kill_at", "interrupt_at"])
            op[fault] = rng.randint(0, op["epochs"] - 1)  # counted from the fit's first epoch
            op["hold"] = rng.random() < 0.5
    for op in ops:
        processes[-1].append(op)
        if "kill_at" in op or "interrupt_at" in op or rng.random() < 0.3:
            processes.append([])
    return [p for p in processes if p]


def relabel(chains: list[Any]) -> list[int]:
    """Chain ids renumbered by first appearance: the same grouping compares equal."""
    seen: dict[Any, int] = {}
    return [seen.setdefault(c, len(seen)) for c in chains]


# More sequences: EMBPROJ_CHAIN_SEEDS=1-40 (about 20 s each on 2 cores).
_SEEDS = os.environ.get("EMBPROJ_CHAIN_SEEDS", "1-3").partition("-")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(int(_SEEDS[0]), int(_SEEDS[2] or _SEEDS[0]) + 1))
def test_every_run_once_over_random_sequences_of_fit_validate_resume_faults(
    tmp_path, wandb_offline, seed
):
    rng = random.Random(seed)
    processes = random_sequence(rng)
    plan = {"wandb_id": f"seq{seed}", "wandb_dir": str(wandb_offline), "drain_s": 1.0}
    for ops in processes:
        run_process(tmp_path, ops, **plan)
    out = tmp_path / "out"
    performed = json.loads((out / "performed.json").read_text())
    ledger = read_ledger(out)
    note = f"seed {seed}: {processes}"
    # every run the Trainer performed (in the surviving timeline) exactly once, in order
    assert relabel(ledger["chain"].tolist()) == relabel([c for c, _ in performed]), note
    assert relabel(ledger["chain_uid"].tolist()) == relabel(ledger["chain"].tolist()), note
    assert ledger["stage"].tolist() == [s for _, s in performed], note
    assert ledger["val_index"].is_monotonic_increasing and ledger["val_index"].is_unique
    assert set(ledger["status"]) <= {"projected", "interrupted"}, note
    assert_each_projected_run_once(out)
    projected = ledger.loc[ledger["status"] == "projected", "val_index"].tolist()
    assert evolution_runs(wandb_offline) == dict.fromkeys(projected, 30), note
    logged = {t[0]["val_index"] for run in offline_tables(wandb_offline, "embproj/embeddings")
              for t in run}
    assert set(projected) <= logged, note
    assert not list(out.rglob("*.tmp"))


def test_every_part_of_the_checkpoint_state_is_declared_once(tmp_path):
    """The owner's PARTS name every key its state holds, each key once: nothing that spans
    runs is saved (or forgotten) outside the declaration."""
    from lightning_embproj.chain.owner import PARTS

    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   background=False)
    trainer(tmp_path, [projector], max_epochs=1).fit(model(), *data())
    declared = [key for part in PARTS for key in part.keys]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(projector.state_dict())
