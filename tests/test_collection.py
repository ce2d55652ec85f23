"""Per-batch collection (sample, buffer, Collector) and the background worker, on real parts."""

from __future__ import annotations

import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_embproj.buffer import SampleBuffer
from lightning_embproj.collect import Collector, Placement
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.sample import derived_ids, hash_ids
from lightning_embproj.warn import ProjectorWarning, WarnOnce
from lightning_embproj.worker import Worker


@pytest.mark.parametrize("seed", range(5))
def test_buffer_keeps_exactly_the_bottom_k_of_a_stream_with_repeats(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, 2000)  # many ids repeat, like padded or re-visited samples
    buf, k = SampleBuffer(max_samples=64), 64
    start = 0
    while start < len(ids):
        n = int(rng.integers(1, 50))
        part = ids[start : start + n]
        keys = hash_ids(part, 0)
        rows = {"embeddings": part[:, None].astype(np.float32) * np.ones((1, 3), np.float32),
                "text": np.array([f"t{i}" for i in part], dtype=object)}
        buf.add(keys, rows)
        start += n
    unique = np.unique(ids)
    want = np.sort(hash_ids(unique, 0))[:k]
    keys, cols = buf.columns()
    np.testing.assert_array_equal(keys, want)
    by_key = dict(zip(hash_ids(unique, 0).tolist(), unique.tolist(), strict=True))
    expected_ids = [by_key[key] for key in keys.tolist()]
    np.testing.assert_array_equal(cols["embeddings"][:, 2], expected_ids)
    assert cols["text"].tolist() == [f"t{i}" for i in expected_ids]


def _collect(n_batches: int, batch: int = 500, dim: int = 256, **opts) -> Collector:
    c = Collector(ProjectorOptions(max_samples=300, **opts))
    g = torch.Generator().manual_seed(0)
    for _ in range(n_batches):
        c.add_batch({"embeddings": torch.randn(batch, dim, generator=g)}, {}, None, 0)
    return c


def test_collection_memory_does_not_grow_with_the_validation_set():
    peaks = []
    for n_batches in (4, 40):  # 2,000 vs 20,000 rows of 256 dims (20 MB of embeddings)
        tracemalloc.start()
        c = _collect(n_batches)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(c.samples()["embeddings"]) == 300
    assert peaks[1] - peaks[0] < 200_000, peaks  # bytes; the buffer itself is 300 x 256 x 4


def test_float16_storage_halves_the_buffer():
    s16 = _collect(3, storage_dtype="float16").samples()["embeddings"]
    s32 = _collect(3).samples()["embeddings"]
    assert s16.embeddings.dtype == np.float16 and s32.embeddings.dtype == np.float32
    np.testing.assert_array_equal(s16.keys, s32.keys)
    np.testing.assert_allclose(s16.embeddings, s32.embeddings, atol=1e-2, rtol=1e-3)


def test_inference_and_autograd_tensors_leave_plain_arrays():
    layer = torch.nn.Linear(8, 4)
    c = Collector(ProjectorOptions(label_key="y", max_samples=10))
    with torch.inference_mode():
        c.add_batch({"embeddings": layer(torch.randn(6, 8))}, {"y": torch.arange(6)}, None, 0)
    c.add_batch({"embeddings": layer(torch.randn(6, 8))}, {"y": torch.arange(6)}, None, 0)
    s = c.samples()["embeddings"]
    assert isinstance(s.embeddings, np.ndarray) and s.embeddings.shape == (10, 4)
    assert np.isfinite(s.embeddings).all()
    assert s.embeddings.base is None or not isinstance(s.embeddings.base, torch.Tensor)


def test_nonfinite_rows_are_counted_and_left_out():
    c = Collector(ProjectorOptions(max_samples=10))
    z = torch.randn(8, 3)
    z[2, 1], z[5, 0] = float("nan"), float("inf")
    c.add_batch({"embeddings": z}, {}, None, 0)
    s = c.samples()["embeddings"]
    assert c.nonfinite == 2 and sorted(s.sample_ids) == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize(("n", "world"), [(1, 2), (5, 2), (301, 2), (10, 3), (7, 4)])
def test_derived_ids_match_the_distributed_sampler_with_padding(n, world):
    data = list(range(n))
    for rank in range(world):
        seen = list(DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False))
        # the loader hands them out in batches of 2: positions continue across batches
        got = np.concatenate([
            derived_ids(s, len(seen[s : s + 2]), rank=rank, world_size=world, dataset_len=n)
            for s in range(0, len(seen), 2)
        ])
        assert got.tolist() == seen


def test_collector_under_ddp_placement_uses_dataset_positions():
    c = Collector(ProjectorOptions(max_samples=100))
    where = Placement(rank=1, world_size=2, dataset_len=5)
    c.add_batch({"embeddings": torch.randn(3, 2)}, {}, None, 0, where)
    assert sorted(c.samples()["embeddings"].sample_ids) == [0, 1, 3]  # 1, 3, then padding 0


def test_hash_keys_are_stable_salted_and_accept_strings():
    ids = np.arange(1000)
    a, b = hash_ids(ids, 0), hash_ids(ids, 1)
    assert (a >= 0).all() and len(np.unique(a)) == 1000
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(hash_ids(["x", "y"], 0), hash_ids(np.array(["x", "y"]), 0))


# -- background worker -----------------------------------------------------------------------
def test_worker_failure_is_one_warning_and_later_jobs_still_run():
    w, done = Worker(max_pending=10, warn=WarnOnce()), []

    def boom() -> None:
        raise RuntimeError("reducer exploded")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            w.submit("emb", boom)
        w.submit("emb", lambda: done.append(1))
        assert w.flush(timeout=10)
    w.close()
    msgs = [str(x.message) for x in caught if issubclass(x.category, ProjectorWarning)]
    assert len(msgs) == 1 and "reducer exploded" in msgs[0] and "training continues" in msgs[0]
    assert done == [1]


def test_worker_runs_in_order_off_the_caller_thread_at_lower_priority():
    import os

    w, seen = Worker(max_pending=10), []
    gate = threading.Event()

    def job(i: int) -> None:
        gate.wait(5)
        tid = threading.get_native_id()
        seen.append((i, threading.current_thread() is threading.main_thread(),
                     os.getpriority(os.PRIO_PROCESS, tid)))

    t = time.perf_counter()
    for i in range(4):
        w.submit("emb", lambda i=i: job(i))
    submit_time = time.perf_counter() - t
    gate.set()
    assert w.flush(timeout=10)
    w.close()
    assert submit_time < 0.05  # the caller (training thread) never waits for the jobs
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]
    assert not any(main for _, main, _ in seen)
    assert all(nice >= os.getpriority(os.PRIO_PROCESS, 0) + 10 or nice == 19
               for _, _, nice in seen)


def test_worker_queue_policy_drops_the_oldest_waiting_epoch_of_that_set():
    gate, done = threading.Event(), []
    w = Worker(max_pending=2, warn=WarnOnce())
    w.submit("emb", lambda: (gate.wait(5), done.append("running")))
    time.sleep(0.1)  # the first job is now in flight; the next ones wait
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(1, 5):
            w.submit("emb", lambda e=epoch: done.append(e))
        w.submit("other", lambda: done.append("other"))
    gate.set()
    assert w.flush(timeout=10)
    w.close()
    assert done == ["running", 3, 4, "other"] and w.dropped == 2
    assert sum(issubclass(x.category, ProjectorWarning) for x in caught) == 1


def test_synchronous_switch_runs_on_the_caller_thread():
    w, where = Worker(background=False), []
    w.submit("emb", lambda: where.append(threading.current_thread()))
    assert where == [threading.current_thread()] and w.pending() == 0
