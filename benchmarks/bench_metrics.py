"""Cost of scoring an epoch next to the t-SNE run it scores, both measured in this run.

For each size, 10 Gaussian classes in D dims (float32, like the buffer) and a "previous epoch"
(the same points, slightly moved). Times:

- ``tsne``: openTSNE, cold (PCA init, 250 early-exaggeration + 500 iterations, PCA to 50 dims
  first, ``n_jobs=1``: as in ``reduce.py``); ``tsne_warm``: 250 iterations from the previous
  layout, no exaggeration (what the callback runs from the second epoch on).
- ``metrics``: ``epoch_metrics`` with two layouts (PCA, t-SNE) and the previous epoch, the
  previous epoch's kNN already memoised (as after it was scored: the steady state);
  ``metrics_cold``: nothing memoised (the first scored epoch after a start, one more kNN pass).
- ``movers``: ``movers`` right after ``epoch_metrics``.

Each metrics timing is the best of ``--repeat`` runs; the machine may be shared, so read the
ratios rather than the seconds.

Usage:
    .venv/bin/python benchmarks/bench_metrics.py              # 2,000 and 10,000 x 64 and 256
    .venv/bin/python benchmarks/bench_metrics.py --sizes 2000 --dims 64
"""

from __future__ import annotations

import argparse
import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_embproj import neighbours, score
from lightning_embproj.types import EpochSample, Projection


def data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    centres = rng.normal(size=(10, dim)) * 1.5
    X0 = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    X1 = (X0 + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)
    return X0, X1, y


def pca(X: np.ndarray, dims: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(dims, random_state=0).fit_transform(X).astype(np.float64)


def tsne(X: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
    import openTSNE

    Xr = pca(X, 50) if X.shape[1] > 50 else X
    method = "fft" if X.shape[0] >= 10_000 else "bh"
    common: dict[str, Any] = dict(negative_gradient_method=method, n_jobs=1, random_state=0)
    if init is None:
        start = pca(Xr, 2)
        model = openTSNE.TSNE(initialization=start / start[:, 0].std() * 1e-4, **common)
    else:
        model = openTSNE.TSNE(initialization=init, early_exaggeration_iter=0, n_iter=250, **common)
    return np.asarray(model.fit(Xr), dtype=np.float64)


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


def run(n: int, dim: int, repeat: int) -> dict[str, float]:
    X0, X1, y = data(n, dim)
    t_cold, lay0 = timed(lambda: tsne(X0))
    t_warm, lay1 = timed(lambda: tsne(X1, init=lay0))
    prev = epoch(X0, y, {"pca": pca(X0, 2), "tsne": lay0}, 0)
    cur = epoch(X1, y, {"pca": pca(X1, 2), "tsne": lay1}, 1)

    def cold() -> dict[str, float]:
        neighbours._knn_cache.clear()
        return score.epoch_metrics(cur, prev)

    t_metrics_cold, _ = timed(cold, repeat)
    score.epoch_metrics(prev, None)  # the previous epoch was scored: its kNN is memoised
    t_metrics, metrics = timed(lambda: score.epoch_metrics(cur, prev), repeat)
    t_movers, _ = timed(lambda: score.movers(cur, prev), repeat)
    tracemalloc.start()
    cold()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return dict(
        tsne=t_cold, tsne_warm=t_warm, metrics=t_metrics, metrics_cold=t_metrics_cold,
        movers=t_movers, peak_mb=peak, **{f"m:{k}": v for k, v in metrics.items()},
    )


def main() -> None:
    logging.getLogger("openTSNE").setLevel(logging.ERROR)  # warm-start init-scale warning
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    score.trustworthiness(np.eye(8), np.eye(8)[:, :2])  # imports outside the timings
    head = (f"{'N':>6} {'D':>4} {'tsne s':>7} {'warm s':>7} {'metrics s':>9} "
            f"{'cold s':>7} {'movers s':>8} {'/tsne':>6} {'/warm':>6} {'peak MB':>8}")
    print(head)
    for n in args.sizes:
        for dim in args.dims:
            r = run(n, dim, args.repeat)
            print(f"{n:>6} {dim:>4} {r['tsne']:7.2f} {r['tsne_warm']:7.2f} {r['metrics']:9.2f} "
                  f"{r['metrics_cold']:7.2f} {r['movers']:8.3f} {r['metrics'] / r['tsne']:6.1%} "
                  f"{r['metrics'] / r['tsne_warm']:6.1%} {r['peak_mb']:8.0f}", flush=True)
            print("       " + "  ".join(f"{k[2:]}={v:.3f}" for k, v in r.items() if k[:2] == "m:"))
    print("metrics = epoch_metrics with 2 layouts + previous epoch (previous kNN memoised); "
          "cold = nothing memoised; /tsne, /warm = metrics as a share of cold / warm t-SNE; "
          "peak MB = tracemalloc peak of a cold epoch_metrics (sklearn's trustworthiness alone "
          "allocates 3 N x N arrays: 2.4 GB at 10,000).")


if __name__ == "__main__":
    main()
