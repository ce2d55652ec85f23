"""Cluster one run's embeddings: k-means or HDBSCAN (noise ``-1``), in tracking-key order.

:func:`cluster_points` clusters one run (:mod:`~lightning_embproj.evolve.smoothing`: the
same clusters run after run); :mod:`~lightning_embproj.evolve.overlap` lines two runs'
clusterings up on the keys both runs track. The stable ids and the lineage across runs come
from both in one step: :mod:`lightning_embproj.evolve.lineage`; :func:`cluster_scores` says
how the clusters of a run agree with the previous run's and with the labels.

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))]
    >>> raw = cluster_points(X, n_clusters=2, keys=np.arange(40))
    >>> raw[[0, -1]].tolist()
    [0, 1]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import NOISE, check_ids, shared_rows
from lightning_embproj.evolve.smoothing import (
    SMOOTH_KMEANS_TOLERANCE,
    SMOOTH_MIN_SAMPLES,
    previous_ids_by_row,
    seed_centroids,
    smooth_min_cluster_size,
)
from lightning_embproj.runtime import native

METHODS: tuple[str, ...] = ("kmeans", "hdbscan")
# Cluster in the top principal components: at 10,000 x 256 k-means took 3.0 s on the raw
# vectors and 0.5 s on 32 PCs; HDBSCAN 3.1 s on 32 PCs and 2.1 s on 16 (same 9 clusters on
# 10 Gaussian classes; benchmarks/bench_clusters.py). PCA is a rotation plus a cut of the
# weakest directions, so k-means' objective barely changes.
KMEANS_DIMS = 32
HDBSCAN_DIMS = 16
# Three k-means++ starts: a better optimum is also a more repeatable one, and a partition
# that flips between runs would show up as spurious split/merge events.
KMEANS_N_INIT = 3
MAX_AUTO_CLUSTERS = 20


def default_n_clusters(n: int) -> int:
    """k when neither labels nor ``n_clusters`` are given: ``round(sqrt(N / 2))`` in [2, 20].

    The rule of thumb of Mardia et al. (1979), capped at 20 clusters so the picture stays
    readable. It depends only on ``N`` (the sample is the same every run), so k does not
    flicker between runs; a silhouette-best k would, and every change of k shows up as
    split/merge events that are artefacts of the choice, not of the model.

    Example:
        >>> default_n_clusters(50), default_n_clusters(200), default_n_clusters(10_000)
        (5, 10, 20)
    """
    return int(min(MAX_AUTO_CLUSTERS, max(2, round(math.sqrt(n / 2)))))


def default_min_cluster_size(n: int) -> int:
    """HDBSCAN's ``min_cluster_size`` when not given: ``max(5, N // 100)``.

    Example:
        >>> default_min_cluster_size(300), default_min_cluster_size(10_000)
        (5, 100)
    """
    return max(5, n // 100)


def canonical(raw: np.ndarray) -> np.ndarray:
    """Renumber clusters ``0..C-1`` by first appearance in row order; ``-1`` (noise) stays.

    Example:
        >>> canonical(np.array([7, 7, -1, 3, 7])).tolist()
        [0, 0, -1, 1, 0]
    """
    raw = np.asarray(raw).astype(np.int64, copy=False)
    out = np.full(raw.shape, NOISE, dtype=np.int64)
    inside = raw != NOISE
    uniq, first, inverse = np.unique(raw[inside], return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    out[inside] = rank[inverse.reshape(-1)]
    return out


def cluster_points(
    X: np.ndarray,
    method: str = "kmeans",
    n_clusters: int | None = None,
    labels: Sequence[object] | np.ndarray | None = None,
    seed: int = 0,
    min_cluster_size: int | None = None,
    keys: np.ndarray | Sequence[int] | None = None,
    *,
    smoothing: bool = False,
    previous: tuple[np.ndarray | Sequence[int], np.ndarray | Sequence[int]] | None = None,
    check_input: bool = True,
) -> np.ndarray:
    """Cluster the rows of ``X``: ``(N,)`` int64 cluster numbers ``0..C-1``, noise ``-1``.

    ``kmeans``: k is the number of distinct ``labels`` when given, else ``n_clusters``, else
    :func:`default_n_clusters`; k shrinks to the number of distinct rows (so identical points
    form one cluster and ``N < k`` is fine). ``hdbscan`` (scikit-learn's ``HDBSCAN``): the
    number of clusters is found, ``labels`` and ``n_clusters`` are ignored, rows in no dense
    region are noise (``-1``); ``min_cluster_size`` defaults to
    :func:`default_min_cluster_size`. Both run on the top principal components
    (:data:`KMEANS_DIMS`, :data:`HDBSCAN_DIMS`). Clusters are numbered by first appearance in
    row order (:func:`canonical`), so the result does not depend on the library's numbering.
    Deterministic for a given ``X`` and ``seed``. Pass the tracking ``keys``: rows are then
    clustered (and numbered) in key order, so the same points in another row order (another
    gather, another rank count) give the same partition; k-means++ seeding depends on the
    row order otherwise.

    ``smoothing=True``: clusters that stay put when the data does, k-means seeded from
    ``previous=(prev_keys, prev_ids)`` (needs ``keys``), HDBSCAN with a size rule that follows
    ``N``: :mod:`lightning_embproj.evolve.smoothing`.

    Example:
        >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
        >>> cluster_points(X, n_clusters=2).tolist()
        [0, 0, 1, 1]
        >>> cluster_points(np.ones((3, 2)), n_clusters=5).tolist()
        [0, 0, 0]
        >>> keys = np.arange(4)
        >>> cluster_points(X + 0.01, n_clusters=2, keys=keys, smoothing=True,
        ...                previous=(keys, [7, 7, 3, 3])).tolist()
        [0, 0, 1, 1]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not isinstance(smoothing, (bool, np.bool_)):
        raise ValueError(f"smoothing must be True or False, got {smoothing!r}")
    if check_input:
        X = checks.matrix(X, "X")
        if keys is not None:
            keys = checks.keys(keys, "keys", rows=X.shape[0])
    hint = None
    if previous is not None and smoothing and method == "kmeans":
        if keys is None:
            raise ValueError("previous needs keys: the previous run's ids are matched by key")
        hint = previous_ids_by_row(previous, np.asarray(keys), check_input)
    n = X.shape[0]
    if keys is not None:
        order = np.argsort(np.asarray(keys), kind="stable")
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and lab.shape == (n,):
            lab = lab[order]
        out = np.empty(n, dtype=np.int64)
        out[order] = _cluster(X[order], method, n_clusters, lab, seed, min_cluster_size,
                              bool(smoothing), None if hint is None else hint[order])
        return out
    return _cluster(X, method, n_clusters, labels, seed, min_cluster_size, bool(smoothing),
                    None)


def _cluster(
    X: np.ndarray, method: str, n_clusters: int | None, labels: Any, seed: int,
    min_cluster_size: int | None, smoothing: bool, hint: np.ndarray | None,
) -> np.ndarray:
    """:func:`cluster_points` on rows already in key order (``hint``: previous id per row)."""
    n = X.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    distinct = _distinct_rows(X)
    if distinct <= 1:
        return np.zeros(n, dtype=np.int64)
    if method == "kmeans":
        k = min(_kmeans_k(n, n_clusters, labels), distinct)
        return np.zeros(n, dtype=np.int64) if k <= 1 else _kmeans(X, k, seed, hint)
    rule = smooth_min_cluster_size if smoothing else default_min_cluster_size
    mcs = rule(n) if min_cluster_size is None else min_cluster_size
    if not isinstance(mcs, (int, np.integer)) or mcs < 2:
        raise ValueError(f"min_cluster_size must be an int >= 2, got {min_cluster_size!r}")
    if n < mcs:  # too few points for even one cluster of the requested size
        return np.full(n, NOISE, dtype=np.int64)
    return _hdbscan(X, int(mcs), smoothing)


def _kmeans(X: np.ndarray, k: int, seed: int, hint: np.ndarray | None = None) -> np.ndarray:
    """k-means (``k`` > 1) on the top :data:`KMEANS_DIMS` principal components; with
    ``hint`` (the previous run's id per row), seeded from that partition when it has k
    clusters here (see :func:`cluster_points`)."""
    from sklearn.cluster import KMeans

    from lightning_embproj.reduce.dispatch import pca

    wide = X.shape[1] > KMEANS_DIMS
    Z = pca(X, KMEANS_DIMS, check_input=False) if wide else X.astype(np.float64)
    init = None if hint is None else seed_centroids(Z, hint, k)
    # One OpenMP thread (a per-thread setting: the training thread keeps its own). Next
    # to a busy trainer, k-means' spinning OpenMP team was 20-100x slower than one thread
    # (digits, 1,797 x 16, k=10: 1.5-3 s vs 0.02-0.06 s on 2 loaded cores).
    with native.limit(1, "openmp"):
        fresh = KMeans(k, n_init=KMEANS_N_INIT, random_state=seed).fit(Z)
        raw = fresh.labels_
        if init is not None:
            kept = KMeans(k, init=init, n_init=1, random_state=seed).fit(Z)
            if kept.inertia_ <= fresh.inertia_ * (1.0 + SMOOTH_KMEANS_TOLERANCE):
                raw = kept.labels_
    return canonical(raw)


def _hdbscan(X: np.ndarray, min_cluster_size: int, smoothing: bool = False) -> np.ndarray:
    """HDBSCAN on the top :data:`HDBSCAN_DIMS` principal components (noise ``-1``)."""
    from sklearn.cluster import HDBSCAN

    from lightning_embproj.reduce.dispatch import pca

    wide = X.shape[1] > HDBSCAN_DIMS
    Z = pca(X, HDBSCAN_DIMS, check_input=False) if wide else X.astype(np.float64)
    if smoothing:
        # Leaf selection and min_samples 5: on the digits contrastive benchmark (597 points,
        # 16 runs) excess-of-mass gave 9-17 clusters per run, the leaves 10-12, at the same
        # noise fraction and a higher NMI to the labels.
        model = HDBSCAN(min_cluster_size=min_cluster_size,
                        min_samples=min(SMOOTH_MIN_SAMPLES, min_cluster_size),
                        cluster_selection_method="leaf", copy=True)
    else:
        # min_samples 10 (not min_cluster_size): the core distances need that many
        # neighbours, and 10 costs a third less than 100 at 10,000 points, same clusters.
        model = HDBSCAN(min_cluster_size=min_cluster_size,
                        min_samples=min(10, min_cluster_size), copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        raw = model.fit_predict(Z)
    return canonical(raw)


def _distinct_rows(X: np.ndarray) -> int:
    """Number of distinct rows, via a fixed random projection (equal rows project equally;
    distinct rows almost surely do not): a product and a sort of N numbers, not of N rows."""
    if X.shape[0] > 1 and not (X[0] != X).any():
        return 1
    w = np.random.default_rng(0).normal(size=X.shape[1])
    # Row-wise sums, not ``X @ w``: BLAS may sum equal rows in different orders.
    return int(np.unique((X.astype(np.float64) * w).sum(axis=1)).size)


def _kmeans_k(n: int, n_clusters: int | None, labels: Any) -> int:
    if labels is not None:
        return int(np.unique(checks.per_row(labels, n, "labels", of="X").astype(str)).size)
    if n_clusters is not None:
        if not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool):
            raise ValueError(f"n_clusters must be a positive int or None, got {n_clusters!r}")
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int or None, got {n_clusters!r}")
        return int(n_clusters)
    return default_n_clusters(n)


def cluster_scores(
    keys: np.ndarray | Sequence[int],
    ids: np.ndarray | Sequence[int],
    labels: Sequence[object] | np.ndarray | None = None,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    prev_ids: np.ndarray | Sequence[int] | None = None,
    *,
    check_input: bool = True,
) -> dict[str, float]:
    """Cluster scores of one run, named as in ``metrics.health.HEALTH_DOCS``.

    ``clusters/count``, ``clusters/noise_fraction``, ``clusters/ari_previous``,
    ``clusters/nmi_labels``. Noise (``-1``) is no cluster: it is left out of the count and of
    both scores, and measured by ``noise_fraction`` alone. ``ari_previous``:
    ``sklearn.metrics.adjusted_rand_score`` of the previous and current ids on the keys
    clustered in both runs (NaN without a previous run or with fewer than 2 such keys).
    ``nmi_labels``: ``normalized_mutual_info_score`` of labels and ids on the clustered rows
    (NaN without labels or without clustered rows). ``check_input=False``: the keys and ids
    come from a checked run and its cluster chain.

    Example:
        >>> keys, labels = [1, 2, 3, 4], ["a", "a", "b", "b"]
        >>> s = cluster_scores(keys, [0, 0, 1, 1], labels, keys, [5, 5, 6, 6])
        >>> s["clusters/count"], s["clusters/ari_previous"], s["clusters/nmi_labels"]
        (2.0, 1.0, 1.0)
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if check_input:
        keys = checks.keys(keys, "keys")
        ids = check_ids(ids, keys.size, "ids")
    keys, ids = np.asarray(keys), np.asarray(ids)
    out = {
        "clusters/count": float(np.unique(ids[ids != NOISE]).size),
        "clusters/noise_fraction": float((ids == NOISE).mean()) if ids.size else math.nan,
    }
    ari = math.nan
    if prev_keys is not None and prev_ids is not None:
        if check_input:
            prev_keys = checks.keys(prev_keys, "prev_keys")
            prev_ids = check_ids(prev_ids, prev_keys.size, "prev_ids")
        pk, pids = np.asarray(prev_keys), np.asarray(prev_ids)
        ip, ic = shared_rows(pk, keys)
        both = (pids[ip] != NOISE) & (ids[ic] != NOISE)
        if both.sum() >= 2:
            ari = float(adjusted_rand_score(pids[ip][both], ids[ic][both]))
    out["clusters/ari_previous"] = ari
    nmi = math.nan
    clustered = ids != NOISE
    if labels is not None and clustered.any():
        codes = checks.label_codes(labels, ids.size)[clustered]
        nmi = float(normalized_mutual_info_score(codes, ids[clustered]))
    out["clusters/nmi_labels"] = nmi
    return out
