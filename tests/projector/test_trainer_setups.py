"""The Trainer setups users run: every validation run projected once, keyed by its identity.

Each test runs a real ``Trainer.fit`` / ``validate`` and compares the projector's outputs (local
files, metrics, W&B tables and scalars) with the validation runs the Trainer really performed,
recorded by a plain callback beside the projector. Each of these setups once lost or overwrote
data silently (DESIGN.md §4b).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from digits import DigitsModel, digits_tensors, loaders, trainer, wandb_tables
from torch.utils.data import DataLoader, TensorDataset
from wandb_records import scalars

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.readers import list_validations
from lightning_embproj.runtime.warn import ProjectorWarning

N_TRAIN, N_VAL, BATCH = 128, 48, 32  # 4 training batches per epoch


class Recorder(L.Callback):
    """The validation runs the Trainer performed: (epoch, global step), sanity check excluded."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.runs.append((trainer.current_epoch, trainer.global_step))


def projector(**kw: Any) -> EmbeddingProjector:
    kw.setdefault("label_key", "labels")
    kw.setdefault("reducers", "pca")
    return EmbeddingProjector(**kw)


def fit(tmp_path: Any, proj: EmbeddingProjector, model: Any = None, val: Any = None,
        **kw: Any) -> tuple[L.Trainer, Recorder]:
    rec = Recorder()
    train_loader, val_loader = loaders(N_TRAIN, N_VAL, batch_size=BATCH)
    kw.setdefault("max_epochs", 2)
    t = trainer(tmp_path, [proj, rec], **kw)
    t.fit(model or DigitsModel(), train_loader, val if val is not None else val_loader)
    return t, rec


def runs(root: Any, name: str = "embeddings") -> list[tuple[int, int, int]]:
    return list_validations(root, name)


def numbered(recorded: list[tuple[int, int]], first: int = 0) -> list[tuple[int, int, int]]:
    return [(first + i, e, s) for i, (e, s) in enumerate(recorded)]


def check_local(root: Any, expected: list[tuple[int, int, int]], points: int = N_VAL) -> None:
    """Files, points and metrics lines: one per expected run, keyed (val_index, epoch, step)."""
    assert runs(root) == expected
    df = read_projections(root)
    keys = df.groupby(["val_index", "epoch", "step"]).size()
    assert {k: int(v) for k, v in keys.items()} == {run: points for run in expected}
    metrics = read_metrics(root)
    got = list(zip(metrics["val_index"], metrics["epoch"], metrics["step"], strict=True))
    assert got == expected


# -- several validation runs per epoch, every k-th epoch, step-based -----------------------
def test_val_check_interval_quarter_projects_every_run(tmp_path):
    t, rec = fit(tmp_path, projector(), val_check_interval=0.25)
    assert rec.runs == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7), (1, 8)]
    check_local(tmp_path, numbered(rec.runs))


def test_step_based_validation_across_epochs(tmp_path):
    t, rec = fit(tmp_path, projector(), max_epochs=3, check_val_every_n_epoch=None,
                 val_check_interval=5)
    assert rec.runs == [(1, 5), (2, 10)]
    check_local(tmp_path, numbered(rec.runs))


def test_every_n_validations_thins_step_based_runs(tmp_path):
    t, rec = fit(tmp_path, projector(every_n_validations=3), val_check_interval=0.25)
    assert len(rec.runs) == 8
    check_local(tmp_path, [r for r in numbered(rec.runs) if r[0] % 3 == 0])


@pytest.mark.parametrize("every_n_epochs, projected", [(1, [0, 1, 2, 3]), (2, [0, 2])])
def test_check_val_every_n_epoch_counts_validating_epochs(tmp_path, every_n_epochs, projected):
    # Lightning validates at the end of epochs 1, 3, 5, 7 for check_val_every_n_epoch=2.
    t, rec = fit(tmp_path, projector(every_n_epochs=every_n_epochs), max_epochs=8,
                 check_val_every_n_epoch=2)
    assert [e for e, _ in rec.runs] == [1, 3, 5, 7]
    check_local(tmp_path, [numbered(rec.runs)[i] for i in projected])


def test_settings_that_never_validate_warn_at_setup(tmp_path):
    with pytest.warns(ProjectorWarning, match="nothing will be projected in this fit: "
                                              "check_val_every_n_epoch=5 with max_epochs=2"):
        fit(tmp_path, projector(), max_epochs=2, check_val_every_n_epoch=5)
    assert not (tmp_path / "embproj").exists()


# -- trainer flags that change how much is validated ----------------------------------------
def test_limit_val_batches_projects_the_batches_seen(tmp_path):
    t, rec = fit(tmp_path, projector(), limit_val_batches=1)
    check_local(tmp_path, numbered(rec.runs), points=BATCH)


def test_fast_dev_run_projects_its_one_run(tmp_path):
    t, rec = fit(tmp_path, projector(), fast_dev_run=True)
    assert rec.runs == [(0, 1)]
    check_local(tmp_path, [(0, 0, 1)], points=BATCH)


def test_overfit_batches_projects_the_overfit_batch(tmp_path):
    t, rec = fit(tmp_path, projector(), overfit_batches=1)
    assert len(rec.runs) == 2
    check_local(tmp_path, numbered(rec.runs), points=BATCH)


def test_accumulate_grad_batches_steps_are_optimizer_steps(tmp_path):
    t, rec = fit(tmp_path, projector(), accumulate_grad_batches=2)
    assert rec.runs == [(0, 2), (1, 4)]
    check_local(tmp_path, numbered(rec.runs))


# -- repeated trainer calls on one callback -------------------------------------------------
def test_second_fit_starts_a_fresh_chain(tmp_path):
    proj = projector(reducers=["pca", "tsne"])
    fit(tmp_path / "a", proj, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, rec = fit(tmp_path / "b", proj, max_epochs=2)
    first = read_metrics(tmp_path / "b").iloc[0]
    # no drift against the first fit's last run, no warm start from it
    assert first["drift/knn_overlap"] != first["drift/knn_overlap"]  # NaN
    assert first["tsne/displacement"] != first["tsne/displacement"]
    assert runs(tmp_path / "b") == numbered(rec.runs, first=2)
    assert [w for w in caught if issubclass(w.category, ProjectorWarning)] == []


def test_warnings_of_the_first_fit_do_not_silence_the_second(tmp_path):
    proj = projector(reducers="pca", every_n_epochs=1)
    for folder in ("a", "b"):
        with pytest.warns(ProjectorWarning, match="nothing will be projected"):
            fit(tmp_path / folder, proj, max_epochs=1, check_val_every_n_epoch=3)


def test_validate_then_fit_keeps_both_and_no_drift_between_them(tmp_path):
    proj = projector()
    rec = Recorder()
    train_loader, val_loader = loaders(N_TRAIN, N_VAL, batch_size=BATCH)
    t = trainer(tmp_path, [proj, rec], max_epochs=2)
    model = DigitsModel()
    t.validate(model, val_loader)
    t.fit(model, train_loader, val_loader)
    assert rec.runs == [(0, 0), (0, 4), (1, 8)]
    check_local(tmp_path, numbered(rec.runs))
    metrics = read_metrics(tmp_path)
    overlap = metrics["drift/knn_overlap"].tolist()
    assert overlap[0] != overlap[0] and overlap[1] != overlap[1]  # each chain starts fresh
    assert 0 < overlap[2] <= 1


# -- validation loaders ---------------------------------------------------------------------
def _val_loader(start: int, n: int) -> DataLoader:
    x, y = digits_tensors()
    return DataLoader(TensorDataset(x[start:start + n], y[start:start + n]), batch_size=BATCH)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_several_validation_loaders(tmp_path, kind):
    a, b = _val_loader(600, 40), _val_loader(700, 24)
    val = [a, b] if kind == "list" else {"a": a, "b": b}
    t, rec = fit(tmp_path, projector(), val=val)
    df = read_projections(tmp_path)
    sizes = df.groupby(["val_index", "dataloader_idx"]).size().to_dict()
    assert sizes == {(0, 0): 40, (0, 1): 24, (1, 0): 40, (1, 1): 24}
    assert runs(tmp_path) == numbered(rec.runs)


# -- two projectors with ModelCheckpoint and EarlyStopping ----------------------------------
def test_two_projectors_with_checkpoint_and_early_stopping(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    class Logged(DigitsModel):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
            out = super().validation_step(batch, batch_idx)
            self.log("val_loss", out["loss"])
            return out

    p1 = projector(layers=["encoder.0"])
    p2 = projector(layers=["encoder.2"], reducers=["pca", "tsne"])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)  # stops after 2 runs
    rec = Recorder()
    train_loader, val_loader = loaders(N_TRAIN, N_VAL, batch_size=BATCH)
    t = trainer(tmp_path, [p1, p2, ckpt, stop, rec], max_epochs=6, enable_checkpointing=True)
    t.fit(Logged(), train_loader, val_loader)
    assert len(rec.runs) == 2  # EarlyStopping ended the fit
    assert runs(tmp_path, "encoder.0") == numbered(rec.runs)
    assert runs(tmp_path, "encoder.2") == numbered(rec.runs)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    keys = [k for k in state if k.startswith("EmbeddingProjector")]
    assert len(keys) == 2 and all(state[k]["runs"]["total"] == 2 for k in keys)


# -- W&B: runs sharing a save_dir, a run the user started -----------------------------------
def test_two_wandb_runs_sharing_a_save_dir_never_mix(tmp_path, wandb_offline):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    roots = []
    for _ in range(2):
        logger = WandbLogger(project="shared", save_dir=str(tmp_path))
        t, rec = fit(tmp_path, projector(), logger=logger)
        roots.append(os.path.join(str(tmp_path), "shared", logger.version))
        wandb.finish()
    assert roots[0] != roots[1]
    for root in roots:
        check_local(root, numbered(rec.runs))


def test_wandb_run_started_by_the_user(tmp_path, wandb_offline):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    run = wandb.init(project="mine", dir=str(wandb_offline))
    logger = WandbLogger(save_dir=str(tmp_path))
    t, rec = fit(tmp_path, projector(), logger=logger, val_check_interval=0.5)
    assert logger.experiment.id == run.id
    root = os.path.join(str(tmp_path), str(logger.name), run.id)
    check_local(root, numbered(rec.runs))
    wandb.finish()
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert len(tables) == len(rec.runs) == 4
    cols = tables[0]["columns"]
    got = [(t["data"][0][cols.index("val_index")], t["data"][0][cols.index("epoch")],
            t["data"][0][cols.index("step")]) for t in tables]
    assert got == numbered(rec.runs)
    logged = scalars(wandb_offline, "embproj/embeddings/knn_accuracy")
    assert [step for step, _ in logged] == [s for _, s in rec.runs]


def test_wandb_evolution_table_holds_every_step_based_run_at_the_end(tmp_path, wandb_offline):
    """Five step-based runs (several in some epochs): the evolution table is sent at runs 1-4
    and, by the sink's finish, once more with all five (run 5 is not one it sends at)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="evolution", save_dir=str(wandb_offline))
    t, rec = fit(tmp_path, projector(), logger=logger, max_epochs=4,
                 check_val_every_n_epoch=None, val_check_interval=3)
    wandb.finish()
    assert len(rec.runs) == 5
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    assert [len(tab["data"]) for tab in evolution] == [N_VAL * r for r in (1, 2, 3, 4, 5)]
    cols = evolution[-1]["columns"]
    groups: dict[tuple[int, int, int], int] = {}
    for row in evolution[-1]["data"]:
        run = (row[cols.index("val_index")], row[cols.index("epoch")], row[cols.index("step")])
        groups[run] = groups.get(run, 0) + 1
    assert groups == {run: N_VAL for run in numbered(rec.runs)}


# -- resuming a checkpoint made with another id hash ----------------------------------------
def test_checkpoint_of_an_older_hash_is_rekeyed_from_its_ids():
    import numpy as np

    from lightning_embproj.chain.checkpoint import projection_to_state, sample_to_state
    from lightning_embproj.collect.hashing import HASH_VERSION, hash_ids
    from lightning_embproj.results import EpochSample, RunIdentity
    from lightning_embproj.sinks.columns import run_result

    ids = ["img_7", "img_10000", "a" * 40]
    old = EpochSample("embeddings", np.array([3, 1, 2]), ids, np.eye(3, dtype=np.float32))
    state = {
        "previous": {"embeddings": projection_to_state(
            run_result(old, RunIdentity(0, epoch=4, step=40)))},
        "pending": [{"val_index": 5, "epoch": 5, "step": 50, "sample": sample_to_state(old)}],
    }  # a 0.1.0 checkpoint: no hash_version, keys of the old string hash
    proj = projector()
    with pytest.warns(ProjectorWarning, match=f"hash version 1 .*uses {HASH_VERSION}"):
        proj.load_state_dict(state)
    expected = hash_ids(np.array(ids, dtype=object), 0).tolist()
    assert proj.previous["embeddings"].sample.keys.tolist() == expected
    assert proj.chain.restored_pending[0][0].keys.tolist() == expected
    # no run counter in a 0.1.0 checkpoint: it counts on after the runs it holds
    assert proj.chain.resumed_from == 6


# -- precision, id types, layer shapes: the same exact outputs ------------------------------
class HalfDigits(DigitsModel):
    """Labels and a score come out in the autocast dtype too (bf16 under bf16-mixed)."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        out["score"] = out["embeddings"].sum(dim=1)  # bf16 / fp16 metadata
        return out


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_fits(tmp_path, precision):
    t, rec = fit(tmp_path, projector(metadata_keys=["score"]), model=HalfDigits(),
                 precision=precision)
    check_local(tmp_path, numbered(rec.runs))
    assert read_projections(tmp_path)["score"].map(type).eq(float).all()


class IdDigits(torch.utils.data.Dataset):
    """Digits with string ids of mixed widths: short and long names, UUIDs, zero-padded."""

    def __init__(self) -> None:
        import uuid

        self.x, self.y = digits_tensors(N_VAL)
        rng = np.random.default_rng(0)
        self.ids = [
            ("img_7" if i == 0 else f"img_{10_000 + i}") if i % 3 == 0
            else str(uuid.UUID(bytes=rng.bytes(16), version=4)) if i % 3 == 1
            else f"{i:06d}"
            for i in range(N_VAL)
        ]

    def __len__(self) -> int:
        return N_VAL

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "id": self.ids[i]}


def test_string_ids_of_mixed_widths_uuids_and_zero_padding(tmp_path):
    data = IdDigits()
    train, _ = loaders(N_TRAIN, N_VAL, batch_size=BATCH, dict_batches=True)
    rec = Recorder()
    t = trainer(tmp_path, [projector(id_key="id"), rec], max_epochs=2)
    t.fit(DigitsModel(dict_batches=True), train, DataLoader(data, batch_size=BATCH))
    check_local(tmp_path, numbered(rec.runs))
    df = read_projections(tmp_path)
    for _, run in df.groupby("val_index"):
        assert sorted(run["sample_id"]) == sorted(data.ids)  # every id whole, as a string
    assert "000002" in set(df["sample_id"])


class LayerShapes(DigitsModel):
    """A (B, T, D) sequence layer and a (B, C, H, W) feature map after the encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = torch.nn.Identity()
        self.fmap = torch.nn.Identity()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        x, y = batch
        z = self.encoder(x)
        self.seq(z.view(-1, 4, 4))  # 4 tokens of 4 dims
        self.fmap(x.view(-1, 1, 8, 8).expand(-1, 3, 8, 8) * z[:, :3, None, None])
        return {"loss": torch.nn.functional.cross_entropy(self.head(z), y), "labels": y}


@pytest.mark.parametrize("pooling, dims", [
    ("auto", {"seq": 4, "fmap": 3}), ("mean", {"seq": 4, "fmap": 3}),
    ("max", {"seq": 4, "fmap": 3}), ("flatten", {"seq": 16, "fmap": 192}),
])
def test_sequence_and_feature_map_layers(tmp_path, pooling, dims):
    proj = projector(layers=["seq", "fmap"], pooling=pooling, clusters=None)
    t, rec = fit(tmp_path, proj, model=LayerShapes())
    for name, dim in dims.items():
        assert runs(tmp_path, name) == numbered(rec.runs)
        assert proj.previous[name].sample.embeddings.shape == (N_VAL, dim)
