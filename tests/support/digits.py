"""A small real model and data for tests: scikit-learn's bundled digits (no download)."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import lightning.pytorch as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


def load_example() -> Any:
    """The demo script ``examples/digits.py`` as a module (its ``run()`` trains the real thing)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_tensors(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data[:n], dtype=torch.float32) / 16.0
    y = torch.tensor(data.target[:n], dtype=torch.long)
    return x, y


class DictDigits(Dataset):
    """Dict samples with an id, a text and an 8x8 image, as a real dataset might have."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, offset: int = 0) -> None:
        self.x, self.y, self.offset = x, y, offset

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "x": self.x[i],
            "y": self.y[i],
            "id": i + self.offset,
            "text": f"digit {int(self.y[i])} #{i + self.offset}",
            "image": self.x[i].view(1, 8, 8),
        }


class DigitsModel(L.LightningModule):
    """MLP classifier; validation_step returns embeddings and labels in a dict."""

    def __init__(self, dict_batches: bool = False, lr: float = 0.05, frozen: bool = False):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 10)
        self.dict_batches = dict_batches
        self.lr = 0.0 if frozen else lr

    def _xy(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dict_batches:
            return batch["x"], batch["y"]
        return batch[0], batch[1]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = self._xy(batch)
        return nn.functional.cross_entropy(self.head(self.encoder(x)), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        x, y = self._xy(batch)
        z = self.encoder(x)
        loss = nn.functional.cross_entropy(self.head(z), y)
        return {"loss": loss, "embeddings": z, "labels": y, "score": z.norm(dim=1)}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders(
    n_train: int = 600, n_val: int = 300, batch_size: int = 64, dict_batches: bool = False
) -> tuple[DataLoader, DataLoader]:
    x, y = digits_tensors()
    xt, yt = x[:n_train], y[:n_train]
    xv, yv = x[n_train : n_train + n_val], y[n_train : n_train + n_val]
    if dict_batches:
        train: Dataset = DictDigits(xt, yt)
        val: Dataset = DictDigits(xv, yv, offset=10_000)
    else:
        train, val = TensorDataset(xt, yt), TensorDataset(xv, yv)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(val, batch_size=batch_size),
    )


def trainer(tmp_path: Any, callbacks: list, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        default_root_dir=str(tmp_path), max_epochs=2, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=False, num_sanity_val_steps=2,
    )
    defaults.update(kwargs)
    return L.Trainer(callbacks=callbacks, **defaults)


def wandb_tables(root: Any, key: str) -> list[dict[str, Any]]:
    """The table JSON files one offline run wrote for ``key`` (``embproj/NAME``), by step."""
    from wandb_records import settle

    settle()
    *folders, leaf = key.split("/")
    media = os.path.join(str(root), "**", "offline-run-*", "files", "media", "table")
    pattern = os.path.join(media, *folders, f"{leaf}_*.table.json")
    files = glob.glob(pattern, recursive=True)
    # W&B names files <key>_<step>_<hash>; the step is the wandb internal step.
    files.sort(key=lambda f: int(os.path.basename(f)[len(leaf) + 1 :].split("_")[0]))
    tables = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            tables.append(json.load(fh))
    return tables
