"""Scoring stage: cluster quality, trustworthiness, drift and movers on data with known answers."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness as sk_trustworthiness
from sklearn.metrics import silhouette_score

from lightning_embproj import checks
from lightning_embproj.metrics import neighbours
from lightning_embproj.metrics.motion import mean_displacement
from lightning_embproj.metrics.scores import (
    METRIC_DOCS,
    epoch_metrics,
    knn_accuracy,
    movers,
    neighbourhood_overlap,
    score_run,
    silhouette,
    trustworthiness,
)
from lightning_embproj.results import EpochSample, Projection


def blobs(n_per: int, n_cls: int, dim: int, spread: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cls, dim)) * 10
    y = np.repeat(np.arange(n_cls), n_per)
    return centres[y] + rng.normal(size=(y.size, dim)) * spread, y, centres


def proj(X, keys=None, labels=None, layouts=None, epoch=0) -> Projection:
    keys = np.arange(len(X), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
    sample = EpochSample("z", keys, [int(k) for k in keys], np.asarray(X), labels=labels)
    return Projection(sample, epoch=epoch, step=epoch, layouts=dict(layouts or {}))


def test_separated_clusters_score_near_one():
    X, y, _ = blobs(30, 3, 8)
    assert silhouette(X, y) > 0.95
    assert silhouette(X, y) == pytest.approx(silhouette_score(X, y), abs=1e-9)
    assert knn_accuracy(X, y) == 1.0


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 8))
    y = rng.integers(0, 4, 600)
    assert abs(silhouette(X, y)) < 0.05
    assert silhouette(X, y) == pytest.approx(silhouette_score(X, y), abs=1e-9)
    assert knn_accuracy(X, y) == pytest.approx(0.25, abs=0.08)


@pytest.mark.parametrize("n_cls", [2, 5, 100])  # 100 classes takes the sparse-sum path
def test_silhouette_matches_sklearn_float32_and_strings(n_cls):
    rng = np.random.default_rng(n_cls)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, n_cls, 300)
    y[:2] = [n_cls, n_cls + 1]  # singleton classes score 0, as in sklearn
    expected = silhouette_score(X.astype(np.float64), y)
    assert silhouette(X, y) == pytest.approx(expected, abs=1e-5)
    assert silhouette(X, np.array([f"c{v}" for v in y], dtype=object)) == pytest.approx(
        expected, abs=1e-5
    )


def test_silhouette_subsample_is_deterministic_and_close():
    X, y, _ = blobs(200, 3, 4, spread=3.0)
    sub = silhouette(X, y, max_points=300)
    assert sub == silhouette(X, y, max_points=300)
    assert sub == pytest.approx(silhouette(X, y), abs=0.05)
    assert sub != silhouette(X, y)


def test_undefined_silhouette_is_nan_and_nothing_raises_on_tiny_inputs():
    X, y, _ = blobs(10, 2, 3)
    assert math.isnan(silhouette(X, np.zeros(20)))
    assert math.isnan(silhouette(X[:2], [0, 1]))
    assert math.isnan(silhouette(X[:5], np.arange(5)))  # as many labels as points
    assert knn_accuracy(X, np.zeros(20)) == 1.0
    assert math.isnan(knn_accuracy(X[:1], [0]))
    assert math.isnan(trustworthiness(X[:2], X[:2, :2]))
    for n in (3, 5, 11):  # fewer than k + 1 = 11 points: k shrinks
        Xn, yn = X[::2][:n], y[::2][:n]
        p = proj(Xn, labels=yn, layouts={"pca": Xn[:, :2]})
        m = epoch_metrics(p, p, k=10)
        assert m["knn_accuracy"] >= 0 and 0 <= m["pca/trustworthiness"] <= 1
        assert m["drift/knn_overlap"] == 1.0 and m["pca/displacement"] == 0.0
    assert math.isnan(trustworthiness(X[:2], X[:2, :2]))


def test_zero_variance_embeddings_give_finite_metrics():
    X = np.zeros((40, 5), dtype=np.float32)
    y = np.arange(40) % 2
    p = proj(X, labels=y, layouts={"pca": np.zeros((40, 2))})
    m = epoch_metrics(p, p)
    # nothing moved on either side: a correlation of motions is undefined, and only it
    assert np.isnan(m.pop("pca/motion_explained"))
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["silhouette"] == 0.0 and m["pca/displacement"] == 0.0


@pytest.mark.parametrize("k", [1, 3, 5, 10, 24])
def test_trustworthiness_equals_sklearn(k):
    rng = np.random.default_rng(k)
    X = rng.normal(size=(50, 10))
    layout = X[:, :2] + rng.normal(size=(50, 2)) * 0.5
    assert trustworthiness(X, layout, k) == pytest.approx(
        sk_trustworthiness(X, layout, n_neighbors=k), abs=1e-12
    )


def test_trustworthiness_in_small_chunks_equals_sklearn(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 12))
    layout = PCA(2).fit_transform(X)
    expected = sk_trustworthiness(X, layout, n_neighbors=10)
    monkeypatch.setattr(checks, "CHUNK_BYTES", 37 * 400 * 8)  # 37-row chunks, ragged tail
    assert trustworthiness(X, layout, 10) == pytest.approx(expected, abs=1e-12)
    assert trustworthiness(X.astype(np.float32), layout, 10) == pytest.approx(expected, abs=1e-6)



def test_scan_memory_is_bounded_by_the_chunk_not_n_squared(monkeypatch):
    X = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    p = proj(X, labels=np.arange(3000) % 7, layouts={"a": X[:, :2], "b": X[:, 2:4]})
    monkeypatch.setattr(checks, "CHUNK_BYTES", 2**20)
    tracemalloc.start()
    epoch_metrics(p, p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3000 * 3000 * 4 / 4  # a quarter of one float32 N x N matrix (36 MB)


def test_random_permutation_layout_is_less_trustworthy_than_pca():
    X, _, _ = blobs(60, 4, 10, spread=2.0)
    layout = PCA(2).fit_transform(X)
    shuffled = layout[np.random.default_rng(0).permutation(len(X))]
    assert trustworthiness(X, layout) > trustworthiness(X, shuffled) + 0.2


def test_identical_epoch_has_full_overlap_and_no_displacement():
    X, y, _ = blobs(40, 3, 16, spread=2.0)
    layouts = {"pca": PCA(2).fit_transform(X), "tsne": X[:, :2] * 3}
    p = proj(X, labels=y, layouts=layouts)
    m = epoch_metrics(p, proj(X.copy(), labels=y, layouts=layouts, epoch=1))
    assert m["drift/knn_overlap"] == 1.0
    assert m["pca/displacement"] == 0.0 and m["tsne/displacement"] == 0.0
    assert np.array_equal(neighbourhood_overlap(X, X.copy()), np.ones(len(X)))
    rng = np.random.default_rng(0)
    assert neighbourhood_overlap(rng.normal(size=X.shape), X).mean() < 0.3


def test_movers_finds_the_points_that_jumped_cluster():
    X0, y, centres = blobs(50, 4, 16, spread=1.0)
    rng = np.random.default_rng(3)
    X1 = X0 + rng.normal(size=X0.shape) * 0.05
    jumped = np.array([3, 17, 60, 111, 190])
    X1[jumped] = centres[(y[jumped] + 1) % 4] + rng.normal(size=(5, 16))
    prev, cur = proj(X0, labels=y), proj(X1, labels=y, epoch=1)
    out = movers(cur, prev, k=10, top=5)
    changed = out["kind"] == "changed"
    assert set(out["index"][changed]) == set(jumped)
    assert (out["overlap"][changed] < 0.2).all()
    odd = out["kind"] == "mislabelled-neighbourhood"
    assert set(out["index"][odd]) == set(jumped)
    assert (out["foreign_fraction"][odd] > 0.9).all()
    assert np.array_equal(out["key"], cur.sample.keys[out["index"]])
    assert out["index"].dtype == np.int64 and out["overlap"].dtype == np.float64
    assert epoch_metrics(cur, prev)["drift/knn_overlap"] < 1.0


def test_movers_without_previous_or_labels_is_empty_and_typed():
    X, _, _ = blobs(20, 2, 4)
    out = movers(proj(X))
    assert set(out) == {"index", "key", "kind", "overlap", "foreign_fraction"}
    assert all(v.size == 0 for v in out.values())
    assert out["index"].dtype == np.int64


def test_drift_matches_rows_by_key_in_any_order_with_partial_overlap():
    X0, y, _ = blobs(30, 3, 8, spread=2.0)
    rng = np.random.default_rng(0)
    X1 = X0 + rng.normal(size=X0.shape) * 0.5
    L0, L1 = X0[:, :2], X1[:, :2]
    keys = np.arange(90) * 7 + 1000
    reference = epoch_metrics(proj(X1, keys, y, {"p": L1}), proj(X0, keys, y, {"p": L0}))

    order = rng.permutation(90)  # previous epoch stored in another order
    shuffled = epoch_metrics(
        proj(X1, keys, y, {"p": L1}), proj(X0[order], keys[order], y[order], {"p": L0[order]})
    )
    assert shuffled == pytest.approx(reference, abs=1e-12)

    # only 60 keys in common; each epoch also holds points the other lacks
    prev_rows, cur_rows = order[:70], np.r_[order[10:70], order[70:]]
    shared = np.sort(order[10:70])
    part = epoch_metrics(
        proj(X1[cur_rows], keys[cur_rows], y[cur_rows], {"p": L1[cur_rows]}),
        proj(X0[prev_rows], keys[prev_rows], y[prev_rows], {"p": L0[prev_rows]}),
    )
    assert part["drift/knn_overlap"] == pytest.approx(
        neighbourhood_overlap(X0[shared], X1[shared]).mean()
    )
    assert part["p/displacement"] == pytest.approx(mean_displacement(L0[shared], L1[shared]))

    disjoint = epoch_metrics(proj(X1, keys + 1), proj(X0, keys))
    assert math.isnan(disjoint["drift/knn_overlap"])


def test_every_metric_name_is_documented():
    X, y, _ = blobs(20, 2, 4)
    p = proj(X, labels=y, layouts={"pca": X[:, :2], "tsne": X[:, 1:3]})
    for name in epoch_metrics(p, p):
        pattern = re.sub(r"^(pca|tsne)/", "<reducer>/", name)
        assert pattern in METRIC_DOCS, name


def test_bad_input_raises_naming_the_problem():
    X, y, _ = blobs(10, 2, 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(20,\)"):
        knn_accuracy(X, y[:5])
    with pytest.raises(ValueError, match="NaN"):
        silhouette(np.full((20, 3), np.nan), y)
    with pytest.raises(ValueError, match="rows must match"):
        trustworthiness(X, X[:5, :2])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_accuracy(X, y, k=0)


def test_neighbourhood_overlap_follows_the_content():
    X = np.random.default_rng(0).normal(size=(50, 4))
    before = neighbourhood_overlap(X, X)
    Y = X.copy()
    Y[:25] = Y[25:]  # same shape, other content
    assert before.min() == 1.0
    assert neighbourhood_overlap(X, Y).mean() < 0.9


# -- the torch pass (any device; CPU here) and the trustworthiness subset ---------------------
@pytest.mark.parametrize("dtype,n_cls", [(np.float64, 5), (np.float32, 5), (np.float64, 90)])
def test_torch_pass_gives_the_numpy_results(monkeypatch, dtype, n_cls):
    rng = np.random.default_rng(n_cls)
    X, y, _ = blobs(60, 5, 12, spread=4.0)  # overlapping classes: non-trivial scores
    X = X.astype(dtype)
    labels = np.arange(len(X)) % n_cls if n_cls != 5 else y  # 90 classes: the index_add path
    prev = proj(X + rng.normal(size=X.shape) * 0.5, labels=labels,
                layouts={"pca": PCA(2).fit_transform(X), "noise": rng.normal(size=(len(X), 2))})
    cur = proj(X, labels=labels, layouts=prev.layouts)
    monkeypatch.setattr(checks, "CHUNK_BYTES", 37 * len(X) * 8)  # several ragged chunks
    by_numpy = epoch_metrics(cur, prev)
    knn_numpy = neighbours.scan(as_float(X), 10).knn
    by_torch = epoch_metrics(cur, prev, device="cpu")
    knn_torch = neighbours.scan(as_float(X), 10, device="cpu").knn
    assert sorted(by_torch) == sorted(by_numpy)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for name, value in by_numpy.items():
        assert by_torch[name] == pytest.approx(value, abs=tol, nan_ok=True), name
    assert 0.2 < by_numpy["silhouette"] < 0.9 or n_cls == 90  # the scores say something
    assert (knn_torch == knn_numpy).mean() > (0.999 if dtype == np.float64 else 0.99)
    assert movers(cur, prev, device="cpu")["index"].tolist() == movers(cur, prev)["index"].tolist()


def as_float(X):
    return checks.matrix(X, "X")


def test_torch_trustworthiness_equals_sklearn_with_and_without_a_subset():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 10))
    layout = X[:, :2] + rng.normal(size=(300, 2)) * 0.5
    exact = sk_trustworthiness(X, layout, n_neighbors=10)
    assert trustworthiness(X, layout, 10, device="cpu") == pytest.approx(exact, abs=1e-12)
    numpy_est = trustworthiness(X, layout, 10, max_points=120)
    assert trustworthiness(X, layout, 10, max_points=120, device="cpu") == pytest.approx(
        numpy_est, abs=1e-12
    )


def test_trustworthiness_subset_is_a_close_deterministic_estimate():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 16))
    good, bad = PCA(2).fit_transform(X), rng.normal(size=(1500, 2))
    for layout in (good, bad):
        exact = trustworthiness(X, layout, 10)
        assert exact == pytest.approx(sk_trustworthiness(X, layout, n_neighbors=10), abs=1e-12)
        est = trustworthiness(X, layout, 10, max_points=500)
        assert est == trustworthiness(X, layout, 10, max_points=500)  # the same rows each time
        assert est != exact and est == pytest.approx(exact, abs=0.01)
    assert trustworthiness(X, good, 10, max_points=1500) == trustworthiness(X, good, 10)


def test_epoch_metrics_estimates_trustworthiness_above_the_subset_size(monkeypatch):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(900, 8))
    layout = PCA(2).fit_transform(X)
    exact = sk_trustworthiness(X, layout, n_neighbors=10)
    assert epoch_metrics(proj(X, layouts={"pca": layout}))["pca/trustworthiness"] == (
        pytest.approx(exact, abs=1e-12))  # 900 rows: below TRUST_MAX_POINTS, exact
    scan = neighbours.scan
    monkeypatch.setattr(neighbours, "scan", lambda *a, **kw: scan(*a, **{
        **kw, "trust_max_points": 300}))
    monkeypatch.setattr("lightning_embproj.metrics.scores.scan", neighbours.scan)
    est = epoch_metrics(proj(X, layouts={"pca": layout}))["pca/trustworthiness"]
    assert est != exact and est == pytest.approx(exact, abs=0.02)


def test_a_full_accelerator_falls_back_to_the_host_pass(monkeypatch):
    X, y, _ = blobs(40, 3, 6, spread=3.0)
    p = proj(X, labels=y, layouts={"pca": PCA(2).fit_transform(X)})
    expected = epoch_metrics(p, p)

    def full(*args, **kwargs):
        raise MemoryError("CUDA out of memory")

    monkeypatch.setattr(neighbours, "_pass_torch", full)
    assert epoch_metrics(p, p, device="cuda") == expected


# -- real vs apparent motion per point ---------------------------------------------------------
def test_motion_per_point_matches_the_run_metrics_and_the_movers():
    rng = np.random.default_rng(3)
    X, y, _ = blobs(60, 3, 8, spread=4.0)
    moved = X.copy()
    moved[:10] += rng.normal(size=(10, X.shape[1])) * 5  # ten points get new neighbours
    pca = PCA(2).fit(X)  # one projection for both runs: aligned by construction
    prev = proj(X, labels=y, layouts={"pca": pca.transform(X)})
    cur = proj(moved, labels=y, layouts={"pca": pca.transform(moved)})
    scores = score_run(cur, prev)
    assert scores.knn_kept.shape == (len(X),) and scores.moved["pca"].shape == (len(X),)
    assert scores.knn_kept.mean() == pytest.approx(scores.metrics["drift/knn_overlap"])
    assert scores.moved["pca"].mean() == pytest.approx(scores.metrics["pca/displacement"])
    assert (1 - scores.knn_kept[:10]).mean() > 3 * (1 - scores.knn_kept[10:]).mean()
    assert 0 < scores.metrics["pca/motion_explained"] <= 1
    # the movers rank by the same values, given or computed
    given = movers(cur, prev, kept=scores.knn_kept)
    assert given["index"].tolist() == movers(cur, prev)["index"].tolist()
    # without a previous run: nothing known
    first = score_run(cur)
    assert np.isnan(first.knn_kept).all() and np.isnan(first.moved["pca"]).all()
