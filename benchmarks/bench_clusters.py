"""Cost of clusters across runs and the health metrics next to the t-SNE run they accompany.

For each size, 10 Gaussian classes in D dims (float32, like the buffer), a "previous run" and
this run (the same points slightly moved, rows in another order). Times, all in this process:

- ``tsne``: ``reduce("tsne", X, 2)`` cold; ``warm``: from the previous layout
  (``warm_init``), what the callback runs from the second run on.
- ``kmeans`` / ``hdbscan``: :func:`cluster_points` with the labels (k = 10) / auto.
- ``match+lineage``: :meth:`ClusterChain.update`: ids and lineage rows from one overlap matrix.
- ``scores``: :func:`cluster_scores` (count, ARI to the previous run, NMI to labels).
- ``health``: :func:`health_metrics` (RankMe, uniformity, CKA to the previous run).
- ``per_label``: :func:`per_label_table` with the previous run, given this run's kNN
  (``score_run`` computes it first in the pipeline, ``Projection.knn``); ``per_label_cold``:
  without it, one more kNN pass (not in the totals).

The stages are called as the pipeline calls them: on a checked run (``check_input=False``).
- ``stability``: :meth:`StabilityPool.add` + ``value`` after 10 runs in the pool.
- ``total``: everything with k-means; ``total_h``: with HDBSCAN instead.

Each step is the best of ``--repeat`` runs; the machine may be shared, so read the ratios
rather than the seconds.

Usage:
    .venv/bin/python benchmarks/bench_clusters.py              # 2,000 and 10,000 x 64 and 256
    .venv/bin/python benchmarks/bench_clusters.py --blas-threads 1   # one BLAS/OpenMP thread
    .venv/bin/python benchmarks/bench_clusters.py --sizes 2000 --dims 64
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from bench_metrics import data, timed  # the same blobs, drifted copy and best-of timer

from lightning_embproj.evolve.cluster_chain import ClusterChain
from lightning_embproj.evolve.clusters import cluster_points, cluster_scores
from lightning_embproj.metrics.health import health_metrics
from lightning_embproj.metrics.labels import per_label_table
from lightning_embproj.metrics.neighbours import knn
from lightning_embproj.metrics.stability import StabilityPool
from lightning_embproj.reduce.dispatch import reduce, warm_init


def run(n: int, dim: int, repeat: int) -> dict[str, float]:
    X0, X1, y = data(n, dim)
    keys0 = np.arange(n, dtype=np.int64) * 7 + 3
    perm = np.random.default_rng(1).permutation(n)
    keys1, X1, y1 = keys0[perm], X1[perm], y[perm]
    t_cold, lay0 = timed(lambda: reduce("tsne", X0, 2))
    init = warm_init(keys0, lay0, keys1, X1)
    t_warm, lay1 = timed(lambda: reduce("tsne", X1, 2, init=init))

    out: dict[str, float] = {"tsne": t_cold, "warm": t_warm}
    out["kmeans"], raw = timed(
        lambda: cluster_points(X1, labels=y1, keys=keys1, check_input=False), repeat)
    out["hdbscan"], raw_h = timed(
        lambda: cluster_points(X1, "hdbscan", keys=keys1, check_input=False), repeat)
    out["n_hdbscan"] = float(np.unique(raw_h[raw_h >= 0]).size)
    chain = ClusterChain()
    chain.update(keys0, cluster_points(X0, labels=y, keys=keys0))
    state = chain.state_dict()

    prev_keys, prev_ids = chain.prev_keys, chain.prev_ids

    def match_lineage() -> tuple[np.ndarray, list]:
        step = ClusterChain.from_state_dict(state).update(keys1, raw)
        return step.ids, step.rows

    out["match+lineage"], (ids, rows) = timed(match_lineage, repeat)
    out["survive_rows"] = float(sum(r["event"] == "survive" for r in rows))
    out["scores"], _ = timed(lambda: cluster_scores(keys1, ids, y1, prev_keys, prev_ids,
                                                    check_input=False), repeat)
    out["health"], h = timed(lambda: health_metrics(keys1, X1, keys0, X0, check_input=False),
                             repeat)
    out["cka"] = h["health/cka_previous"]
    out["per_label_cold"], _ = timed(
        lambda: per_label_table(keys1, X1, y1, keys0, X0, check_input=False), repeat)
    near = knn(X1, 10)  # what score_run hands on
    out["per_label"], _ = timed(lambda: per_label_table(
        keys1, X1, y1, keys0, X0, neighbours=near, check_input=False), repeat)
    pool = StabilityPool()
    Xp, Lp = X0[perm], lay0[perm]
    for _ in range(9):
        pool.add(keys1, Xp, X1, Lp, lay1, check_input=False)

    def stability() -> float:
        p = StabilityPool.from_state_dict(pool.state_dict())
        p.add(keys1, Xp, X1, Lp, lay1, check_input=False)
        return p.value()

    out["stability"], out["rho"] = timed(stability, repeat)
    rest = out["match+lineage"] + out["scores"] + out["health"] + out["per_label"]
    rest += out["stability"]
    out["total"] = out["kmeans"] + rest
    out["total_h"] = out["hdbscan"] + rest
    return out


def main() -> None:
    logging.getLogger("openTSNE").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="run everything under threadpool_limits(N) (default: library default)")
    args = ap.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads)
    warm = data(200, 8)[0]  # imports and first-call costs outside the timings
    cluster_points(warm, "hdbscan")
    per_label_table(np.arange(200), warm, np.arange(200) % 3)
    steps = ["kmeans", "hdbscan", "match+lineage", "scores", "health", "per_label", "stability",
             "per_label_cold"]
    head = (f"{'N':>6} {'D':>4} {'tsne':>6} {'warm':>6} "
            + " ".join(f"{s:>{max(9, len(s))}}" for s in steps)
            + f" {'total':>6} {'/tsne':>6} {'/warm':>6} {'total_h':>7} {'/tsne':>6} {'/warm':>6}")
    print(head)
    for n in args.sizes:
        for dim in args.dims:
            r = run(n, dim, args.repeat)
            cells = " ".join(f"{r[s]:{max(9, len(s))}.3f}" for s in steps)
            print(f"{n:>6} {dim:>4} {r['tsne']:6.1f} {r['warm']:6.1f} {cells} "
                  f"{r['total']:6.2f} {r['total'] / r['tsne']:6.1%} {r['total'] / r['warm']:6.1%} "
                  f"{r['total_h']:7.2f} {r['total_h'] / r['tsne']:6.1%} "
                  f"{r['total_h'] / r['warm']:6.1%}", flush=True)
            print(f"       hdbscan clusters={r['n_hdbscan']:.0f} survive rows="
                  f"{r['survive_rows']:.0f} cka_previous={r['cka']:.3f} "
                  f"temporal_stability={r['rho']:.3f}")
    print("seconds; total = k-means path, total_h = HDBSCAN path (clustering + match + lineage "
          "+ scores + health + per-label table + stability pool); /tsne, /warm = share of one "
          "cold / warm openTSNE run on the same data.")


if __name__ == "__main__":
    main()
