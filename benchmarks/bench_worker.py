"""Thread or process for the background reduction: which keeps the training loop faster?

The main thread runs training steps of a small MLP (torch, default threads) for ``--seconds``
while a background worker repeatedly runs our t-SNE (openTSNE, n_jobs=1) on ``--points`` rows:
in a thread, in a thread at nice +10 (Linux per-thread priority), in a forked process, in a forked
process at nice +10. Reported: training steps/s relative to no background work, and how much
t-SNE work the worker got done (t-SNE runs per minute). Rounds are interleaved to share the
machine's noise.

    .venv/bin/python benchmarks/bench_worker.py              # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from lightning_embproj.reduce.dispatch import tsne

logging.getLogger("openTSNE").setLevel(logging.ERROR)


def data(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    return X[rng.integers(0, len(X), n)] + rng.normal(0.0, 1.0, (n, X.shape[1]))


def reduce_forever(X: np.ndarray, stop: Callable[[], bool], nice: int, done: list[float]) -> None:
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    while not stop():
        tsne(X, 2, random_state=len(done))
        done.append(time.perf_counter())


def _process_main(X: np.ndarray, nice: int, counter: mp.Value) -> None:  # type: ignore[valid-type]
    done: list[float] = []
    if nice:
        os.nice(nice)
    while True:
        tsne(X, 2, random_state=len(done))
        done.append(0.0)
        with counter.get_lock():  # type: ignore[attr-defined]
            counter.value += 1  # type: ignore[attr-defined]


def train_steps(seconds: float) -> int:
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(256, 256), torch.randint(0, 10, (256,))
    steps, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        steps += 1
    return steps


def one_round(mode: str, X: np.ndarray, seconds: float) -> tuple[int, float]:
    """Training steps in ``seconds`` with the given background, and t-SNE runs finished."""
    if mode == "none":
        return train_steps(seconds), 0.0
    nice = 10 if mode.endswith("nice") else 0
    if mode.startswith("thread"):
        flag = threading.Event()
        done: list[float] = []
        t = threading.Thread(target=reduce_forever, args=(X, flag.is_set, nice, done), daemon=True)
        t.start()
        time.sleep(0.5)  # let the worker get going, as it would after a validation end
        steps = train_steps(seconds)
        runs = len(done)
        flag.set()
        t.join()
        return steps, runs
    ctx = mp.get_context("fork")
    counter = ctx.Value("i", 0)
    p = ctx.Process(target=_process_main, args=(X, nice, counter), daemon=True)
    p.start()
    time.sleep(0.5)
    steps = train_steps(seconds)
    runs = counter.value
    p.kill()
    p.join()
    return steps, float(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    X = data(args.points)
    tsne(X[:200], 2)  # warm imports
    modes = ["none", "thread", "thread-nice", "process", "process-nice"]
    steps: dict[str, list[int]] = {m: [] for m in modes}
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            s, r = one_round(mode, X, args.seconds)
            steps[mode].append(s)
            runs[mode].append(r)
    base = statistics.median(steps["none"])
    print(f"training steps/s with a background t-SNE of {args.points} points "
          f"({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} x {args.seconds:.0f} s rounds, median)")
    print("| worker | train steps/s | vs none | t-SNE runs/min in background |")
    print("|---|---|---|---|")
    for mode in modes:
        s = statistics.median(steps[mode])
        r = statistics.median(runs[mode]) * 60 / args.seconds
        print(f"| {mode} | {s / args.seconds:.1f} | {s / base:.2f} | {r:.1f} |")


if __name__ == "__main__":
    main()
