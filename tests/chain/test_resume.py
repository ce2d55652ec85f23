"""Resume from a checkpoint: the alignment chain, drift metrics and epoch numbers carry on.

Training is made deterministic (no shuffling, seeded init, plain SGD), so a run resumed from the
epoch-1 checkpoint sees exactly the embeddings an uninterrupted run sees. The interrupted run,
the resumed run and the uninterrupted run each write to their own folder; every epoch either
of the first two wrote must equal the uninterrupted run's: any break in the chain (epoch 2
reduced without the epoch-1 layout to warm-start from and align to) shows as a difference.

Two paths carry the chain: epoch 1 already processed at the checkpoint (it is the restored
``previous``), or still waiting for the background worker (it is restored as pending work and
must be processed again by the resumed run). A gate on the worker forces the second path.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from digits import DigitsModel, digits_tensors, trainer
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import lightning_embproj.pipeline as pipeline_module
from lightning_embproj import EmbeddingProjector, read_metrics, read_projections

LAYOUT = ["pca_x", "pca_y", "tsne_x", "tsne_y"]
METRICS = ["drift/knn_overlap", "pca/displacement", "tsne/displacement", "silhouette"]


def data() -> tuple[DataLoader, DataLoader]:
    x, y = digits_tensors()
    train = DataLoader(TensorDataset(x[:400], y[:400]), batch_size=50)  # no shuffle
    val = DataLoader(TensorDataset(x[600:800], y[600:800]), batch_size=50)
    return train, val


def model() -> DigitsModel:
    torch.manual_seed(0)
    return DigitsModel(lr=0.1)


def projector(**kwargs) -> EmbeddingProjector:
    return EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=100,
                              **kwargs)


def by_epoch(df: pd.DataFrame, epoch: int) -> pd.DataFrame:
    return df[df["epoch"] == epoch].sort_values("sample_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("uninterrupted")
    t = trainer(root, [projector()], max_epochs=4)
    t.fit(model(), *data())
    return read_projections(t.log_dir), read_metrics(t.log_dir)


class Calls:
    """Wraps the pipeline's ``process_run``: records each epoch it is called for, and with
    ``gate`` holds the call for ``gated_epoch`` until the gate opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gated_epoch: int | None = None) -> None:
        self.epochs: list[int] = []
        self.gate = threading.Event()
        self.gated_epoch = gated_epoch
        real = pipeline_module.process_run

        def wrapped(sample: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
            self.epochs.append(identity.epoch)
            if identity.epoch == self.gated_epoch:
                self.gate.wait()
            return real(sample, identity, *args, **kwargs)

        monkeypatch.setattr(pipeline_module, "process_run", wrapped)


class Steer(Callback):
    """Finish epoch 0 before epoch 1 starts (so only epoch 1 can be pending at its checkpoint);
    open the gate once training (and with it every checkpoint) is over."""

    def __init__(self, projector: EmbeddingProjector, calls: Calls) -> None:
        self.projector, self.calls = projector, calls

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            assert self.projector.flush()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.calls.gate.set()


def assert_like_uninterrupted(root: Path, epochs: list[int], full: pd.DataFrame,
                              full_metrics: pd.DataFrame) -> None:
    df, metrics = read_projections(root), read_metrics(root)
    assert sorted(df["epoch"].unique().tolist()) == epochs
    assert metrics["epoch"].tolist() == epochs
    for epoch in epochs:
        got, want = by_epoch(df, epoch), by_epoch(full, epoch)
        assert got["sample_id"].tolist() == want["sample_id"].tolist()
        assert got["step"].tolist() == want["step"].tolist()
        np.testing.assert_allclose(got[LAYOUT].to_numpy(), want[LAYOUT].to_numpy(), atol=1e-6,
                                   err_msg=f"epoch {epoch} differs from the uninterrupted run")
        row = metrics[metrics["epoch"] == epoch]
        want_row = full_metrics[full_metrics["epoch"] == epoch]
        for col in METRICS:
            np.testing.assert_allclose(row[col].to_numpy(dtype=float),
                                       want_row[col].to_numpy(dtype=float), atol=1e-9,
                                       err_msg=f"{col} at epoch {epoch}")
    # drift needs the epoch before: present from the second epoch on, even right after a resume
    assert not metrics.loc[metrics["epoch"] > 0, "drift/knn_overlap"].isna().any()


@pytest.mark.parametrize("path", ["pending", "previous"])
def test_resumed_run_continues_the_chain(tmp_path, uninterrupted, monkeypatch, path):
    full, full_metrics = uninterrupted
    pending = path == "pending"
    calls = Calls(monkeypatch, gated_epoch=1 if pending else None)
    first_projector = projector(background=pending)
    ckpt_dir = tmp_path / "ckpt"
    first = trainer(tmp_path / "interrupted",
                    [Steer(first_projector, calls), first_projector,
                     ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
                    max_epochs=2, enable_checkpointing=True)
    first.fit(model(), *data())
    assert calls.epochs == [0, 1]
    ckpt = ckpt_dir / "last.ckpt"
    torch.load(ckpt, weights_only=True)  # the projector's state is plain tensors and builtins

    calls.epochs.clear()
    resumed = projector(background=pending)  # a new instance: all it knows is the state
    second = trainer(tmp_path / "resumed", [resumed], max_epochs=4)
    second.fit(DigitsModel(lr=0.1), *data(), ckpt_path=str(ckpt))
    # epoch 1 was still waiting at the checkpoint: the resumed run processed it again first
    assert calls.epochs == ([1, 2, 3] if pending else [2, 3])

    assert_like_uninterrupted(Path(first.log_dir), [0, 1], full, full_metrics)
    assert_like_uninterrupted(Path(second.log_dir), [1, 2, 3] if pending else [2, 3], full,
                              full_metrics)


def test_two_projectors_keep_separate_state(tmp_path):
    """Two layers with different settings in one Trainer: distinct state keys, each restored."""
    def pair() -> list[EmbeddingProjector]:
        return [
            EmbeddingProjector(layers=["encoder"], label_key=1, reducers="pca", max_samples=60),
            EmbeddingProjector(layers=["encoder.0"], reducers=["pca"], n_components=3,
                               max_samples=40, background=False),
        ]

    first_pair = pair()
    assert first_pair[0].state_key != first_pair[1].state_key
    ckpt_dir = tmp_path / "ckpt"
    t = trainer(tmp_path / "interrupted",
                [*first_pair, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
                max_epochs=1, enable_checkpointing=True)
    t.fit(model(), *data())

    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["callbacks"]
    for p, layer, dims in zip(first_pair, ["encoder", "encoder.0"], [2, 3], strict=True):
        state = saved[p.state_key]
        entries = list(state["previous"].values()) + state["pending"]
        assert {e["sample"]["name"] for e in entries} == {layer}
        for e in state["previous"].values():
            assert e["layouts"]["pca"].shape[1] == dims

    second_pair = pair()
    t = trainer(tmp_path / "resumed", [*second_pair], max_epochs=2)
    t.fit(DigitsModel(lr=0.1), *data(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    for layer, n in [("encoder", 60), ("encoder.0", 40)]:
        # epoch 0 may have been pending at the checkpoint (then it is redone here), epoch 1 is new
        df = read_projections(t.log_dir, layer)
        assert df.groupby("epoch").size().to_dict().get(1) == n
        # epoch 1 (after the resume) has drift metrics: its projector got its own epoch 0 back
        metrics = read_metrics(t.log_dir, layer)
        drift = metrics.loc[metrics["epoch"] == 1, "drift/knn_overlap"].to_numpy(dtype=float)
        assert drift.size == 1 and not np.isnan(drift[0])


def test_same_set_twice_is_refused_by_lightning(tmp_path):
    """Two projectors writing one set would overwrite each other's files and checkpoint slot."""
    with pytest.raises(RuntimeError, match="state_key.*must be unique"):
        trainer(tmp_path, [projector(), projector(background=False, seed=1)])
    assert not Path(tmp_path, "embproj").exists()
