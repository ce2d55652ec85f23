"""Reduction speed in one run: PCA solvers, per-run PCA + t-SNE time, Barnes-Hut vs FFT.

    nice .venv/bin/python benchmarks/bench_reduce.py        # ~8 min on 2 quiet cores
    nice .venv/bin/python benchmarks/bench_reduce.py --parts pca

Parts:

- ``pca``: the previous ``pca`` (randomized SVD above 1,024 dims, eigh of the D x D covariance
  of a float64 centred copy below) against today's (solver by shape, see ``reduce.pca``), best
  of ``--repeats`` calls, and the largest difference between their layouts.
- ``run``: what one validation run of ``reducers=["pca", "tsne"]`` costs in the background, as
  the projector does it: ``reduce_layouts`` + ``epoch_metrics`` (one PCA for both reducers,
  t-SNE, the metrics pass) for the first run (cold t-SNE) and the next (``tsne_next``), then
  ``evolve`` (clusters, lineage, health), with ``n_jobs`` 1 and 2. Data: digits in ``D`` dims
  (orthonormal map) + noise; the next run adds noise (sigma 0.5).
- ``methods``: openTSNE's Barnes-Hut vs FFT gradient on the warm schedule (cold as well up to
  ``--cold-up-to`` rows); the full cold + warm grid is ``bench_tsne.py --parts methods``.

Times: wall seconds, process CPU seconds in brackets (on a shared machine the CPU time of an
``n_jobs=1`` run is the steadier number; ``n_jobs=2`` shows in wall time only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from bench_tsne import Knn, cpu_timed, forced_method, make_wide

from lightning_embproj.evolve.set_chain import EvolveSettings, SetChain, evolve
from lightning_embproj.metrics.scores import epoch_metrics
from lightning_embproj.reduce import dispatch as R
from lightning_embproj.reduce import pca as P
from lightning_embproj.reduce.project import ReduceSettings, reduce_layouts
from lightning_embproj.results import EpochSample, Projection

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
                solver = P._pca_solver(n, d, k, "auto")
                print(f"{n:>6} x {d:<5} {k:3d} {blas:4d} | {t_old:7.3f} ({c_old:6.3f}) | "
                      f"{t_new:7.3f} ({c_new:6.3f}) {solver:>10} | {t_old / t_new:7.1f}x "
                      f"{diff:9.1e}", flush=True)
    print("blas: numpy/scipy BLAS threads (-1: as configured; reduce() uses n_jobs). max|diff|: "
          "largest difference of the\ntwo layouts over the largest |score| (randomized SVD is "
          "approximate in the trailing components)\n")


def part_run(args: argparse.Namespace) -> None:
    print("Per-run background work of reducers [pca, tsne], as the projector runs it: "
          "reduce_layouts + epoch_metrics (one PCA for both,\nt-SNE, metrics) + evolve "
          "(clusters, lineage, "
          "health); wall s (CPU s), t-SNE kNN@10")
    print(f"{'N x D':>13} {'jobs':>4} | {'first run':>15} {'t-SNE':>6} {'knn':>5} | "
          f"{'next run':>15} {'t-SNE':>6} {'knn':>5} | {'evolve':>13}")
    settings = ReduceSettings(["pca", "tsne"])
    for n, d in args.run_shapes:
        X = make_wide(n, d).astype(np.float32)
        X2 = (X + np.random.default_rng(7).normal(0.0, 0.5, X.shape)).astype(np.float32)
        q1, q2 = Knn(X), Knn(X2)
        labels = np.arange(n) % 10
        keys, ids = np.arange(n, dtype=np.int64), list(range(n))
        s1 = EpochSample("emb", keys, ids, X, labels)
        s2 = EpochSample("emb", keys, ids, X2, labels)
        for jobs in args.jobs:
            with timed_tsne() as t_tsne:
                first, t1, c1 = cpu_timed(
                    lambda: reduced(s1, 0, None, settings, jobs)  # noqa: B023
                )
                nxt, t2, c2 = cpu_timed(
                    lambda: reduced(s2, 1, first, settings, jobs)  # noqa: B023
                )
            _, te, ce = cpu_timed(
                lambda: evolve(nxt, first, SetChain(), EvolveSettings())  # noqa: B023
            )
            print(f"{n:>6} x {d:<5} {jobs:4d} | {t1:6.1f} ({c1:6.1f}) {t_tsne[0]:6.1f} "
                  f"{q1(first.layouts['tsne']):5.3f} | {t2:6.1f} ({c2:6.1f}) {t_tsne[1]:6.1f} "
                  f"{q2(nxt.layouts['tsne']):5.3f} | {te:5.1f} ({ce:5.1f})", flush=True)
    print("first run: cold t-SNE; next run: dynamic.tsne_next from the first (data + noise "
          "sigma 0.5);\njobs: t-SNE threads (1 while training runs, every core after it)\n")


def reduced(sample: EpochSample, epoch: int, previous: Projection | None,
            settings: ReduceSettings, jobs: int) -> Projection:
    """What the reduce and score stages do for one run (the layouts, then the metrics)."""
    p = Projection(sample, epoch, epoch, reduce_layouts(sample, previous, settings, n_jobs=jobs))
    epoch_metrics(p, previous)
    return p


@contextlib.contextmanager
def timed_tsne() -> Iterator[list[float]]:
    """Wall seconds of each t-SNE call made inside the block (cold ``reduce`` or
    ``tsne_next``), in call order."""
    import lightning_embproj.reduce.project as P

    times: list[float] = []
    real_reduce, real_next = P.reduce, P.tsne_next

    def timing(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            out = fn(*a, **k)
            if fn is real_next or a[0] == "tsne":
                times.append(time.perf_counter() - t)
            return out
        return run

    P.reduce, P.tsne_next = timing(real_reduce), timing(real_next)
    try:
        yield times
    finally:
        P.reduce, P.tsne_next = real_reduce, real_next


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
