"""Hydra: the projector from ``hydra.utils.instantiate``, lists as ListConfig or plain lists."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_embproj import EmbeddingProjector, read_projections

EXAMPLE = Path(__file__).parents[2] / "examples" / "hydra"


def test_the_example_script_runs_with_overrides(tmp_path, monkeypatch, capsys):
    """``python examples/hydra/train.py <overrides>``, run in this process."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "train.py", f"hydra.run.dir={run_dir}", "hydra/job_logging=none",
        "hydra/hydra_logging=none", "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "projector.reducers=[pca]", "projector.max_samples=100",
        "data.n_train=300", "data.n_val=150",
    ])
    runpy.run_path(str(EXAMPLE / "train.py"), run_name="__main__")
    assert not GlobalHydra.instance().is_initialized()  # nothing left behind for other tests
    assert capsys.readouterr().out.strip().endswith("embproj/")
    log_dir = run_dir / "lightning_logs" / "version_0"
    # config lists/mappings (ListConfig / DictConfig) drove the run: the layer was captured
    # and the metadata column came from batch[1]
    df = read_projections(log_dir, "encoder")
    assert list(df.columns) == [
        "sample_id", "epoch", "step", "val_index", "digit", "label", "cluster", "pca_x", "pca_y",
        "knn_kept", "pca_moved",
    ]
    assert df.groupby("epoch").size().to_dict() == {0: 100, 1: 100}
    assert (df["digit"] == df["label"]).all()
    assert (log_dir / "metrics.csv").is_file()  # the CSVLogger the config names ran too


def projector_config(convert: str | None) -> DictConfig:
    cfg = OmegaConf.create({
        "_target_": "lightning_embproj.EmbeddingProjector",
        "layers": ["encoder", "encoder.0"],
        "label_key": 1,
        "metadata_keys": {"digit": 1},
        "reducers": ["PCA", "tsne"],
        "max_samples": 50,
        "n_components": 3,
    })
    if convert is not None:
        cfg["_convert_"] = convert
    return cfg


@pytest.mark.parametrize("convert", [None, "none", "partial", "object", "all"])
def test_every_convert_mode_gives_the_same_plain_options(convert):
    cfg = projector_config(convert)
    assert isinstance(cfg.layers, ListConfig) and isinstance(cfg.metadata_keys, DictConfig)
    projector = instantiate(cfg)
    assert isinstance(projector, EmbeddingProjector)
    opts = projector.options
    assert opts.layers == ["encoder", "encoder.0"] and type(opts.layers) is list
    assert opts.metadata_keys == {"digit": 1} and type(opts.metadata_keys) is dict
    assert opts.reducers == ["pca", "tsne"] and type(opts.reducers) is list
    assert projector.settings.reducers == ["pca", "tsne"]
    assert (opts.label_key, opts.max_samples, opts.n_components) == (1, 50, 3)
    reference = EmbeddingProjector(layers=["encoder", "encoder.0"], label_key=1,
                                   metadata_keys={"digit": 1}, reducers=["pca", "tsne"],
                                   max_samples=50, n_components=3)
    assert projector.state_key == reference.state_key  # the same checkpoint slot either way


def test_bad_config_values_name_the_option():
    cfg = projector_config(None)
    cfg.reducers = ["pca", "tsnee"]
    with pytest.raises(Exception, match=r"reducers must be .*\['pca', 'tsnee'\]"):
        instantiate(cfg)
