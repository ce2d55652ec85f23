"""One projector class for ``lightning.pytorch`` and ``pytorch_lightning``, alone or together.

The "only one package installed" runs are subprocesses whose import system refuses the other
package (as if it were not installed); they run the same example script and the same YAML.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
from lightning.pytorch.callbacks import LearningRateMonitor

from lightning_embproj import EmbeddingProjector, read_projections

EXAMPLE = Path(__file__).parents[2] / "examples" / "cli"
CONFIG = EXAMPLE / "config.yaml"
OTHER = {"lightning": "pytorch_lightning", "pytorch_lightning": "lightning"}

# Makes `blocked` (and its submodules) unimportable, exactly as if it were not installed.
PRELUDE = """
import sys

class _NotInstalled:
    def find_spec(self, fullname, path=None, target=None):
        if fullname == {blocked!r} or fullname.startswith({blocked!r} + "."):
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""

RUN = """
import json, runpy

from lightning_embproj import EmbeddingProjector
from lightning_embproj.runtime.compat import CALLBACK_BASES

sys.argv = ["train.py", "fit", "--config", {config!r}, *{overrides!r}]
runpy.run_path({script!r}, run_name="__main__")
loaded = sorted({{m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}})
print("RESULT " + json.dumps({{
    "bases": [b.__module__.split(".")[0] for b in CALLBACK_BASES],
    "mro": [c.__module__ for c in EmbeddingProjector.__mro__],
    "loaded": [m for m in loaded if m in ("lightning", "pytorch_lightning")],
}}))
"""


def small_run(save_dir: Path) -> list[str]:
    return [
        "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.callbacks.init_args.reducers=[pca]",
        "--trainer.callbacks.init_args.max_samples=80",
        "--data.n_train=200", "--data.n_val=100",
    ]


@pytest.fixture(scope="module")
def only_one_installed(tmp_path_factory):
    """Start both single-package runs at once (they are import-bound: ~10 s each on 2 cores)."""
    procs = {}
    for package in ("lightning", "pytorch_lightning"):
        folder = tmp_path_factory.mktemp(f"only_{package}")
        code = textwrap.dedent(PRELUDE.format(blocked=OTHER[package])) + textwrap.dedent(
            RUN.format(config=str(CONFIG), overrides=small_run(folder),
                       script=str(EXAMPLE / "train.py"))
        )
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs[package] = (proc, folder)
    results = {}
    for package, (proc, folder) in procs.items():
        out, _ = proc.communicate(timeout=240)
        results[package] = (proc.returncode, out, folder)
    return results


@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_only_one_package_installed(only_one_installed, package):
    """Import, the example's LightningCLI with the shared YAML, and a real fit."""
    returncode, out, folder = only_one_installed[package]
    assert returncode == 0, out[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["bases"] == [package]
    assert result["loaded"] == [package]  # the other one was never imported
    assert result["mro"][:2] == ["lightning_embproj.callback", "lightning_embproj.runtime.compat"]
    logs = list(folder.glob("lightning_logs/version_0"))
    assert len(logs) == 1
    df = read_projections(logs[0])
    assert df.groupby("epoch").size().to_dict() == {0: 80, 1: 80}


def test_one_class_is_a_callback_of_both():
    projector = EmbeddingProjector(reducers="pca")
    assert isinstance(projector, L.Callback) and isinstance(projector, pl.Callback)
    assert L.Callback is not pl.Callback  # the reason the class has two bases


def load_example(monkeypatch, namespace: str) -> ModuleType:
    """``examples/cli/train.py`` built on ``namespace`` (it falls back when lightning is absent)."""
    if namespace == "pytorch_lightning":
        monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    spec = importlib.util.spec_from_file_location(f"cli_example_{namespace}", EXAMPLE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: jsonargparse < 4.51 resolves hints there
    spec.loader.exec_module(module)
    monkeypatch.undo()
    return module


@pytest.mark.parametrize("namespace", ["lightning", "pytorch_lightning"])
def test_each_lightning_cli_accepts_the_same_yaml(tmp_path, monkeypatch, namespace):
    """Both packages installed: each namespace's LightningCLI runs the same class_path."""
    example = load_example(monkeypatch, namespace)
    assert example.L.__name__ == {"lightning": "lightning.pytorch"}.get(namespace, namespace)
    monkeypatch.chdir(tmp_path)
    cli = example.main(["fit", "--config", str(CONFIG), *small_run(tmp_path)])
    assert type(cli.trainer).__module__.split(".")[0] == namespace
    (projector,) = [c for c in cli.trainer.callbacks if isinstance(c, EmbeddingProjector)]
    df = read_projections(cli.trainer.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 80, 1: 80}


def test_pytorch_lightning_cli_refuses_a_lightning_only_callback(tmp_path, monkeypatch, capsys):
    """The check the projector passes is real: a callback of the other namespace fails it."""
    example = load_example(monkeypatch, "pytorch_lightning")
    monkeypatch.chdir(tmp_path)
    other = f"{LearningRateMonitor.__module__}.LearningRateMonitor"
    with pytest.raises(SystemExit):
        example.main(["fit", "--config", str(CONFIG), "--trainer.callbacks+", other])
    assert "Import path does not correspond to a subclass of Callback" in capsys.readouterr().err


def test_pytorch_lightning_trainer_with_its_tensorboard_logger(tmp_path):
    """Plain pytorch_lightning objects: Trainer, LightningModule, TensorBoardLogger."""
    import torch
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(64, 8)

        def training_step(self, batch, batch_idx):
            return self.encoder(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            return {"embeddings": self.encoder(batch[0]), "labels": batch[1]}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    from sklearn.datasets import load_digits

    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.data[:200], dtype=torch.float32),
                         torch.tensor(digits.target[:200]))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=50)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, logger=TensorBoardLogger(tmp_path),
        callbacks=[projector], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0,
    )
    trainer.fit(Model(), DataLoader(data, batch_size=50), DataLoader(data, batch_size=50))
    log_dir = Path(trainer.log_dir)
    assert read_projections(log_dir)["epoch"].unique().tolist() == [0, 1]
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert config.count("tensor_name:") == 2  # PL's TensorBoardLogger got both epochs
