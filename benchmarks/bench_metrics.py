"""Cost of scoring an epoch: numpy vs torch per device, time and memory, in one run.

For each size, 10 Gaussian classes in D dims (float32, like the buffer) and a "previous epoch"
(the same points, slightly moved), with two layouts per epoch (PCA and PCA + noise; with
``--tsne``, openTSNE's cold and warm layouts as the callback makes them, and their times). Per
backend (``numpy``: the default CPU path; ``torch:cpu``, ``torch:cuda``: the torch pass on that
device, ``device=`` of :func:`lightning_embproj.metrics.scores.epoch_metrics`):

- ``metrics``: ``epoch_metrics`` with both layouts and the previous epoch, the previous
  epoch's kNN kept from its own scoring (``Projection.knn``; the steady state: one distance
  pass per run);
- ``cold``: the previous epoch's kNN not known (the first scored run after a start or a
  resume: a second kNN pass);
- ``peak MB``: tracemalloc peak of a cold ``epoch_metrics`` (numpy; tracemalloc does not see
  torch's CPU allocator) or ``torch.cuda.max_memory_allocated`` (cuda).

Above 5,000 points trustworthiness is estimated on a fixed 5,000-row subset (each row ranked
against all points). Each timing is the best of ``--repeat`` runs; on a shared machine read the
ratios rather than the seconds.

Usage:
    .venv/bin/python benchmarks/bench_metrics.py                 # 2,000, 10,000, 20,000 x 256
    .venv/bin/python benchmarks/bench_metrics.py --sizes 2000 --dims 64 --tsne
    .venv/bin/python benchmarks/bench_metrics.py --backends numpy torch:cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_embproj.metrics import scores as score
from lightning_embproj.results import EpochSample, Projection


def data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    centres = rng.normal(size=(10, dim)) * 1.5
    X0 = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    X1 = (X0 + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)
    return X0, X1, y


def pca(X: np.ndarray, dims: int) -> np.ndarray:
    from lightning_embproj.reduce.dispatch import pca as our_pca

    return our_pca(X, dims)


def tsne(X: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
    from lightning_embproj.reduce.dispatch import tsne as our_tsne

    return our_tsne(X, 2, init=init)


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def epoch(X: np.ndarray, y: np.ndarray, layouts: dict[str, np.ndarray], i: int) -> Projection:
    keys = np.arange(len(X), dtype=np.int64)
    return Projection(EpochSample("z", keys, list(range(len(X))), X, y), i, i, layouts)


def device_of(backend: str) -> str | None:
    """``numpy`` -> None (the default path); ``torch:DEV`` -> ``DEV``."""
    return None if backend == "numpy" else backend.split(":", 1)[1]


def epochs(n: int, dim: int, with_tsne: bool) -> tuple[Projection, Projection, dict[str, float]]:
    X0, X1, y = data(n, dim)
    times: dict[str, float] = {}
    p0, p1 = pca(X0, 2), pca(X1, 2)
    if with_tsne:
        times["tsne"], lay0 = timed(lambda: tsne(X0))
        times["tsne_warm"], lay1 = timed(lambda: tsne(X1, init=lay0))
    else:  # a second, worse layout: the same pass, no t-SNE to wait for
        noise = np.random.default_rng(1).normal(size=p0.shape) * p0.std()
        lay0, lay1 = p0 + noise, p1 + noise
    prev = epoch(X0, y, {"pca": p0, "tsne": lay0}, 0)
    cur = epoch(X1, y, {"pca": p1, "tsne": lay1}, 1)
    return prev, cur, times


def measure(prev: Projection, cur: Projection, backend: str, repeat: int) -> dict[str, Any]:
    """Steady-state and cold ``epoch_metrics`` times, peak memory and the metrics themselves."""
    dev = device_of(backend)

    def cold() -> dict[str, float]:
        return score.epoch_metrics(cur, prev, device=dev)

    def sync() -> None:
        if dev is not None and dev.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    if dev is not None:
        cold()  # warm-up: CUDA context, kernels
    t_cold, _ = timed(cold, repeat)
    # the previous run was scored: its kNN kept
    scored = dataclasses.replace(prev, knn=score.score_run(prev, None, device=dev).knn)
    t_metrics, metrics = timed(lambda: score.epoch_metrics(cur, scored, device=dev), repeat)
    sync()
    if dev is not None and dev.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        cold()
        peak: float | None = torch.cuda.max_memory_allocated() / 2**20
    elif dev is None:
        tracemalloc.start()
        cold()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        peak = None
    return dict(metrics=t_metrics, cold=t_cold, peak=peak, values=metrics)


def run(sizes: list[int], dims: list[int], backends: list[str], repeat: int,
        with_tsne: bool) -> None:
    head = (f"{'N':>6} {'D':>4} {'backend':>10} {'metrics s':>9} {'cold s':>7} "
            f"{'peak MB':>8} {'vs numpy':>8}")
    if with_tsne:
        head += f" {'tsne s':>7} {'warm s':>7} {'/warm':>6}"
    print(head, flush=True)
    for n in sizes:
        for dim in dims:
            prev, cur, times = epochs(n, dim, with_tsne)
            base: dict[str, Any] | None = None
            for backend in backends:
                r = measure(prev, cur, backend, repeat)
                base = base or r
                peak = f"{r['peak']:8.0f}" if r["peak"] is not None else f"{'n/a':>8}"
                line = (f"{n:>6} {dim:>4} {backend:>10} {r['metrics']:9.2f} {r['cold']:7.2f} "
                        f"{peak} {r['metrics'] / base['metrics']:7.2f}x")
                if with_tsne:
                    line += (f" {times['tsne']:7.2f} {times['tsne_warm']:7.2f} "
                             f"{r['metrics'] / times['tsne_warm']:6.1%}")
                print(line, flush=True)
                diff = max(abs(v - base["values"][k]) for k, v in r["values"].items())
                print("       " + "  ".join(f"{k}={v:.4f}" for k, v in r["values"].items())
                      + (f"  (max |diff| to numpy {diff:.1e})" if r is not base else ""),
                      flush=True)
    print("metrics = epoch_metrics with 2 layouts + previous epoch (previous kNN memoised); "
          "cold = nothing memoised; vs numpy = metrics time / numpy's; peak MB = tracemalloc "
          "(numpy) or CUDA allocator peak of a cold epoch_metrics; trustworthiness on a fixed "
          "5,000-row subset above 5,000 points.")


def main() -> None:
    logging.getLogger("openTSNE").setLevel(logging.ERROR)  # warm-start init-scale warning
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000, 20_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[256])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch:cpu"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tsne", action="store_true", help="t-SNE layouts, timed next to metrics")
    args = ap.parse_args()
    score.trustworthiness(np.eye(8), np.eye(8)[:, :2])  # imports outside the timings
    run(args.sizes, args.dims, args.backends, args.repeat, args.tsne)


if __name__ == "__main__":
    main()
