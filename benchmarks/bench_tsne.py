"""t-SNE implementations, warm starts and PCA-to-50, measured in one run.

Data: sklearn digits (64-d) resampled to N rows plus Gaussian noise; the "next epoch" is the same
rows with more noise. Quality = kNN preservation (fraction of each point's 10 nearest
neighbours in X that are also among its 10 nearest in the layout). Stability = Procrustes
disparity to the previous layout (0 = same shape).

    .venv/bin/python benchmarks/bench_tsne.py            # N = 1000 2000 5000, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_tsne.py --sizes 1000 --pca-n 1000
    # Barnes-Hut vs FFT gradient, cold and warm, at 2k-20k x 128-d (~15 CPU min), one BLAS
    # thread as during training (reduce() limits BLAS to n_jobs):
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tsne.py --parts methods \
        --method-sizes 2000 4000 10000 20000 --method-dim 128
    # warm iterations from the change hint (kNN overlap with the previous epoch), N=2000:
    .venv/bin/python benchmarks/bench_tsne.py --parts change

Times are wall seconds with the process CPU seconds next to them: on a shared machine the CPU
time of an ``n_jobs=1`` run is the steadier number.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from scipy.spatial import procrustes
from sklearn.datasets import load_digits
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from lightning_embproj.metrics.scores import neighbourhood_overlap
from lightning_embproj.reduce import dispatch as R
from lightning_embproj.reduce import tsne as T

logging.getLogger("openTSNE").setLevel(logging.ERROR)


def disparity(a: np.ndarray, b: np.ndarray) -> float:
    """Procrustes disparity of two matched layouts (``scipy.spatial.procrustes``): 0 = same
    shape, 1 = unrelated."""
    return float(procrustes(a, b)[2])


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits resampled to ``n`` rows + noise, and a slightly perturbed copy (next epoch)."""
    X, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    X = X[rng.integers(0, len(X), n)] + rng.normal(0.0, 1.0, (n, X.shape[1]))
    return X, X + rng.normal(0.0, 1.0, X.shape)


def knn_preservation(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    a = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(return_distance=False)[:, 1:]
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return float((both[:, 1:] == both[:, :-1]).sum() / (k * len(X)))


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cpu_timed(fn):  # type: ignore[no-untyped-def]
    """(result, wall seconds, process CPU seconds)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def make_wide(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Digits resampled to ``n`` rows, embedded in ``dim`` dims (orthonormal map) + noise."""
    X, _ = make_data(n, seed)
    rng = np.random.default_rng(seed + 1)
    basis = np.linalg.qr(rng.normal(size=(dim, X.shape[1])))[0]  # (dim, 64) orthonormal
    return X @ basis.T + rng.normal(0.0, 1.0, (n, dim))


class Knn:
    """kNN preservation against one X, its neighbours computed once."""

    def __init__(self, X: np.ndarray, k: int = 10) -> None:
        self.k = k
        self.a = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(return_distance=False)

    def __call__(self, Y: np.ndarray) -> float:
        b = NearestNeighbors(n_neighbors=self.k + 1).fit(Y).kneighbors(return_distance=False)
        both = np.sort(np.concatenate([self.a[:, 1:], b[:, 1:]], axis=1), axis=1)
        return float((both[:, 1:] == both[:, :-1]).sum() / (self.k * len(Y)))


def forced_method(method: str):  # type: ignore[no-untyped-def]
    """Context: make R.tsne use ``method`` ("bh" or "fft") whatever the size."""
    import contextlib

    @contextlib.contextmanager
    def ctx():  # type: ignore[no-untyped-def]
        saved = T._TSNE_FFT_MIN_ROWS, T._TSNE_WARM_BH_MAX_ROWS
        fft = method == "fft"
        T._TSNE_FFT_MIN_ROWS, T._TSNE_WARM_BH_MAX_ROWS = (0, -1) if fft else (10**12, 10**12)
        try:
            yield
        finally:
            T._TSNE_FFT_MIN_ROWS, T._TSNE_WARM_BH_MAX_ROWS = saved

    return ctx()


def bench_methods(sizes: list[int], dim: int, n_jobs: int, warm_only_above: int) -> None:
    """Barnes-Hut vs FFT negative gradient, cold and warm, with kNN preservation."""
    print(f"\nt-SNE gradient, 2-D, D={dim}, n_jobs={n_jobs}: wall s (CPU s) and kNN@10")
    print(f"{'N':>6} | {'method':>6} | {'cold':>14} {'knn':>5} | {'warm':>14} {'knn':>5}")
    for n in sizes:
        X = make_wide(n, dim)
        X2 = X + np.random.default_rng(7).normal(0.0, 0.5, X.shape)
        q2 = Knn(X2)
        base = R.tsne(X, 2, n_jobs=n_jobs)  # the previous epoch's layout, default method
        for method in ("bh", "fft"):
            with forced_method(method):
                cold = "-"
                if n <= warm_only_above:
                    Yc, tw, tc = cpu_timed(lambda: R.tsne(X2, 2, n_jobs=n_jobs))  # noqa: B023
                    cold = f"{tw:6.1f} ({tc:5.1f}) {q2(Yc):5.3f}"
                Yw, ww, wc = cpu_timed(
                    lambda: R.tsne(X2, 2, init=base, n_jobs=n_jobs)  # noqa: B023
                )
            print(f"{n:6d} | {method:>6} | {cold:>20} | {ww:6.1f} ({wc:5.1f}) {q2(Yw):5.3f}",
                  flush=True)


def bench_change(n: int, dim: int, noises: list[float], n_jobs: int) -> None:
    """Warm start with the change hint vs today's 250 iterations, at several amounts of change."""
    X = make_wide(n, dim)
    prev = R.tsne(X, 2, n_jobs=n_jobs)
    print(f"\nwarm start with the change hint, N={n}, D={dim}: change = mean kNN@10 overlap "
          "X -> X2;\nkNN@10 preservation of X2 in the layout, disparity to the previous layout")
    print(f"{'noise':>5} {'change':>6} | {'250 it':>6} {'knn':>5} {'disp':>6} | "
          f"{'iters':>5} {'time':>6} {'knn':>5} {'disp':>6} | {'dknn':>6}")
    for sigma in noises:
        X2 = X + np.random.default_rng(11).normal(0.0, sigma, X.shape)
        change = float(np.mean(neighbourhood_overlap(X, X2, k=10)))
        q2 = Knn(X2)
        Y0, t0 = timed(lambda: R.tsne(X2, 2, init=prev, n_jobs=n_jobs))  # noqa: B023
        Y1, t1 = timed(
            lambda: R.tsne(X2, 2, init=prev, n_jobs=n_jobs, change=change)  # noqa: B023
        )
        k0, k1 = q2(Y0), q2(Y1)
        print(f"{sigma:5.2f} {change:6.3f} | {t0:6.1f} {k0:5.3f} {disparity(prev, Y0):6.4f} | "
              f"{R.warm_iterations(change):5d} {t1:6.1f} {k1:5.3f} {disparity(prev, Y1):6.4f} | "
              f"{k1 - k0:+6.3f}", flush=True)


def sklearn_tsne(X: np.ndarray, n_jobs: int) -> np.ndarray:
    # Same schedule as ours: 250 exaggerated iterations + 500, PCA init, Barnes-Hut.
    return TSNE(2, init="pca", max_iter=750, random_state=0, n_jobs=n_jobs).fit_transform(X)


def bench_sizes(sizes: list[int], n_jobs: int) -> None:
    print(f"t-SNE, 2-D, n_jobs={n_jobs}; times in seconds")
    head = (
        f"{'N':>5} | {'sklearn':>7} {'knn':>5} | {'oTSNE':>6} {'knn':>5} | "
        f"{'warm':>5} {'knn':>5} {'disp':>6} | {'cold2':>5} {'knn':>5} {'disp':>6} | "
        f"{'sk/oT':>5} {'cold/warm':>9} {'disp c/w':>8}"
    )
    print(head)
    print("-" * len(head))
    for n in sizes:
        X, X2 = make_data(n)
        Ys, ts = timed(lambda: sklearn_tsne(X, n_jobs))  # noqa: B023
        Yc, tc = timed(lambda: R.tsne(X, 2, n_jobs=n_jobs))  # noqa: B023
        Yw, tw = timed(lambda: R.tsne(X2, 2, init=Yc, n_jobs=n_jobs))  # noqa: B023
        Yc2, tc2 = timed(lambda: R.tsne(X2, 2, n_jobs=n_jobs))  # noqa: B023
        dw, dc = disparity(Yc, Yw), disparity(Yc, Yc2)
        print(
            f"{n:5d} | {ts:7.1f} {knn_preservation(X, Ys):5.3f} | "
            f"{tc:6.1f} {knn_preservation(X, Yc):5.3f} | "
            f"{tw:5.1f} {knn_preservation(X2, Yw):5.3f} {dw:6.4f} | "
            f"{tc2:5.1f} {knn_preservation(X2, Yc2):5.3f} {dc:6.4f} | "
            f"{ts / tc:5.2f} {tc2 / tw:9.2f} {dc / max(dw, 1e-12):8.1f}",
            flush=True,
        )
    print(
        "sklearn/oTSNE: sklearn TSNE (max_iter=750) vs our openTSNE cold run; warm: openTSNE on\n"
        "the perturbed copy from the cold layout, no early exaggeration, 250 iterations;\n"
        "cold2: a fresh cold run on the perturbed copy; disp: disparity to the cold layout."
    )


def bench_pca(n: int, dim: int, n_jobs: int) -> None:
    X, _ = make_data(n)
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(dim, X.shape[1])))[0]  # (dim, 64) orthonormal
    Xh = X @ basis.T + rng.normal(0.0, 1.0, (n, dim))
    Yp, tp = timed(lambda: R.tsne(Xh, 2, n_jobs=n_jobs))
    saved = T.TSNE_PCA_DIMS
    T.TSNE_PCA_DIMS = 10**9  # switch the PCA step off
    try:
        Yr, tr = timed(lambda: R.tsne(Xh, 2, n_jobs=n_jobs))
    finally:
        T.TSNE_PCA_DIMS = saved
    print(f"\nPCA to 50 before t-SNE, N={n}, D={dim} (knn preservation against the {dim}-d X)")
    print(f"  with PCA-50 : {tp:6.1f} s  knn {knn_preservation(Xh, Yp):.3f}")
    print(f"  raw {dim}-d  : {tr:6.1f} s  knn {knn_preservation(Xh, Yr):.3f}")
    print(f"  speed-up    : {tr / tp:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    p.add_argument("--pca-n", type=int, default=2000)
    p.add_argument("--pca-dim", type=int, default=256)
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--parts", nargs="+", default=["sizes", "pca"],
                   choices=["sizes", "pca", "methods", "change"])
    p.add_argument("--method-sizes", type=int, nargs="+", default=[2000, 4000, 10000, 20000])
    p.add_argument("--method-dim", type=int, default=256)
    p.add_argument("--cold-up-to", type=int, default=20000,
                   help="methods: cold runs only up to this N (warm for all)")
    p.add_argument("--change-n", type=int, default=2000)
    p.add_argument("--noises", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    a = p.parse_args()
    t = time.perf_counter()
    if "sizes" in a.parts:
        bench_sizes(a.sizes, a.n_jobs)
    if "pca" in a.parts:
        bench_pca(a.pca_n, a.pca_dim, a.n_jobs)
    if "methods" in a.parts:
        bench_methods(a.method_sizes, a.method_dim, a.n_jobs, a.cold_up_to)
    if "change" in a.parts:
        bench_change(a.change_n, a.method_dim, a.noises, a.n_jobs)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
