"""t-SNE implementations, warm starts and PCA-to-50, measured in one run.

Data: sklearn digits (64-d) resampled to N rows plus Gaussian noise; the "next epoch" is the same
rows with more noise. Quality = kNN preservation (fraction of each point's 10 nearest
neighbours in X that are also among its 10 nearest in the layout). Stability = Procrustes
disparity to the previous layout (0 = same shape).

    .venv/bin/python benchmarks/bench_tsne.py            # N = 1000 2000 5000, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_tsne.py --sizes 1000 --pca-n 1000
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from lightning_embproj import reduce as R
from lightning_embproj.align import disparity

logging.getLogger("openTSNE").setLevel(logging.ERROR)


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
    saved = R._TSNE_PCA_DIMS
    R._TSNE_PCA_DIMS = 10**9  # switch the PCA step off
    try:
        Yr, tr = timed(lambda: R.tsne(Xh, 2, n_jobs=n_jobs))
    finally:
        R._TSNE_PCA_DIMS = saved
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
    a = p.parse_args()
    t = time.perf_counter()
    bench_sizes(a.sizes, a.n_jobs)
    bench_pca(a.pca_n, a.pca_dim, a.n_jobs)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
