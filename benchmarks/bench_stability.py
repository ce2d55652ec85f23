"""Temporal stability vs quality of t-SNE layouts across training, in one run.

A small digits MLP (64-32-16, Adam 3e-3, batch 64; sklearn's bundled digits, no download)
trains for 10 epochs; after each epoch the 16-d embeddings of 600 held-out points are laid out
by each method, one run at a time (online), except the global t-SNE (offline reference).

Columns:
- stability: Spearman correlation between each point's step length in the embedding space and
  in the layout, pooled over points and consecutive epochs (Vernier et al., EuroVis 2020;
  ``stability.StabilityPool``).
- np@1%: neighbourhood preservation at k = 1% of N (fraction of each point's k nearest
  neighbours in the embedding space also among its k nearest in the layout), mean over epochs.
- disp: mean displacement per epoch (``metrics.motion.mean_displacement``: mean step / RMS radius).
- frozen: displacement when the last epoch's embeddings come again unchanged (a frozen model).
- s/run: process CPU seconds per run after the first (``n_jobs=1``; steadier than wall time
  on a shared machine).

    nice .venv/bin/python benchmarks/bench_stability.py             # ~2-3 min on 2 cores
    nice .venv/bin/python benchmarks/bench_stability.py --seeds 0 1 2 --no-global
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors
from torch import nn

from lightning_embproj.metrics.motion import mean_displacement
from lightning_embproj.metrics.stability import StabilityPool
from lightning_embproj.reduce import dispatch as R
from lightning_embproj.reduce.align import procrustes_align
from lightning_embproj.reduce.tsne_online import tsne_next

logging.getLogger("openTSNE").setLevel(logging.ERROR)

Previous = tuple[np.ndarray, np.ndarray, np.ndarray] | None
Method = Callable[[np.ndarray, np.ndarray, Previous], np.ndarray]


def digits_runs(epochs: int = 10, n_points: int = 600, seed: int = 0) -> np.ndarray:
    """(epochs, n_points, 16) embeddings of held-out digits after each training epoch."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    n_train = len(x) - n_points
    enc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    head = nn.Linear(16, 10)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=gen)
        for s in range(0, n_train, 64):
            b = perm[s : s + 64]
            loss = nn.functional.cross_entropy(head(enc(x[b])), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(enc(x[n_train:]).numpy().astype(np.float64))
    return np.stack(out)


def np_at(X: np.ndarray, L: np.ndarray, frac: float = 0.01) -> float:
    k = max(1, round(frac * len(X)))
    a = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(L).kneighbors(return_distance=False)[:, 1:]
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return float((both[:, 1:] == both[:, :-1]).sum() / (k * len(X)))


def independent(X: np.ndarray, keys: np.ndarray, prev: Previous) -> np.ndarray:
    L = R.tsne(X, 2, random_state=0)
    return L if prev is None else procrustes_align(L, keys, prev[2], prev[0])


def warm(X: np.ndarray, keys: np.ndarray, prev: Previous) -> np.ndarray:
    """Today's pipeline: warm_init + reduce.tsne + procrustes_align."""
    init = None if prev is None else R.warm_init(prev[0], prev[2], keys, X)
    L = R.tsne(X, 2, init=init, random_state=0)
    return L if prev is None else procrustes_align(L, keys, prev[2], prev[0])


def dynamic(spread_power: float = 0.5) -> Method:
    return lambda X, keys, prev: tsne_next(
        X, keys, prev, 2, random_state=0, spread_power=spread_power
    )


def evaluate(E: np.ndarray, method: Method) -> dict[str, float]:
    keys = np.arange(E.shape[1], dtype=np.int64) * 7919 + 13
    pool = StabilityPool(10**7)
    nps, disp, secs = [], [], []
    prev: Previous = None
    for t, X in enumerate(E):
        c = time.process_time()
        L = method(X, keys, prev)
        if t:
            secs.append(time.process_time() - c)
        nps.append(np_at(X, L))
        if prev is not None:
            pool.add(keys, prev[1], X, prev[2], L)
            disp.append(mean_displacement(prev[2], L))
        prev = (keys, X, L)
    assert prev is not None
    frozen = mean_displacement(prev[2], method(E[-1].copy(), keys, prev))
    return {"stability": pool.value(), "np": float(np.mean(nps)), "disp": float(np.mean(disp)),
            "frozen": frozen, "secs": float(np.mean(secs))}


def global_tsne(E: np.ndarray) -> dict[str, float]:
    """One t-SNE over all epochs' points together (offline: needs every epoch first)."""
    T, n, _ = E.shape
    keys = np.arange(n, dtype=np.int64)
    c = time.process_time()
    G = R.tsne(E.reshape(T * n, -1), 2, random_state=0).reshape(T, n, 2)
    secs = time.process_time() - c
    pool = StabilityPool(10**7)
    for t in range(1, T):
        pool.add(keys, E[t - 1], E[t], G[t - 1], G[t])
    return {"stability": pool.value(), "np": float(np.mean([np_at(E[t], G[t]) for t in range(T)])),
            "disp": float(np.mean([mean_displacement(G[t - 1], G[t]) for t in range(1, T)])),
            "frozen": float("nan"), "secs": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-global", action="store_true", help="skip the offline global t-SNE")
    args = ap.parse_args()
    methods: dict[str, Method] = {
        "independent openTSNE per epoch": independent,
        "warm start + Procrustes (today)": warm,
        "tsne_next (anchor 0.2, spread 0.5)": dynamic(),
        "tsne_next, spread_power=0": dynamic(spread_power=0.0),
        "tsne_next, spread_power=1": dynamic(spread_power=1.0),
    }
    for seed in args.seeds:
        t0 = time.perf_counter()
        E = digits_runs(seed=seed)
        print(f"\nseed {seed}: digits MLP, {E.shape[0]} epochs x {E.shape[1]} points x "
              f"{E.shape[2]} dims")
        head = (f"{'method':36s} | {'stability':>9s} | {'np@1%':>6s} | {'disp':>6s} | "
                f"{'frozen':>7s} | {'s/run':>6s}")
        print(head)
        print("-" * len(head))
        rows = {name: evaluate(E, m) for name, m in methods.items()}
        if not args.no_global:
            rows["global t-SNE, all epochs (offline)"] = global_tsne(E)
        for name, r in rows.items():
            secs = f"{r['secs']:6.2f}" + (" total" if name.startswith("global") else "")
            print(f"{name:36s} | {r['stability']:9.3f} | {r['np']:6.3f} | {r['disp']:6.3f} | "
                  f"{r['frozen']:7.4f} | {secs}")
        ind = rows["independent openTSNE per epoch"]["np"]
        print(f"95% of independent np@1%: {0.95 * ind:.3f}; wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
