"""Gather stage: merge_samples unit tests and real 2-process gloo runs of gather_samples."""

from __future__ import annotations

import datetime
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_embproj.collect.gather import gather_samples, merge_samples
from lightning_embproj.results import EpochSample

# A pool of 20 points; key of point i is KEYS[i] (distinct, not in id order, like a hash).
KEYS = np.random.default_rng(0).permutation(np.arange(20, dtype=np.int64) * 7919 + 13)


def make(ids: list[int], name: str = "z", dim: int = 3, metadata: tuple[str, ...] = ("text",),
         labels: bool = True, loader: bool = False, str_ids: bool = False) -> EpochSample:
    """Points `ids` of the pool; every field is a function of the id, so rows can be checked."""
    idx = np.asarray(ids, dtype=np.int64)
    columns: dict[str, Any] = {}
    for key in metadata:
        if key == "text":
            columns[key] = [f"text {i}" for i in ids]
        elif key == "score":
            columns[key] = idx.astype(np.float64) / 10
        elif key == "img":
            columns[key] = np.broadcast_to(idx[:, None, None, None], (len(ids), 2, 3, 4)).astype(
                np.uint8
            )
        else:
            columns[key] = [(key, i) for i in ids]
    return EpochSample(
        name=name,
        keys=KEYS[idx],
        sample_ids=[f"id-{i}" for i in ids] if str_ids else list(ids),
        embeddings=np.repeat(idx[:, None], dim, axis=1).astype(np.float32),
        labels=idx % 3 if labels else None,
        metadata=columns,
        dataloader_idx=idx % 2 if loader else None,
    )


def bottom_k(ids: list[int], k: int) -> list[int]:
    """What one rank keeps: its k points with the smallest keys."""
    return sorted(ids, key=lambda i: KEYS[i])[:k]


def expected_ids(*shards: list[int], k: int) -> list[int]:
    """Reference global sample, computed without merge_samples: k smallest distinct keys."""
    return bottom_k(sorted(set().union(*shards)), k)


def assert_rows(sample: EpochSample, ids: list[int]) -> None:
    """`sample` holds exactly the points `ids`, in this order, with every field aligned."""
    idx = np.asarray(ids)
    np.testing.assert_array_equal(sample.keys, KEYS[idx])
    assert [int(str(i).removeprefix("id-")) for i in sample.sample_ids] == ids
    np.testing.assert_array_equal(sample.embeddings[:, 0], idx.astype(np.float32))
    if sample.labels is not None:
        np.testing.assert_array_equal(sample.labels, idx % 3)
    if sample.dataloader_idx is not None:
        np.testing.assert_array_equal(sample.dataloader_idx, idx % 2)
    for key, value in sample.metadata.items():
        if key == "text":
            assert value == [f"text {i}" for i in ids]
        elif key == "score":
            np.testing.assert_array_equal(value, idx / 10)
        elif key == "img":
            assert value.dtype == np.uint8 and value.shape == (len(ids), 2, 3, 4)
            np.testing.assert_array_equal(value[:, 1, 2, 3], idx)


def assert_same(a: EpochSample | None, b: EpochSample | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert a.name == b.name and a.sample_ids == b.sample_ids
    for field in ("keys", "embeddings", "labels", "dataloader_idx"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert list(a.metadata) == list(b.metadata)
    for key, value in a.metadata.items():
        other = b.metadata[key]
        assert type(value) is type(other)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype
            np.testing.assert_array_equal(value, other)
        else:
            assert value == other


# ---------------------------------------------------------------- merge_samples
def merge(samples: list[EpochSample | None], max_samples: int) -> EpochSample:
    """merge_samples where a result is expected."""
    merged = merge_samples(samples, max_samples)
    assert merged is not None
    return merged


def test_merge_drops_duplicate_keys_keeping_the_first_copy():
    first, second = make([4, 0, 2]), make([1, 3, 0])
    second.sample_ids[2] = "second copy of 0"
    merged = merge([first, second], max_samples=10)
    assert_rows(merged, expected_ids([4, 0, 2], [1, 3, 0], k=10))
    assert "second copy of 0" not in merged.sample_ids
    assert len(np.unique(merged.keys)) == len(merged) == 5


def test_merge_keeps_the_smallest_keys_ordered_by_key():
    shards = [bottom_k(list(range(0, 20, 2)), 6), bottom_k(list(range(1, 20, 2)), 6)]
    merged = merge([make(s) for s in shards], max_samples=6)
    want = expected_ids(*shards, k=6)
    assert_rows(merged, want)
    assert np.all(np.diff(merged.keys) > 0)
    assert want == bottom_k(list(range(20)), 6)  # equals the bottom-k of the whole set


def test_merge_dedupes_within_one_sample_too():
    merged = merge([make([5, 5, 1])], max_samples=10)
    assert_rows(merged, expected_ids([5, 1], k=10))


@pytest.mark.parametrize("str_ids", [False, True])
def test_merge_handles_texts_numbers_images_labels_and_loaders(str_ids):
    kw = dict(metadata=("text", "score", "img"), loader=True, str_ids=str_ids)
    merged = merge([make([3, 8, 1], **kw), make([9, 8, 0, 6], **kw)], max_samples=4)
    assert_rows(merged, expected_ids([3, 8, 1], [9, 8, 0, 6], k=4))
    assert isinstance(merged.metadata["text"], list)
    assert merged.metadata["score"].dtype == np.float64
    assert merged.image_columns() == ["img"]
    assert all(isinstance(i, str) for i in merged.sample_ids) == str_ids


def test_merge_skips_none_entries():
    assert merge_samples([None, None], max_samples=3) is None
    assert merge_samples([], max_samples=3) is None
    alone = merge([None, make([7, 2, 5]), None], max_samples=2)
    assert_same(alone, merge_samples([make([7, 2, 5])], max_samples=2))
    assert_rows(alone, bottom_k([7, 2, 5], 2))


def test_merge_with_an_empty_sample():
    empty = make([])
    assert_rows(merge([empty, make([1, 2])], max_samples=5), expected_ids([1, 2], k=5))
    only_empty = merge_samples([empty, None], max_samples=5)
    assert only_empty is not None and len(only_empty) == 0 and only_empty.name == "z"


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(name="w"), "name 'z' on rank 0 vs 'w' on rank 1"),
        (dict(dim=5), "embedding dim 3 on rank 0 vs 5 on rank 1"),
        (dict(metadata=("text", "img")),
         r"metadata keys \['text'\] on rank 0 vs \['text', 'img'\] on rank 1"),
        (dict(labels=False), "labels set on rank 0 but None on rank 1"),
        (dict(loader=True), "dataloader_idx set on rank 1 but None on rank 0"),
    ],
)
def test_merge_mismatch_names_the_ranks_and_the_difference(other, message):
    with pytest.raises(ValueError, match=message):
        merge_samples([make([0, 1]), make([2, 3], **other)], max_samples=5)


def test_merge_mismatch_in_column_kind_or_image_shape():
    a, b = make([0, 1], metadata=("img", "score")), make([2], metadata=("img", "score"))
    b.metadata["score"] = b.metadata["score"].tolist()
    with pytest.raises(ValueError, match="'score' is a numpy array on rank 0 vs a list on rank 2"):
        merge_samples([a, None, b], max_samples=5)
    b = make([2], metadata=("img", "score"))
    b.metadata["img"] = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"'img' has per-row shape \(2, 3, 4\) on rank 0 vs "
                                         r"\(8, 8, 3\) on rank 1"):
        merge_samples([a, b], max_samples=5)


def test_merge_rejects_ragged_fields_and_bad_max_samples():
    bad = make([0, 1, 2])
    bad.metadata["text"] = ["only one"]
    with pytest.raises(ValueError, match=r"metadata\['text'\] on rank 1 has 1 rows, expected 3"):
        merge_samples([None, bad], max_samples=5)
    bad_values: tuple[Any, ...] = (0, -1, 2.5, True)
    for max_samples in bad_values:
        with pytest.raises(ValueError, match="`max_samples` must be a positive int"):
            merge_samples([make([0])], max_samples=max_samples)


def ddp_strategy(rank: int, world_size: int) -> Any:
    """A real Lightning DDPStrategy that reports `rank` of `world_size` (as after Trainer setup)."""
    import torch
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    env = LightningEnvironment()
    env.set_world_size(world_size)
    env.set_global_rank(rank)
    return DDPStrategy(cluster_environment=env, parallel_devices=[torch.device("cpu")] * world_size)


def single_device() -> Any:
    from lightning.pytorch.strategies import SingleDeviceStrategy

    return SingleDeviceStrategy(device="cpu")


@pytest.mark.parametrize("strategy", [None, "single"])
def test_gather_on_one_process_is_a_local_merge(strategy):
    chosen = single_device() if strategy else None
    sample = make([6, 6, 3, 9, 1])
    assert_same(gather_samples(sample, 3, chosen), merge_samples([sample], 3))
    assert gather_samples(None, 3, chosen) is None


def test_gather_with_a_process_group_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init1'}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=30))
    try:
        sample = make([4, 2, 8])
        for strategy in (None, single_device(), ddp_strategy(0, 1)):
            assert_same(gather_samples(sample, 2, strategy), merge_samples([sample], 2))
    finally:
        dist.destroy_process_group()


def test_strategy_of_two_without_a_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="reports 2 processes but no torch.distributed "
                                           "process group is initialised"):
        gather_samples(make([1]), 3, ddp_strategy(0, 2))


# ---------------------------------------------------------------- 2 real gloo processes
def _broken_on_load() -> None:
    raise TypeError("this value cannot be loaded")


class _FailsOnLoad:
    """Pickles fine, fails to unpickle: an unexpected (non-ValueError) failure on rank 0."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_broken_on_load, ())


MAX = 6
# scenario -> (rank 0 shard, rank 1 shard); None is a rank that saw no rows.
SCENARIOS: dict[str, tuple[Any, Any]] = {
    "five_and_zero": (make([0, 1, 2, 3, 4]), None),
    "seven_and_three": (
        make(bottom_k([0, 2, 4, 6, 8, 10, 12, 14, 16], MAX), metadata=("text", "img")),
        make([1, 3, 5], metadata=("text", "img")),
    ),
    # DistributedSampler with 5 samples on 2 ranks: sample 0 is seen by both.
    "padding_duplicate": (
        make([0, 2, 4], metadata=("text", "score"), str_ids=True, loader=True),
        make([1, 3, 0], metadata=("text", "score"), str_ids=True, loader=True),
    ),
    "none_anywhere": (None, None),
    "metadata_mismatch": (make([0, 2], metadata=("text",)), make([1], metadata=("text", "img"))),
    "unpicklable": (make([0]), make([1], metadata=("text", "fn"))),
    "unpickle_fails": (make([0]), make([1])),
    "after_errors": (make([5, 7]), make([6, 5])),  # the group still works after an error
}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    # A generous timeout: under load one rank may start (import Lightning) a minute after the
    # other, and gloo aborts the process when the rendezvous times out. No scenario relies on it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=180))
    strategy = ddp_strategy(rank, 2)
    results: dict[str, Any] = {}
    for name, shards in SCENARIOS.items():
        shard = shards[rank]
        if name == "unpicklable" and rank == 1:
            shard.metadata["fn"] = [lambda: None]
        if name == "unpickle_fails" and rank == 1:
            shard.metadata["text"] = [_FailsOnLoad()]
        results[name] = _outcome(shard, strategy)
    # A strategy that disagrees with the group's size: every rank raises, none waits.
    results["wrong_world_size"] = _outcome(SCENARIOS["after_errors"][rank], ddp_strategy(rank, 3))
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)
    # Last: only rank 0 gathers, with one-process strategies, while rank 1 leaves the group.
    # A collective here would fail or hang (rank 1 is gone) instead of returning the local merge.
    if rank == 0:
        alone = {label: _outcome(SCENARIOS["five_and_zero"][0], strategy)
                 for label, strategy in (("single_device", single_device()), ("no_strategy", None))}
        with open(Path(out_dir) / "rank0_alone.pkl", "wb") as f:
            pickle.dump(alone, f)
    dist.destroy_process_group()
    # gloo's threads now and then abort a finished process at exit with torch 2.13 ("terminate
    # called without an active exception"): the results are written, leave without destructors.
    os._exit(0)


def _outcome(shard: EpochSample | None, strategy: Any) -> tuple[str, Any]:
    try:
        return ("ok", gather_samples(shard, MAX, strategy))
    except Exception as err:
        return (type(err).__name__, str(err))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("gather_ddp")
    context = mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=2, join=False)
    deadline = time.monotonic() + 240  # generous: CPUs are shared, gloo times out at 30 s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            for process in context.processes:
                process.kill()
            break
    results = []
    for rank in range(2):
        if not (tmp / f"rank{rank}.pkl").exists():
            pytest.fail(f"gather worker {rank} hung or died before writing its results")
        with open(tmp / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    # Missing when rank 0 hung gathering alone: only the test of that case fails then.
    if (tmp / "rank0_alone.pkl").exists():
        with open(tmp / "rank0_alone.pkl", "rb") as f:
            results[0].update(pickle.load(f))
    return results


@pytest.mark.parametrize("scenario", ["five_and_zero", "seven_and_three", "padding_duplicate",
                                      "none_anywhere", "after_errors"])
def test_ddp_rank0_gets_the_single_process_merge_and_rank1_none(ddp_results, scenario):
    rank0, rank1 = ddp_results[0][scenario], ddp_results[1][scenario]
    assert rank0[0] == "ok" and rank1 == ("ok", None)
    shards = SCENARIOS[scenario]
    assert_same(rank0[1], merge_samples(list(shards), MAX))
    if rank0[1] is not None:
        ids = [[int(str(i).removeprefix("id-")) for i in s.sample_ids] for s in shards if s]
        assert_rows(rank0[1], expected_ids(*ids, k=MAX))


def test_ddp_uneven_and_duplicated_rows(ddp_results):
    gathered = {name: ddp_results[0][name][1] for name in SCENARIOS}
    assert len(gathered["five_and_zero"]) == 5
    assert len(gathered["seven_and_three"]) == MAX  # 6 + 3 rows in, bottom 6 kept
    assert gathered["seven_and_three"].image_columns() == ["img"]
    dup = gathered["padding_duplicate"]
    assert len(dup) == 5 and dup.sample_ids.count("id-0") == 1
    assert sorted(dup.metadata["text"]) == [f"text {i}" for i in range(5)]
    assert gathered["none_anywhere"] is None


def test_ddp_mismatch_raises_the_same_clear_error_on_every_rank(ddp_results):
    rank0, rank1 = ddp_results[0]["metadata_mismatch"], ddp_results[1]["metadata_mismatch"]
    assert rank0 == rank1
    assert rank0[0] == "ValueError"
    assert "metadata keys ['text'] on rank 0 vs ['text', 'img'] on rank 1" in rank0[1]


def test_ddp_unpicklable_sample_is_an_error_on_every_rank(ddp_results):
    rank0, rank1 = ddp_results[0]["unpicklable"], ddp_results[1]["unpicklable"]
    assert rank0 == rank1
    assert rank0[0] == "ValueError" and "rank 1 could not serialise" in rank0[1]


def test_ddp_unexpected_failure_on_rank0_reaches_the_other_ranks(ddp_results):
    rank0, rank1 = ddp_results[0]["unpickle_fails"], ddp_results[1]["unpickle_fails"]
    assert rank0 == ("TypeError", "this value cannot be loaded")
    assert rank1[0] == "RuntimeError"
    assert "failed on rank 0: TypeError: this value cannot be loaded" in rank1[1]


def test_ddp_strategy_with_the_wrong_world_size_fails_on_every_rank(ddp_results):
    rank0, rank1 = ddp_results[0]["wrong_world_size"], ddp_results[1]["wrong_world_size"]
    assert rank0 == rank1
    assert rank0[0] == "RuntimeError"
    assert "strategy reports 3 processes but the default torch.distributed process group has 2" \
        in rank0[1]


@pytest.mark.parametrize("label", ["single_device", "no_strategy"])
def test_one_process_strategy_inside_a_process_group_starts_no_collective(ddp_results, label):
    """Rank 0 of an initialised group of 2 gathers alone (a single-device Trainer in a sweep):
    it gets the local merge, although rank 1 never joins (it has left the group)."""
    assert label not in ddp_results[1]
    assert label in ddp_results[0], "rank 0 hung gathering alone: it started a collective"
    status, merged = ddp_results[0][label]
    assert status == "ok", merged
    shard = SCENARIOS["five_and_zero"][0]
    assert_same(merged, merge_samples([shard], MAX))
    assert_rows(merged, expected_ids([0, 1, 2, 3, 4], k=MAX))
