"""Resume from a checkpoint: the alignment chain, drift metrics and epoch numbers carry on.

Training is made deterministic (no shuffling, seeded init, plain SGD), so a run resumed from the
epoch-1 checkpoint sees exactly the embeddings an uninterrupted run sees. Its layouts after the
resume must then equal the uninterrupted run's: any break in the chain (epoch 2 reduced without
the epoch-1 layout to warm-start from and align to) shows as a difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from digits import DigitsModel, digits_tensors, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.align import disparity

LAYOUT = ["pca_x", "pca_y", "tsne_x", "tsne_y"]


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


@pytest.mark.parametrize("background", [True, False])
def test_resumed_run_continues_the_chain(tmp_path, uninterrupted, background):
    full, full_metrics = uninterrupted
    ckpt_dir = tmp_path / "ckpt"
    first = trainer(tmp_path, [projector(background=background),
                               ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
                    max_epochs=2, enable_checkpointing=True)
    first.fit(model(), *data())
    ckpt = ckpt_dir / "last.ckpt"

    # the state loads with weights_only=True, and holds epoch 1 either as the previous
    # projection or as pending work (the worker may still have been busy at the checkpoint)
    state = torch.load(ckpt, weights_only=True)["callbacks"][projector().state_key]
    held = [p["epoch"] for p in state["previous"].values()] + [p["epoch"] for p in state["pending"]]
    assert 1 in held

    resumed = projector(background=background)  # a new instance: all it knows is the state
    second = trainer(tmp_path, [resumed], max_epochs=4)
    second.fit(DigitsModel(lr=0.1), *data(), ckpt_path=str(ckpt))

    df = read_projections(second.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 100, 1: 100, 2: 100, 3: 100}
    for epoch in range(4):
        got, want = by_epoch(df, epoch), by_epoch(full, epoch)
        assert got["step"].tolist() == want["step"].tolist()
        np.testing.assert_allclose(got[LAYOUT].to_numpy(), want[LAYOUT].to_numpy(), atol=1e-6,
                                   err_msg=f"epoch {epoch} differs from the uninterrupted run")
    # across the resume the layout moves as little as between any two epochs
    before, after = by_epoch(df, 1), by_epoch(df, 2)
    for r in ["pca", "tsne"]:
        cols = [f"{r}_x", f"{r}_y"]
        a, b = before[cols].to_numpy(), after[cols].to_numpy()
        moved = np.linalg.norm(b - a, axis=1).mean() / np.linalg.norm(a - a.mean(0), axis=1).mean()
        assert disparity(a, b) < 0.1 and moved < 0.5, (r, disparity(a, b), moved)
    # drift metrics need the epoch before: present right after the resume, as uninterrupted
    metrics = read_metrics(second.log_dir)
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    for col in ["drift/knn_overlap", "pca/displacement", "tsne/displacement", "silhouette"]:
        np.testing.assert_allclose(metrics[col].to_numpy(dtype=float)[1:],
                                   full_metrics[col].to_numpy(dtype=float)[1:], atol=1e-9)


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
    t = trainer(tmp_path, [*first_pair, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
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
    t = trainer(tmp_path, [*second_pair], max_epochs=2)
    t.fit(DigitsModel(lr=0.1), *data(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    for layer, n in [("encoder", 60), ("encoder.0", 40)]:
        assert read_projections(t.log_dir, layer).groupby("epoch").size().to_dict() == {0: n, 1: n}
        # epoch 1 (after the resume) has drift metrics: its projector got its own epoch 0 back
        assert not np.isnan(read_metrics(t.log_dir, layer)["drift/knn_overlap"].iloc[1])


def test_same_set_twice_is_refused_by_lightning(tmp_path):
    """Two projectors writing one set would overwrite each other's files and checkpoint slot."""
    with pytest.raises(RuntimeError, match="state_key.*must be unique"):
        trainer(tmp_path, [projector(), projector(background=False, seed=1)])
    assert not Path(tmp_path, "embproj").exists()
