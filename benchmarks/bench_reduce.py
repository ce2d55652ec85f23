"""Reduction speed in one run: PCA solvers, per-run PCA + t-SNE time, Barnes-Hut vs FFT.

    nice .venv/bin/python benchmarks/bench_reduce.py        # ~8 min on 2 quiet cores
    nice .venv/bin/python benchmarks/bench_reduce.py --parts pca

Parts:

- ``pca``: the previous ``pca`` (randomized SVD above 1,024 dims, eigh of the D x D covariance
  of a float64 centred copy below) against today's (solver by shape, see ``reduce.pca``), best
  of ``--repeats`` calls, and the largest difference between their layouts.
- ``run``: what one epoch of ``reducers=["pca", "tsne"]`` costs through :func:`prepare` (one
  PCA for both): the PCA reducer, t-SNE cold, then the next epoch warm-started from it, with
  ``n_jobs`` 1 and 2. Data: digits in ``D`` dims (orthonormal map) + noise; the next epoch adds
  noise (sigma 0.5).
- ``methods``: openTSNE's Barnes-Hut vs FFT gradient on the warm schedule (cold as well up to
  ``--cold-up-to`` rows); the full cold + warm grid is ``bench_tsne.py --parts methods``.

Times: wall seconds, process CPU seconds in brackets (on a shared machine the CPU time of an
``n_jobs=1`` run is the steadier number; ``n_jobs=2`` shows in wall time only).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bench_tsne import Knn, cpu_timed, forced_method, make_wide

from lightning_embproj import reduce as R

logging.getLogger("openTSNE").setLevel(logging.ERROR)


def old_pca(X: np.ndarray, n_components: int) -> np.ndarray:
    """``reduce.pca`` as it was before the solver choice (commit ceba092), for comparison."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    out = np.zeros((n, n_components))
    k = min(n_components, d)
    Xc = X - X.mean(axis=0)
    total = float(np.einsum("ij,ij->", Xc, Xc))
    if n < 2 or k == 0 or total <= 0.0:
        return out
    if d <= 1024:
        evals, evecs = np.linalg.eigh(Xc.T @ Xc)
        var = evals[::-1][:k]
        comps = evecs[:, ::-1][:, :k].T
    else:
        from sklearn.utils.extmath import randomized_svd

        _, s, comps = randomized_svd(Xc, k, n_oversamples=20, n_iter=6, random_state=0)
        var = s**2
    rows = np.arange(comps.shape[0])
    signs = np.sign(comps[rows, np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    scores = Xc @ comps.T
    scores[:, var <= 1e-12 * total] = 0.0
    out[:, : scores.shape[1]] = scores
    return out


def best(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """(result, best wall s, CPU s of that call) over ``repeats`` calls."""
    runs = [cpu_timed(fn) for _ in range(repeats)]
    out, wall, cpu = min(runs, key=lambda r: r[1])
    return out, wall, cpu


def part_pca(args: argparse.Namespace) -> None:
    print("PCA: previous code vs solver by shape; best wall s (CPU s); max |diff| of layouts")
    print(f"{'N x D':>13} {'k':>3} {'blas':>4} | {'previous':>16} | {'now':>16} {'solver':>10} "
          f"| {'speed-up':>8} {'max|diff|':>9}")
    shapes = [(300, 4096), (1000, 4096), (2000, 4096), (4000, 128), (20_000, 256),
              (20_000, 1024), (5000, 4096)]
    for n, d in shapes:
        X = make_wide(n, d).astype(np.float32)
        reps = args.repeats if n * d <= 2_000 * 4096 else 1
        for k in (2, 50):
            for blas in args.blas_threads:
                with R._blas_threads(blas):
                    old, t_old, c_old = best(lambda: old_pca(X, k), reps)  # noqa: B023
                    new, t_new, c_new = best(lambda: R.pca(X, k), reps)  # noqa: B023
                diff = float(np.abs(old - new).max() / max(np.abs(old).max(), 1e-12))
                solver = R._pca_solver(n, d, k, "auto")
                print(f"{n:>6} x {d:<5} {k:3d} {blas:4d} | {t_old:7.3f} ({c_old:6.3f}) | "
                      f"{t_new:7.3f} ({c_new:6.3f}) {solver:>10} | {t_old / t_new:7.1f}x "
                      f"{diff:9.1e}", flush=True)
    print("blas: numpy/scipy BLAS threads (-1: as configured; reduce() uses n_jobs). max|diff|: "
          "largest difference of the\ntwo layouts over the largest |score| (randomized SVD is "
          "approximate in the trailing components)\n")


def part_run(args: argparse.Namespace) -> None:
    print("One epoch of reducers [pca, tsne] through prepare(); wall s (CPU s), kNN@10")
    print(f"{'N x D':>13} {'jobs':>4} | {'pca':>14} | {'t-SNE cold':>15} {'knn':>5} | "
          f"{'t-SNE warm':>15} {'knn':>5} | {'run cold':>8} {'run warm':>8}")
    for n, d in args.run_shapes:
        X = make_wide(n, d).astype(np.float32)
        X2 = (X + np.random.default_rng(7).normal(0.0, 0.5, X.shape)).astype(np.float32)
        q1, q2 = Knn(X), Knn(X2)
        keys = np.arange(n)
        for jobs in args.jobs:
            p1 = R.prepare(X, ["pca", "tsne"])
            _, tp, cp = cpu_timed(lambda: R.reduce("pca", p1, 2))  # noqa: B023
            cold, tc, cc = cpu_timed(lambda: R.reduce("tsne", p1, 2, n_jobs=jobs))  # noqa: B023
            p2 = R.prepare(X2, ["pca", "tsne"])
            _, tp2, _ = cpu_timed(lambda: R.reduce("pca", p2, 2))  # noqa: B023
            init = R.warm_init(keys, cold, keys, p2)
            warm, tw, cw = cpu_timed(
                lambda: R.reduce("tsne", p2, 2, init=init, n_jobs=jobs)  # noqa: B023
            )
            print(f"{n:>6} x {d:<5} {jobs:4d} | {tp:6.2f} ({cp:5.2f}) | {tc:6.1f} ({cc:6.1f}) "
                  f"{q1(cold):5.3f} | {tw:6.1f} ({cw:6.1f}) {q2(warm):5.3f} | "
                  f"{tp + tc:8.1f} {tp2 + tw:8.1f}", flush=True)
    print("run cold = PCA reducer + cold t-SNE (the PCA-to-50 is shared); run warm = the next "
          "epoch\n")


def part_methods(args: argparse.Namespace) -> None:
    print(f"t-SNE gradient, 2-D, D={args.method_dim}, n_jobs=1: wall s (CPU s), kNN@10")
    print(f"{'N':>6} | {'bh cold':>14} {'knn':>5} | {'fft cold':>14} {'knn':>5} | "
          f"{'bh warm':>14} {'knn':>5} | {'fft warm':>14} {'knn':>5} | {'chosen':>7}")
    for n in args.method_sizes:
        X = make_wide(n, args.method_dim).astype(np.float32)
        X2 = (X + np.random.default_rng(7).normal(0.0, 0.5, X.shape)).astype(np.float32)
        q2 = Knn(X2)
        p2 = R.prepare(X2, ["tsne"])
        prev = R.reduce("tsne", X, 2)
        cells: dict[str, str] = {}
        for method in ("bh", "fft"):
            with forced_method(method):
                if n <= args.cold_up_to:
                    Y, t, c = cpu_timed(lambda: R.reduce("tsne", p2, 2))  # noqa: B023
                    cells[method + " cold"] = f"{t:6.1f} ({c:5.1f}) {q2(Y):5.3f}"
                Y, t, c = cpu_timed(lambda: R.reduce("tsne", p2, 2, init=prev))  # noqa: B023
                cells[method + " warm"] = f"{t:6.1f} ({c:5.1f}) {q2(Y):5.3f}"
        row = " | ".join(cells.get(f"{m} {s}", f"{'-':>20}")
                         for s in ("cold", "warm") for m in ("bh", "fft"))
        chosen = f"{R.tsne_gradient_method(n, 2)}/{R.tsne_gradient_method(n, 2, warm=True)}"
        print(f"{n:6d} | {row} | {chosen:>7}", flush=True)
    print("chosen: the method reduce.tsne uses for a cold run / a warm start\n")


PARTS = {"pca": part_pca, "run": part_run, "methods": part_methods}


def shape(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(n), int(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--blas-threads", type=int, nargs="+", default=[1, -1])
    p.add_argument("--run-shapes", type=shape, nargs="+", default=[(4000, 128), (20_000, 256)])
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--method-sizes", type=int, nargs="+", default=[2000, 10_000])
    p.add_argument("--method-dim", type=int, default=128)
    p.add_argument("--cold-up-to", type=int, default=2000)
    args = p.parse_args()
    t = time.perf_counter()
    for name in args.parts:
        PARTS[name](args)
    print(f"total {time.perf_counter() - t:.0f} s; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
