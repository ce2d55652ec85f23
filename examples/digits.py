"""Train a small classifier on scikit-learn's bundled digits and watch its embeddings form.

    python examples/digits.py            # ~1 minute on 2 CPU cores, W&B offline without an API key
    python examples/digits.py --seed 1 --out embproj_runs/digits_seed1 --no-wandb

Logs one aligned PCA + t-SNE table per validation run to W&B (offline when no API key is set),
writes the same projections as CSV files plus the HTML view (with image thumbnails of the digits)
under the run's folder, and prints where everything is.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections


class Digits(Dataset):
    """8x8 digit images with an id, a label and a short text per sample."""

    def __init__(self, indices: list[int]) -> None:
        data = load_digits()
        self.x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        self.y = torch.tensor(data.target)
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        return {
            "x": self.x[j],
            "label": self.y[j],
            "id": j,
            "image": self.x[j].view(1, 8, 8),
            "text": f"digit {int(self.y[j])}, sample {j}",
        }


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(32, 10))
        self.lr = lr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.head(self.encoder(batch["x"])), batch["label"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        z = self.encoder(batch["x"])
        logits = self.head(z)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        self.log("val/acc", (logits.argmax(1) == batch["label"]).float().mean())
        # The projector reads these keys; label, id, text and image come from the batch.
        return {"loss": loss, "embeddings": z}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def run(out: str | Path, *, epochs: int = 8, max_samples: int = 1000, seed: int = 0,
        reducers: tuple[str, ...] = ("pca", "tsne"), use_wandb: bool = True) -> Path:
    """Train for ``epochs`` with the projector attached; returns the folder holding ``embproj/``
    (``projector.root``: ``out``, or with W&B ``out/<project>/<run id>``).

    The validation split is the same for every ``seed`` (the seed changes the model's
    initialisation and the training order), so two runs track the same ids and can be
    compared with ``python -m lightning_embproj compare RUN_A RUN_B``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
    train = DataLoader(Digits(order[:1200]), batch_size=32, shuffle=True)
    val = DataLoader(Digits(order[1200:]), batch_size=128)

    projector = EmbeddingProjector(
        embedding_key="embeddings",
        label_key="label",
        id_key="id",
        metadata_keys=["text", "image"],
        max_samples=max_samples,
        reducers=list(reducers),
    )
    logger: Any = False
    if use_wandb:
        logger = WandbLogger(project="lightning-embproj-demo", save_dir=str(out))
    trainer = pl.Trainer(
        max_epochs=epochs, logger=logger, callbacks=[projector], accelerator="cpu",
        default_root_dir=str(out), enable_checkpointing=False, log_every_n_steps=10,
        enable_progress_bar=use_wandb, enable_model_summary=use_wandb,
    )
    trainer.fit(Classifier(), train, val)
    if use_wandb:
        import wandb

        print(f"W&B run files:   {logger.experiment.dir}")
        wandb.finish()
    return Path(projector.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and order")
    parser.add_argument("--out", default="embproj_runs/digits")
    parser.add_argument("--no-wandb", action="store_true", help="local files and view only")
    args = parser.parse_args()

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    out = run(args.out, epochs=args.epochs, max_samples=args.max_samples, seed=args.seed,
              use_wandb=not args.no_wandb)

    metrics = read_metrics(out)
    points = read_projections(out)
    cols = [c for c in ("silhouette", "knn_accuracy", "drift/knn_overlap") if c in metrics]
    print("\n" + metrics[["epoch", *cols]].to_string(index=False, float_format="%.3f"))
    print(f"\n{len(points)} rows in {points['val_index'].nunique()} validation runs")
    print(f"local CSV files: {out / 'embproj' / 'embeddings'}")
    view = out / "embproj" / "embeddings" / "view.html"
    if view.exists():
        print(f"view:            {view}")
    if not args.no_wandb and os.environ.get("WANDB_MODE") == "offline":
        print(f"upload later with: wandb sync {Path(args.out) / 'wandb'}")
    print("compare two runs: python -m lightning_embproj compare RUN_A RUN_B --output report")


if __name__ == "__main__":
    main()
