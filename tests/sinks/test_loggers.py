"""Whatever the Trainer logs to: TensorBoard, W&B and TensorBoard, CSV, nothing, validate()."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from google.protobuf import text_format
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from tb_plugin import serve
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from wandb_records import scalars

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning

COLUMNS = [
    "sample_id", "epoch", "step", "val_index", "text", "image", "score", "label", "cluster",
    "pca_x", "pca_y", "knn_kept", "pca_moved",
]


def rich_projector(**kwargs) -> EmbeddingProjector:
    """Dict batches with an id, a text, an 8x8 image and a number per sample."""
    return EmbeddingProjector(label_key="y", id_key="id", metadata_keys=["text", "image", "score"],
                              reducers="pca", max_samples=60, **kwargs)


def fit(tmp_path, projector, logger, epochs=2, **kwargs):
    train, val = loaders(n_train=300, n_val=100, dict_batches=True)
    t = trainer(tmp_path, [projector], max_epochs=epochs, logger=logger, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProjectorWarning)
        t.fit(DigitsModel(dict_batches=True), train, val)
    ours = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    assert not ours, ours  # nothing went wrong on the way
    assert t.state.finished and t.current_epoch == epochs
    return t


def read_config(log_dir: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), config)
    return config


def test_tensorboard_projector_tab_shows_every_epoch(tmp_path):
    t = fit(tmp_path, rich_projector(), TensorBoardLogger(tmp_path))
    log_dir = Path(t.log_dir)
    assert log_dir == tmp_path / "lightning_logs" / "version_0"
    config = read_config(log_dir)
    assert [e.tensor_name for e in config.embeddings] == [
        "embeddings/val_0000_epoch_0000", "embeddings/val_0001_epoch_0001"
    ]
    local = read_projections(log_dir)
    get = serve(tmp_path / "lightning_logs")
    assert json.loads(get("/runs")) == ["version_0"]
    info = json.loads(get("/info", run="version_0"))
    names = [e.tensor_name for e in config.embeddings]
    assert [e["tensorName"] for e in info["embeddings"]] == names
    tensors = []
    for epoch, entry in enumerate(config.embeddings):
        assert list(entry.tensor_shape) == [60, 16]
        tensor = np.frombuffer(get("/tensor", run="version_0", name=entry.tensor_name), np.float32)
        tensors.append(tensor.reshape(60, 16))
        # metadata: a header, then one row per point with every column but the image,
        # equal to the local CSV of that epoch
        meta = pd.read_csv(io.BytesIO(get("/metadata", run="version_0", name=entry.tensor_name)),
                           sep="\t")
        assert list(meta.columns) == [c for c in COLUMNS if c != "image"]
        csv = local[local["epoch"] == epoch].reset_index(drop=True)
        pd.testing.assert_frame_equal(meta, csv[meta.columns], check_dtype=False)
        assert (meta["text"] == [f"digit {y} #{i}" for y, i in zip(meta["label"], meta["sample_id"],
                                                                   strict=True)]).all()
        # the images as a sprite: a grid of 8x8 thumbnails, one per point
        sprite = Image.open(io.BytesIO(get("/sprite_image", run="version_0",
                                           name=entry.tensor_name)))
        assert list(entry.sprite.single_image_dim) == [8, 8]
        assert sprite.size[0] % 8 == 0 and (sprite.size[0] // 8) * (sprite.size[1] // 8) >= 60
    assert np.isfinite(tensors[0]).all() and not np.allclose(tensors[0], tensors[1])


def test_wandb_and_tensorboard_both_get_every_epoch(tmp_path, wandb_offline):
    import wandb

    tb = TensorBoardLogger(tmp_path / "tb")
    wb = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    projector = rich_projector()
    fit(tmp_path, projector, [wb, tb])
    run_root = os.path.join(str(wandb_offline), "embproj-test", wb.version)
    wandb.finish()
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert [table["columns"] for table in tables] == [COLUMNS, COLUMNS]
    assert [table["data"][0][1] for table in tables] == [0, 1]
    config = read_config(Path(tb.log_dir))
    assert len(config.embeddings) == 2
    # with a WandbLogger first, the local files live in <save_dir>/<project>/<run id>
    assert projector.root == run_root
    assert read_projections(run_root).groupby("epoch").size().to_dict() == {0: 60, 1: 60}


def test_no_logger_still_writes_local_files_and_view(tmp_path):
    t = fit(tmp_path, rich_projector(), False)
    assert Path(t.log_dir) == tmp_path  # logger=False: the default_root_dir
    folder = tmp_path / "embproj" / "embeddings"
    assert [p.name[:21] for p in sorted(folder.glob("val_*"))] == [
        "val_0000_epoch_0000_s", "val_0001_epoch_0001_s"
    ]
    assert read_metrics(tmp_path)["epoch"].tolist() == [0, 1]
    view = folder / "view.html"
    assert view.is_file() and "epoch" in view.read_text(encoding="utf-8")
    # nothing written for loggers that are not there
    assert not list(tmp_path.rglob("projector_config.pbtxt"))
    assert not list(tmp_path.rglob("wandb"))


def test_csv_logger_run_is_undisturbed(tmp_path):
    class LoggingModel(DigitsModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            out = super().validation_step(batch, batch_idx)
            self.log("val_loss", out["loss"])
            return out

    projector = rich_projector()
    train, val = loaders(n_train=300, n_val=100, dict_batches=True)
    t = trainer(tmp_path, [projector], max_epochs=2, logger=CSVLogger(tmp_path))
    t.fit(LoggingModel(dict_batches=True), train, val)
    log_dir = Path(t.log_dir)
    assert log_dir == tmp_path / "lightning_logs" / "version_0"
    logged = pd.read_csv(log_dir / "metrics.csv")
    assert list(logged.columns) == ["epoch", "step", "val_loss"]  # only the model's own values
    assert logged["epoch"].tolist() == [0, 1]
    assert read_projections(log_dir).groupby("epoch").size().to_dict() == {0: 60, 1: 60}
    assert (log_dir / "embproj" / "embeddings" / "view.html").is_file()


def test_validate_logs_one_table(tmp_path, wandb_offline):
    import wandb

    _, val = loaders(n_val=100, dict_batches=True)
    projector = rich_projector()
    t = trainer(tmp_path, [projector],
                logger=WandbLogger(project="embproj-test", save_dir=str(wandb_offline)))
    t.validate(DigitsModel(dict_batches=True), val)
    wandb.finish()
    (table,) = wandb_tables(wandb_offline, "embproj/embeddings")
    assert table["columns"] == COLUMNS and len(table["data"]) == 60
    assert {row[1] for row in table["data"]} == {0} and {row[2] for row in table["data"]} == {0}
    assert len(scalars(wandb_offline, "embproj/embeddings/silhouette")) == 1
    assert read_projections(projector.root)["epoch"].unique().tolist() == [0]


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_a_failing_logger_directory_does_not_stop_training(tmp_path, logger):
    """Local files cannot be written (a file where the folder should be): training goes on."""
    (tmp_path / "blocked").write_text("not a folder")
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   output_dir=str(tmp_path / "blocked"))
    train, val = loaders(n_train=200, n_val=60)
    t = trainer(tmp_path, [projector], max_epochs=1,
                logger=CSVLogger(tmp_path) if logger == "csv" else False)
    with pytest.warns(ProjectorWarning, match="local files"):
        t.fit(DigitsModel(), train, val)
    assert t.state.finished and t.current_epoch == 1
