"""Configure the projector from YAML with LightningCLI (``class_path`` / ``init_args``).

    python examples/cli/train.py fit --config examples/cli/config.yaml
    python examples/cli/train.py fit --config examples/cli/config.yaml --trainer.max_epochs=5
    python examples/cli/train.py fit --trainer.callbacks.help lightning_embproj.EmbeddingProjector

The same YAML runs under ``lightning.pytorch`` and under ``pytorch_lightning``: this script uses
``lightning`` when it is installed and ``pytorch_lightning`` otherwise, and the projector is a
callback of both. The projections land in the run's log dir under ``embproj/embeddings/``.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as L
    from lightning.pytorch.cli import LightningCLI
except ImportError:  # only the standalone package is installed
    import pytorch_lightning as L  # type: ignore[no-redef]
    from pytorch_lightning.cli import LightningCLI  # type: ignore[assignment]


class DigitsData(L.LightningDataModule):
    """scikit-learn's bundled 8x8 digits (no download): the first ``n_train`` rows to train on,
    the next ``n_val`` to validate on."""

    def __init__(self, n_train: int = 1200, n_val: int = 400, batch_size: int = 64) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    def setup(self, stage: str) -> None:
        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        end = self.n_train + self.n_val
        self.train = TensorDataset(x[: self.n_train], y[: self.n_train])
        self.val = TensorDataset(x[self.n_train : end], y[self.n_train : end])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


class DigitsClassifier(L.LightningModule):
    """An MLP whose ``validation_step`` returns the embeddings and labels the projector reads."""

    def __init__(self, hidden: int = 64, embedding_dim: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, 10))
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(self.encoder(x)), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        z = self.encoder(x)
        loss = nn.functional.cross_entropy(self.head(z), y)
        self.log("val/loss", loss)
        return {"loss": loss, "embeddings": z, "labels": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns it for inspection."""
    return LightningCLI(DigitsClassifier, DigitsData, args=args)


if __name__ == "__main__":
    main()
