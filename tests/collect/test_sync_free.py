"""Sync-free collection: the device path (forced on CPU here) and the scheduled host path give the
samples of the streaming host path, and no host transfer or sync runs in a validation batch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from digits import DictDigits, DigitsModel, digits_tensors, trainer
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

import lightning_embproj.collect.validation as validation_module
from lightning_embproj import EmbeddingProjector
from lightning_embproj.collect.collector import Collector, Placement
from lightning_embproj.collect.hashing import hash_ids, hash_ids_torch
from lightning_embproj.collect.schedule import Schedule
from lightning_embproj.options import ProjectorOptions


# -- device hash ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.int64])
def test_device_hash_is_bit_identical_to_the_host_hash(dtype):
    rng = np.random.default_rng(0)
    info = torch.iinfo(dtype)
    ids = rng.integers(info.min, info.max, 50_000, endpoint=True).astype(np.int64)
    ids[:2] = [info.min, info.max]
    tensor = torch.from_numpy(ids).to(dtype)
    for dl in (0, 1, 5):
        np.testing.assert_array_equal(hash_ids_torch(tensor, dl).numpy(), hash_ids(ids, dl))
    # The pinned keys of HASH_VERSION 2 (tests/test_collection.py), now computed by torch.
    if dtype == torch.int64:
        got = hash_ids_torch(torch.tensor([0, 1, 2, 123456789, -5]), 0).tolist()
        assert got == [2812178212566171247, 627405149472732430, 6326597005793557049,
                       191962229873794322, 1041373879972731040]


# -- the three paths on the same batches ------------------------------------------------------
def _batches(n_rows: int, batch: int, seed: int, *, dtype=torch.float32, nan_every: int = 0,
             big_every: int = 0, seq: bool = False, ids: Any = None) -> list[tuple[dict, dict]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_rows, batch):
        n = min(batch, n_rows - start)
        z = torch.randn(n, 6, 5, generator=g) if seq else torch.randn(n, 5, generator=g)
        if nan_every:
            z[torch.arange(n) % nan_every == 1] = float("nan")
        if big_every:  # beyond float16 (left out with float16 storage), at its edge (kept)
            z[torch.arange(n) % big_every == 2, 0] = 1e5
            z[torch.arange(n) % big_every == 3, -1] = -65_536.0
            # float16's largest value; in bfloat16 65,504 rounds to 65,536: the one below
            edge = 65_280.0 if dtype == torch.bfloat16 else 65_504.0
            z[torch.arange(n) % big_every == 4, 1] = edge
        outputs = {
            "y": torch.randint(0, 4, (n,), generator=g),
            "text": [f"row {start + i} " + "x" * (i % 7) for i in range(n)],
            "img": torch.rand(n, 1, 3, 3, generator=g),  # rides along on the device
            "host_img": torch.rand(n, 3, 2, 2, generator=g).numpy(),  # stays on the host
            "mask": torch.rand(n, 6, generator=g) > 0.3,
        }
        if ids is not None:
            outputs["id"] = ids[start : start + n]
        out.append(({"embeddings": z.to(dtype)}, outputs))
    return out


def _run(batches: list, device_path: bool, where: Placement | None = None, dl_of=None,
         **opts: Any) -> Collector:
    opts = {"label_key": "y", "metadata_keys": ["text", "img", "host_img"], **opts}
    c = Collector(ProjectorOptions(**opts), device_path=device_path)
    for i, (emb, outputs) in enumerate(batches):
        c.add_batch(emb, outputs, None, dl_of(i) if dl_of else 0, where)
    return c


def _same(a: Collector, b: Collector) -> None:
    assert a.nonfinite == b.nonfinite
    assert a.overflow == b.overflow
    sa, sb = a.samples(), b.samples()
    assert sa.keys() == sb.keys() and sa
    for name in sa:
        x, y = sa[name], sb[name]
        np.testing.assert_array_equal(x.keys, y.keys)
        assert x.sample_ids == y.sample_ids
        assert [type(v) for v in x.sample_ids] == [type(v) for v in y.sample_ids]
        assert x.embeddings.dtype == y.embeddings.dtype
        np.testing.assert_array_equal(x.embeddings, y.embeddings)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.metadata.keys() == y.metadata.keys() == {"text", "img", "host_img"}
        assert x.image_columns() == y.image_columns() == ["img", "host_img"]
        for col in x.metadata:
            np.testing.assert_array_equal(x.metadata[col], y.metadata[col])
        if x.dataloader_idx is None:
            assert y.dataloader_idx is None
        else:
            np.testing.assert_array_equal(x.dataloader_idx, y.dataloader_idx)


def _expected_keys(ids: np.ndarray, k: int, dl: int = 0) -> np.ndarray:
    return np.sort(np.unique(hash_ids(ids, dl)))[:k]


SCENARIOS: dict[str, dict[str, Any]] = {
    "derived": dict(n_rows=500, batch=37, max_samples=50),
    "bf16": dict(n_rows=300, batch=64, max_samples=40, dtype=torch.bfloat16),
    "fp16-store": dict(n_rows=300, batch=64, max_samples=40, storage_dtype="float16"),
    "batch-over-k": dict(n_rows=400, batch=64, max_samples=10),
    "nan-rows": dict(n_rows=400, batch=50, max_samples=30, nan_every=9),
    "fp16-overflow": dict(n_rows=400, batch=50, max_samples=30, big_every=7, nan_every=11,
                          storage_dtype="float16"),
    "bf16-fp16-overflow": dict(n_rows=300, batch=64, max_samples=40, big_every=5,
                               dtype=torch.bfloat16, storage_dtype="float16"),
    "sequence-masked": dict(n_rows=300, batch=32, max_samples=40, seq=True, pooling="mean",
                            mask_key="mask"),
    "sequence-last": dict(n_rows=300, batch=32, max_samples=40, seq=True, pooling="last",
                          mask_key="mask"),
    "fit-all": dict(n_rows=30, batch=8, max_samples=100),
    # Batches of at most max_samples rows: the scheduled path takes them (until a bad row).
    "bf16-scheduled": dict(n_rows=300, batch=32, max_samples=40, dtype=torch.bfloat16),
    "nan-rows-scheduled": dict(n_rows=400, batch=25, max_samples=30, nan_every=9),
    "fp16-overflow-scheduled": dict(n_rows=400, batch=25, max_samples=30, big_every=7,
                                    storage_dtype="float16"),
}


def _split(spec: dict) -> tuple[dict, dict]:
    data = {k: spec[k] for k in ("n_rows", "batch", "dtype", "nan_every", "big_every", "seq")
            if k in spec}
    return data, {k: v for k, v in spec.items() if k not in data}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_device_and_scheduled_paths_match_streaming(name):
    data, opts = _split(SCENARIOS[name])
    batches = _batches(seed=len(name), **data)
    n = data["n_rows"]
    positions = torch.arange(n)
    streaming = _run(_batches(seed=len(name), ids=positions, **data), False, id_key="id", **opts)
    scheduled = _run(batches, False, **opts)
    device = _run(batches, True, **opts)
    assert streaming.paths == ("streaming",) and device.paths == ("device",)
    # A batch over max_samples rows, or with a NaN / overflow row it looks at (the first batch
    # here: all its rows are looked at), streams instead.
    hands_over = data["batch"] > opts["max_samples"] or "nan" in name or "overflow" in name
    assert scheduled.paths == (("scheduled", "streaming") if hands_over else ("scheduled",))
    _same(streaming, scheduled)
    _same(streaming, device)
    if "nan" in name:
        assert scheduled.nonfinite > 0
    elif "overflow" in name:
        # rows float16 would hold as Inf are left out and counted, on every path
        assert scheduled.overflow > 0
        s = device.samples()["embeddings"]
        assert s.embeddings.dtype == np.float16 and np.isfinite(s.embeddings).all()
        assert np.abs(s.embeddings).max() >= 65_280  # the largest values float16 holds stay
    else:
        np.testing.assert_array_equal(scheduled.samples()["embeddings"].keys,
                                      _expected_keys(np.arange(n), opts["max_samples"]))


def test_int_ids_with_repeats_dedupe_on_the_device_like_the_host():
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(rng.integers(0, 90, 600))  # repeats inside and across batches
    batches = _batches(600, 40, 1, ids=ids)
    host = _run(batches, False, id_key="id", max_samples=25)
    device = _run(batches, True, id_key="id", max_samples=25)
    assert device.path == "device"
    _same(host, device)
    s = device.samples()["embeddings"]
    np.testing.assert_array_equal(s.keys, _expected_keys(ids.numpy(), 25))
    # the first copy of a repeated id wins: its row of the first batch that had it
    first: dict[int, np.ndarray] = {}
    for emb, out in batches:
        for r, i in enumerate(out["id"].tolist()):
            first.setdefault(i, emb["embeddings"][r].numpy())
    for row, sid in enumerate(s.sample_ids):
        np.testing.assert_array_equal(s.embeddings[row], first[sid])


@pytest.mark.parametrize(("rank", "world", "length"), [(0, 2, 101), (2, 3, 101), (1, 4, 3)])
def test_ddp_placement_matches_on_every_path(rank, world, length):
    share = -(-length // world)
    batches = _batches(share, 16, rank)
    where = Placement(rank=rank, world_size=world, dataset_len=length)
    ids = torch.tensor([(p * world + rank) % length for p in range(share)])
    streaming = _run(_batches(share, 16, rank, ids=ids), False, where, id_key="id",
                     max_samples=20)
    _same(streaming, _run(batches, False, where, max_samples=20))
    _same(streaming, _run(batches, True, where, max_samples=20))


def test_two_loaders_and_a_run_cut_short_match():
    batches = _batches(400, 32, 7)
    dl_of = [0] * 6 + [1] * 7  # the first loader is cut after 6 batches (limit_val_batches)
    runs = [_run(batches[:13], path, dl_of=dl_of.__getitem__, max_samples=30)
            for path in (False, True)]
    assert runs[0].paths == ("scheduled", "streaming")  # the second loader streams
    assert runs[1].paths == ("device",)
    _same(*runs)
    s = runs[0].samples()["embeddings"]
    assert s.dataloader_idx is not None and set(s.dataloader_idx.tolist()) == {0, 1}
    rows = [sum(len(batches[i][1]["y"]) for i in range(13) if dl_of[i] == d) for d in (0, 1)]
    assert rows == [192, 208]  # the last batch has 16 rows
    keys = np.concatenate([hash_ids(np.arange(192), 0), hash_ids(np.arange(208), 1)])
    np.testing.assert_array_equal(s.keys, np.sort(keys)[:30])


def test_string_ids_fall_back_to_the_host_path():
    batches = _batches(100, 20, 0, ids=None)
    for b, (_, out) in enumerate(batches):
        out["id"] = [f"s{b}_{i}" for i in range(20)]
    host = _run(batches, False, id_key="id", max_samples=15)
    device = _run(batches, True, id_key="id", max_samples=15)
    assert device.paths == ("device", "streaming") and host.paths == ("streaming",)
    _same(host, device)


def test_a_later_host_batch_moves_the_device_buffer_to_the_host():
    batches = _batches(200, 25, 2, ids=torch.arange(200))
    for _, out in batches[4:]:
        out["id"] = out["id"].tolist()  # ids turn into a list: hashed on the host from here
    host = _run(batches, False, id_key="id", max_samples=30)
    device = _run(batches, True, id_key="id", max_samples=30)
    assert device.paths == ("device", "streaming") and device.batches == 8
    _same(host, device)


def test_schedule_stops_where_the_ranks_positions_end():
    s = Schedule(k=3, dataloader_idx=0, rank=0, world_size=2, dataset_len=9)
    assert s.ensure(5) and not s.ensure(6)  # rank 0 sees ceil(9 / 2) = 5 positions
    assert s.ids(np.arange(5)).tolist() == [0, 2, 4, 6, 8]


# -- no transfer or sync inside a validation batch of a real fit ------------------------------
SYNCS = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero",
         "aten.nonzero_static", "aten.masked_select", "aten.lift_fresh", "aten.lift_fresh_copy",
         "aten._unique2", "aten.unique_dim", "aten.unique_consecutive"}


class SyncRecorder(TorchDispatchMode):
    """Records the aten ops that need the host: scalars read, data-dependent shapes, tensors
    made from host data, boolean indexing, copies to the CPU from another device."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name in SYNCS:
            self.calls.append(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self.calls.append(f"{name} with a boolean mask")
        to_host = name == "aten._to_copy" and str(kwargs.get("device", "")) == "cpu"
        if to_host and args[0].device.type != "cpu":
            self.calls.append("aten._to_copy to cpu")
        return func(*args, **kwargs)


HOST_METHODS = ("numpy", "tolist", "item", "cpu", "__array__")


def watch_batches(projector: EmbeddingProjector, calls: list[str], monkeypatch) -> None:
    """Run the projector's batch hook under :class:`SyncRecorder`, with the tensor methods that
    leave the device recording their calls."""
    hook = projector.on_validation_batch_end

    def watched(*args: Any, **kwargs: Any) -> None:
        with monkeypatch.context() as m:
            for method in HOST_METHODS:
                original = getattr(torch.Tensor, method)

                def spy(self, *a, _name=method, _original=original, **k):
                    calls.append(f"Tensor.{_name}")
                    return _original(self, *a, **k)

                m.setattr(torch.Tensor, method, spy)
            with SyncRecorder(calls):
                hook(*args, **kwargs)

    monkeypatch.setattr(projector, "on_validation_batch_end", watched)


class SeqDigits(DigitsModel):
    """Digits with a sequence layer: each image row is a token, (B, 8, 16), and a token mask."""

    def __init__(self, mask_values: tuple[float, float] | None = None) -> None:
        super().__init__(dict_batches=True)
        self.tokens = nn.Linear(8, 16)
        self.mask_values = mask_values  # a mask of these (pad, real) numbers; None: bool

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        x = batch["x"]
        self.tokens(x.view(-1, 8, 8))
        out["mask"] = real = x.view(-1, 8, 8).sum(dim=2) > 0.5
        if self.mask_values is not None:
            pad, value = self.mask_values
            out["mask"] = torch.where(real, value, pad)
        return out


def _fit(tmp_path, monkeypatch, path: str, calls: list[str],
         mask_values: tuple[float, float] | None = None, storage_dtype: str = "float32",
         huge_every: int = 0) -> list[tuple[Any, dict]]:
    """``huge_every``: validation samples ``i % huge_every == 0`` are scaled by 1e6, so both
    layers give values far beyond float16's range for them."""
    monkeypatch.setenv("EMBPROJ_DEVICE_PATH", path)
    recorded: list[tuple[Any, dict]] = []

    class Recording(Collector):
        def samples(self):  # noqa: D102 - the real samples, kept for the comparison
            mode = self.path
            out = super().samples()
            recorded.append((mode, out))
            return out

    monkeypatch.setattr(validation_module, "Collector", Recording)
    x, y = digits_tensors(500)
    train = DataLoader(DictDigits(x[:200], y[:200]), batch_size=50, shuffle=True)
    xv = x[200:500].clone()
    if huge_every:
        xv[::huge_every] *= 1e6
    val = DataLoader(DictDigits(xv, y[200:500], offset=10_000), batch_size=64)
    proj = EmbeddingProjector(
        layers=["encoder", "tokens"], label_key="labels", id_key="id", pooling="mean",
        mask_key="mask", metadata_keys=["text", "image", "score"], max_samples=120,
        reducers="pca", background=False, storage_dtype=storage_dtype,
    )
    watch_batches(proj, calls, monkeypatch)
    L.seed_everything(0, verbose=False)
    t = trainer(tmp_path / path, [proj], max_epochs=2, precision="bf16-mixed")
    t.fit(SeqDigits(mask_values), train, val)
    return recorded


def test_real_bf16_fit_makes_no_host_sync_in_batches_and_matches_the_host_path(
    tmp_path, monkeypatch
):
    device_calls: list[str] = []
    device = _fit(tmp_path, monkeypatch, "1", device_calls)
    assert device_calls == []
    host_calls: list[str] = []
    host = _fit(tmp_path, monkeypatch, "0", host_calls)
    # The recorder sees the host path's copies: it would have seen the device path's.
    assert "Tensor.numpy" in host_calls or "Tensor.tolist" in host_calls
    assert [mode for mode, _ in device] == ["device", "device"]
    assert [mode for mode, _ in host] == ["streaming", "streaming"]
    for (_, d), (_, h) in zip(device, host, strict=True):
        assert set(d) == set(h) == {"encoder", "tokens"}
        for name in d:
            a, b = d[name], h[name]
            assert len(a) == 120
            np.testing.assert_array_equal(a.keys, b.keys)
            assert a.sample_ids == b.sample_ids
            np.testing.assert_array_equal(a.embeddings, b.embeddings)
            np.testing.assert_array_equal(a.labels, b.labels)
            for col in ("text", "image", "score"):
                np.testing.assert_array_equal(a.metadata[col], b.metadata[col])
            assert a.metadata["text"][0].startswith("digit ")
            assert a.metadata["image"].dtype == np.uint8


def test_float16_storage_leaves_out_overflowing_rows_on_the_device_without_a_sync(
    tmp_path, monkeypatch
):
    """Rows beyond float16's range are left out on the device path as on the host path (issue
    16), and the range check adds no host sync per batch."""
    calls: list[str] = []
    device = _fit(tmp_path, monkeypatch, "1", calls, storage_dtype="float16", huge_every=3)
    assert calls == []
    host = _fit(tmp_path / "host", monkeypatch, "0", [], storage_dtype="float16", huge_every=3)
    assert [mode for mode, _ in device] == ["device", "device"]
    for (_, d), (_, h) in zip(device, host, strict=True):
        for name in ("encoder", "tokens"):
            a, b = d[name], h[name]
            assert a.sample_ids == b.sample_ids
            np.testing.assert_array_equal(a.embeddings, b.embeddings)
            assert a.embeddings.dtype == np.float16 and np.isfinite(a.embeddings).all()
            assert not [i for i in a.sample_ids if (i - 10_000) % 3 == 0]
            assert len(a) == 120  # 200 of the 300 samples can be stored: the sample is full


@pytest.mark.parametrize("values", [(0.0, 1.0), (0, 1)], ids=["float", "int"])
def test_a_float_or_int_mask_on_the_device_costs_no_sync_and_gives_the_bool_masks_sample(
    tmp_path, monkeypatch, values
):
    calls: list[str] = []
    numbers = _fit(tmp_path / "numbers", monkeypatch, "1", calls, mask_values=values)
    assert calls == []
    bools = _fit(tmp_path / "bool", monkeypatch, "1", [])
    for (_, f), (_, b) in zip(numbers, bools, strict=True):
        for name in ("encoder", "tokens"):
            np.testing.assert_array_equal(f[name].embeddings, b[name].embeddings)


FLOAT_MASK = (r"mask_key='mask': expected bools or 0/1 values \(1 = real token\), got values "
              r"from {} to {}; an additive attention mask")
INT_MASK = (r"mask_key='mask': expected bools or 0/1 values \(1 = real token\), got integer "
            r"values from {} to {}; is it the token ids")


@pytest.mark.parametrize(
    ("values", "message", "seen", "mask", "seen_in_batch"),
    [
        # Real tokens marked 0.5: every batch is bad (the two sanity batches have no padding).
        ((0.0, 0.5), FLOAT_MASK, ("0.5", "0.5"),
         torch.tensor([[0.0, float("-inf")], [0.0, 0.0]]), ("-inf", "0.0")),
        # Token ids passed as the mask (issue 16): not every token is real.
        ((0, 50256), INT_MASK, ("50256", "50256"),
         torch.tensor([[101, 2023], [101, 0]]), ("0", "2023")),
    ],
    ids=["float", "int"],
)
def test_a_bad_float_or_int_mask_on_the_device_fails_at_the_end_of_the_sanity_check(
    tmp_path, monkeypatch, values, message, seen, mask, seen_in_batch
):
    """Checked once per run instead of per batch, but still before training starts, with the
    message the host path gives at once."""
    steps: list[int] = []
    monkeypatch.setattr(SeqDigits, "training_step",
                        lambda self, batch, i: steps.append(i) or DigitsModel.training_step(
                            self, batch, i))
    with pytest.raises(ValueError, match=message.format(*seen)):
        _fit(tmp_path, monkeypatch, "1", [], mask_values=values)
    assert steps == []  # the sanity check raised it
    host = Collector(ProjectorOptions(mask_key="mask", pooling="mean"), device_path=False)
    device = Collector(ProjectorOptions(mask_key="mask", pooling="mean"), device_path=True)
    with pytest.raises(ValueError, match=message.format(*seen_in_batch)):
        host.add_batch({"embeddings": torch.randn(2, 2, 3)}, {"mask": mask}, None, 0)
    device.add_batch({"embeddings": torch.randn(2, 2, 3)}, {"mask": mask}, None, 0)
    with pytest.raises(ValueError, match=message.format(*seen_in_batch)):
        device.samples()
