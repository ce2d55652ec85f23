"""Fit wall time with and without the projector, and the wait after training, in one run.

Real fits of bench_scale's setup (an MLP on 128-d inputs, 128-d embeddings by default
(``--emb-dim``), 8,000 training and 4,000 validation points, 3 epochs, PCA + t-SNE) with:

- ``none``: no callback;
- ``baseline``: the seed-style callback (bench_scale.Baseline: keep everything, scikit-learn PCA
  and t-SNE on the training thread at every validation end);
- ``ours``: the real ``EmbeddingProjector`` as installed (every reduce/worker/callback change is
  picked up), ``max_samples`` = all validation points.

Per repeat and mode: the fit's wall time, the part until training ended (``on_train_end``),
the wait after it (ours: the queued projections finishing in ``teardown``), and ours as a share
of the baseline's fit measured in the same repeat; at the end the median fit per mode and the
min / median / max of that share over the repeats (issue 19's target with ``--wandb``: median
<= 35%, max <= 45%). For ours, each run's trace (queue wait, PCA, t-SNE and its chunks, kNN +
metrics, clusters, each sink and the W&B parts, the end-of-fit finish) and what of the wait
after training the jobs account for.

    nice .venv/bin/python benchmarks/bench_fit.py --wandb --repeats 5   # issue 19's measure
    nice .venv/bin/python benchmarks/bench_fit.py --points 1000 --epochs 2   # quick check
    nice .venv/bin/python benchmarks/bench_fit.py --wandb --priority fair
    # priority's trade-off needs a training phase longer than the projections:
    nice .venv/bin/python benchmarks/bench_fit.py --modes none ours --train-points 96000 \
        --epochs 4 --priority fair

For ours the summary also counts the projections finished before training ended (each one a
live picture while the model trains) and the training phase against ``none``'s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Any, NamedTuple

import lightning.pytorch as L
import torch
from bench_scale import Baseline, Encoder, clusters, make_trainer
from torch.utils.data import DataLoader

from lightning_embproj import EmbeddingProjector
from lightning_embproj.runtime.trace import Trace

MODES = ("none", "baseline", "ours")


class Clock(L.Callback):
    """When training ended (``on_train_end``), on the same clock as the fit's wall time."""

    def __init__(self) -> None:
        self.train_end = float("nan")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_end = time.perf_counter()


class Fit(NamedTuple):
    """One fit: wall time, the part after training, and ours' traces."""

    wall: float
    wait: float
    traces: list[Trace]
    train_end: float
    end: float


def fit_once(mode: str, args: argparse.Namespace) -> Fit:
    """One fit of ``mode``."""
    train = DataLoader(clusters(args.train_points, 128, 1), batch_size=128, shuffle=True)
    val = DataLoader(clusters(args.points, 128, 2), batch_size=256)
    projector = None
    with tempfile.TemporaryDirectory() as root:
        clock = Clock()
        callbacks: list[L.Callback] = [clock]
        if mode == "baseline":
            callbacks.append(Baseline(tsne=True))
        elif mode == "ours":
            projector = EmbeddingProjector(
                output_dir=root, reducers=["pca", "tsne"], max_samples=args.points,
                label_key="labels", priority=args.priority,
            )
            callbacks.append(projector)
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
    traces = projector.traces if projector is not None else []
    return Fit(end - t, end - clock.train_end, traces, clock.train_end, end)


def explain(fit: Fit) -> list[str]:
    """Ours' trace per run, and what of the wait after training the jobs account for."""
    lines = []
    after = 0.0
    for trace in fit.traces:
        lines.append(trace.format())
        # The part of each job (and the end-of-fit finish) that ran after training ended.
        after += max(0.0, min(trace.end, fit.end) - max(trace.start, fit.train_end))
    wandb_s = [sum(s.seconds for s in t.spans if s.name == "sink: W&B") for t in fit.traces
               if any(s.name == "sink: W&B" for s in t.spans)]
    logs = [sum(1 for s in t.spans if s.name == "W&B log") for t in fit.traces
            if any(s.name == "sink: W&B" for s in t.spans)]
    if wandb_s:
        lines.append(f"W&B sink per run: {', '.join(f'{x:.2f} s' for x in wandb_s)}; "
                     f"run.log calls per run: {logs}")
    lines.append(f"wait after training {fit.wait:.2f} s: jobs and finish after training "
                 f"{after:.2f} s, unexplained {fit.wait - after:.2f} s")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--emb-dim", type=int, default=128)
    ap.add_argument("--train-points", type=int, default=8000,
                    help="training points per epoch (longer training: more of it)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--priority", default="training", choices=["training", "fair"],
                    help="ours' priority option")
    ap.add_argument("--wandb", action="store_true",
                    help="log to an offline W&B run (WandbLogger) in every mode")
    ap.add_argument("--no-trace", action="store_true", help="do not print ours' traces")
    args = ap.parse_args()
    torch.manual_seed(0)
    fits: dict[str, list[Fit]] = {m: [] for m in args.modes}
    ratios: list[float] = []
    for repeat in range(args.repeats):
        for mode in args.modes:
            fit = fit_once(mode, args)
            fits[mode].append(fit)
            print(f"  repeat {repeat + 1}, {mode}: fit {fit.wall:.1f} s, after training "
                  f"{fit.wait:.1f} s", flush=True)
            if mode == "ours" and not args.no_trace:
                print("\n".join("    " + line for text in explain(fit)
                                for line in text.split("\n")), flush=True)
        if "ours" in fits and "baseline" in fits:
            ratios.append(fits["ours"][-1].wall / fits["baseline"][-1].wall)
            print(f"  repeat {repeat + 1}: ours / baseline = {ratios[-1]:.0%}", flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
          f", load average {os.getloadavg()[0]:.1f} at the end; {args.points:,} validation "
          f"points, {args.emb_dim}-d embeddings, {args.epochs} epochs, PCA + t-SNE"
          f"{', WandbLogger (offline)' if args.wandb else ''}, priority={args.priority!r}, "
          f"{args.repeats} repeat(s)\n")
    print("| mode | fit wall time (median) | until training ended | wait after training | "
          "share of baseline's fit (median fits) |")
    print("|---|---|---|---|---|")
    med = {m: statistics.median(f.wall for f in runs) for m, runs in fits.items()}
    base = med.get("baseline", float("nan"))
    for mode, runs in fits.items():
        wait = statistics.median(f.wait for f in runs)
        share = f"{med[mode] / base:.0%}" if base == base else "-"  # NaN: no baseline
        print(f"| {mode} | {med[mode]:.1f} s | {med[mode] - wait:.1f} s | {wait:.1f} s | "
              f"{share} |")
    if "ours" in fits:
        runs = [[t for t in f.traces if " run " in t.label] for f in fits["ours"]]
        live = [sum(t.end <= f.train_end for t in ts)
                for f, ts in zip(fits["ours"], runs, strict=True)]
        print(f"\nours: projections finished before training ended (live): {live} of "
              f"{[len(ts) for ts in runs]} per repeat")
        if "none" in fits:
            phase = {m: statistics.median(f.wall - f.wait for f in fits[m])
                     for m in ("none", "ours")}
            print(f"training phase: ours {phase['ours']:.1f} s vs none {phase['none']:.1f} s "
                  f"(x{phase['ours'] / phase['none']:.2f}); fit: ours {med['ours']:.1f} s vs "
                  f"none {med['none']:.1f} s (x{med['ours'] / med['none']:.2f})")
    if ratios:
        lo, mid, hi = min(ratios), statistics.median(ratios), max(ratios)
        target = "met" if mid <= 0.35 and hi <= 0.45 else "missed"
        print(f"\nours / baseline per repeat: {', '.join(f'{r:.0%}' for r in ratios)}; "
              f"min {lo:.0%}, median {mid:.0%}, max {hi:.0%} "
              f"(target median <= 35%, max <= 45%: {target})")


if __name__ == "__main__":
    main()
