"""Clusters across runs: clustering, stable ids, MONIC lineage, on constructed and real data."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from lightning_embproj.evolve.cluster_chain import ClusterChain
from lightning_embproj.evolve.clusters import (
    canonical,
    cluster_points,
    cluster_scores,
    default_n_clusters,
)
from lightning_embproj.evolve.lineage import (
    EVENTS,
    LINEAGE_COLUMNS,
    event_counts,
    transition,
)
from lightning_embproj.metrics.health import health_metrics


def blobs(sizes, centres, spread=0.3, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([
        np.asarray(c, dtype=np.float64) + spread * rng.normal(size=(s, dim))
        for s, c in zip(sizes, centres, strict=True)
    ])
    return X.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def far(i, dim=16):
    """Centre number ``i``: 10 apart from every other centre."""
    c = np.zeros(dim)
    c[i] = 10.0
    return c


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    keys = np.arange(1000, 1000 + d.data.shape[0], dtype=np.int64)
    return keys, (d.data / 16.0).astype(np.float32), d.target


def accounted(rows, prev_ids, ids):
    """Every previous cluster has one fate and every current cluster at least one row."""
    fates: Counter = Counter()
    for r in rows:
        assert set(r) == set(LINEAGE_COLUMNS) and r["event"] in EVENTS
        if r["event"] == "vanish":
            fates[r["cluster"]] += 1
        elif r["event"] in ("survive", "merge"):
            for p in r["from_clusters"].split(","):
                fates[int(p)] += 1
    splits = Counter(int(r["from_clusters"]) for r in rows if r["event"] == "split")
    assert all(v >= 2 for v in splits.values())
    for p in splits:
        fates[p] += 1
    assert fates == Counter({int(p): 1 for p in set(prev_ids.tolist()) - {-1}})
    current = {r["cluster"] for r in rows if r["event"] != "vanish"}
    assert current == set(ids.tolist()) - {-1}


# ---------------------------------------------------------------- cluster_points

@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
@pytest.mark.parametrize("dim", [8, 128])  # 128 > the PCA cut: clusters found on the PCs
def test_separated_blobs_are_recovered_deterministically(method, dim):
    X, truth = blobs([60, 80, 70], [far(0, dim), far(1, dim), far(2, dim)], dim=dim)
    got = cluster_points(X, method, n_clusters=3)
    assert adjusted_rand_score(truth, got) == 1.0
    assert got.dtype == np.int64 and got.tolist()[:1] == [0]  # numbered by first appearance
    assert np.array_equal(got, cluster_points(X, method, n_clusters=3))


def test_kmeans_k_comes_from_labels_then_n_clusters_then_the_rule():
    X, truth = blobs([40] * 4, [far(i) for i in range(4)])
    names = np.array(["cat", "dog", "eel", "fox"])[truth]
    assert np.unique(cluster_points(X, labels=names)).size == 4
    assert np.unique(cluster_points(X, labels=names, n_clusters=2)).size == 4  # labels win
    assert np.unique(cluster_points(X, n_clusters=2)).size == 2
    assert np.unique(cluster_points(X)).size == default_n_clusters(160) == 9
    assert [default_n_clusters(n) for n in (1, 8, 50, 800, 10**6)] == [2, 2, 5, 20, 20]


def test_with_keys_the_partition_does_not_depend_on_the_row_order():
    X = np.random.default_rng(1).normal(size=(300, 6))  # no structure: k-means is arbitrary
    keys = np.random.default_rng(2).permutation(10_000)[:300].astype(np.int64)
    a = cluster_points(X, n_clusters=5, seed=3, keys=keys)
    assert np.array_equal(a, cluster_points(X, n_clusters=5, seed=3, keys=keys))
    perm = np.random.default_rng(3).permutation(300)
    b = cluster_points(X[perm], n_clusters=5, seed=3, keys=keys[perm])
    assert adjusted_rand_score(a[perm], b) == 1.0
    assert np.array_equal(b, a[perm])  # numbered in key order: the very same numbers
    with pytest.raises(ValueError, match="keys has 3 entries, X has 300 rows"):
        cluster_points(X, keys=[1, 2, 3])


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_degenerate_inputs(method):
    assert cluster_points(np.zeros((0, 4)), method).shape == (0,)
    assert cluster_points(np.ones((1, 4)), method).tolist() == [0]
    assert cluster_points(np.ones((50, 4)), method, n_clusters=5).tolist() == [0] * 50
    # three distinct points, each repeated: k shrinks to 3 for k-means
    X = np.repeat(np.eye(3) * 5, 4, axis=0)
    if method == "kmeans":
        assert cluster_points(X, method, n_clusters=10).tolist() == canonical(
            np.repeat([0, 1, 2], 4)
        ).tolist()
    else:
        assert cluster_points(X, method, min_cluster_size=20).tolist() == [-1] * 12


def test_hdbscan_leaves_isolated_points_as_noise():
    X, _ = blobs([50, 50], [far(0), far(1)], dim=16)
    X = np.r_[X, np.full((1, 16), 100.0, dtype=np.float32)]
    got = cluster_points(X, "hdbscan")
    assert got[-1] == -1 and np.unique(got[:-1]).tolist() == [0, 1]
    assert cluster_scores(np.arange(101), got)["clusters/noise_fraction"] == pytest.approx(1 / 101)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "dbscan"}, r"method must be one of \['kmeans', 'hdbscan'\], got 'dbscan'"),
        ({"n_clusters": 0}, "n_clusters must be a positive int or None, got 0"),
        ({"n_clusters": 2.5}, "n_clusters must be a positive int or None, got 2.5"),
        ({"labels": [0, 1]}, r"labels must have shape \(10,\) to match X, got \(2,\)"),
        ({"method": "hdbscan", "min_cluster_size": 1}, "min_cluster_size must be an int >= 2"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cluster_points(np.random.default_rng(0).normal(size=(10, 3)), **kwargs)


def test_bad_embeddings_are_named():
    with pytest.raises(ValueError, match="X must be a 2-D"):
        cluster_points(np.zeros(5))
    with pytest.raises(ValueError, match="X contains NaN"):
        cluster_points(np.full((3, 2), np.nan))


# ---------------------------------------------------------------- ids across runs

def test_same_clustering_keeps_ids_whatever_the_raw_numbering():
    keys = np.array([7, 3, 9, 1, 4, 8], dtype=np.int64)
    ids0, _, nxt = transition([], [], keys, [0, 0, 1, 1, -1, 2], 0)
    assert ids0.tolist() == [0, 0, 1, 1, -1, 2] and nxt == 3
    # same partition, raw numbers permuted, rows in another order
    order = np.array([5, 4, 3, 2, 1, 0])
    raw = np.array([2, 2, 0, 0, -1, 1])[order]
    ids1, rows, nxt1 = transition(keys, ids0, keys[order], raw, nxt)
    assert ids1.tolist() == ids0[order].tolist() and nxt1 == 3
    assert [(r["cluster"], r["event"], r["from_clusters"]) for r in rows] == [
        (0, "survive", "0"), (1, "survive", "1"), (2, "survive", "2"),
    ]


def test_new_clusters_get_fresh_ids_and_retired_ids_never_come_back():
    ids, _, nxt = transition([1, 2, 3, 4], [0, 0, 1, 1], [1, 2, 5, 6], [0, 0, 1, 1], 2)
    assert ids.tolist() == [0, 0, 2, 2] and nxt == 3  # cluster 1 left with its keys
    ids, rows, nxt = transition([1, 2, 5, 6], ids, [3, 4, 5, 6], [0, 0, 1, 1], nxt)
    assert ids.tolist() == [3, 3, 2, 2] and nxt == 4  # keys 3, 4 are back: not id 1
    assert [(r["cluster"], r["event"]) for r in rows] == [
        (0, "vanish"), (2, "survive"), (3, "emerge"),
    ]


def test_the_larger_part_of_a_split_keeps_the_id():
    # previous cluster 0 = keys 0..9 splits 4 / 6: the bigger part keeps the id
    prev_keys = np.arange(10)
    ids, rows, nxt = transition(prev_keys, [0] * 10, prev_keys, [0] * 4 + [1] * 6, 1)
    assert ids.tolist() == [1] * 4 + [0] * 6 and nxt == 2
    assert [(r["cluster"], r["event"], r["from_clusters"], r["size"]) for r in rows] == [
        (0, "split", "0", 6), (1, "split", "0", 4),
    ]


def test_transition_errors_name_the_argument():
    with pytest.raises(ValueError, match="next_id .1. must exceed every previous id .max 4."):
        transition([1], [4], [1], [0], 1)
    with pytest.raises(ValueError, match="keys must be unique"):
        transition([], [], [1, 1], [0, 0], 0)
    with pytest.raises(ValueError, match=r"raw_ids must have shape \(2,\)"):
        transition([], [], [1, 2], [0], 0)
    with pytest.raises(ValueError, match="prev_ids must be >= 0 .or -1 for noise., got -3"):
        transition([1], [-3], [1], [0], 0)
    with pytest.raises(ValueError, match="next_id must be a non-negative int, got -1"):
        transition([], [], [1], [0], -1)
    with pytest.raises(ValueError, match=r"survive_threshold must be in \(0.5, 1\]"):
        transition([], [], [1], [0], 0, survive_threshold=0.5)


def test_chain_state_survives_a_checkpoint_round_trip():
    X, _ = blobs([30, 30, 30], [far(0), far(1), far(2)])
    keys = np.arange(90, dtype=np.int64) * 7 + 11
    straight, resumed = ClusterChain(), ClusterChain()
    straight.update(keys, cluster_points(X, n_clusters=3))
    resumed.update(keys, cluster_points(X, n_clusters=3))
    buf = io.BytesIO()
    torch.save({"chain": resumed.state_dict()}, buf)
    buf.seek(0)
    resumed = ClusterChain.from_state_dict(torch.load(buf, weights_only=True)["chain"])
    raw = cluster_points(X[::-1], n_clusters=3)
    a, b = straight.update(keys[::-1], raw), resumed.update(keys[::-1], raw)
    assert np.array_equal(a.ids, b.ids) and a.rows == b.rows and a.next_id == b.next_id
    assert straight == resumed
    with pytest.raises(ValueError, match="cluster chain state must be a dict with 'keys'"):
        ClusterChain.from_state_dict({"keys": [1]})


# ---------------------------------------------------------------- lineage

def sequence_split_then_merge(seed: int):
    """Six runs of 600 tracked points: G1 splits at run 2, G2 and G3 merge at run 4.

    G1 = keys 0..199, G2 = 200..299, G3 = 300..399, G4 = 400..599. Fresh noise every run.
    """
    runs = []
    for t in range(6):
        rng = np.random.default_rng(seed + t)
        centre = np.zeros((600, 16))
        centre[:200] = far(0)
        if t >= 2:  # G1 splits in two
            centre[100:200] = far(5)
        centre[200:300] = far(1)
        centre[300:400] = far(2) if t < 4 else far(1)  # G3 joins G2
        centre[400:] = far(3)
        X = (centre + 0.3 * rng.normal(size=centre.shape)).astype(np.float32)
        perm = rng.permutation(600)  # rows arrive in another order each run
        runs.append((np.arange(600, dtype=np.int64)[perm] * 31 + 5, X[perm]))
    return runs


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_split_at_run_2_and_merge_at_run_4_and_nothing_else(method):
    n_clusters = [4, 4, 5, 5, 4, 4]
    chain = ClusterChain()
    events = []
    for t, (keys, X) in enumerate(sequence_split_then_merge(seed=10)):
        prev_ids = chain.prev_ids
        ids, rows, _ = chain.update(
            keys, cluster_points(X, method, n_clusters=n_clusters[t], keys=keys)
        )
        accounted(rows, prev_ids, ids)
        events.append(rows)
    by_key = dict(zip(keys.tolist(), ids.tolist(), strict=True))
    g = {name: by_key[k * 31 + 5] for name, k in
         [("g1a", 0), ("g1b", 150), ("g23", 250), ("g4", 450)]}

    assert [event_counts(r) for r in events] == [
        {"survive": 0, "merge": 0, "split": 0, "emerge": 4, "vanish": 0},
        {"survive": 4, "merge": 0, "split": 0, "emerge": 0, "vanish": 0},
        {"survive": 3, "merge": 0, "split": 1, "emerge": 0, "vanish": 0},
        {"survive": 5, "merge": 0, "split": 0, "emerge": 0, "vanish": 0},
        {"survive": 3, "merge": 1, "split": 0, "emerge": 0, "vanish": 0},
        {"survive": 4, "merge": 0, "split": 0, "emerge": 0, "vanish": 0},
    ]
    split_rows = [r for r in events[2] if r["event"] == "split"]
    assert [(r["size"], r["overlap"]) for r in split_rows] == [(100, 0.5), (100, 0.5)]
    (parent,) = {r["from_clusters"] for r in split_rows}
    assert {r["cluster"] for r in split_rows} == {g["g1a"], g["g1b"]}
    assert int(parent) in (g["g1a"], g["g1b"])  # one part keeps the id, the other is new
    (merge,) = [r for r in events[4] if r["event"] == "merge"]
    assert (merge["cluster"], merge["size"], merge["overlap"]) == (g["g23"], 200, 1.0)
    assert g["g23"] in map(int, merge["from_clusters"].split(","))
    # survivors keep their id, at every run
    for rows in events[1:]:
        assert all(r["from_clusters"] == str(r["cluster"]) for r in rows if r["event"] == "survive")
    assert sorted(g.values()) == sorted(set(ids.tolist()))


def test_thresholds_decide_between_survive_split_and_vanish():
    keys = np.arange(10)
    prev = np.zeros(10, dtype=np.int64)
    six_four = np.array([0] * 6 + [1] * 4)
    assert [r["event"] for r in transition(keys, prev, keys, six_four, 1).rows] == [
        "split", "split",
    ]
    rows = transition(keys, prev, keys, six_four, 1, survive_threshold=0.6).rows
    assert [(r["cluster"], r["event"], r["from_clusters"]) for r in rows] == [
        (0, "survive", "0"), (1, "emerge", ""),
    ]
    # 5 stay together, 5 become noise: no successor holds 70%, one part only: vanish, and the
    # 5 that stayed are a new cluster with a new id
    ids, rows, _ = transition(keys, prev, keys, np.array([3] * 5 + [-1] * 5), 1)
    assert [(r["cluster"], r["event"], r["size"], r["overlap"]) for r in rows] == [
        (0, "vanish", 10, 0.5), (1, "emerge", 5, 0.5),
    ]
    assert ids.tolist() == [1] * 5 + [-1] * 5
    with pytest.raises(ValueError, match=r"survive_threshold must be in \(0.5, 1\]"):
        transition(keys, prev, keys, prev, 1, survive_threshold=0.5)
    with pytest.raises(ValueError, match=r"split_threshold must be in \(0, 0.5\]"):
        transition(keys, prev, keys, prev, 1, split_threshold=0.8)


def test_first_run_emerges_and_leaving_keys_vanish():
    rows = transition([], [], [5, 6, 7], [0, 0, 1], 0).rows
    assert [(r["cluster"], r["event"], r["size"], r["overlap"]) for r in rows] == [
        (0, "emerge", 2, 0.0), (1, "emerge", 1, 0.0),
    ]
    rows = transition([5, 6, 7], [0, 0, 1], [5, 6, 8], [0, 0, 1], 2).rows
    assert [(r["cluster"], r["event"]) for r in rows] == [(0, "survive"), (1, "vanish"),
                                                          (2, "emerge")]


def test_a_survivor_keeps_its_id_even_when_it_is_also_a_split_part():
    # P0: 10 keys, all into C (survive); P1: 100 keys, 60 into C and 40 into D (split). C
    # continues P0, so it keeps id 0; P1's id goes to its part that continues nothing, D.
    # (Jaccard matching gave C id 1, with a row saying C survived 0: the two disagreed.)
    prev_keys = np.arange(110)
    prev_ids = np.r_[np.zeros(10, int), np.ones(100, int)]
    raw = np.r_[np.zeros(70, int), np.ones(40, int)]
    ids, rows, nxt = transition(prev_keys, prev_ids, prev_keys, raw, 2)
    assert [(r["cluster"], r["event"], r["from_clusters"]) for r in rows] == [
        (0, "survive", "0"), (0, "split", "1"), (1, "split", "1"),
    ]
    assert ids.tolist() == [0] * 70 + [1] * 40 and nxt == 2
    accounted(rows, prev_ids, ids)


# ---------------------------------------------------------------- real digits

@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_frozen_digits_keep_ids_only_survive_ari_1_cka_1(method):
    keys, X, y = digits()
    chain = ClusterChain()
    ids0 = chain.update(keys, cluster_points(X, method, labels=y, keys=keys)).ids
    # the same embeddings again, rows in another order (as another gather might deliver them)
    perm = np.random.default_rng(0).permutation(keys.size)
    ids1, rows, _ = chain.update(keys[perm], cluster_points(X[perm], method, labels=y[perm],
                                                            keys=keys[perm]))
    assert {r["event"] for r in rows} == {"survive"}
    assert all(r["overlap"] == 1.0 for r in rows)
    assert np.array_equal(ids1, ids0[perm])
    s = cluster_scores(keys[perm], ids1, y[perm], keys, ids0)
    assert s["clusters/ari_previous"] == 1.0
    assert health_metrics(keys[perm], X[perm], keys, X)["health/cka_previous"] == 1.0
    if method == "kmeans":
        assert s["clusters/count"] == 10 and s["clusters/nmi_labels"] > 0.6


def _train_digits_encoder(epochs: int, lr: float):
    """Encoder outputs of the tests' digits MLP after each epoch of plain SGD."""
    from digits import DigitsModel, digits_tensors

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread beats a contended team
    try:
        return _train(epochs, lr, DigitsModel, digits_tensors)
    finally:
        torch.set_num_threads(threads)


def _train(epochs, lr, DigitsModel, digits_tensors):
    x, y = digits_tensors()
    model = DigitsModel(lr=lr)
    opt = torch.optim.SGD(model.parameters(), lr=lr) if lr > 0 else None
    outs = []
    for _ in range(epochs):
        if opt is not None:
            for i in range(0, x.shape[0], 64):
                loss = torch.nn.functional.cross_entropy(
                    model.head(model.encoder(x[i : i + 64])), y[i : i + 64]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            outs.append(model.encoder(x).numpy())
    return outs, y.numpy()


def test_a_real_training_run_is_fully_accounted_for_and_clusters_get_closer_to_labels():
    outs, y = _train_digits_encoder(epochs=6, lr=0.3)
    keys = np.arange(y.size, dtype=np.int64)
    chain = ClusterChain()
    nmi = []
    for X in outs:
        prev_keys, prev_ids = chain.prev_keys, chain.prev_ids
        ids, rows, _ = chain.update(keys, cluster_points(X, labels=y))
        accounted(rows, prev_ids, ids)
        s = cluster_scores(keys, ids, y, prev_keys, prev_ids)
        nmi.append(s["clusters/nmi_labels"])
        assert ids.max() < chain.next_id
    assert nmi[-1] > nmi[0] + 0.05
    assert s["clusters/ari_previous"] > 0.5  # late epochs change little
