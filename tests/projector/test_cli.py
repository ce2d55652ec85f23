"""LightningCLI: the projector configured from YAML (class_path / init_args), run for real."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections

EXAMPLE = Path(__file__).parents[2] / "examples" / "cli"


def load_example() -> ModuleType:
    """``examples/cli/train.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("embproj_cli_example", EXAMPLE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: jsonargparse < 4.51 resolves hints there
    spec.loader.exec_module(module)
    return module


def small_run(tmp_path: Path) -> list[str]:
    """Overrides that keep the example config's run tiny and inside ``tmp_path``."""
    return [
        "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks.init_args.reducers=[pca]",
        "--trainer.callbacks.init_args.max_samples=100",
        "--data.n_train=300", "--data.n_val=150",
    ]


def test_fit_from_the_example_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXAMPLE / "config.yaml"), *small_run(tmp_path)]
    cli = load_example().main(args)

    projectors = [c for c in cli.trainer.callbacks if isinstance(c, EmbeddingProjector)]
    assert len(projectors) == 1
    opts = projectors[0].options
    # from the YAML's init_args, then the command line
    assert (opts.embedding_key, opts.label_key) == ("embeddings", "labels")
    assert (opts.max_samples, opts.reducers, opts.n_components) == (100, ["pca"], 2)

    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    df = read_projections(log_dir)
    assert list(df.columns) == [
        "sample_id", "epoch", "step", "val_index", "label", "cluster", "pca_x", "pca_y",
        "knn_kept", "pca_moved",
    ]
    assert df.groupby("epoch").size().to_dict() == {0: 100, 1: 100}
    assert read_metrics(log_dir)["epoch"].tolist() == [0, 1]

    # LightningCLI saved the resolved config: it names our class and every option
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    (entry,) = saved["trainer"]["callbacks"]
    assert entry["class_path"] == "lightning_embproj.EmbeddingProjector"
    params = [p for p in inspect.signature(EmbeddingProjector.__init__).parameters if p != "self"]
    assert list(entry["init_args"]) == params
    assert entry["init_args"]["reducers"] == ["pca"]


def test_help_shows_every_option_with_its_type(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(
            ["fit", "--trainer.callbacks.help", "lightning_embproj.EmbeddingProjector"]
        )
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    params = [p for p in inspect.signature(EmbeddingProjector.__init__).parameters if p != "self"]
    for name in params:
        # each option's help block ends with its type and default
        block = re.search(rf"--trainer\.callbacks\.{name} .*?\(type: ([^,]+).*?default: ", text,
                          flags=re.S)
        assert block is not None, f"--help does not document {name}"
        assert "Any" not in block.group(1), f"{name} is untyped in --help: {block.group(1)}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("max_samples=many", r"max_samples"),
        ("reducers=[pca,tsnee]", r"Got value: tsnee"),
        ("n_components=4", r"n_components"),
        ("storage_dtype=int8", r"storage_dtype"),
        ("label_key=[1,2]", r"label_key"),
    ],
)
def test_the_parser_rejects_wrong_types_and_choices(tmp_path, monkeypatch, capsys, override,
                                                    expected):
    """jsonargparse checks each value against the typed signature: a usage error, exit code 2."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXAMPLE / "config.yaml"),
            f"--trainer.callbacks.init_args.{override}"]
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(args)
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / "lightning_logs_cli").exists()  # nothing ran


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("max_samples=0", "max_samples must be a positive integer, got 0"),
        ("layers=[encoder,encoder]", r"layers lists \['encoder'\] more than once"),
    ],
)
def test_out_of_range_values_fail_before_training(tmp_path, monkeypatch, override, match):
    """Right type, wrong value: the projector's own check, raised while the CLI builds it."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXAMPLE / "config.yaml"),
            f"--trainer.callbacks.init_args.{override}"]
    with pytest.raises(ValueError, match=match):
        load_example().main(args)
    assert not (tmp_path / "lightning_logs_cli").exists()


def test_yaml_lists_and_mappings_reach_the_options(tmp_path, monkeypatch):
    """Every option through YAML: a layers list, a metadata mapping, an int tuple-batch key."""
    config = {
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "devices": 1, "logger": False,
            "default_root_dir": str(tmp_path), "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{
                "class_path": "lightning_embproj.EmbeddingProjector",
                "init_args": {
                    "layers": ["encoder", "encoder.0"], "label_key": 1,
                    "metadata_keys": {"digit": 1}, "max_samples": 60, "reducers": "pca",
                    "n_components": 3, "every_n_epochs": 1, "perplexity": 5.0,
                    "storage_dtype": "float16", "background": False, "max_queued_epochs": 2,
                    "output_dir": str(tmp_path / "out"), "max_text_length": 20, "seed": 3,
                },
            }],
        },
        "data": {"n_train": 200, "n_val": 100},
    }
    path = tmp_path / "projector.yaml"  # not config.yaml: LightningCLI saves that one there
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = load_example().main(["fit", "--config", str(path)])
    (projector,) = [c for c in cli.trainer.callbacks if isinstance(c, EmbeddingProjector)]
    assert projector.options.layers == ["encoder", "encoder.0"]
    assert projector.options.metadata_keys == {"digit": 1}
    for layer in ["encoder", "encoder.0"]:
        df = read_projections(tmp_path / "out", layer)
        assert len(df) == 60 and (df["digit"] == df["label"]).all()
        assert {"pca_x", "pca_y", "pca_z"} <= set(df.columns)
