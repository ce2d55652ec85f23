"""The W&B evolution table when the tracked set changes size: rows per run follow the runs,
earlier runs are thinned to the same points, the table stays under its cap, and the warning
says what is kept (issue 16, finding 3)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, digits_tensors, trainer, wandb_tables
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_embproj import EmbeddingProjector, read_projections
from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.runtime.warn import ProjectorWarning, WarnOnce
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.wandb_history import EvolutionHistory
from lightning_embproj.sinks.wandb_sink import WandbSink


def _finish() -> None:
    import wandb

    wandb.finish()
    wandb.teardown()


def _chunk(keys: np.ndarray, run: int) -> dict[str, list[Any]]:
    return {"key": keys.tolist(), "val_index": [run] * keys.size}


def _kept(h: EvolutionHistory) -> dict[int, list[int]]:
    """val_index -> the keys its rows hold, in the table's order."""
    cols = h.columns()
    out: dict[int, list[int]] = {}
    for run, key in zip(cols["val_index"], cols["key"], strict=True):
        out.setdefault(run, []).append(key)
    return out


# ---------------------------------------------------------------- EvolutionHistory

def test_rows_per_run_follow_a_growing_sample():
    """30 tracked points in the first run, 300 in the later ones: every point of every run is
    kept (the table has room), nothing is reported as thinned."""
    rng = np.random.default_rng(0)
    keys = rng.permutation(10**6)[:300].astype(np.int64)
    h = EvolutionHistory(max_rows=9_000)
    assert h.add(0, _chunk(keys[:30], 0), keys[:30]) is False
    for run in range(1, 6):
        assert h.add(run, _chunk(keys, run), keys) is False
        assert h.rows_per_run == 300
    assert len(h) == 30 + 5 * 300 and not h.thinned and h.key_cutoff is None
    assert {run: len(k) for run, k in _kept(h).items()} == {0: 30, **dict.fromkeys(range(1, 6),
                                                                                   300)}


def test_a_run_over_half_the_table_thins_earlier_runs_to_the_same_points():
    rng = np.random.default_rng(1)
    universe = rng.permutation(10**6)[:600].astype(np.int64)
    small, big = universe[:50], universe[:300]  # the tracked set grows: 50 -> 300 points
    h = EvolutionHistory(max_rows=400)  # at most 200 rows per run
    assert h.add(0, _chunk(small, 0), small) is False
    assert h.add(1, _chunk(big, 1), big) is True
    cutoff = np.sort(big)[200]
    assert h.key_cutoff == cutoff and h.rows_per_run == 200
    kept = _kept(h)
    assert sorted(kept[1]) == np.sort(big)[:200].tolist()  # the smallest keys
    assert sorted(kept[0]) == np.sort(small[small < cutoff]).tolist()
    assert set(kept[0]) <= set(kept[1])  # run 0 keeps only points that run 1 shows too
    # a later run that could keep more does not: the cutoff never goes back up
    later = universe[300:600]
    h.add(2, _chunk(later, 2), later)
    assert h.key_cutoff == cutoff and sorted(_kept(h)[2]) == np.sort(later[later < cutoff]).tolist()
    assert len(h) <= 400


def test_a_lower_cutoff_later_rethins_every_kept_run():
    h = EvolutionHistory(max_rows=20)  # 10 rows per run
    first = np.arange(100, 130)
    h.add(0, _chunk(first, 0), first)
    assert _kept(h)[0] == list(range(100, 110)) and h.key_cutoff == 110
    lower = np.arange(95, 125)  # five smaller keys: the cutoff moves down to 105
    h.add(1, _chunk(lower, 1), lower)
    assert h.key_cutoff == 105
    assert _kept(h) == {0: list(range(100, 105)), 1: list(range(95, 105))}


@pytest.mark.parametrize("max_rows", [9, 40, 400])
def test_random_size_sequences_stay_under_the_cap_evenly_spaced_and_truthful(max_rows):
    """200 runs whose tracked sets grow, shrink and move (seeded): after every add the table is
    under the cap, each run holds exactly its points below the cutoff, the kept runs are the
    first and then every stride-th plus the newest, and add() says True exactly when rows that
    were (or were about to be) in the table are left out."""
    rng = np.random.default_rng(max_rows)
    h = EvolutionHistory(max_rows=max_rows)
    before: set[tuple[int, int]] = set()
    tracked: dict[int, np.ndarray] = {}
    for run in range(200):
        size = int(rng.choice([1, 3, max_rows // 4 + 1, max_rows // 2, max_rows, 3 * max_rows]))
        base = int(rng.integers(0, 4)) * max_rows  # sets move between runs
        keys = (base + rng.permutation(6 * max_rows)[:size]).astype(np.int64)
        tracked[run] = keys
        thinned = h.add(run, _chunk(keys, run), keys)
        kept = {r: [] for r in h.runs} | _kept(h)  # a run can keep none of its points
        after = {(r, k) for r, ks in kept.items() for k in ks}
        offered = before | {(run, int(k)) for k in keys}
        assert after <= offered
        assert thinned == (after != offered), run
        assert len(h) == len(after) <= max_rows
        cut = h.key_cutoff
        for r, ks in kept.items():
            assert sorted(ks) == ks  # rows in key order
            assert ks == sorted(int(k) for k in tracked[r] if cut is None or k < cut)
            assert len(ks) <= max_rows // 2
        runs = sorted(kept)
        assert runs[0] == 0 and runs[-1] == run
        assert all(r % h.stride == 0 for r in runs[:-1])
        assert runs[:-1] == [r for r in range(0, run, h.stride)][: len(runs) - 1]
        before = after
    assert h.thinned and h.stride > 1


def test_the_note_says_what_is_kept():
    h = EvolutionHistory(max_rows=12)
    for run in range(6):
        h.add(run, _chunk(np.array([5, 1, 3]), run), [5, 1, 3])
    assert h.note() == (
        "is thinned to stay under 12 rows: every run keeps all its points; every 2nd run from "
        "the first is kept, plus the newest (4 of 6 runs so far; the spacing doubles whenever "
        "they no longer fit)"
    )
    h = EvolutionHistory(max_rows=12)
    h.add(0, _chunk(np.arange(4), 0), np.arange(4))
    h.add(1, _chunk(np.arange(10), 1), np.arange(10))
    assert h.note() == (
        "is thinned to stay under 12 rows: every run keeps only its points whose tracking key "
        "is below one cutoff, the same points in every run (at most 6 per run; the newest run "
        "keeps 6 of its 10); all 2 runs so far kept, and once they no longer fit, every 2nd, "
        "4th, ... run from the first, plus the newest"
    )


# ---------------------------------------------------------------- the sink, a real offline run

def _projection(run: int, keys: np.ndarray) -> RunResult:
    rng = np.random.default_rng(run)
    X = rng.normal(size=(keys.size, 4)).astype(np.float32)
    sample = EpochSample("emb", keys, [int(k) for k in keys], X)
    return run_result(sample, RunIdentity(run, epoch=run, step=10 * (run + 1)),
                      {"pca": X[:, :2]})


def test_sink_table_grows_with_the_runs_then_thins_to_the_same_points(wandb_offline):
    import wandb

    run = wandb.init(project="evolution", dir=str(wandb_offline), mode="offline")
    universe = np.random.default_rng(3).permutation(10**6)[:600].astype(np.int64)
    sizes = [30, 150, 150, 300, 300, 300]  # the last three exceed the 200-row run cap
    sink = WandbSink(run, WarnOnce(), max_rows=400, reducers=["pca"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, n in enumerate(sizes):
            sink.write(_projection(i, universe[:n]))
        sink.finish()
    _finish()
    notes = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    tables = wandb_tables(wandb_offline, "embproj/emb/evolution")
    per_run = []
    for table in tables:
        cols = table["columns"]
        runs: dict[int, set[int]] = {}
        for row in table["data"]:
            runs.setdefault(row[cols.index("val_index")], set()).add(row[cols.index("sample_id")])
        per_run.append(runs)
        assert len(table["data"]) <= 400
    # runs 1-3 fit whole: 30, 150, 150 points
    assert [{r: len(s) for r, s in t.items()} for t in per_run[:3]] == [
        {0: 30}, {0: 30, 1: 150}, {0: 30, 1: 150, 2: 150},
    ]
    cutoff = int(np.sort(universe[:300])[200])
    same = {int(k) for k in universe[:300] if k < cutoff}
    # run 3 has 300 points: from then on every run keeps the points below one key cutoff,
    # and at 420 rows the runs are thinned to every 2nd (logged at runs 1-4, then 6)
    assert len(per_run) == 5 and sorted(per_run[3]) == [0, 2, 3]
    assert per_run[3][3] == same and len(same) == 200
    assert per_run[3][2] == {int(k) for k in universe[:150] if k < cutoff}
    # 520 rows with runs 0, 2, 4 and 5, 420 with 0, 4 and 5: every 8th run, plus the newest
    final = per_run[-1]
    assert sorted(final) == [0, 5] and final[5] == same
    assert final[0] == {int(k) for k in universe[:30] if k < cutoff} and final[0] <= same
    assert len(notes) == 1 and notes[0].startswith(
        "lightning-embproj: the evolution table of 'emb' is thinned to stay under 400 rows: "
        "every run keeps only its points whose tracking key is below one cutoff, the same points "
        "in every run (at most 200 per run; the newest run keeps 200 of its 300)")


# ---------------------------------------------------------------- a real fit

class GrowingValidation(DigitsModel):
    """Validates on 30 digits in epoch 0, on 300 from epoch 1 (loaders reloaded each epoch)."""

    def val_dataloader(self) -> DataLoader:
        n = 30 if self.current_epoch == 0 else 300
        x, y = digits_tensors()
        return DataLoader(TensorDataset(x[600:600 + n], y[600:600 + n]), batch_size=64)


def test_fit_whose_validation_set_grows_keeps_every_point_in_the_evolution_table(
    tmp_path, wandb_offline
):
    """The user's case: the tracked set grows from 30 to 300 points. The evolution table used
    to keep the first run's 30 points per run forever, with a warning that it had thinned to
    stay under 9,000 rows; 30 + 3 x 300 rows fit, so every point of every run is kept."""
    x, y = digits_tensors()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64, shuffle=True)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=1000)
    logger = WandbLogger(project="growing", save_dir=str(wandb_offline))
    t = trainer(tmp_path, [projector], max_epochs=4, logger=logger,
                reload_dataloaders_every_n_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(GrowingValidation(), train)
    _finish()
    notes = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    assert not [m for m in notes if "evolution table" in m], notes

    local = read_projections(projector.root)
    tracked = {v: set(g["sample_id"]) for v, g in local.groupby("val_index")}
    assert {v: len(s) for v, s in tracked.items()} == {0: 30, 1: 300, 2: 300, 3: 300}
    final = wandb_tables(wandb_offline, "embproj/embeddings/evolution")[-1]
    cols = final["columns"]
    rows: dict[int, set[int]] = {}
    for row in final["data"]:
        rows.setdefault(row[cols.index("val_index")], set()).add(row[cols.index("sample_id")])
    assert rows == tracked
