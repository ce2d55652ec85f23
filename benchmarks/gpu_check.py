"""GPU check: sync-free validation batches, collection cost, the 20k-point run, metrics on the GPU.

On a CUDA machine, in one run (under 5 minutes on one GPU and a few cores), prints a table of:

1. ``sync``: real bf16-mixed fits on the GPU with ``torch.cuda.set_sync_debug_mode("error")``
   from the first callback's ``on_validation_batch_start`` to the last callback's
   ``on_validation_batch_end`` (every validation batch, sanity check included): any host sync or
   device-to-host copy in between raises. Three fits: a control without the projector (must
   pass, or the check is inconclusive), the projector with ids derived from dataset positions,
   and with integer ids from the batch (``id_key``).
2. ``collect``: ``trainer.validate`` at 30,000 x 256-d, bf16-mixed, without and with the
   projector: time in its ``on_validation_batch_end`` per batch (host side) and the validation
   loop's wall time (synchronised at both ends), best of 3.
3. ``pipeline``: ``reduce_layouts`` + ``epoch_metrics`` (PCA + t-SNE + metrics, as a run does) at
   20,000 x 256-d: a cold run, then a warm run from it (the next epoch, points moved a little).
4. ``metrics``: ``epoch_metrics`` numpy vs torch on the GPU at 2,000, 10,000, 20,000 x 256-d
   (bench_metrics.py's measure: steady state, cold, peak memory).

Without a CUDA device it says so and exits 0. ``--device cpu --small`` runs the same code on the
CPU with small sizes (the sync part's fits run without the check: it needs CUDA) to check the
script itself.

    .venv/bin/python benchmarks/gpu_check.py                      # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --out $OUT/gpu_check.md
    .venv/bin/python benchmarks/gpu_check.py --device cpu --small  # the script's own smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

NO_CUDA = "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check."
BUDGET_S = 270.0  # parts that would start after this are skipped: the whole run stays < 5 min


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--small", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("openTSNE").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_scale, bench_metrics

    t0 = time.perf_counter()
    rows: list[str] = []
    for name in args.parts:
        if time.perf_counter() - t0 > BUDGET_S:
            rows.append(f"| {name} | skipped: the {BUDGET_S:.0f} s budget was spent | | |")
            continue
        print(f"running {name} ...", flush=True)
        try:
            rows += PARTS[name](args)
        except Exception as err:  # noqa: BLE001 - report it and go on with the other parts
            traceback.print_exc()
            rows.append(f"| {name} | ERROR {type(err).__name__}: {_first_line(err)} | | |")
    table = [_machine(args.device, time.perf_counter() - t0), "",
             "| check | result | detail | target |", "|---|---|---|---|", *rows]
    print("\n" + "\n".join(table))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write("\n".join(table) + "\n")
    return 0


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200].replace("|", "/")


def _machine(device: str, seconds: float) -> str:
    import lightning
    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU run)"
    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu}, torch "
            f"{torch.__version__}, Lightning {lightning.__version__}, Python "
            f"{platform.python_version()}; the check took {seconds:.0f} s")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# -- models and data -------------------------------------------------------------------------
def _module(d_in: int, d_emb: int, width: int, with_ids: bool, tokens: int = 0) -> Any:
    import lightning.pytorch as L
    import torch
    from torch import nn

    class Model(L.LightningModule):
        """An MLP whose validation_step returns embeddings, labels (and ids); it logs nothing,
        so nothing in the step itself syncs."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(),
                                         nn.Linear(width, d_emb))
            self.head = nn.Linear(d_emb, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.head(self.encoder(batch[0])), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            z = self.encoder(batch[0])
            out = {"loss": nn.functional.cross_entropy(self.head(z), batch[1]),
                   "embeddings": z, "labels": batch[1]}
            if with_ids:
                out["ids"] = batch[2]
            if tokens:  # (B, T, D) embeddings and a float 0/1 mask: the last token is padding
                out["embeddings"] = z.view(z.shape[0], tokens, -1)
                real = torch.arange(tokens, device=z.device) < tokens - 1
                out["mask"] = real.float().expand(z.shape[0], tokens)
            return out

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Model()


def _loader(n: int, d_in: int, seed: int, batch_size: int, with_ids: bool = False,
            shuffle: bool = False) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d_in, generator=torch.Generator().manual_seed(0)) * 2
    y = torch.randint(0, 10, (n,), generator=g)
    x = centres[y] + torch.randn(n, d_in, generator=g)
    tensors = [x, y] + ([torch.arange(n) * 7 + 1_000_003] if with_ids else [])
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle)


def _trainer(root: str, callbacks: list, device: str, **kwargs: Any) -> Any:
    import lightning.pytorch as L

    opts: dict[str, Any] = dict(
        default_root_dir=root, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
        precision="bf16-mixed", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    opts.update(kwargs)
    return L.Trainer(callbacks=callbacks, **opts)


# -- 1. no sync in validation batches ----------------------------------------------------------
def part_sync(args: argparse.Namespace) -> list[str]:
    import lightning.pytorch as L
    import torch

    from lightning_embproj import EmbeddingProjector

    guard = args.device == "cuda"  # on the CPU the same fits run, unchecked (smoke test)

    def debug_mode(mode: int | str) -> None:
        if guard:
            torch.cuda.set_sync_debug_mode(mode)

    class SyncOn(L.Callback):
        def on_validation_batch_start(self, *a: Any, **kw: Any) -> None:
            debug_mode("error")

    class SyncOff(L.Callback):
        def on_validation_batch_end(self, *a: Any, **kw: Any) -> None:
            debug_mode(0)

    n_val = 4000 if args.small else 20_000
    rows = []
    cases = ["control (no projector)", "ids from positions", "ids from the batch (id_key)",
             "(B, T, D) embeddings, float 0/1 mask (mask_key)"]
    for case in cases:
        with_ids = case.startswith("ids from the batch")
        tokens = 4 if "mask" in case else 0
        with tempfile.TemporaryDirectory() as root:
            cbs: list[Any] = [SyncOn()]
            if not case.startswith("control"):
                # background=False: the epoch-end work runs between batches, not next to them.
                cbs.append(EmbeddingProjector(
                    output_dir=root, reducers=["pca"], max_samples=2000, label_key="labels",
                    id_key="ids" if with_ids else None, background=False,
                    mask_key="mask" if tokens else None,
                ))
            cbs.append(SyncOff())  # last: resets after every other batch-end hook
            trainer = _trainer(root, cbs, args.device, max_epochs=2, limit_train_batches=20,
                               num_sanity_val_steps=2)
            try:
                trainer.fit(_module(64, 256, 256, with_ids, tokens),
                            _loader(4096, 64, 1, 128, with_ids, shuffle=True),
                            _loader(n_val, 64, 2, 256, with_ids))
                batches = f"{2 * -(-n_val // 256) + 2} validation batches"
                result, detail = ("PASS", f"{batches}, no sync") if guard else (
                    "ran", f"{batches}; no CUDA: sync not checked")
            except Exception as err:  # noqa: BLE001 - the failure is the finding
                result, detail = "FAIL", f"{type(err).__name__}: {_first_line(err)}"
            finally:
                debug_mode(0)
        rows.append(f"| sync-free validation batches, bf16-mixed fit: {case} | {result} | "
                    f"{detail} | no sync (control must pass) |")
    return rows


# -- 2. collection cost ------------------------------------------------------------------------
def part_collect(args: argparse.Namespace) -> list[str]:
    import lightning.pytorch as L
    from bench_scale import time_hook

    from lightning_embproj import EmbeddingProjector

    device = args.device

    class LoopTimer(L.Callback):
        def __init__(self) -> None:
            self.loops: list[float] = []
            self._t = 0.0

        def on_validation_epoch_start(self, *a: Any) -> None:
            _sync(device)
            self._t = time.perf_counter()

        def on_validation_epoch_end(self, *a: Any) -> None:
            _sync(device)
            self.loops.append(time.perf_counter() - self._t)

    rows_n = 5000 if args.small else 30_000
    val = _loader(rows_n, 256, 3, 256)
    model = _module(256, 256, 512, False)
    loops: dict[str, list[float]] = {"none": [], "ours": []}
    hooks: list[float] = []
    for _ in range(3):
        for mode in loops:
            with tempfile.TemporaryDirectory() as root:
                timer = LoopTimer()
                cbs: list[Any] = [timer]
                per_batch: list[float] = []
                if mode == "ours":
                    cb = EmbeddingProjector(output_dir=root, reducers=["pca"], label_key="labels")
                    per_batch = time_hook(cb, "on_validation_batch_end")
                    cbs.append(cb)
                _trainer(root, cbs, device).validate(model, val, verbose=False)
                loops[mode] += timer.loops
                if mode == "ours":
                    hooks.append(statistics.median(per_batch))
    best = {m: min(v) for m, v in loops.items()}
    n_batches = -(-rows_n // 256)
    hook_ms = min(hooks) * 1000
    share = min(hooks) * n_batches / best["none"]
    return [
        f"| collection per 256-row batch ({rows_n:,} x 256-d, bf16-mixed, host time in the hook)"
        f" | {hook_ms:.3f} ms | {share:.1%} of the validation loop (none: {best['none']:.2f} s,"
        f" ours: {best['ours']:.2f} s, {best['ours'] / best['none'] - 1:+.1%}) | <= 5% |"
    ]


# -- 3. the run pipeline at 20k points ---------------------------------------------------------
def part_pipeline(args: argparse.Namespace) -> list[str]:
    from lightning_embproj.metrics.scores import epoch_metrics
    from lightning_embproj.reduce.project import ReduceSettings, reduce_layouts
    from lightning_embproj.results import EpochSample, Projection

    n = 2000 if args.small else 20_000
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    X0 = (rng.normal(size=(10, 256))[y] * 1.5 + rng.normal(size=(n, 256))).astype(np.float32)
    X1 = (X0 + 0.2 * rng.normal(size=X0.shape)).astype(np.float32)
    keys = np.arange(n, dtype=np.int64)
    settings = ReduceSettings(["pca", "tsne"])
    warned: list[str] = []
    # As after training: every core, metrics on the GPU (where the score stage takes them).
    extra: dict[str, Any] = {"n_jobs": os.cpu_count() or 1}
    if args.device == "cuda":
        extra["device"] = "cuda"

    def run(X: np.ndarray, previous: Any, epoch: int) -> tuple[float, Any, dict[str, float]]:
        sample = EpochSample("embeddings", keys, list(range(n)), X, labels=y)
        t = time.perf_counter()
        layouts = reduce_layouts(sample, previous, settings,
                                 lambda topic, msg: warned.append(msg), n_jobs=extra["n_jobs"])
        p = Projection(sample, epoch, epoch, layouts)
        metrics = epoch_metrics(p, previous, device=extra.get("device"))
        return time.perf_counter() - t, p, metrics

    t_cold, first, _ = run(X0, None, 0)
    t_warm, second, metrics = run(X1, first, 1)
    quality = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                        if k.endswith("trustworthiness") or k == "knn_accuracy")
    note = f"; warnings: {warned[0][:120]}" if warned else ""
    return [
        f"| run pipeline (PCA + t-SNE + metrics) at {n:,} x 256-d, cold -> warm | "
        f"{t_cold:.1f} s -> {t_warm:.1f} s | {extra or 'n_jobs=1, metrics on the host'}, "
        f"layouts {sorted(second.layouts)}, {quality}{note} |"
        f" |"
    ]


# -- 4. metrics numpy vs torch on the device ---------------------------------------------------
def part_metrics(args: argparse.Namespace) -> list[str]:
    from bench_metrics import epochs, measure

    backend = f"torch:{args.device}"
    rows = []
    for n in ([500, 2000] if args.small else [2000, 10_000, 20_000]):
        prev, cur, _ = epochs(n, 256, with_tsne=False)
        ref = measure(prev, cur, "numpy", 1)
        dev = measure(prev, cur, backend, 2)
        # R/motion_explained is a rank correlation of the per-point kNN kept: one neighbour
        # that ties at float32 and swaps between backends moves it by ~1e-3 near 0; shown apart.
        diffs = {k: abs(v - ref["values"][k]) for k, v in dev["values"].items()}
        ranked = [k for k in diffs if k.endswith("/motion_explained")]
        diff = max(v for k, v in diffs.items() if k not in ranked)
        motion = max((diffs[k] for k in ranked), default=0.0)
        peak = f", peak {dev['peak']:.0f} MB" if dev["peak"] is not None else ""
        rows.append(
            f"| metrics pass at {n:,} x 256-d, numpy vs {backend} (steady; cold) | "
            f"{ref['metrics']:.2f} s vs {dev['metrics']:.3f} s "
            f"({ref['metrics'] / dev['metrics']:.1f}x); {ref['cold']:.2f} s vs "
            f"{dev['cold']:.3f} s | max metric difference {diff:.1e} (motion_explained "
            f"{motion:.1e}){peak} | same metrics |"
        )
    return rows


PARTS: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "sync": part_sync, "collect": part_collect, "pipeline": part_pipeline,
    "metrics": part_metrics,
}


if __name__ == "__main__":
    sys.exit(main())
