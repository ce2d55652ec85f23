"""The foundation on real Trainer.fit runs with W&B offline files read back."""

from __future__ import annotations

import glob
import json
import os
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from memory import live_bytes
from torch.utils.data import DataLoader, TensorDataset
from wandb_records import scalars

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.collect.hashing import hash_ids
from lightning_embproj.sinks.palette import colours, hex_rgb


def _fit(tmp_path, projector, epochs=3, model=None, dict_batches=False, n_val=300, **kw):
    train, val = loaders(n_val=n_val, dict_batches=dict_batches)
    t = trainer(tmp_path, [projector], max_epochs=epochs, **kw)
    t.fit(model or DigitsModel(dict_batches=dict_batches), train, val)
    return t


def test_wandb_table_per_epoch_with_contract_columns(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=150)
    t = _fit(tmp_path, projector, epochs=3, logger=logger)
    wandb.finish()

    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    # three epochs, no table from the sanity check
    assert len(tables) == 3
    for epoch, table in enumerate(tables):
        assert table["columns"] == [
            "sample_id", "epoch", "step", "val_index", "label", "cluster", "pca_x", "pca_y",
            "tsne_x", "tsne_y", "knn_kept", "pca_moved", "tsne_moved",
        ]
        assert len(table["data"]) == 150
        assert {row[1] for row in table["data"]} == {epoch}
        assert all(isinstance(v, float) for row in table["data"] for v in row[6:10])
        # motion since the previous run: none at the first run, a number for every point after
        assert all((v is None) == (epoch == 0) for row in table["data"] for v in row[10:])
    steps = [table["data"][0][2] for table in tables]
    assert steps == sorted(steps) and steps[-1] == t.global_step
    # the same points every epoch
    ids = [sorted(row[0] for row in table["data"]) for table in tables]
    assert ids[0] == ids[1] == ids[2]
    # they are the bottom-k of the id hash over the whole validation set
    expected = np.arange(300)[np.argsort(hash_ids(np.arange(300), 0))[:150]]
    assert ids[0] == sorted(expected.tolist())
    # one silhouette per epoch, logged with the trainer's global step of that epoch
    silhouettes = scalars(wandb_offline, "embproj/embeddings/silhouette")
    assert [step for step, _ in silhouettes] == steps
    assert all(-1.0 <= value <= 1.0 for _, value in silhouettes)
    assert [v for _, v in scalars(wandb_offline, "embproj/embeddings/epoch")] == [0, 1, 2]
    # all epochs in one evolution table, and the movers after each epoch with a previous one
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    assert [len(t["data"]) for t in evolution] == [150, 300, 450]
    assert sorted({row[1] for row in evolution[-1]["data"]}) == [0, 1, 2]
    movers = wandb_tables(wandb_offline, "embproj/embeddings/movers")
    assert movers and movers[-1]["columns"][:4] == ["kind", "overlap", "foreign_fraction",
                                                   "sample_id"]
    kinds = {row[0] for t in movers for row in t["data"]}
    assert kinds <= {"changed", "mislabelled-neighbourhood"} and "changed" in kinds
    # the final slider view lives in the W&B run too, self-contained
    views = glob.glob(os.path.join(str(wandb_offline), "**", "offline-run-*", "files", "media",
                                   "html", "embproj", "embeddings", "view_*.html"), recursive=True)
    assert len(views) == 1
    with open(views[0], encoding="utf-8") as fh:
        page = fh.read()
    assert "Plotly" in page and "<script src=\"http" not in page


def test_local_files_read_back_into_one_table(tmp_path):
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=120)
    t = _fit(tmp_path, projector, epochs=3)
    df = read_projections(t.log_dir)
    assert list(df.columns) == [
        "sample_id", "epoch", "step", "val_index", "label", "cluster", "pca_x", "pca_y",
        "knn_kept", "pca_moved",
    ]
    assert df.groupby("epoch").size().to_dict() == {0: 120, 1: 120, 2: 120}
    folder = os.path.join(t.log_dir, "embproj", "embeddings")
    assert len(glob.glob(os.path.join(folder, "val_0002_epoch_0002_step_*.csv"))) == 1
    metrics = read_metrics(t.log_dir)
    assert metrics["epoch"].tolist() == [0, 1, 2]
    assert "silhouette" in metrics.columns


class WideModel(DigitsModel):
    """64-d embeddings (a linear layer on the input): the validation set is the variable."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(64, 64)
        self.head = torch.nn.Linear(64, 10)


class ValidationMemory(Callback):
    """Placed before the projector: traces what a validation epoch allocates and still holds at
    its end, just before the projector hands its buffer over (its fullest moment)."""

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        assert not tracemalloc.is_tracing()
        tracemalloc.start()
        self.before = live_bytes()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.retained = live_bytes() - self.before
        tracemalloc.stop()


def _retained_by_validation(tmp_path, n_val: int, max_samples: int, ids: bool) -> int:
    """Bytes a fit's validation epoch of ``n_val`` rows x 64 dims still holds at its end;
    ``ids``: each row brings its id (``id_key``), else ids are derived from positions."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_val, 64, generator=g), torch.randint(0, 10, (n_val,), generator=g)
    val = DataLoader(TensorDataset(x, y, torch.arange(n_val) * 7 + 3), batch_size=250)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    probe = ValidationMemory()
    projector = EmbeddingProjector(label_key=1, id_key=2 if ids else None, reducers="pca",
                                   max_samples=max_samples, background=False)
    t = trainer(tmp_path / f"{n_val}_{max_samples}_{ids}", [probe, projector], max_epochs=1,
                limit_train_batches=1, num_sanity_val_steps=0)
    try:
        t.fit(WideModel(), train, val)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    assert len(read_projections(t.log_dir)) == min(max_samples, n_val)
    return probe.retained


def test_memory_is_bounded_by_max_samples_not_the_validation_set(tmp_path):
    """What a validation epoch leaves alive (numpy and Python objects traced by tracemalloc,
    torch tensors counted through the garbage collector) is the projector's buffer: it grows with
    ``max_samples`` (a 64 x 4-byte vector plus ids and keys per row), not with the rows seen.
    Keeping the rows seen would add 256 bytes per row: 6.9 MB for 27,000 more rows."""
    small = _retained_by_validation(tmp_path, 3_000, 300, ids=True)
    large = _retained_by_validation(tmp_path, 30_000, 300, ids=True)
    wide = _retained_by_validation(tmp_path, 30_000, 3_000, ids=True)
    per_row = (wide - large) / 2_700
    print(f"retained at validation end: 3,000 rows {small / 1e3:.0f} kB, 30,000 rows "
          f"{large / 1e3:.0f} kB; max_samples 3,000: {wide / 1e3:.0f} kB ({per_row:.0f} B/row)")
    assert abs(large - small) < 64_000  # < 1% of the 27,000 extra rows' vectors
    # each tracked row costs its vector plus ids and keys: at least 256 bytes, less than 512
    assert 64 * 4 <= per_row < 2 * 64 * 4
    # and the whole is the buffer plus a fixed overhead (the last batch, Lightning's state)
    assert large < 300 * 2 * 64 * 4 + 600_000


def test_derived_ids_memory_per_validation_row_is_a_few_integers(tmp_path):
    """Without ``id_key`` the bottom-k of the positions is simulated once per fit and kept
    (lightning_embproj/schedule.py): a few int64 per validation position, never the vectors."""
    # 257: a schedule of its own (they are cached per max_samples), not one an earlier test made
    small = _retained_by_validation(tmp_path, 3_000, 257, ids=False)
    large = _retained_by_validation(tmp_path, 30_000, 257, ids=False)
    per_row = (large - small) / 27_000
    print(f"derived ids, retained per extra validation row: {per_row:.1f} B")
    assert per_row < 48  # a kept vector would be 256


def test_frozen_model_keeps_layouts_in_place(tmp_path):
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=200)
    t = _fit(tmp_path, projector, epochs=3, model=DigitsModel(frozen=True))
    df = read_projections(t.log_dir)
    by_epoch = [g.sort_values("sample_id") for _, g in df.groupby("epoch")]
    for later in by_epoch[1:]:
        np.testing.assert_allclose(later[["pca_x", "pca_y"]].to_numpy(),
                                   by_epoch[0][["pca_x", "pca_y"]].to_numpy(), atol=1e-6)
        first = by_epoch[0][["tsne_x", "tsne_y"]].to_numpy()
        moved = np.linalg.norm(later[["tsne_x", "tsne_y"]].to_numpy() - first, axis=1)
        spread = np.linalg.norm(first - first.mean(0), axis=1).mean()
        assert moved.mean() < 0.05 * spread


def test_layers_are_captured_by_hooks_and_removed(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    model = DigitsModel()
    projector = EmbeddingProjector(layers=["encoder", "encoder.0"], label_key=1,
                                   reducers="pca", max_samples=80)
    _fit(tmp_path, projector, epochs=2, model=model, logger=logger)
    wandb.finish()
    for name in ["encoder", "encoder.0"]:
        tables = wandb_tables(wandb_offline, f"embproj/{name}")
        assert len(tables) == 2 and len(tables[0]["data"]) == 80
    assert all(not m._forward_hooks for m in model.modules())


def test_metadata_from_batch_and_outputs(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(
        label_key="y", id_key="id", metadata_keys=["text", "image", "score"],
        reducers="pca", max_samples=64,
    )
    _fit(tmp_path, projector, epochs=2, dict_batches=True, logger=logger)
    wandb.finish()
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert tables[0]["columns"] == [
        "sample_id", "epoch", "step", "val_index", "text", "image", "score", "label", "cluster",
        "pca_x", "pca_y", "knn_kept", "pca_moved",
    ]
    for row in tables[0]["data"]:
        sample_id, text, label = row[0], row[4], row[7]
        assert sample_id >= 10_000
        assert text == f"digit {label} #{sample_id}"
        assert row[5] == "Image"  # offline, an image cell is the string "Image"
        assert isinstance(row[6], float) and row[6] > 0


def test_tuple_batch_label_by_index(tmp_path):
    projector = EmbeddingProjector(label_key=1, reducers="pca", max_samples=40)
    t = _fit(tmp_path, projector, epochs=1)
    df = read_projections(t.log_dir)
    assert set(df["label"]) <= set(range(10)) and len(df) == 40


def test_every_n_epochs_and_3d(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", n_components=3,
                                   every_n_epochs=2, max_samples=60)
    _fit(tmp_path, projector, epochs=4, logger=logger)
    wandb.finish()
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert [t["data"][0][1] for t in tables] == [0, 2]
    assert tables[0]["columns"][-5:] == ["pca_x", "pca_y", "pca_z", "knn_kept", "pca_moved"]
    clouds = glob.glob(os.path.join(str(wandb_offline), "**", "offline-run-*", "files", "media",
                                    "object3D", "embproj", "embeddings", "pca_3d_*.pts.json"),
                       recursive=True)
    assert len(clouds) == 2
    with open(clouds[0]) as fh:
        points = json.load(fh)
    assert len(points) == 60 and len(points[0]) == 6  # x, y, z and the label's colour (RGB)
    labels = [row[tables[0]["columns"].index("label")] for row in tables[0]["data"]]
    assert [tuple(p[3:]) for p in points] == [hex_rgb(c) for c in colours(labels)]


def test_several_validation_dataloaders_get_a_column(tmp_path):
    train, val = loaders(n_val=100)
    _, val2 = loaders(n_train=1000, n_val=100)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=500)
    t = trainer(tmp_path, [projector], max_epochs=1)
    t.fit(DigitsModel(), train, [val, val2])
    df = read_projections(t.log_dir)
    assert df.groupby("dataloader_idx").size().to_dict() == {0: 100, 1: 100}


# Other bad options (and missing keys, bad metadata, unknown layers) are in test_bad_input.py.
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"storage_dtype": "int8"}, "storage_dtype must be 'float32' or 'float16'"),
        ({"metadata_keys": ["label"]}, "column 'label' clashes"),
    ],
)
def test_constructor_refuses_a_bad_dtype_and_a_clashing_column(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EmbeddingProjector(**kwargs)
