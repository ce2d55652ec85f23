"""How much the clusters flicker from run to run on a contrastive model (issue 18).

A small MLP encoder is trained on scikit-learn's digits with a SimCLR-style loss (two noisy,
pixel-dropped views of each image, NT-Xent, L2-normalised 32-d embeddings): the classes
separate, but a clustering recomputed from scratch every run may not follow them. One
``fit`` per seed carries one projector per (method, smoothing) pair (``--method hdbscan``,
``kmeans`` or both; ``--smoothing on``, ``off`` or both: ``cluster_smoothing=False`` is the
behaviour before issue 18), so before and after see the very same embeddings. This prints, over
the runs after the first few, the cluster count (mean, min-max, std), the noise fraction, the
ARI to the previous run and the NMI to the digit labels, read back from each projector's own
``metrics.jsonl``, then the means over the seeds.

Usage:
    .venv/bin/python benchmarks/bench_cluster_stability.py --seeds 0 1 2   # both, before/after
    .venv/bin/python benchmarks/bench_cluster_stability.py --method kmeans --smoothing off
    .venv/bin/python benchmarks/bench_cluster_stability.py --frozen   # a model that never moves
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from typing import Any

import numpy as np


def contrastive_model(frozen: bool) -> Any:
    import pytorch_lightning as L
    import torch
    from torch import nn

    class SimCLR(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
            self.lr = 0.0 if frozen else 0.05

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.encoder(x), dim=1)

        def view(self, x: torch.Tensor) -> torch.Tensor:
            keep = (torch.rand_like(x) > 0.2).float()
            return x * keep + 0.1 * torch.randn_like(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x = batch[0]
            a, b = self.embed(self.view(x)), self.embed(self.view(x))
            z = torch.cat([a, b])
            sim = z @ z.T / 0.2
            sim.fill_diagonal_(-1e9)
            n = len(x)
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            return nn.functional.cross_entropy(sim, target)

        def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            return {"embeddings": self.embed(batch[0]), "labels": batch[1]}

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    return SimCLR()


def run(configs: list[tuple[str, bool]], epochs: int, seed: int, frozen: bool,
        points: int) -> dict[tuple[str, bool], dict[str, list[Any]]]:
    """One ``fit``; the metrics of each (method, smoothing) projector, all on the same runs."""
    import pytorch_lightning as L
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_embproj import EmbeddingProjector, read_metrics

    L.seed_everything(seed, verbose=False)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    train = DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x[1200:], y[1200:]), batch_size=256)
    with tempfile.TemporaryDirectory() as root:
        projectors = [
            EmbeddingProjector(label_key="labels", reducers="pca", clusters=method,
                               cluster_smoothing=smooth, name=set_name(method, smooth),
                               max_samples=points, seed=seed, output_dir=root,
                               background=False)  # every run, none skipped
            for method, smooth in configs
        ]
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=projectors, accelerator="cpu", devices=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(contrastive_model(frozen), train, val)
        return {c: read_metrics(root, set_name(*c)).to_dict("list") for c in configs}


def set_name(method: str, smooth: bool) -> str:
    return f"{method}_{'smooth' if smooth else 'fresh'}"


def summary(rows: dict[str, list[Any]], skip: int) -> dict[str, float]:
    """Statistics over the runs after the first ``skip`` (the encoder is still forming)."""
    def col(name: str) -> np.ndarray:
        return np.asarray(rows.get(name, []), dtype=float)[skip:]

    count, ari = col("clusters/count"), col("clusters/ari_previous")
    return {
        "count_mean": float(np.nanmean(count)), "count_min": float(np.nanmin(count)),
        "count_max": float(np.nanmax(count)), "count_std": float(np.nanstd(count)),
        "noise_mean": float(np.nanmean(col("clusters/noise_fraction"))),
        "noise_max": float(np.nanmax(col("clusters/noise_fraction"))),
        "ari_mean": float(np.nanmean(ari)), "ari_min": float(np.nanmin(ari)),
        "nmi_mean": float(np.nanmean(col("clusters/nmi_labels"))),
    }


COLUMNS = ("count_mean", "count_std", "noise_mean", "ari_mean", "ari_min", "nmi_mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="both", choices=["hdbscan", "kmeans", "both"])
    parser.add_argument("--smoothing", default="both", choices=["on", "off", "both"],
                        help="cluster_smoothing of the projectors (off: the old behaviour)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--points", type=int, default=597)
    parser.add_argument("--skip", type=int, default=4, help="runs left out of the statistics")
    parser.add_argument("--frozen", action="store_true", help="learning rate 0")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    methods = ["kmeans", "hdbscan"] if args.method == "both" else [args.method]
    smooths = {"on": [True], "off": [False], "both": [False, True]}[args.smoothing]
    configs = [(m, s) for m in methods for s in smooths]
    print(f"{args.epochs} epochs, {args.points} points, runs after the first "
          f"{args.skip}{', frozen model' if args.frozen else ''}")
    header = ("set", "seed", "clusters mean [min-max] std", "noise mean/max",
              "ARI prev mean/min", "NMI labels")
    print(" | ".join(header))
    found: dict[tuple[str, bool], list[dict[str, float]]] = {c: [] for c in configs}
    for seed in args.seeds:
        metrics = run(configs, args.epochs, seed, args.frozen, args.points)
        for c in configs:
            rows = metrics[c]
            s = summary(rows, args.skip)
            found[c].append(s)
            counts = [int(n) for n in rows["clusters/count"]]
            print(f"{set_name(*c)} | {seed} | {s['count_mean']:.1f} "
                  f"[{s['count_min']:.0f}-{s['count_max']:.0f}] {s['count_std']:.2f} | "
                  f"{s['noise_mean']:.2f}/{s['noise_max']:.2f} | "
                  f"{s['ari_mean']:.3f}/{s['ari_min']:.3f} | {s['nmi_mean']:.3f} "
                  f"| per run {counts}")
    print(f"\nmeans over seeds {args.seeds}: set | " + " | ".join(COLUMNS))
    for c in configs:
        means = {k: float(np.mean([s[k] for s in found[c]])) for k in COLUMNS}
        print(f"{set_name(*c)} | " + " | ".join(f"{means[k]:.3f}" for k in COLUMNS))


if __name__ == "__main__":
    main()
