"""The collector's paths and hand-overs, and the schedule cache's owner and lifetime, on real
collectors and real fits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from digits import DigitsModel, loaders, trainer

import lightning_embproj.collect.validation as validation_module
from lightning_embproj import EmbeddingProjector
from lightning_embproj.collect.collector import Collector, ScheduleCache
from lightning_embproj.collect.hashing import hash_ids
from lightning_embproj.options import ProjectorOptions


def _offer(c: Collector, rows: int, batch: int, seed: int = 0) -> Collector:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 4, generator=g)
    for start in range(0, rows, batch):
        end = min(rows, start + batch)
        outputs = {"y": torch.arange(start, end) % 3, "id": torch.arange(start, end)}
        c.add_batch({"embeddings": z[start:end]}, outputs, None, 0)
    return c


def _same_samples(a: Collector, b: Collector) -> None:
    sa, sb = a.samples()["embeddings"], b.samples()["embeddings"]
    np.testing.assert_array_equal(sa.keys, sb.keys)
    assert sa.sample_ids == sb.sample_ids
    np.testing.assert_array_equal(sa.embeddings, sb.embeddings)
    np.testing.assert_array_equal(sa.labels, sb.labels)


def _options(**opts: Any) -> ProjectorOptions:
    return ProjectorOptions(**{"label_key": "y", "max_samples": 40, **opts})


def test_the_path_is_picked_by_the_first_batch_and_named():
    fresh = Collector(_options(), device_path=False)
    assert fresh.path is None and fresh.paths == () and fresh.samples() == {}
    assert _offer(Collector(_options(), device_path=False), 200, 32).path == "scheduled"
    assert _offer(Collector(_options(id_key="id"), device_path=False), 200, 32).path == "streaming"
    assert _offer(Collector(_options(), device_path=True), 200, 32).path == "device"
    assert _offer(Collector(_options(id_key="id"), device_path=True), 200, 32).path == "device"


def test_the_scheduled_path_streams_past_the_schedules_positions():
    """Positions beyond the cache's limit (2^22 by default) hand over to streaming; the sample
    is the one streaming keeps, and nothing is simulated past the limit."""
    cache = ScheduleCache(max_positions=100)
    scheduled = _offer(Collector(_options(), device_path=False, schedules=cache), 300, 30)
    assert scheduled.paths == ("scheduled", "streaming")
    (schedule,) = cache
    assert schedule.covered == 90  # batches [0, 30), [30, 60), [60, 90): the fourth streams
    streaming = _offer(Collector(_options(id_key="id"), device_path=False), 300, 30)
    _same_samples(scheduled, streaming)
    never = _offer(Collector(_options(), device_path=False,
                             schedules=ScheduleCache(max_positions=0)), 300, 30)
    assert never.paths == ("scheduled", "streaming")
    _same_samples(never, streaming)


def test_runs_sharing_a_cache_replay_one_schedule_simulated_to_the_datasets_end():
    cache = ScheduleCache()
    runs = [_offer(Collector(_options(), device_path=False, schedules=cache), 300, 32)
            for _ in range(3)]
    assert all(r.paths == ("scheduled",) for r in runs)
    (schedule,) = cache
    assert schedule.covered == 300  # the positions reached, not a chunk past them
    first = runs[0].samples()["embeddings"]
    np.testing.assert_array_equal(first.keys, np.sort(hash_ids(np.arange(300), 0))[:40])
    for later in runs[1:]:
        _same_samples(runs[0], later)
    # Without a cache a collector keeps its own: nothing outlives the run.
    a, b = (_offer(Collector(_options(), device_path=False), 300, 32) for _ in range(2))
    assert a.schedules is not b.schedules and a.schedules is not cache
    assert len(ScheduleCache()) == 0


def test_a_batch_after_the_device_samples_were_read_streams_on_from_them():
    device = _offer(Collector(_options(id_key="id"), device_path=True), 160, 32)
    assert device.samples()["embeddings"].embeddings.shape == (40, 4)
    g = torch.Generator().manual_seed(1)
    extra = torch.randn(64, 4, generator=g)
    host = _offer(Collector(_options(id_key="id"), device_path=False), 160, 32)
    for c in (device, host):
        c.add_batch({"embeddings": extra}, {"y": torch.zeros(64, dtype=torch.long),
                                            "id": torch.arange(160, 224)}, None, 0)
    assert device.paths == ("device", "streaming") and device.path == "streaming"
    _same_samples(device, host)


# -- a real fit: the callback owns the cache -------------------------------------------------
def _record(monkeypatch) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []

    class Recording(Collector):
        def check(self):  # noqa: D102 - called at the end of every run, the sanity check too
            super().check()
            if not runs or runs[-1]["collector"] is not self:  # samples() checks again
                runs.append({"collector": self, "paths": self.paths, "cache": self.schedules,
                             "schedules": [(s, s.covered, s.entries) for s in self.schedules]})

        def samples(self):  # noqa: D102 - the real samples, kept with the run
            out = super().samples()
            runs[-1]["keys"] = out["embeddings"].keys
            return out

    monkeypatch.setattr(validation_module, "Collector", Recording)
    return runs


def _projector() -> EmbeddingProjector:
    return EmbeddingProjector(label_key="labels", max_samples=100, reducers="pca",
                              background=False)


@pytest.mark.parametrize("device_path", ["0", "1"])
def test_a_fit_simulates_the_schedule_once_and_every_later_run_replays_it(
    tmp_path, monkeypatch, device_path
):
    monkeypatch.setenv("EMBPROJ_DEVICE_PATH", device_path)
    runs = _record(monkeypatch)
    train, val = loaders(n_train=128, n_val=300)  # 300 rows, batches of 64
    proj = _projector()
    trainer(tmp_path / "a", [proj], max_epochs=2).fit(DigitsModel(), train, val)
    trainer(tmp_path / "b", [proj], max_epochs=1).fit(DigitsModel(), train, val)
    other = _projector()
    trainer(tmp_path / "c", [other], max_epochs=1).fit(DigitsModel(), train, val)
    assert len(runs) == 3 + 2 + 2  # the sanity check and each epoch's validation
    want = np.sort(hash_ids(np.arange(300), 0))[:100]
    sanity = [0, 3, 5]  # two batches, 128 rows, and no samples read
    for i, run in enumerate(runs):
        assert ("keys" in run) == (i not in sanity)
        if i not in sanity:
            np.testing.assert_array_equal(run["keys"], want)
    if device_path == "1":
        assert all(r["paths"] == ("device",) for r in runs)
        return
    assert all(r["paths"] == ("scheduled",) for r in runs)
    # One cache per callback, across its fits; each another callback's.
    mine, theirs = runs[:5], runs[5:]
    assert all(r["cache"] is mine[0]["cache"] for r in mine)
    assert all(r["cache"] is theirs[0]["cache"] is not mine[0]["cache"] for r in theirs)
    # One schedule, simulated by the sanity check (two batches, 128 rows) ahead to the
    # dataset's 300 rows, never past them (it used to go on to 4,096); every later run replays
    # it, simulating nothing more.
    for group in (mine, theirs):
        (first,) = group[0]["schedules"]
        assert first[1] == 300
        assert all(r["schedules"] == [first] for r in group[1:])
