"""``monitor=[...]``: metrics that steer training, on real fits on digits.

Each projected validation run logs ``embproj/NAME/<metric>`` into ``trainer.callback_metrics``
(so ``ModelCheckpoint`` and ``EarlyStopping`` can use them), equal to ``metrics.jsonl``; runs
that are not projected log the last value again; the sanity check logs nothing; DDP ranks agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from digits import DigitsModel, loaders, trainer
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_embproj import EmbeddingProjector, read_metrics

KEY = "embproj/embeddings/"
ALL = ["knn_accuracy", "silhouette", "rankme", "uniformity"]


class Record(Callback):
    """After the projector: the monitored values in callback_metrics after each run."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.sanity: list[str] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        keys = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(KEY)}
        if trainer.sanity_checking:
            self.sanity.extend(keys)
            return
        self.seen.append({"epoch": trainer.current_epoch, **keys})


class Collapsing(DigitsModel):
    """Its validation embeddings are pushed toward one direction as epochs go by (a stand-in
    for a representation collapsing): z -> (1 - a) z + a (z . u) u, a = min(1, epoch / 2)."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        z = out["embeddings"]
        u = torch.ones(z.shape[1]) / z.shape[1] ** 0.5
        a = min(1.0, self.current_epoch / 2)
        out["embeddings"] = (1 - a) * z + a * (z @ u)[:, None] * u
        return out


def projector(tmp_path: Path, **kw: Any) -> EmbeddingProjector:
    kw.setdefault("monitor", ALL)
    return EmbeddingProjector(label_key="labels", reducers="pca", clusters=None,
                              background=False, output_dir=str(tmp_path / "out"), **kw)


def test_values_equal_metrics_jsonl_and_sanity_check_logs_nothing(tmp_path):
    record = Record()
    train, val = loaders(n_train=300, n_val=200)
    trainer(tmp_path, [projector(tmp_path), record], max_epochs=3).fit(DigitsModel(), train, val)
    assert record.sanity == []
    assert [r["epoch"] for r in record.seen] == [0, 1, 2]
    df = read_metrics(tmp_path / "out", "embeddings")
    assert df["epoch"].tolist() == [0, 1, 2]
    for row, (_, want) in zip(record.seen, df.iterrows(), strict=True):
        for m in ALL:
            assert row[KEY + m] == pytest.approx(want[m], rel=1e-5, abs=1e-6), m


def test_runs_not_projected_log_the_last_value_again(tmp_path):
    record = Record()
    train, val = loaders(n_train=300, n_val=150)
    t = trainer(tmp_path, [projector(tmp_path, monitor=["rankme"], every_n_epochs=2), record],
                max_epochs=3)
    t.fit(DigitsModel(), train, val)
    values = [r[KEY + "rankme"] for r in record.seen]
    assert values[1] == values[0] and values[2] != values[0]  # epochs 0 and 2 are projected
    assert read_metrics(tmp_path / "out", "embeddings")["epoch"].tolist() == [0, 2]


def test_model_checkpoint_keeps_the_epoch_with_the_best_knn_accuracy(tmp_path):
    record = Record()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor=KEY + "knn_accuracy",
                           mode="max", save_top_k=1, filename="{epoch}")
    train, val = loaders(n_train=400, n_val=200)
    t = trainer(tmp_path, [projector(tmp_path, monitor=["knn_accuracy"]), record, ckpt],
                max_epochs=4, enable_checkpointing=True)
    t.fit(DigitsModel(lr=0.02), train, val)
    values = [r[KEY + "knn_accuracy"] for r in record.seen]
    best = max(range(len(values)), key=lambda i: (values[i], -i))  # first of the maxima
    assert Path(ckpt.best_model_path).name == f"epoch={best}.ckpt"
    assert float(ckpt.best_model_score) == pytest.approx(values[best])
    assert len(values) == 4 and len(set(values)) > 1, values


def test_early_stopping_on_rankme_stops_a_collapsing_model(tmp_path):
    record = Record()
    stop = EarlyStopping(monitor=KEY + "rankme", mode="max", patience=1)
    train, val = loaders(n_train=200, n_val=150)
    t = trainer(tmp_path, [projector(tmp_path, monitor=["rankme"]), record, stop],
                max_epochs=10)
    t.fit(Collapsing(), train, val)
    values = [r[KEY + "rankme"] for r in record.seen]
    assert 0 < stop.stopped_epoch < 9 and len(values) == stop.stopped_epoch + 1, values
    assert values[-1] < values[0], values


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(monitor=["knn_acc"], label_key="labels"),
     r"monitor must be a list drawn from \['knn_accuracy', 'silhouette', 'rankme', "
     r"'uniformity'\].*got \['knn_acc'\]"),
    (dict(monitor=["drift/knn_overlap"]), r"computed in the background only"),
    (dict(monitor=["pca/trustworthiness"]), r"computed in the background only"),
    (dict(monitor="silhouette"), r"\['silhouette'\] need labels: set label_key"),
    (dict(monitor={"rankme": 1}), r"monitor must be a list"),
])
def test_bad_monitor_options_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EmbeddingProjector(**kwargs)


@pytest.mark.slow
def test_ddp_ranks_log_rank_zeros_values(tmp_path):
    script = Path(__file__).parents[1] / "support" / "ddp_monitor_script.py"
    root = script.parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root / "tests" / "support"),
               WANDB_MODE="disabled")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [e["epoch"] for e in ranks[0]] == [0, 1]
    assert ranks[0] == ranks[1]
    df = read_metrics(tmp_path / "files", "embeddings")
    for seen, (_, want) in zip(ranks[0], df.iterrows(), strict=True):
        assert len(seen["values"]) == 4
        for key, value in seen["values"].items():
            assert value == pytest.approx(want[key.rsplit("/", 1)[1]], rel=1e-5, abs=1e-6)


def test_every_run_of_every_entry_point_logs_its_own_values_once(tmp_path):
    # DESIGN 4b setups together: two validations per epoch, bf16, string ids; then the fit is
    # resumed from its checkpoint, a checkpoint is validated, and a second fit starts afresh.
    # Each validation run logs once, and what it logs is its own row of metrics.jsonl.
    train, val = loaders(n_train=256, n_val=160, dict_batches=True)
    ckpts = tmp_path / "ckpt"

    def call(how: str, max_epochs: int, **kw: Any) -> list[dict[str, Any]]:
        record = Record()
        callbacks: list[Any] = [projector(tmp_path, id_key="text"), record]
        if how == "fit":
            callbacks.append(ModelCheckpoint(dirpath=str(ckpts), save_last=True))
        t = trainer(tmp_path, callbacks, max_epochs=max_epochs, precision="bf16-mixed",
                    val_check_interval=0.5, enable_checkpointing=how == "fit")
        model = DigitsModel(dict_batches=True)
        if how == "fit":
            t.fit(model, train, val, **kw)
        else:
            t.validate(model, val, **kw)
        return record.seen

    seen = [call("fit", 2), call("fit", 3, ckpt_path=str(ckpts / "last.ckpt")),
            call("validate", 1, ckpt_path=str(ckpts / "last.ckpt")), call("fit", 1)]
    epochs = [[r["epoch"] for r in s] for s in seen]
    # Lightning < 2.5 replays the checkpoint's last validation on resume: a run it performs,
    # so a run the projector records (once, like any other)
    assert epochs[0] == [0, 0, 1, 1] and epochs[1] in ([2, 2], [1, 2, 2]), epochs
    assert epochs[2:] == [[0], [0, 0]], epochs
    df = read_metrics(tmp_path / "out", "embeddings")
    # every performed run once, none overwritten
    assert df["val_index"].tolist() == list(range(sum(map(len, seen))))
    rows = [row for _, row in df.iterrows()]
    for got, want in zip([r for s in seen for r in s], rows, strict=True):
        for m in ALL:
            assert got[KEY + m] == pytest.approx(want[m], rel=1e-5, abs=1e-6), (m, want)
