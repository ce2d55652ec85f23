"""Clusters that stay put when the data does: ``cluster_points(..., smoothing=True)``, the
callback's ``cluster_smoothing``.

- ``kmeans`` with ``previous=(prev_keys, prev_ids)`` (the previous run's cluster ids by key,
  ``-1`` ignored; needs ``keys``): when the previous clusters found among this run's keys are
  exactly k, k-means starts from their centroids (:func:`seed_centroids`), computed from
  *this* run's embeddings of their members (the previous partition carried into the current
  space), and that solution is kept unless a fresh k-means++ run has an inertia lower by more
  than :data:`SMOOTH_KMEANS_TOLERANCE`. Otherwise (first run, k changed, a cluster left the
  sample) it is the fresh k-means++ solution, as without smoothing.
- ``hdbscan``: ``min_cluster_size`` defaults to :func:`smooth_min_cluster_size`,
  ``min_samples`` is :data:`SMOOTH_MIN_SAMPLES` and the leaf clusters of the condensed tree
  are selected (``cluster_selection_method="leaf"``): excess-of-mass selection flips between
  a parent cluster and its children as their stabilities trade places from run to run; the
  leaves do not. ``previous`` is not used.

Example:
    >>> smooth_min_cluster_size(600)
    12
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import NOISE, check_ids, shared_rows

# k-means starts from the previous run's partition and keeps that solution unless a fresh
# k-means++ run finds an inertia lower by more than this fraction (on the digits contrastive
# benchmark 1% kept the label agreement of fresh runs, while 2% and more let a poor early
# partition persist).
SMOOTH_KMEANS_TOLERANCE = 0.01
# HDBSCAN with smoothing: min_samples 5 and leaf selection (see the module docstring).
SMOOTH_MIN_SAMPLES = 5


def smooth_min_cluster_size(n: int) -> int:
    """HDBSCAN's ``min_cluster_size`` with smoothing: ``max(5, round(sqrt(N) / 2))``.

    Grows with ``N`` (12 at 600 points, 22 at 2,000, 50 at 10,000), so a cluster must hold a
    share of the sample that shrinks slowly as the sample grows: small enough for 10-50
    classes to each form a cluster, large enough that a handful of points drifting between two
    dense regions does not make or break a cluster from run to run. It depends only on ``N``
    (the same every run).

    Example:
        >>> smooth_min_cluster_size(100), smooth_min_cluster_size(600)
        (5, 12)
        >>> smooth_min_cluster_size(2_000), smooth_min_cluster_size(10_000)
        (22, 50)
    """
    return max(5, round(math.sqrt(n) / 2))


def previous_ids_by_row(
    previous: tuple[Any, Any], keys: np.ndarray, check_input: bool
) -> np.ndarray:
    """The previous run's id of each current row (``-1``: noise, or a key it did not track).

    Example:
        >>> previous_ids_by_row((np.array([5, 6]), [0, 1]), np.array([6, 7]), True).tolist()
        [1, -1]
    """
    if not isinstance(previous, tuple) or len(previous) != 2:
        raise ValueError(f"previous must be a (prev_keys, prev_ids) pair, got {previous!r}")
    prev_keys, prev_ids = previous
    if check_input:
        prev_keys = checks.keys(prev_keys, "previous keys")
        prev_ids = check_ids(prev_ids, np.asarray(prev_keys).size, "previous ids")
    prev_keys, prev_ids = np.asarray(prev_keys), np.asarray(prev_ids, dtype=np.int64)
    hint = np.full(keys.size, NOISE, dtype=np.int64)
    if prev_keys.size and keys.size:
        ip, ic = shared_rows(prev_keys, keys)
        hint[ic] = prev_ids[ip]
    return hint


def seed_centroids(Z: np.ndarray, hint: np.ndarray, k: int) -> np.ndarray | None:
    """Centroids (in ``Z``) of the previous clusters' members, when there are exactly k.

    Example:
        >>> seed_centroids(np.array([[0.0], [2.0], [9.0]]), np.array([4, 4, -1]), 1).tolist()
        [[1.0]]
    """
    groups, inverse = np.unique(hint, return_inverse=True)
    inverse = inverse.reshape(-1)
    inside = groups != NOISE
    if int(inside.sum()) != k:
        return None
    sums = np.zeros((groups.size, Z.shape[1]))
    np.add.at(sums, inverse, Z)
    counts = np.bincount(inverse, minlength=groups.size).astype(np.float64)
    centroids = sums[inside] / counts[inside, None]
    if np.unique(centroids, axis=0).shape[0] != k:  # two clusters at one point: no seed
        return None
    return centroids
