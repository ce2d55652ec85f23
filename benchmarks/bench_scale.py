"""Scale of the projector against the seed-style baseline, all measured in one run.

Baseline (what a first version does): keep every validation embedding (``.cpu()`` per batch),
at epoch end ``torch.cat`` them, run scikit-learn PCA and TSNE on the training thread and build
a ``wandb.Table``. Ours: ``EmbeddingProjector`` (bottom-k buffer, background worker).

Parts (``--parts``, default all):

- ``stall``: real fits, 4,000 validation points of a 64-d MLP embedding, PCA + t-SNE:
  training-thread time per validation end, and total fit wall time, with none / baseline / ours.
- ``collect``: validation loop time (batches only, epoch end excluded) at 30,000 rows x 256-d,
  none / baseline / ours before the schedule (every batch hashed and streamed: the path of
  releases up to 0.1, kept here only to compare) / ours: per-batch collection time and its share
  of validation time, all in the same run.
- ``memory``: peak RSS growth of a validation epoch at 30,000 and 300,000 rows of random 256-d
  embeddings (the data is generated per batch, so only the callback can grow). PCA only: sklearn
  TSNE on 300,000 rows would run for hours, so the baseline's memory is a lower bound.
- ``tsne``: our t-SNE at 4,000 points, cold vs warm-started from the previous epoch's layout,
  with kNN preservation (quality) of each.

    .venv/bin/python benchmarks/bench_scale.py                 # ~5-10 min on 2 cores
    .venv/bin/python benchmarks/bench_scale.py --parts memory
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_embproj.collect.validation as validation_module
from lightning_embproj import EmbeddingProjector
from lightning_embproj.collect.collector import Collector, ScheduleCache
from lightning_embproj.options import ProjectorOptions

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("openTSNE").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


# -- models and data -----------------------------------------------------------------------
class Encoder(L.LightningModule):
    """MLP classifier whose validation_step returns its embeddings and labels."""

    def __init__(self, d_in: int, d_emb: int, width: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width),
                                     nn.ReLU(), nn.Linear(width, d_emb))
        self.head = nn.Linear(d_emb, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.encoder(x)), y)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        z = self.encoder(x)
        return {"loss": nn.functional.cross_entropy(self.head(z), y), "embeddings": z,
                "labels": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RandomEmbeddings(L.LightningModule):
    """Random 256-d embeddings generated per validation batch: no data held anywhere."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.dim = dim
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.w ** 2).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        (idx,) = batch
        return {"embeddings": torch.randn(len(idx), self.dim)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def clusters(n: int, d_in: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, d_in, generator=torch.Generator().manual_seed(0)) * 2
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, d_in, generator=g), y)


# -- the baseline --------------------------------------------------------------------------
class Baseline(L.Callback):
    """Seed-style: keep everything, reduce with scikit-learn on the training thread."""

    def __init__(self, tsne: bool = True) -> None:
        self.tsne = tsne
        self.rows: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any,
                                **kwargs: Any) -> None:
        if not trainer.sanity_checking:
            self.rows.append(outputs["embeddings"].detach().cpu())

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.rows:
            return
        import wandb
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        X = torch.cat(self.rows).float().numpy()
        self.rows = []
        columns = {"sample_id": list(range(len(X))), "epoch": [trainer.current_epoch] * len(X)}
        xy = PCA(2).fit_transform(X)
        columns.update(pca_x=xy[:, 0].tolist(), pca_y=xy[:, 1].tolist())
        if self.tsne:
            xy = TSNE(2, init="pca", random_state=0).fit_transform(X)
            columns.update(tsne_x=xy[:, 0].tolist(), tsne_y=xy[:, 1].tolist())
        data = [list(row) for row in zip(*columns.values(), strict=True)]
        table = wandb.Table(columns=list(columns), data=data)
        if wandb.run is not None:  # a W&B run is active (a WandbLogger): log it, as the seed did
            wandb.log({"embeddings": table})


# -- measurement helpers -------------------------------------------------------------------
class LoopTimer(L.Callback):
    """Validation loop time from epoch start to epoch end (put first: before the others)."""

    def __init__(self) -> None:
        self.loops: list[float] = []
        self._t0 = 0.0

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.loops.append(time.perf_counter() - self._t0)


def time_hook(callback: Any, name: str = "on_validation_epoch_end",
              cpu: list[float] | None = None) -> list[float]:
    """Record how long ``callback.<name>`` holds the training thread (sanity check left out);
    ``cpu`` also gets the thread's CPU time of each call (not inflated by other processes)."""
    times: list[float] = []
    hook = getattr(callback, name)

    def timed(trainer: Any, *args: Any, **kwargs: Any) -> None:
        t, c = time.perf_counter(), time.thread_time()
        hook(trainer, *args, **kwargs)
        if not trainer.sanity_checking:
            times.append(time.perf_counter() - t)
            if cpu is not None:
                cpu.append(time.thread_time() - c)

    setattr(callback, name, timed)
    return times


class PeakRSS:
    """Peak resident memory above the level at start, sampled every 2 ms in a thread."""

    def __enter__(self) -> PeakRSS:
        self.page = os.sysconf("SC_PAGE_SIZE")
        gc.collect()
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def make_trainer(root: str, callbacks: list, **kwargs: Any) -> L.Trainer:
    opts: dict[str, Any] = dict(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    opts.update(kwargs)
    return L.Trainer(callbacks=callbacks, **opts)


def callback_for(mode: str, root: str, **ours: Any) -> L.Callback | None:
    if mode == "baseline":
        return Baseline(tsne="tsne" in ours.get("reducers", ()))
    if mode == "ours":
        return EmbeddingProjector(output_dir=root, **ours)
    return None


# -- parts ---------------------------------------------------------------------------------
def part_stall(args: argparse.Namespace) -> list[str]:
    n_val, reducers = args.stall_points, ["pca", "tsne"]
    train = DataLoader(clusters(8000, 128, 1), batch_size=128, shuffle=True)
    val = DataLoader(clusters(n_val, 128, 2), batch_size=256)
    walls: dict[str, float] = {}
    stalls: dict[str, list[float]] = {}
    for mode in ["none", "baseline", "ours"]:
        with tempfile.TemporaryDirectory() as root:
            cb = callback_for(mode, root, reducers=reducers, max_samples=n_val,
                              label_key="labels")
            stalls[mode] = time_hook(cb) if cb is not None else []
            L.seed_everything(0, verbose=False)
            t = time.perf_counter()
            make_trainer(root, [cb] if cb else [], max_epochs=args.epochs).fit(
                Encoder(128, 64, 256), train, val)
            walls[mode] = time.perf_counter() - t  # ours: includes the final flush
        print(f"  stall {mode}: wall {walls[mode]:.1f} s, epoch ends "
              f"{[round(s, 3) for s in stalls[mode]]}", flush=True)
    base, ours = statistics.mean(stalls["baseline"]), statistics.mean(stalls["ours"])
    return [
        f"| training-thread stall per validation end ({n_val:,} points, PCA + t-SNE) | "
        f"{base:.2f} s | {ours * 1000:.1f} ms (max {max(stalls['ours']) * 1000:.1f} ms) | "
        f"{ours / base:.2%} of baseline | <= 5% |",
        f"| fit wall time, {args.epochs} epochs (none: {walls['none']:.1f} s) | "
        f"{walls['baseline']:.1f} s | {walls['ours']:.1f} s | "
        f"ours {walls['ours'] / walls['baseline']:.2f}x baseline, "
        f"+{walls['ours'] - walls['none']:.1f} s over none | |",
    ]


class StreamingCollector(Collector):
    """The collection before the schedule: every batch hashes its ids and streams its rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "schedules": ScheduleCache(max_positions=0)})


FIT_SCHEDULES = ScheduleCache()


class FitCollector(Collector):
    """Ours, with one schedule cache across the repeats: each repeat's callback is new, and this
    stands for the callback's own cache across the validation runs of one fit (the first
    repeat is a fit's first run, which simulates the schedule and works out the plans)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "schedules": FIT_SCHEDULES})


def part_collect(args: argparse.Namespace) -> list[str]:
    val = DataLoader(clusters(args.collect_rows, 256, 3), batch_size=256)
    batches = len(val)
    model = Encoder(256, 256, 512)
    modes = ["none", "baseline", "before", "ours"]
    loops: dict[str, list[float]] = {m: [] for m in modes}
    hooks: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    print(f"  load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(args.repeats):
        for mode in modes:
            with tempfile.TemporaryDirectory() as root:
                timer = LoopTimer()
                cb = callback_for("ours" if mode == "before" else mode, root, reducers=["pca"],
                                  label_key="labels")
                cpu: list[float] = []
                per_batch = time_hook(cb, "on_validation_batch_end", cpu) if cb else []
                validation_module.Collector = (StreamingCollector if mode == "before" else
                                             FitCollector)
                try:
                    make_trainer(root, [timer] + ([cb] if cb else [])).validate(
                        model, val, verbose=False)
                finally:
                    validation_module.Collector = Collector
                loops[mode] += timer.loops
                hooks[mode].append(sum(per_batch))
                cpus[mode].append(sum(cpu))
    # Best of the repeats: the machine may be shared, noise only ever adds time. The first
    # repeat of "ours" includes simulating the schedule (once per fit and loader).
    best = {m: min(v) for m, v in loops.items()}
    print(f"  collect loops: { {m: [round(x, 3) for x in v] for m, v in loops.items()} }, "
          f"per-batch hooks: { {m: [round(x, 3) for x in v] for m, v in hooks.items()} }",
          flush=True)

    def share(mode: str) -> str:
        hook = min(hooks[mode])
        loop = (best[mode] - best["none"]) / best["none"]
        return (f"{hook / batches * 1e3:.3f} ms per batch (CPU "
                f"{min(cpus[mode]) / batches * 1e3:.3f} ms), {hook / best['none']:.1%} of "
                f"validation time ({loop:+.1%} loop time)")

    direct = collect_alone(model, val, args.repeats)
    print(f"  collection alone (outputs computed first, best of {args.repeats}): "
          f"{ {m: f'{w * 1e3:.3f} ms (CPU {c * 1e3:.3f} ms)' for m, (w, c) in direct.items()} }",
          flush=True)
    return [
        f"| collection alone per 256-row batch, no model between batches (warm caches): before "
        f"-> ours | {direct['before'][0] * 1e3:.3f} ms | {direct['ours'][0] * 1e3:.3f} ms (CPU "
        f"{direct['ours'][1] * 1e3:.3f} ms) | {direct['before'][0] / direct['ours'][0]:.1f}x "
        f"faster | <= 0.1 ms |",
        f"| collection per 256-row batch and share of validation time ({args.collect_rows:,} x "
        f"256-d, {batches} batches, none: {best['none']:.2f} s; before: "
        f"{share('before')}) | {share('baseline')} | {share('ours')} | before / ours: "
        f"{min(hooks['before']) / min(hooks['ours']):.1f}x | <= 0.1 ms, <= 5% |"
    ]


def collect_alone(model: L.LightningModule, val: DataLoader,
                  repeats: int) -> dict[str, tuple[float, float]]:
    """Per-batch wall and CPU time of ``Collector.add_batch`` alone, before vs ours: the model's
    outputs are computed first, so only collection runs in the timed loop."""
    with torch.inference_mode():
        outputs = [model.validation_step(batch, i) for i, batch in enumerate(val)]
    best: dict[str, tuple[float, float]] = {}
    schedules = ScheduleCache()  # the callback's, across the runs of a fit
    for mode, kind in [("before", StreamingCollector), ("ours", Collector)]:
        runs = []
        for _ in range(repeats + 1):  # the first run of "ours" simulates the schedule
            collector = kind(ProjectorOptions(label_key="labels", reducers=["pca"]),
                             schedules=schedules)
            t, c = time.perf_counter(), time.thread_time()
            for out in outputs:
                collector.add_batch({"embeddings": out["embeddings"]}, out, None, 0)
            runs.append(((time.perf_counter() - t) / len(outputs),
                         (time.thread_time() - c) / len(outputs)))
        best[mode] = min(runs[1:])
    return best


def part_collect_dims(args: argparse.Namespace) -> list[str]:
    """Collection alone per 256-row batch at each of ``--collect-dims``, beside its floor: the
    copy of the rows that stay in the sample (the final sample's rows of each batch, copied
    into a preallocated buffer with ``index_select``), which any collector has to do."""
    rows = []
    val = DataLoader(clusters(args.collect_rows, 256, 3), batch_size=256)
    for dim in args.collect_dims:
        model = Encoder(256, dim, 512)
        with torch.inference_mode():
            outputs = [model.validation_step(batch, i) for i, batch in enumerate(val)]
        schedules = ScheduleCache()
        runs = []
        for _ in range(args.repeats + 1):  # the first run simulates the schedule
            collector = Collector(ProjectorOptions(label_key="labels", reducers=["pca"]),
                                  schedules=schedules)
            t = time.perf_counter()
            for out in outputs:
                collector.add_batch({"embeddings": out["embeddings"]}, out, None, 0)
            runs.append((time.perf_counter() - t) / len(outputs))
        ours = min(runs[1:])
        kept = np.sort(np.asarray(collector.samples()["embeddings"].sample_ids, dtype=np.int64))
        size = 256
        picks = [torch.from_numpy(kept[(kept >= i * size) & (kept < (i + 1) * size)] - i * size)
                 for i in range(len(outputs))]
        buffer = torch.empty(len(kept), dim)
        floors = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            slot = 0
            for out, pick in zip(outputs, picks, strict=True):
                torch.index_select(out["embeddings"], 0, pick, out=buffer[slot:slot + len(pick)])
                slot += len(pick)
            floors.append((time.perf_counter() - t) / len(outputs))
        floor = min(floors)
        print(f"  {dim}-d: collection alone {ours * 1e3:.4f} ms per batch, floor (copy of the "
              f"{len(kept):,} kept rows) {floor * 1e3:.4f} ms", flush=True)
        rows.append(
            f"| collection alone per 256-row batch at {dim}-d ({args.collect_rows:,} rows, "
            f"{len(kept):,} kept), beside its floor (the copy of the kept rows) | floor "
            f"{floor * 1e3:.4f} ms | {ours * 1e3:.4f} ms | {ours / floor:.1f}x the floor | "
            f"<= 0.1 ms |")
    return rows


def part_memory(args: argparse.Namespace) -> list[str]:
    growth: dict[tuple[str, int], float] = {}
    for rows in [args.memory_rows[0]] + list(args.memory_rows):  # first pass: lazy imports
        val = DataLoader(TensorDataset(torch.arange(rows)), batch_size=1000)
        train = DataLoader(TensorDataset(torch.arange(4)), batch_size=4)
        for mode in ["none", "ours", "baseline"]:
            with tempfile.TemporaryDirectory() as root:
                cb = callback_for(mode, root, reducers=["pca"])
                trainer = make_trainer(root, [cb] if cb else [], max_epochs=1,
                                       limit_train_batches=1)
                with PeakRSS() as peak:
                    trainer.fit(RandomEmbeddings(), train, val)
                growth[mode, rows] = peak.growth_mb
                del cb, trainer
            print(f"  memory {mode} {rows:,}: +{growth[mode, rows]:.0f} MB", flush=True)
    lo, hi = args.memory_rows
    lines = []
    for mode in ["none", "baseline", "ours"]:
        lines.append(f"{growth[mode, lo]:.0f} -> {growth[mode, hi]:.0f} MB "
                     f"(+{growth[mode, hi] - growth[mode, lo]:.0f})")
    return [
        f"| peak RSS growth of a fit, {lo:,} -> {hi:,} validation rows x 256-d (none: "
        f"{lines[0]}) | {lines[1]} | {lines[2]} | | < 30 MB growth |"
    ]


def part_tsne(args: argparse.Namespace) -> list[str]:
    from sklearn.datasets import load_digits
    from sklearn.neighbors import NearestNeighbors

    from lightning_embproj.reduce.dispatch import tsne, warm_init

    def knn(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
        a = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(return_distance=False)[:, 1:]
        b = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(return_distance=False)[:, 1:]
        return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b, strict=True)]))

    def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    n = args.stall_points
    X0, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    X = X0[rng.integers(0, len(X0), n)] + rng.normal(0.0, 1.0, (n, X0.shape[1]))
    X2 = X + rng.normal(0.0, 0.5, X.shape)  # the next epoch: the same points, moved a little
    keys = np.arange(n)
    first = tsne(X, 2)
    cold, t_cold = timed(lambda: tsne(X2, 2, random_state=1))
    warm, t_warm = timed(lambda: tsne(X2, 2, init=warm_init(keys, first, keys, X2)))
    q_cold, q_warm = knn(X2, cold), knn(X2, warm)
    print(f"  tsne cold {t_cold:.1f} s knn {q_cold:.3f}; warm {t_warm:.1f} s knn {q_warm:.3f}",
          flush=True)
    return [
        f"| our t-SNE at {n:,} points, cold -> warm start (kNN@10 preservation) | | "
        f"{t_cold:.1f} s ({q_cold:.3f}) -> {t_warm:.1f} s ({q_warm:.3f}) | "
        f"{t_cold / t_warm:.1f}x faster, kNN {q_warm / q_cold - 1:+.1%} | kNN within a few % |"
    ]


PARTS = {"stall": part_stall, "collect": part_collect, "collect-dims": part_collect_dims,
         "memory": part_memory, "tsne": part_tsne}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--stall-points", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--collect-rows", type=int, default=30_000)
    parser.add_argument("--collect-dims", type=int, nargs="+", default=[128, 256],
                        help="embedding widths of the collect-dims part")
    parser.add_argument("--memory-rows", type=int, nargs=2, default=[30_000, 300_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.parts:
        print(f"running {name} ...", flush=True)
        rows += PARTS[name](args)
    load = os.getloadavg()[0]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
          f"{platform.python_version()}, load average {load:.1f} at the end\n")
    print("| measure | baseline (seed style) | ours | ratio | target |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
