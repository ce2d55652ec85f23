"""Label-free health, cluster scores, per-label rows, temporal stability: known answers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_score

from lightning_embproj.evolve.clusters import cluster_scores
from lightning_embproj.metrics.health import (
    HEALTH_DOCS,
    health_metrics,
    linear_cka,
    rankme,
    uniformity,
)
from lightning_embproj.metrics.labels import PER_LABEL_COLUMNS, per_label_table
from lightning_embproj.metrics.scores import knn_accuracy
from lightning_embproj.metrics.stability import StabilityPool, temporal_stability


def digits():
    d = load_digits()
    keys = np.arange(d.data.shape[0], dtype=np.int64) * 3 + 1
    return keys, (d.data / 16).astype(np.float32), d.target


def orthogonal(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def rankme_by_definition(X, eps=1e-7):
    s = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


# ---------------------------------------------------------------- RankMe

@pytest.mark.parametrize("shape", [(500, 64), (40, 300)])  # N > D and N < D (other Gram side)
def test_rankme_matches_the_svd_definition(shape):
    X = np.random.default_rng(0).normal(size=shape)
    assert rankme(X) == pytest.approx(rankme_by_definition(X), rel=1e-9)


def test_rankme_falls_as_embeddings_collapse_into_a_subspace():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 64))
    Q = orthogonal(64)
    values = [rankme(X @ Q[:, :r] @ Q[:, :r].T) for r in (64, 16, 4, 1)]  # onto r dims
    assert values == sorted(values, reverse=True)
    assert values[0] > 55 and 14 < values[1] < 16.01 and 3.5 < values[2] < 4.01
    assert values[3] == pytest.approx(1.0, abs=1e-3)  # eps adds ~1e-4 over 63 zero values
    _, Xd, _ = digits()
    collapsed = Xd @ np.linalg.svd(Xd, full_matrices=False)[2][:3].T  # 3 strongest directions
    assert rankme(collapsed) < 3.0 < rankme(Xd)


def test_rankme_of_nothing_is_nan():
    assert math.isnan(rankme(np.zeros((5, 3)))) and math.isnan(rankme(np.zeros((0, 3))))


# ---------------------------------------------------------------- uniformity

def uniformity_by_definition(X, t=2.0):
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    return float(np.log(np.exp(-t * pdist(U, "sqeuclidean")).mean()))


def test_uniformity_matches_wang_and_isola_on_all_pairs():
    X = np.random.default_rng(0).normal(size=(300, 12))
    assert uniformity(X) == pytest.approx(uniformity_by_definition(X), rel=1e-9)


def test_concentrated_points_score_higher_than_spread_ones():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(500, 32))
    concentrated = np.ones(32) + 0.1 * rng.normal(size=(500, 32))
    assert -4.0 < uniformity(spread) < uniformity(concentrated) < 0.0
    assert uniformity(np.ones((4, 3))) == 0.0


def test_uniformity_subsample_is_fixed_and_close_to_all_pairs():
    X = np.random.default_rng(1).normal(size=(3000, 8)) + 0.5
    sub = uniformity(X)  # 2,048 fixed rows
    assert sub == uniformity(X) and sub != uniformity(X, max_points=None)
    assert sub == pytest.approx(uniformity_by_definition(X), abs=0.02)
    assert math.isnan(uniformity(np.ones((1, 3))))


# ---------------------------------------------------------------- linear CKA

def cka_by_definition(X, Y):
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


@pytest.mark.parametrize("shape", [(400, 16), (30, 200)])  # D x D form and N x N block form
def test_cka_is_one_under_rotation_and_scale_and_matches_the_definition(shape):
    rng = np.random.default_rng(0)
    X = rng.normal(size=shape)
    assert linear_cka(X, 2.5 * X @ orthogonal(shape[1]) + 7.0) == pytest.approx(1.0, abs=1e-9)
    Y = X[:, : shape[1] // 2] + rng.normal(size=(shape[0], shape[1] // 2))
    assert linear_cka(X, Y) == pytest.approx(cka_by_definition(X, Y), rel=1e-9)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), rel=1e-12)


def test_cka_of_real_digits_against_noise_is_low():
    _, X, _ = digits()
    assert linear_cka(X, X @ orthogonal(64)) == pytest.approx(1.0, abs=1e-9)
    noise = np.random.default_rng(0).normal(size=X.shape)
    assert linear_cka(X, noise) < 0.05
    with pytest.raises(ValueError, match="X has 1797 rows, Y has 10: rows must match"):
        linear_cka(X, noise[:10])
    assert math.isnan(linear_cka(np.ones((5, 2)), noise[:5]))


def test_health_metrics_match_runs_on_keys():
    keys, X, _ = digits()
    perm = np.random.default_rng(0).permutation(keys.size)[:1500]  # reordered, 297 left out
    m = health_metrics(keys[perm], X[perm], keys, X)
    names = {"health/rankme", "health/uniformity", "health/cka_previous"}
    assert set(m) == names and names <= set(HEALTH_DOCS)
    assert m["health/cka_previous"] == 1.0
    assert m["health/rankme"] == pytest.approx(rankme(X[perm]))
    first = health_metrics(keys, X)
    assert math.isnan(first["health/cka_previous"]) and -4 < first["health/uniformity"] < 0
    moved = health_metrics(keys, X + np.random.default_rng(1).normal(size=X.shape), keys, X)
    assert moved["health/cka_previous"] < 0.9


# ---------------------------------------------------------------- cluster scores

def test_cluster_scores():
    keys = np.arange(6)
    s = cluster_scores(keys, [0, 0, 1, 1, 2, -1], ["a", "a", "b", "b", "c", "c"], keys[::-1],
                       [-1, 9, 8, 8, 7, 7])
    assert set(s) <= set(HEALTH_DOCS)
    assert s["clusters/count"] == 3.0 and s["clusters/noise_fraction"] == pytest.approx(1 / 6)
    assert s["clusters/ari_previous"] == 1.0  # same partition, other ids and row order
    first = cluster_scores(keys, [0, 0, 1, 1, 2, 2])
    assert math.isnan(first["clusters/ari_previous"]) and math.isnan(first["clusters/nmi_labels"])
    assert cluster_scores(keys, [0] * 6, [0, 1] * 3, keys, [0, 1] * 3)[
        "clusters/ari_previous"] == 0.0


# ---------------------------------------------------------------- per-label table

def test_per_label_rows_on_real_digits_agree_with_the_scalar_metrics():
    keys, X, y = digits()
    rows = per_label_table(keys, X, y)
    assert [r["label"] for r in rows] == list(range(10))
    assert all(tuple(r) == PER_LABEL_COLUMNS for r in rows)
    counts = np.array([r["count"] for r in rows])
    assert counts.sum() == y.size and isinstance(rows[0]["label"], int)
    acc = np.array([r["knn_accuracy"] for r in rows])
    assert (acc * counts).sum() / counts.sum() == pytest.approx(knn_accuracy(X, y))
    sil = np.array([r["silhouette"] for r in rows])  # 1,797 rows: no subsample, exact
    assert (sil * counts).sum() / counts.sum() == pytest.approx(silhouette_score(X, y), rel=1e-5)
    assert all(math.isnan(r["centroid_shift"]) for r in rows)


def test_centroid_shift_follows_the_moved_label_on_shared_keys():
    keys, X, y = digits()
    v = np.zeros(64, dtype=np.float32)
    v[:3] = [3.0, 4.0, 0.0]
    moved = X + (y == 3)[:, None] * v
    keep = np.flatnonzero(y != 7)  # label 7 left the sample: no shared points, NaN
    rows = per_label_table(keys[keep][::-1], moved[keep][::-1], y[keep][::-1], keys, X)
    shift = {r["label"]: r["centroid_shift"] for r in rows}
    assert shift[3] == pytest.approx(5.0, rel=1e-6)
    assert all(shift[c] == pytest.approx(0.0, abs=1e-6) for c in shift if c != 3)
    assert 7 not in shift


def test_per_label_silhouette_subsample_and_string_labels():
    rng = np.random.default_rng(0)
    y = np.array(["near", "far"])[rng.integers(0, 2, 600)]
    X = rng.normal(size=(600, 5)) + (y == "far")[:, None] * 4.0
    rows = per_label_table(np.arange(600), X, y, max_points=200)
    assert [r["label"] for r in rows] == ["far", "near"]
    assert all(0.3 < r["silhouette"] < 1 for r in rows)
    again = per_label_table(np.arange(600), X, y, max_points=200)
    assert [r["silhouette"] for r in rows] == [r["silhouette"] for r in again]
    assert [r["silhouette"] for r in rows] != [
        r["silhouette"] for r in per_label_table(np.arange(600), X, y)]
    one = per_label_table(np.arange(600), X, np.zeros(600, int))
    assert math.isnan(one[0]["silhouette"]) and one[0]["knn_accuracy"] == 1.0


# ---------------------------------------------------------------- temporal stability

def steps(n, seed=0):
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(n, 16))
    size = rng.exponential(size=(n, 1))
    X1 = X0 + size * rng.normal(size=(n, 16)) / 4
    L0 = rng.normal(size=(n, 2))
    return X0, X1, L0, size


def test_layout_moving_points_as_much_as_the_model_is_stable():
    X0, X1, L0, size = steps(1000)
    direction = np.random.default_rng(5).normal(size=(1000, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    L1 = L0 + 3.0 * np.linalg.norm(X1 - X0, axis=1, keepdims=True) * direction
    assert temporal_stability(X0, X1, L0, L1) == pytest.approx(1.0)
    random_moves = L0 + np.random.default_rng(6).normal(size=L0.shape)
    assert abs(temporal_stability(X0, X1, L0, random_moves)) < 0.1
    expected = spearmanr(np.linalg.norm(X1 - X0, axis=1), np.linalg.norm(random_moves - L0, axis=1))
    assert temporal_stability(X0, X1, L0, random_moves) == pytest.approx(expected[0])
    assert math.isnan(temporal_stability(X0, X0, L0, random_moves))  # the model did not move


def test_pool_over_runs_is_exact_under_capacity_and_bounded_above_it():
    runs = [steps(300, seed) for seed in range(4)]
    keys = np.arange(300, dtype=np.int64) * 11
    rng = np.random.default_rng(9)
    layouts = [L0 + size * rng.normal(size=L0.shape) for _, _, L0, size in runs]
    pool, small = StabilityPool(capacity=10_000), StabilityPool(capacity=500)
    for (X0, X1, L0, _), L1 in zip(runs, layouts, strict=True):
        pool.add(keys, X0, X1, L0, L1)
        small.add(keys, X0, X1, L0, L1)
    a = np.concatenate([np.linalg.norm(X1 - X0, axis=1) for X0, X1, _, _ in runs])
    b = np.concatenate([
        np.linalg.norm(L1 - r[2], axis=1) for r, L1 in zip(runs, layouts, strict=True)
    ])
    assert len(pool) == 1200 and pool.value() == pytest.approx(spearmanr(a, b)[0])
    assert len(small) == 500 and abs(small.value() - pool.value()) < 0.1
    # a checkpoint in the middle gives the same pool as going straight through
    straight, resumed = StabilityPool(capacity=500), StabilityPool(capacity=500)
    for i, ((X0, X1, L0, _), L1) in enumerate(zip(runs, layouts, strict=True)):
        if i == 2:
            buf = io.BytesIO()
            torch.save(resumed.state_dict(), buf)
            buf.seek(0)
            resumed = StabilityPool.from_state_dict(torch.load(buf, weights_only=True))
        straight.add(keys, X0, X1, L0, L1)
        resumed.add(keys, X0, X1, L0, L1)
    assert resumed.value() == straight.value() == small.value()
    with pytest.raises(ValueError, match="capacity must be an int >= 3, got 0"):
        StabilityPool(capacity=0)
    with pytest.raises(ValueError, match="keys has 3 entries, X has 300 rows"):
        pool.add(keys[:3], X0, X1, L0, L1)
