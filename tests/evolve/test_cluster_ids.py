"""Cluster ids follow the lineage events: one computation, checked against its definition.

:func:`check_run` restates the rules (README "Clusters across runs", DESIGN 4c) on its own,
from nothing but the two runs' points, ids and the lineage rows: the events MONIC gives for
these partitions; an id passes on only through ``survive``, the main parent of a ``merge``
or the largest free part of a ``split``; ``emerge`` gets a fresh id; ids are never reused;
a vanished id is not alive; noise (-1) is no cluster. It runs on hundreds of generated
partition sequences (splits, merges, noise, points entering and leaving the tracked set) and
on the files of a real HDBSCAN fit on digits.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from digits import DigitsModel, loaders, trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from lightning_embproj import EmbeddingProjector, read_lineage, read_metrics, read_projections
from lightning_embproj.evolve.cluster_chain import ClusterChain
from lightning_embproj.evolve.clusters import cluster_scores
from lightning_embproj.evolve.lineage import transition
from lightning_embproj.evolve.set_chain import Evolved, EvolveSettings, SetChain, evolve
from lightning_embproj.results import EpochSample, Projection

TOL = 1e-12


def check_run(
    seen: set[int],
    prev: dict[Any, int],
    cur: dict[Any, int],
    rows: Sequence[dict[str, Any]],
    survive: float = 0.7,
    split: float = 0.3,
) -> None:
    """Assert the rules for one run. ``seen``: every id used earlier in the chain; ``prev`` /
    ``cur``: point -> cluster id of the previous and this run (-1 noise)."""
    for r in rows:
        assert r["cluster"] != -1 and "-1" not in r["from_clusters"].split(","), r
    # the overlap of the previous clusters' tracked members with this run's clusters
    n: Counter = Counter()
    a: Counter = Counter()
    for point, p in prev.items():
        if p != -1 and point in cur:
            a[p] += 1
            if cur[point] != -1:
                n[p, cur[point]] += 1
    alive = set(cur.values()) - {-1}
    feeds: dict[int, int] = {}
    parts: dict[int, list[int]] = {}
    for p in a:
        frac = {c: n[p, c] / a[p] for c in alive if n[p, c]}
        over = [c for c, v in frac.items() if v >= survive - TOL]
        assert len(over) <= 1
        if over:
            feeds[p] = over[0]
        elif len(into := [c for c, v in frac.items() if v >= split - TOL]) >= 2:
            parts[p] = into
    fed_by = {c: sorted(p for p, q in feeds.items() if q == c) for c in alive}
    expected = []
    for c in alive:
        if len(fed_by[c]) == 1:
            expected.append((c, "survive", str(fed_by[c][0])))
        elif fed_by[c]:
            expected.append((c, "merge", ",".join(map(str, fed_by[c]))))
        expected += [(c, "split", str(p)) for p, cs in parts.items() if c in cs]
        if not fed_by[c] and not any(c in cs for cs in parts.values()):
            expected.append((c, "emerge", ""))
    gone = (set(prev.values()) - {-1}) - set(feeds) - set(parts)
    expected += [(p, "vanish", "") for p in gone]
    # the rows are exactly MONIC's events, written with the ids the points carry
    assert sorted((r["cluster"], r["event"], r["from_clusters"]) for r in rows) == sorted(
        expected
    )
    assert not gone & alive, f"vanished ids alive: {gone & alive}"

    fresh = alive - seen
    assert all(c > max(seen, default=-1) for c in fresh), (fresh, seen)  # never reused
    for c in alive & seen:  # an old id: only through an event from the previous run
        via_survive = fed_by[c] == [c]
        via_merge = len(fed_by[c]) >= 2 and c == min(fed_by[c], key=lambda p: (-n[p, c], p))
        via_split = c in parts and c in parts[c] and not fed_by[c]
        assert via_survive or via_merge or via_split, (c, fed_by[c], parts.get(c))
    for c, sources in fed_by.items():  # and survive / merge always pass it on
        if sources:
            assert c == min(sources, key=lambda p: (-n[p, c], p)), (c, sources)
    for p, cs in parts.items():  # a split's id goes to its largest part that continues nothing
        free = [c for c in cs if not fed_by[c]]
        larger = [c for c in free if p not in alive or n[p, c] > n[p, p]]
        # a larger free part can only hold the id of another split that gave it more
        for c in larger:
            assert c in parts and c != p and n[c, c] >= n[p, c], (p, c, cs)


def check_chain(runs: Sequence[tuple[dict[Any, int], Sequence[dict[str, Any]]]],
                survive: float = 0.7, split: float = 0.3) -> None:
    seen: set[int] = set()
    prev: dict[Any, int] = {}
    for cur, rows in runs:
        check_run(seen, prev, cur, rows, survive, split)
        seen |= set(cur.values()) - {-1}
        prev = cur


# ---------------------------------------------------------------- generated sequences

@st.composite
def partition_sequences(draw: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple]:
    """Runs over a universe of points: each run relabels the previous run's clusters (two
    onto one = a merge), moves some points to other clusters or to noise (splits, noise),
    tracks a subset of the points (entering / leaving), numbers clusters arbitrarily."""
    n_points = draw(st.integers(1, 36))
    universe = np.arange(n_points, dtype=np.int64) * 7 + 3
    labels = draw(st.lists(st.integers(-1, 4), min_size=n_points, max_size=n_points))
    runs = []
    for t in range(draw(st.integers(1, 6))):
        if t:
            relabel = draw(st.lists(st.integers(-1, 6), min_size=8, max_size=8))
            moved = draw(st.lists(st.integers(-1, 6), min_size=n_points, max_size=n_points))
            move = draw(st.lists(st.booleans(), min_size=n_points, max_size=n_points))
            labels = [m if mv else relabel[lab + 1]
                      for lab, m, mv in zip(labels, moved, move, strict=True)]
        tracked = draw(st.lists(st.booleans(), min_size=n_points, max_size=n_points))
        order = np.asarray(draw(st.permutations(range(n_points))), dtype=np.int64)
        order = order[np.asarray(tracked, dtype=bool)[order]]
        raw_names = draw(st.permutations(range(7)))  # raw numbers: any order
        raw = np.array([-1 if labels[i] == -1 else raw_names[labels[i]] for i in order],
                       dtype=np.int64)
        runs.append((universe[order], raw))
    thresholds = draw(st.sampled_from([(0.7, 0.3), (0.51, 0.5), (1.0, 0.1), (0.6, 0.25)]))
    return runs, thresholds


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(partition_sequences())
def test_ids_and_lineage_agree_on_generated_partition_sequences(case):
    runs, (survive, split) = case
    chain = ClusterChain()
    out = []
    used: set[int] = set()
    for keys, raw in runs:
        ids, rows, next_id = chain.update(keys, raw, survive, split)
        assert ids.dtype == np.int64 and ((ids == -1) == (raw == -1)).all()
        # the same raw cluster is one cluster id, distinct raw clusters distinct ids
        pairs = set(zip(raw[raw != -1].tolist(), ids[raw != -1].tolist(), strict=True))
        assert len(pairs) == len({r for r, _ in pairs}) == len({i for _, i in pairs})
        used |= set(ids.tolist()) - {-1}
        assert next_id > max(used, default=-1) and chain.next_id == next_id
        out.append((dict(zip(keys.tolist(), ids.tolist(), strict=True)), rows))
    check_chain(out, survive, split)


def test_the_generator_makes_every_event():
    """The property test above sees splits, merges, noise, emerge and vanish, not only
    survivors (a seeded draw of the same strategy)."""
    events: Counter = Counter()
    noise = 0

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(partition_sequences())
    def collect(case):
        nonlocal noise
        runs, (survive, split) = case
        chain = ClusterChain()
        for keys, raw in runs:
            step = chain.update(keys, raw, survive, split)
            events.update(r["event"] for r in step.rows)
            noise += int((raw == -1).sum())

    collect()
    assert noise and all(events[e] >= 20 for e in ("survive", "merge", "split", "emerge",
                                                   "vanish")), events


# ---------------------------------------------------------------- the rules, one by one

def test_a_merge_keeps_the_id_of_the_parent_that_gave_most():
    # P0 (4 points) and P1 (6 points) merge; P1 gave more: the merged cluster is 1
    keys = np.arange(10)
    ids, rows, nxt = transition(keys, [0] * 4 + [1] * 6, keys, [3] * 10, 2)
    assert ids.tolist() == [1] * 10 and nxt == 2
    assert [(r["cluster"], r["event"], r["from_clusters"]) for r in rows] == [
        (1, "merge", "0,1"),
    ]


def test_two_splits_competing_for_one_part():
    # P0 (10) splits 6 -> X, 4 -> Y; P1 (10) splits 5 -> X, 5 -> Z. X is P0's largest part
    # and takes id 0; P1's largest free part is then Z.
    prev_ids = [0] * 10 + [1] * 10
    raw = [7] * 6 + [8] * 4 + [7] * 5 + [9] * 5
    keys = np.arange(20)
    ids, rows, nxt = transition(keys, prev_ids, keys, raw, 2)
    assert ids.tolist() == [0] * 6 + [2] * 4 + [0] * 5 + [1] * 5 and nxt == 3
    check_run({0, 1}, dict(zip(range(20), prev_ids, strict=True)),
              dict(zip(range(20), ids.tolist(), strict=True)), rows)


def test_noise_is_never_a_cluster_in_ids_lineage_or_metrics():
    keys = np.arange(10)
    prev = [0] * 5 + [-1] * 5
    # the noise points gather into a cluster of their own: it emerges, it does not "survive
    # the noise", and cluster 0 survives
    ids, rows, _ = transition(keys, prev, keys, [4] * 5 + [6] * 5, 1)
    assert [(r["cluster"], r["event"], r["from_clusters"]) for r in rows] == [
        (0, "survive", "0"), (1, "emerge", ""),
    ]
    labels = ["a", "a", "a", "b", "b", "a", "b", "a", "b", "a"]
    s = cluster_scores(keys, [0, 0, 0, 1, 1, -1, -1, -1, -1, -1], labels,
                       keys, [5, 5, 5, 6, 6, 7, 7, 8, 8, 8])
    assert s["clusters/count"] == 2 and s["clusters/noise_fraction"] == 0.5
    # both scores on the points clustered in both runs / clustered now: a perfect match
    assert s["clusters/ari_previous"] == 1.0 and s["clusters/nmi_labels"] == 1.0
    everything_noise = cluster_scores(keys, [-1] * 10, labels, keys, [0] * 10)
    assert np.isnan(everything_noise["clusters/ari_previous"])
    assert np.isnan(everything_noise["clusters/nmi_labels"])


# ---------------------------------------------------------------- checkpoints

def _saved(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_old_chain_states_load_and_never_reuse_an_id():
    # as 0.2 development versions wrote it (the Jaccard ids), and without next_id / clusters
    old = {"clusters": {"keys": [1, 2, 3, 4], "ids": [0, 0, 5, 5], "next_id": 7},
           "stability": {}}
    chain = SetChain.from_state_dict(_saved(old))
    assert chain.clusters.next_id == 7
    ids, rows, nxt = chain.clusters.update([1, 2, 3, 4, 9], [0, 0, 1, 1, 2])
    assert ids.tolist() == [0, 0, 5, 5, 7] and nxt == 8
    assert SetChain.from_state_dict(_saved(chain.state_dict())).clusters == chain.clusters
    no_next = SetChain.from_state_dict({"clusters": {"keys": [1, 2], "ids": [3, -1]}})
    assert no_next.clusters.next_id == 4
    assert no_next.clusters.update([1, 2, 5], [0, 1, 1]).ids.tolist() == [3, 4, 4]
    assert SetChain.from_state_dict({"stability": {}}).clusters == ClusterChain()
    with pytest.raises(ValueError, match="next_id 2, not above its largest id 5"):
        SetChain.from_state_dict({"clusters": {"keys": [1], "ids": [5], "next_id": 2}})


def test_evolve_writes_the_ids_and_rows_of_one_transition():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[[0, 0, 1, 2]] * 20  # two blobs share a centre: k-means splits them

    def run(index: int, groups: np.ndarray, chain: SetChain) -> tuple[Evolved, SetChain]:
        X = (centres[groups] + rng.normal(size=(groups.size, 4))).astype(np.float32)
        p = Projection(EpochSample("z", np.arange(groups.size), list(range(groups.size)), X),
                       epoch=index, step=index)
        out = evolve(p, None, chain, EvolveSettings(n_clusters=3), val_index=index)
        return out, out.chain

    first, chain = run(0, np.repeat([0, 1, 2, 3], 25), SetChain())
    second, chain = run(1, np.repeat([0, 2, 3, 3], 25), chain)
    runs = [(dict(enumerate(p.clusters.tolist())), p.lineage) for p in (first, second)]
    check_chain(runs)
    assert chain.clusters.ids == second.clusters.tolist()


# ---------------------------------------------------------------- a real fit

@pytest.mark.parametrize("method", ["hdbscan", "kmeans"])
def test_fit_on_digits_ids_follow_the_lineage_files(tmp_path, method):
    """The users' cases: HDBSCAN on a digits MLP while it trains, and k-means without labels
    (k from the number of points, as for a self-supervised model). Clusters split, merge,
    dissolve into noise and appear; lineage.csv and the CSV cluster column must tell one
    story. With Jaccard matching, this very fit listed ids as vanished while alive (HDBSCAN:
    cluster 0 at run 2; k-means: 8 and 13), and emerging clusters took ids in use before."""
    L.seed_everything(0)
    # k-means without smoothing: these rules need churn (splits and merges) to be exercised;
    # seeded from the previous run, k-means on this fit only survives, splits and emerges.
    kw = {"label_key": "labels"} if method == "hdbscan" else {"cluster_smoothing": False}
    projector = EmbeddingProjector(reducers="pca", max_samples=500, clusters=method, **kw)
    train, val = loaders(n_train=600, n_val=500)
    trainer(tmp_path, [projector], max_epochs=6).fit(DigitsModel(lr=0.3), train, val)

    points = read_projections(tmp_path)
    lineage = read_lineage(tmp_path)
    metrics = read_metrics(tmp_path).set_index("val_index")
    runs, prev = [], None
    for v, run in points.groupby("val_index"):
        cur = dict(zip(run["sample_id"].tolist(), run["cluster"].astype(int).tolist(),
                       strict=True))
        runs.append((cur, lineage[lineage["val_index"] == v].to_dict("records")))
        # the metrics leave noise out, from the same cluster column
        ids = run["cluster"].to_numpy(int)
        m = metrics.loc[v]
        assert m["clusters/count"] == len(set(ids.tolist()) - {-1})
        assert m["clusters/noise_fraction"] == pytest.approx((ids == -1).mean())
        if method == "hdbscan":
            y = run["label"].to_numpy()
            assert m["clusters/nmi_labels"] == pytest.approx(
                normalized_mutual_info_score(y[ids != -1], ids[ids != -1]))
        if prev is not None:
            both = [(prev[s], c) for s, c in cur.items() if prev.get(s, -1) != -1 and c != -1]
            assert m["clusters/ari_previous"] == pytest.approx(
                adjusted_rand_score(*zip(*both, strict=True)))
        prev = cur
    check_chain(runs)
    # the fit really exercises the rules: new clusters after the first run, vanishing, noise
    later = Counter(lineage.loc[lineage["val_index"] > 0, "event"])
    assert later["emerge"] >= 1 and later["vanish"] >= 1 and later["survive"] >= 10, later
    if method == "hdbscan":
        assert (points["cluster"] == -1).any()
    else:
        assert later["split"] >= 2 and later["merge"] >= 1, later
