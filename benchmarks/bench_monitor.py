"""Cost of the ``monitor`` metrics on the training thread (CPU), against the 20 ms budget.

Times :func:`lightning_embproj.metrics.monitor.monitor_metrics` (all four metrics: one chunked
Gram pass for knn_accuracy / silhouette / uniformity, a D x D eigendecomposition for RankMe)
and RankMe alone, per size, best of ``--repeat`` runs, with torch's default thread count and
with one thread. The floor beside them, measured in the same run: one ``X @ X.T`` matmul (the
kNN vote needs every row of it), so a figure can be read against this machine's BLAS.

    python benchmarks/bench_monitor.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from lightning_embproj.metrics.monitor import MONITOR_METRICS, monitor_metrics

BUDGET_MS = 20.0
SIZES = [(500, 64), (500, 256), (2000, 64), (2000, 256), (8000, 64), (8000, 256)]


def best_ms(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    print(f"budget {BUDGET_MS:.0f} ms; torch {torch.__version__}, default threads "
          f"{default_threads}")
    print("| N x D | threads | all four (ms) | x budget | X X^T alone (ms) | x X X^T | "
          "rankme only (ms) |")
    print("|---|---|---|---|---|---|---|")
    for n, d in SIZES:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, n)
        X = torch.from_numpy((rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(10, d))[y])
                             .astype(np.float32))
        labels = torch.from_numpy(y)
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            full = best_ms(partial(monitor_metrics, X, MONITOR_METRICS, labels), args.repeat)
            rank = best_ms(partial(monitor_metrics, X, ["rankme"]), args.repeat)
            gram = best_ms(partial(torch.mm, X, X.T), args.repeat)
            print(f"| {n:,} x {d} | {threads} | {full:.1f} | {full / BUDGET_MS:.2f} | "
                  f"{gram:.1f} | {full / gram:.1f} | {rank:.1f} |", flush=True)
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
