"""Fit wall time with and without the projector, and the wait after training, in one run.

Real fits of bench_scale's setup (an MLP on 128-d inputs, 64-d embeddings, 8,000 training and
4,000 validation points, 3 epochs, PCA + t-SNE) with:

- ``none``: no callback;
- ``baseline``: the seed-style callback (bench_scale.Baseline: keep everything, scikit-learn PCA
  and t-SNE on the training thread at every validation end);
- ``ours``: the real ``EmbeddingProjector`` as installed (every reduce/worker/callback change is
  picked up), ``max_samples`` = all validation points.

Per mode: the fit's wall time, the part until training ended (``on_train_end``), and the wait
after it (ours: the queued projections finishing in ``teardown``), each the best of
``--repeats``; then ours as a share of the baseline's fit (target: at most 35%).

    nice .venv/bin/python benchmarks/bench_fit.py                 # ~2-4 min on 2 quiet cores
    nice .venv/bin/python benchmarks/bench_fit.py --points 2000 --epochs 2 --repeats 2
    nice .venv/bin/python benchmarks/bench_fit.py --wandb --epochs 8   # as W&B users run it
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from typing import Any

import lightning.pytorch as L
import torch
from bench_scale import Baseline, Encoder, clusters, make_trainer
from torch.utils.data import DataLoader

from lightning_embproj import EmbeddingProjector

MODES = ("none", "baseline", "ours")


class Clock(L.Callback):
    """When training ended (``on_train_end``), on the same clock as the fit's wall time."""

    def __init__(self) -> None:
        self.train_end = float("nan")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_end = time.perf_counter()


def fit_once(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """(fit wall time, seconds after training ended) of one fit."""
    train = DataLoader(clusters(8000, 128, 1), batch_size=128, shuffle=True)
    val = DataLoader(clusters(args.points, 128, 2), batch_size=256)
    with tempfile.TemporaryDirectory() as root:
        clock = Clock()
        callbacks: list[L.Callback] = [clock]
        if mode == "baseline":
            callbacks.append(Baseline(tsne=True))
        elif mode == "ours":
            callbacks.append(EmbeddingProjector(
                output_dir=root, reducers=["pca", "tsne"], max_samples=args.points,
                label_key="labels",
            ))
        L.seed_everything(0, verbose=False)
        logger: Any = False
        if args.wandb:  # every mode logs to an offline run; the baseline logs its table too
            from lightning.pytorch.loggers import WandbLogger

            os.environ.update(WANDB_MODE="offline", WANDB_DIR=root, WANDB_DATA_DIR=root,
                              WANDB_SILENT="true")
            logger = WandbLogger(project="bench-fit", save_dir=root)
        trainer = make_trainer(root, callbacks, max_epochs=args.epochs, logger=logger)
        model = Encoder(128, args.emb_dim, 256)
        t = time.perf_counter()
        trainer.fit(model, train, val)
        end = time.perf_counter()
        if args.wandb:
            import wandb

            wandb.finish()
    return end - t, end - clock.train_end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--emb-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--wandb", action="store_true",
                    help="log to an offline W&B run (WandbLogger) in every mode")
    args = ap.parse_args()
    torch.manual_seed(0)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for mode in args.modes:
            wall, wait = fit_once(mode, args)
            print(f"  {mode}: fit {wall:.1f} s, after training {wait:.1f} s", flush=True)
            if mode not in best or wall < best[mode][0]:
                best[mode] = (wall, wait)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
          f", load average {os.getloadavg()[0]:.1f} at the end; {args.points:,} validation "
          f"points, {args.emb_dim}-d embeddings, {args.epochs} epochs, PCA + t-SNE"
          f"{', WandbLogger (offline)' if args.wandb else ''}\n")
    print("| mode | fit wall time | until training ended | wait after training | "
          "share of baseline's fit |")
    print("|---|---|---|---|---|")
    base = best.get("baseline", (float("nan"), 0.0))[0]
    for mode, (wall, wait) in best.items():
        share = f"{wall / base:.0%}" if base == base else "-"  # NaN: no baseline this run
        print(f"| {mode} | {wall:.1f} s | {wall - wait:.1f} s | {wait:.1f} s | {share} |")
    if "ours" in best and "baseline" in best:
        share = best["ours"][0] / base
        verdict = "" if args.wandb else f" (target <= 35%): {'met' if share <= 0.35 else 'missed'}"
        print(f"\nours / baseline = {share:.0%}{verdict}")


if __name__ == "__main__":
    main()
