"""Configure the projector with Hydra: ``hydra.utils.instantiate`` of ``conf/config.yaml``.

    python examples/hydra/train.py
    python examples/hydra/train.py projector.reducers=[pca] projector.max_samples=1000

The trainer and its callbacks, the projector among them, are instantiated from the config;
the projections land under ``<hydra run dir>/lightning_logs/version_0/embproj/encoder/``.
"""

from __future__ import annotations

from typing import Any

import hydra
import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsClassifier(L.LightningModule):
    """An MLP on scikit-learn's bundled 8x8 digits; the projector captures ``encoder``."""

    def __init__(self, hidden: int = 64, embedding_dim: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, 10))
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.encoder(x)), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.head(self.encoder(x)), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def digits_loaders(n_train: int, n_val: int, batch_size: int) -> tuple[DataLoader, DataLoader]:
    """The first ``n_train`` digits to train on, the next ``n_val`` to validate on."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size)


def run(cfg: DictConfig) -> L.Trainer:
    """Instantiate the trainer (with the projector among its callbacks) and fit."""
    L.seed_everything(cfg.seed)
    trainer = instantiate(cfg.trainer)
    train, val = digits_loaders(**cfg.data)
    trainer.fit(DigitsClassifier(**cfg.model), train, val)
    return trainer


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    trainer = run(cfg)
    print(f"projections: {trainer.log_dir}/embproj/")


if __name__ == "__main__":
    main()
