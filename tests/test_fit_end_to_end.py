"""The foundation on real Trainer.fit runs with W&B offline files read back."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.loggers import WandbLogger
from wandb_records import scalars

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.sample import hash_ids


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
            "tsne_x", "tsne_y",
        ]
        assert len(table["data"]) == 150
        assert {row[1] for row in table["data"]} == {epoch}
        assert all(isinstance(v, float) for row in table["data"] for v in row[6:])
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
        "sample_id", "epoch", "step", "val_index", "label", "cluster", "pca_x", "pca_y"
    ]
    assert df.groupby("epoch").size().to_dict() == {0: 120, 1: 120, 2: 120}
    folder = os.path.join(t.log_dir, "embproj", "embeddings")
    assert len(glob.glob(os.path.join(folder, "val_0002_epoch_0002_step_*.csv"))) == 1
    metrics = read_metrics(t.log_dir)
    assert metrics["epoch"].tolist() == [0, 1, 2]
    assert "silhouette" in metrics.columns


def test_memory_is_bounded_by_max_samples(tmp_path):
    projector = EmbeddingProjector(max_samples=50, reducers="pca")
    t = _fit(tmp_path, projector, epochs=1, n_val=600)
    assert len(read_projections(t.log_dir)) == 50
    assert projector._collector is None  # the epoch's buffer is released after the epoch


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
        "pca_x",
        "pca_y",
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


def test_missing_key_error_lists_what_exists(tmp_path):
    projector = EmbeddingProjector(label_key="target", reducers="pca")
    with pytest.raises(KeyError, match=r"label_key='target' was not found.*'embeddings'.*'labels'"):
        _fit(tmp_path, projector, epochs=1, num_sanity_val_steps=0)


def test_mismatched_metadata_length_names_key_and_lengths(tmp_path):
    class Model(DigitsModel):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            out["texts"] = ["x"] * (len(out["labels"]) - 1)
            return out

    projector = EmbeddingProjector(metadata_keys=["texts"], reducers="pca")
    with pytest.raises(ValueError, match=r"metadata_keys='texts'.*\(64\).*63 rows"):
        _fit(tmp_path, projector, epochs=1, model=Model(), num_sanity_val_steps=0)


def test_every_n_epochs_and_3d(tmp_path, wandb_offline):
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", n_components=3,
                                   every_n_epochs=2, max_samples=60)
    _fit(tmp_path, projector, epochs=4, logger=logger)
    wandb.finish()
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert [t["data"][0][1] for t in tables] == [0, 2]
    assert tables[0]["columns"][-3:] == ["pca_x", "pca_y", "pca_z"]
    clouds = glob.glob(os.path.join(str(wandb_offline), "**", "offline-run-*", "files", "media",
                                    "object3D", "embproj", "embeddings", "pca_3d_*.pts.json"),
                       recursive=True)
    assert len(clouds) == 2
    with open(clouds[0]) as fh:
        points = json.load(fh)
    assert len(points) == 60 and len(points[0]) == 4  # x, y, z, label category


def test_several_validation_dataloaders_get_a_column(tmp_path):
    train, val = loaders(n_val=100)
    _, val2 = loaders(n_train=1000, n_val=100)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=500)
    t = trainer(tmp_path, [projector], max_epochs=1)
    t.fit(DigitsModel(), train, [val, val2])
    df = read_projections(t.log_dir)
    assert df.groupby("dataloader_idx").size().to_dict() == {0: 100, 1: 100}


def test_standalone_validate_logs_one_epoch(tmp_path):
    _, val = loaders(n_val=100)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=100)
    t = trainer(tmp_path, [projector])
    t.validate(DigitsModel(), val)
    df = read_projections(t.log_dir)
    assert len(df) == 100 and df["epoch"].unique().tolist() == [0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_samples": 0}, "max_samples must be a positive integer, got 0"),
        ({"reducers": ["pca", "tsnee"]}, r"reducers must be .*\['pca', 'tsne', 'umap'\].*tsnee"),
        ({"n_components": 4}, "n_components must be 2 or 3, got 4"),
        ({"every_n_epochs": 0}, "every_n_epochs must be a positive integer, got 0"),
        ({"layers": ["encoder", "encoder"]}, r"layers lists \['encoder'\] more than once"),
        ({"storage_dtype": "int8"}, "storage_dtype must be 'float32' or 'float16'"),
        ({"metadata_keys": ["label"]}, "column 'label' clashes"),
    ],
)
def test_constructor_refuses_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EmbeddingProjector(**kwargs)


def test_unknown_layer_lists_close_matches(tmp_path):
    projector = EmbeddingProjector(layers=["encodr"], reducers="pca")
    with pytest.raises(ValueError, match=r"no submodule 'encodr'.*did you mean \['encoder'"):
        _fit(tmp_path, projector, epochs=1)
