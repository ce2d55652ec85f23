"""Per-batch collection (sample, buffer, Collector) and the background worker, on real parts."""

from __future__ import annotations

import heapq
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_embproj.collect.buffer import SampleBuffer
from lightning_embproj.collect.collector import Collector, Placement
from lightning_embproj.collect.hashing import derived_ids, hash_ids
from lightning_embproj.collect.schedule import Schedule
from lightning_embproj.options import ProjectorOptions
from lightning_embproj.runtime.warn import ProjectorWarning, WarnOnce
from lightning_embproj.runtime.worker import Worker


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


# -- data types: ids, texts, labels and metadata of any width and dtype ----------------------
def _one_set(**opts) -> Collector:
    opts.setdefault("max_samples", 1000)
    return Collector(ProjectorOptions(**opts))


def _rows_by_id(sample) -> dict:
    return {sid: i for i, sid in enumerate(sample.sample_ids)}


@pytest.mark.parametrize("as_array", [False, True], ids=["list", "numpy"])
def test_string_ids_and_texts_of_any_width_stay_intact(as_array):
    import uuid

    rng = np.random.default_rng(0)
    batches = [
        ["img_7", "img_8", "x"],  # the first batch is narrow: '<U5' once it is a numpy array
        ["img_10000", "000123", "img_99999999"],
        [str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(3)],
    ]
    c = _one_set(id_key="id", label_key="y", metadata_keys=["text"])
    for ids in batches:
        labels = [f"class_{len(i)}" for i in ids]
        texts = [f"text of {i} " * 3 for i in ids]
        conv = np.array if as_array else list
        c.add_batch({"embeddings": torch.randn(3, 4)},
                    {"id": conv(ids), "y": conv(labels), "text": conv(texts)}, None, 0)
    s = c.samples()["embeddings"]
    want = [i for ids in batches for i in ids]
    assert sorted(s.sample_ids) == sorted(want)
    assert all(type(v) is str for v in s.sample_ids)  # "000123" stays a string, not 123
    row = _rows_by_id(s)
    for sid in want:
        assert s.labels[row[sid]] == f"class_{len(sid)}"
        assert s.metadata["text"][row[sid]] == f"text of {sid} " * 3


def test_ids_hash_the_same_from_a_list_an_array_a_tensor_and_any_int_width():
    base = np.array([0, 1, 5, 100, 127])
    want = hash_ids(base, 0)
    for ids in [base.tolist(), base.astype(np.int8), base.astype(np.uint8), base.astype(np.int32),
                base.astype(np.uint64), torch.tensor(base, dtype=torch.int8),
                torch.tensor(base, dtype=torch.int32), torch.tensor(base)]:
        from lightning_embproj.collect.ids import as_ids

        np.testing.assert_array_equal(hash_ids(as_ids(ids, "id", 5), 0), want)
    words = ["img_7", "img_10000", "000123"]
    keys = hash_ids(words, 0)
    np.testing.assert_array_equal(hash_ids(np.array(words), 0), keys)
    np.testing.assert_array_equal(hash_ids(np.array(words, dtype=object), 0), keys)
    # The same id in a wider array (another batch) keeps its key.
    assert hash_ids(np.array(["img_7"]), 0)[0] == keys[0]
    assert hash_ids(np.array(["img_7", "a" * 1000]), 0)[0] == keys[0]
    assert len(set(hash_ids([f"img_{i}" for i in range(50_000)], 0).tolist())) == 50_000


def test_hash_values_are_pinned_by_hash_version():
    from lightning_embproj.collect import hashing as sample

    # Changing any of these keys changes which samples are tracked: bump HASH_VERSION.
    assert sample.HASH_VERSION == 2
    ints = np.array([0, 1, 2, 123456789, -5])
    # Int keys are those of version 1 (BLAKE2b only hashed strings).
    assert hash_ids(ints, 0).tolist() == [2812178212566171247, 627405149472732430,
                                          6326597005793557049, 191962229873794322,
                                          1041373879972731040]
    assert hash_ids(ints, 1).tolist()[:2] == [6791897765849424158, 7637366413335392798]
    assert hash_ids(["img_7", "000123", "", "\u00e9\U0001F600"], 0).tolist() == [
        667554864863570396, 7587786376189579789, 5187288695422590176, 4245468544036976707]


@pytest.mark.parametrize(
    "ids",
    [np.arange(6, dtype=np.int8), np.arange(6, dtype=np.uint8), np.arange(6, dtype=np.int64),
     np.arange(6, dtype=np.uint64), torch.arange(6, dtype=torch.int8),
     torch.arange(6, dtype=torch.uint8), torch.arange(6).to(torch.bfloat16),
     torch.arange(6).to(torch.float16), torch.arange(6).float()],
    ids=lambda v: str(v.dtype),
)
def test_int_ids_of_any_dtype_become_python_ints(ids):
    c = _one_set(id_key="id")
    c.add_batch({"embeddings": torch.randn(6, 3)}, {"id": ids}, None, 0)
    c.add_batch({"embeddings": torch.randn(6, 3)}, {"id": ids.tolist()}, None, 0)  # repeats
    s = c.samples()["embeddings"]
    assert sorted(s.sample_ids) == list(range(6))
    assert all(type(v) is int for v in s.sample_ids)
    np.testing.assert_array_equal(np.sort(s.keys), np.sort(hash_ids(np.arange(6), 0)))


def test_int8_ids_then_wider_ids_widen_the_column():
    c = _one_set(id_key="id")
    c.add_batch({"embeddings": torch.randn(3, 3)}, {"id": np.array([1, 2, 3], np.int8)}, None, 0)
    c.add_batch({"embeddings": torch.randn(2, 3)}, {"id": np.array([70_000, 2**40])}, None, 0)
    assert sorted(c.samples()["embeddings"].sample_ids) == [1, 2, 3, 70_000, 2**40]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.tensor([0.5, 1.0]), r"id_key='id': float ids must be whole numbers below 16777216 "
                                   r"\(the largest that float32 stores exactly\), got e\.g\. "
                                   r"\[0\.5, 1\.0\]"),
        (torch.tensor([1.0, 300.0], dtype=torch.bfloat16),
         r"id_key='id': float ids must be whole numbers below 256 \(the largest that bfloat16 "
         r"stores exactly\).*pass ids as an int tensor"),
        (torch.tensor([[1, 2], [3, 4]]), r"id_key='id': expected one id per row, shape \(2,\), "
                                         r"got shape \(2, 2\)"),
    ],
    ids=["fraction", "bf16-too-large", "2d"],
)
def test_bad_ids_raise_naming_id_key(ids, match):
    c = _one_set(id_key="id")
    with pytest.raises(ValueError, match=match):
        c.add_batch({"embeddings": torch.randn(2, 3)}, {"id": ids}, None, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_embeddings_labels_and_metadata(dtype):
    c = _one_set(label_key="y", metadata_keys=["score", "vec", "img"], storage_dtype="float32")
    z = torch.randn(8, 5).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]).to(dtype)
    score = torch.linspace(0, 1, 8).to(dtype)
    vec = torch.randn(8, 3).to(dtype)
    img = torch.rand(8, 3, 4, 4).to(dtype)
    c.add_batch({"embeddings": z}, {"y": y, "score": score, "vec": vec, "img": img}, None, 0)
    s = c.samples()["embeddings"]
    order = np.array(s.sample_ids)
    assert s.embeddings.dtype == np.float32
    np.testing.assert_array_equal(s.embeddings, z.float().numpy()[order])
    np.testing.assert_array_equal(s.labels, y.float().numpy()[order])
    np.testing.assert_array_equal(s.metadata["score"], score.float().numpy()[order])
    np.testing.assert_array_equal(s.metadata["vec"], vec.float().numpy()[order])
    assert s.metadata["img"].dtype == np.uint8 and s.metadata["img"].shape == (8, 4, 4, 3)
    assert s.image_columns() == ["img"]


def test_labels_one_per_row():
    c = _one_set(label_key="y")
    c.add_batch({"embeddings": torch.randn(4, 3)}, {"y": torch.arange(4)[:, None]}, None, 0)
    assert sorted(c.samples()["embeddings"].labels.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"label_key='y': expected one label per row, shape "
                       r"\(B,\), got shape \(4, 3\); pass class indices"):
        c.add_batch({"embeddings": torch.randn(4, 3)}, {"y": torch.randn(4, 3)}, None, 0)


# -- pooling ---------------------------------------------------------------------------------
SEQ = torch.tensor([
    [[1.0, 10.0], [3.0, -2.0], [5.0, 4.0]],
    [[0.0, 1.0], [2.0, 9.0], [-4.0, 2.0]],
])  # (B=2, T=3, D=2)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # row 0: two real tokens, row 1: one


@pytest.mark.parametrize(
    ("pooling", "mask", "want"),
    [
        ("auto", None, [[3.0, 4.0], [-2 / 3, 4.0]]),
        ("mean", None, [[3.0, 4.0], [-2 / 3, 4.0]]),
        ("max", None, [[5.0, 10.0], [2.0, 9.0]]),
        ("first", None, [[1.0, 10.0], [0.0, 1.0]]),
        ("last", None, [[5.0, 4.0], [-4.0, 2.0]]),
        ("flatten", None, [[1.0, 10.0, 3.0, -2.0, 5.0, 4.0], [0.0, 1.0, 2.0, 9.0, -4.0, 2.0]]),
        ("auto", MASK, [[2.0, 4.0], [0.0, 1.0]]),
        ("mean", MASK.bool(), [[2.0, 4.0], [0.0, 1.0]]),
        ("max", MASK.float(), [[3.0, 10.0], [0.0, 1.0]]),
        ("last", MASK.numpy(), [[3.0, -2.0], [0.0, 1.0]]),
    ],
)
def test_sequence_pooling_exact_values(pooling, mask, want):
    mask_key = None if mask is None else "mask"
    c = _one_set(pooling=pooling, mask_key=mask_key)
    outputs = {"mask": mask} if mask is not None else {}
    c.add_batch({"embeddings": SEQ.to(torch.bfloat16) if pooling == "auto" else SEQ}, outputs,
                None, 0)
    s = c.samples()["embeddings"]
    got = s.embeddings[np.argsort(s.sample_ids)]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.array(want, np.float32), rtol=1e-6)


def test_masked_row_without_real_tokens_is_left_out_as_nonfinite():
    for pooling in ("mean", "max", "last"):
        c = _one_set(pooling=pooling, mask_key="mask")
        c.add_batch({"embeddings": SEQ}, {"mask": torch.tensor([[1, 0, 0], [0, 0, 0]])}, None, 0)
        s = c.samples()["embeddings"]
        assert s.sample_ids == [0] and c.nonfinite == 1, pooling


FMAP = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # (B, C, H, W)


@pytest.mark.parametrize(
    ("pooling", "want"),
    [
        ("auto", FMAP.mean(dim=(2, 3))),
        ("mean", FMAP.mean(dim=(2, 3))),
        ("max", FMAP.amax(dim=(2, 3))),
        ("flatten", FMAP.reshape(2, 12)),
    ],
)
def test_feature_map_pooling_exact_values(pooling, want):
    c = _one_set(pooling=pooling, mask_key="mask" if pooling == "auto" else None)
    # a mask is for sequences: a feature map ignores it
    c.add_batch({"embeddings": FMAP.numpy()}, {"mask": torch.ones(2, 7)}, None, 0)
    s = c.samples()["embeddings"]
    np.testing.assert_array_equal(s.embeddings[np.argsort(s.sample_ids)], want.numpy())
    assert torch.equal(FMAP[0, 1], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))  # layout of FMAP
    if pooling == "mean":
        assert s.embeddings[np.argsort(s.sample_ids)][0].tolist() == [1.5, 5.5, 9.5]


@pytest.mark.parametrize("pooling", ["first", "last"])
def test_first_or_last_of_a_feature_map_is_refused(pooling):
    c = _one_set(pooling=pooling)
    with pytest.raises(ValueError, match=rf"embeddings 'embeddings': pooling='{pooling}' takes "
                       r"one token of a \(B, T, D\) sequence, but this output has shape "
                       r"\(2, 3, 2, 2\).*use pooling='auto' or 'mean'"):
        c.add_batch({"embeddings": FMAP}, {}, None, 0)


def test_flatten_with_a_varying_sequence_length_names_the_pooling_option():
    c = _one_set(pooling="flatten")
    c.add_batch({"embeddings": torch.randn(2, 5, 4)}, {}, None, 0)
    with pytest.raises(ValueError, match=r"embeddings 'embeddings' changed dimension at validation "
                       r"batch 1: pooling='flatten' turns shape \(B, 5, 4\) of earlier batches "
                       r"into 20 values per row, this batch's \(B, 7, 4\) into 28\. A sequence "
                       r"length or image size that varies needs pooling: use pooling='mean'"):
        c.add_batch({"embeddings": torch.randn(2, 7, 4)}, {}, None, 0)
    c = _one_set()  # auto: any T gives D values
    c.add_batch({"embeddings": torch.randn(2, 5, 4)}, {}, None, 0)
    c.add_batch({"embeddings": torch.randn(2, 7, 4)}, {}, None, 0)
    assert c.samples()["embeddings"].embeddings.shape == (4, 4)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(2, 4), r"mask_key='mask': expected shape \(B, T\) = \(2, 3\) to match "
                           r"embeddings 'embeddings' of shape \(2, 3, 2\), got shape \(2, 4\)"),
        (torch.tensor([[0.0, 0.0, -1e4], [0.0, -1e4, -1e4]]),
         r"mask_key='mask': expected bools or 0/1 values \(1 = real token\), got values from "
         r"-10000\.0 to 0\.0; an additive attention mask"),
        ([[1, 1, 0], [1, 0, 0]], r"mask_key='mask': expected a \(B, T\) tensor or array"),
    ],
    ids=["shape", "additive", "list"],
)
def test_bad_mask_raises_naming_mask_key(mask, match):
    c = _one_set(mask_key="mask")
    with pytest.raises((ValueError, TypeError), match=match):
        c.add_batch({"embeddings": SEQ}, {"mask": mask}, None, 0)


def test_large_buffer_warns_once_per_set_with_the_fixes():
    fmap = torch.randn(4, 512, 7, 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = _one_set(max_samples=3000, pooling="flatten")
        for _ in range(3):
            c.add_batch({"embeddings": fmap}, {}, None, 0)
        _one_set(max_samples=3000, pooling="flatten", storage_dtype="float16").add_batch(
            {"embeddings": fmap}, {}, None, 0)  # 151 MB: no warning
        _one_set(max_samples=3000).add_batch({"embeddings": fmap}, {}, None, 0)  # auto: 512
    msgs = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    assert msgs == [
        "lightning-embproj: embeddings 'embeddings' of shape (4, 512, 7, 7) give 25088 values "
        "per row with pooling='flatten': the sample buffer may reach 301 MB per process "
        "(max_samples=3000 x 25088 x 4 bytes) and every reducer works on 25088 dims. Lower it "
        "with pooling='auto' or 'mean' (pools sequences and feature maps), a smaller "
        "max_samples, or storage_dtype='float16'"
    ]
    seen: list[tuple[str, str]] = []
    hooked = Collector(ProjectorOptions(max_samples=3000, pooling="flatten"),
                       warn=lambda topic, msg: seen.append((topic, msg)))
    hooked.add_batch({"embeddings": fmap}, {}, None, 0)
    assert [t for t, _ in seen] == ["buffer-size:embeddings"]


# -- images and other metadata -----------------------------------------------------------------
def test_metadata_kinds_scalars_vectors_and_images():
    c = _one_set(metadata_keys=["score", "vec", "chw", "gray", "hwc", "u8"],
                 image_keys=["gray", "hwc"])
    u8 = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    c.add_batch({"embeddings": torch.randn(4, 3)}, {
        "score": torch.arange(4.0), "vec": torch.arange(8).reshape(4, 2),
        "chw": torch.rand(4, 1, 5, 6), "gray": np.random.rand(4, 5, 6),
        "hwc": np.random.rand(4, 5, 6, 3), "u8": u8}, None, 0)
    s = c.samples()["embeddings"]
    order = np.array(s.sample_ids)
    assert s.metadata["score"].tolist() == order.astype(float).tolist()
    assert s.metadata["vec"].tolist() == [[2 * i, 2 * i + 1] for i in order]  # one list per row
    assert s.image_columns() == ["chw", "gray", "hwc", "u8"]
    assert s.metadata["chw"].shape == (4, 5, 6, 1) and s.metadata["gray"].shape == (4, 5, 6, 1)
    assert s.metadata["hwc"].shape == (4, 5, 6, 3)
    # uint8 pixels are kept as they are (not stretched), only moved to channels-last
    np.testing.assert_array_equal(s.metadata["u8"], u8.permute(0, 2, 3, 1).numpy()[order])


@pytest.mark.parametrize(
    ("value", "images", "match"),
    [
        (torch.randn(4, 7, 16), [],
         r"metadata_keys='tokens': got shape \(4, 7, 16\), which is neither one value per row "
         r"\(B,\), a short vector per row \(B, K\), nor an image \(B, C, H, W\) with C in "
         r"\(1, 3, 4\)\. If it is an image, add 'tokens' to image_keys.*reduce it to one value "
         r"per row"),
        (torch.randn(4, 8, 8, 3), [], r"metadata_keys='tokens': got shape \(4, 8, 8, 3\).*add "
                                     r"'tokens' to image_keys \(\(B, H, W\) and \(B, H, W, C\) "
                                     r"are accepted there\)"),
        (torch.randn(4, 7), ["tokens"], r"image_keys: 'tokens' \(metadata_keys='tokens'\) must "
                                        r"hold images .*got shape \(4, 7\)"),
        (torch.randn(4, 2, 8, 8), ["tokens"], r"image_keys: 'tokens'.*got shape \(4, 2, 8, 8\)"),
        (["a", "b", "c", "d"], ["tokens"], r"image_keys: 'tokens' \(metadata_keys='tokens'\) "
                                           r"must be a tensor or array of images"),
    ],
    ids=["token-features", "hwc-undeclared", "declared-2d", "declared-2-channels", "list"],
)
def test_metadata_that_is_no_image_and_no_cell_is_refused(value, images, match):
    c = _one_set(metadata_keys=["tokens"], image_keys=images)
    with pytest.raises((ValueError, TypeError), match=match):
        c.add_batch({"embeddings": torch.randn(4, 3)}, {"tokens": value}, None, 0)


# -- the precomputed schedule of derived ids ---------------------------------------------------
@pytest.mark.parametrize(
    ("k", "rows", "world", "rank", "length", "batch"),
    [(50, 3000, 1, 0, None, 37), (300, 9000, 1, 0, None, 256), (100, 1001, 3, 2, 1001, 64),
     (7, 100, 1, 0, None, 1), (40, 50, 4, 3, 197, 500)],
)
def test_schedule_holds_the_streaming_buffer_state_after_every_batch(
    k, rows, world, rank, length, batch
):
    from lightning_embproj.collect.schedule import NEVER, Schedule

    schedule = Schedule(k, 1, rank, world, length)
    share = rows if world == 1 else -(-length // world)
    slots = np.full(k, -1, dtype=np.int64)
    streaming = SampleBuffer(k)
    for start in range(0, share, batch):
        end = min(share, start + batch)
        ids = derived_ids(start, end - start, rank=rank, world_size=world, dataset_len=length)
        keys = hash_ids(ids, 1)
        streaming.add(keys, {"e": ids[:, None].astype(np.float32)})
        local, where, kept = schedule.kept(start, end)
        np.testing.assert_array_equal(schedule.keys[start:end], keys)
        np.testing.assert_array_equal(kept, keys[local])
        slots[where] = kept
        want, cols = streaming.columns()
        np.testing.assert_array_equal(np.sort(slots[: min(k, end)]), want)
        assert schedule.threshold_before(end) == (streaming.threshold() or NEVER)
    assert len(streaming) == min(k, share)


@pytest.mark.parametrize(
    ("nan_at", "streams"), [([], False), ([3], True), ([900, 1500], False), ([5, 1999], True)]
)
def test_scheduled_path_keeps_what_streaming_keeps_in_every_run(nan_at, streams):
    """Derived ids (the schedule's cached batch plans) vs the same ids given by `id_key`
    (streaming): identical samples and non-finite counts, run after run, with NaN rows early
    (every row looked at: the collector streams from there on) or only in rows whose keys
    could not enter (900 and 1500 here: it stays on the schedule)."""
    rows, k, batch = 2000, 100, 64  # the schedule takes batches of at most k rows
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(rows, 5, generator=gen)
    labels = torch.arange(rows) % 7
    for i in nan_at:
        z[i, 2] = float("nan")

    def run(id_key: str | None) -> tuple[dict[str, list], int]:
        c = Collector(ProjectorOptions(max_samples=k, id_key=id_key, label_key="y"))
        for start in range(0, rows, batch):
            end = min(rows, start + batch)
            outputs = {"y": labels[start:end], "id": torch.arange(start, end)}
            c.add_batch({"embeddings": z[start:end]}, outputs, None, 0)
        if id_key is not None:
            assert c.paths == ("streaming",)
        else:
            assert c.paths == (("scheduled", "streaming") if streams else ("scheduled",))
        s = c.samples()["embeddings"]
        order = np.argsort(s.keys)
        return ({"ids": [s.sample_ids[i] for i in order], "labels": s.labels[order].tolist(),
                 "emb": s.embeddings[order].tolist()}, c.nonfinite)

    streamed = run("id")
    for _ in range(3):  # the first run builds the plans, the later ones reuse them
        assert run(None) == streamed
    assert all(i not in streamed[0]["ids"] for i in nan_at)


def test_a_schedule_never_simulates_past_the_datasets_end():
    unknown = Schedule(k=50, dataloader_idx=2, max_positions=1000)
    for end in range(37, 1000, 37):  # length unknown: exactly the positions reached
        assert unknown.ensure(end) and unknown.covered == end
    np.testing.assert_array_equal(unknown.keys, hash_ids(np.arange(unknown.covered), 2))
    assert not unknown.ensure(1001) and unknown.covered == 999
    assert unknown.threshold[-1] == np.sort(unknown.keys)[49]  # the 50th smallest key so far
    for length, world, share in [(300, 1, 300), (10_000, 1, 10_000), (9, 2, 5), (20_001, 3, 6667)]:
        known = Schedule(k=50, dataloader_idx=2, world_size=world, dataset_len=length)
        covered = []
        for end in range(64, share + 64, 64):
            assert known.ensure(min(end, share))
            covered.append(known.covered)
        assert covered[-1] == share and max(covered) == share  # ahead, up to its end only
        assert len(set(covered)) <= 5  # in growing chunks: 4,096, 8,192, ...
        np.testing.assert_array_equal(known.threshold, _streaming_thresholds(known.keys, 50))
    # One process, a sampler that goes past the length it declares: exactly, from there on.
    over = Schedule(k=50, dataloader_idx=0, dataset_len=300)
    assert over.ensure(310) and over.covered == 310


def _streaming_thresholds(keys: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest key after each position (the largest int64 before k keys)."""
    out, kept = np.full(keys.size, np.iinfo(np.int64).max), []
    for i, key in enumerate(keys.tolist()):
        if len(kept) < k:
            heapq.heappush(kept, -key)
        elif key < -kept[0]:
            heapq.heapreplace(kept, -key)
        if len(kept) == k:
            out[i] = -kept[0]
    return out


def test_buffer_place_then_streaming_continues_from_the_placed_rows():
    buf = SampleBuffer(3)
    buf.place(np.array([0, 1, 2]), np.array([30, 10, 20]), {"e": np.arange(3.0)[:, None]}, 3)
    assert buf.threshold() == 30
    buf.add(np.array([5, 40]), {"e": np.array([[7.0], [8.0]])})
    keys, cols = buf.columns()
    assert keys.tolist() == [5, 10, 20] and cols["e"].ravel().tolist() == [7.0, 1.0, 2.0]
