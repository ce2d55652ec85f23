"""One result per run (issue 17), on real fits: every sink gets the same frozen ``RunResult``,
no sink reads another's files, and the contract table is computed once per run.

The sinks are observed at their boundary: the functions the sinks factory calls (the local
writer, TensorBoard's writer, the view and W&B sinks' ``write``) are wrapped, and still run.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

import lightning_embproj.sinks.columns as columns_module
import lightning_embproj.sinks.local as local_module
import lightning_embproj.sinks.tensorboard as tensorboard_module
from lightning_embproj import EmbeddingProjector, RunResult, read_metrics, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning
from lightning_embproj.sinks.view.sink import ViewSink
from lightning_embproj.sinks.wandb_sink import WandbSink

EPOCHS = 3


def _fit(tmp_path: Path, projector: EmbeddingProjector, epochs: int = EPOCHS,
         **kwargs: Any) -> tuple[Any, list[str]]:
    train, val = loaders(n_train=64, n_val=60, batch_size=20)
    ckpt_path = kwargs.pop("ckpt_path", None)
    t = trainer(tmp_path, [projector, *kwargs.pop("callbacks", [])], max_epochs=epochs,
                limit_train_batches=2, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DigitsModel(), train, val, ckpt_path=ckpt_path)
        projector.flush(timeout=60)
    return t, [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]


def _payload(page: str) -> dict[str, Any]:
    """The data block of a view page."""
    found = re.search(r'<script type="application/json" id="embproj-data">(.*?)</script>',
                      page, re.S)
    assert found is not None
    return dict(json.loads(found[1]))


def _page_runs(page: str) -> list[int]:
    return [run["val_index"] for run in _payload(page)["points"]["runs"]]


def _wandb_view(wandb_dir: Path, name: str = "embeddings") -> str:
    views = glob.glob(os.path.join(str(wandb_dir), "**", "offline-run-*", "files", "media",
                                   "html", "embproj", name, "view_*.html"), recursive=True)
    assert len(views) == 1, views
    return Path(views[0]).read_text(encoding="utf-8")


def _wrap(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str, seen: list[tuple[str, Any]],
          label: str, *, result_at: int) -> None:
    """Record (label, result) at each call of ``owner.attr``, then call it."""
    real = getattr(owner, attr)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        seen.append((label, args[result_at]))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapped)


def test_every_sink_gets_the_same_frozen_result(tmp_path, wandb_offline, monkeypatch):
    import wandb

    seen: list[tuple[str, Any]] = []
    _wrap(monkeypatch, local_module, "write_projection", seen, "local", result_at=1)
    _wrap(monkeypatch, tensorboard_module, "write_tensorboard_projector", seen, "tensorboard",
          result_at=1)
    _wrap(monkeypatch, ViewSink, "write", seen, "view", result_at=1)
    _wrap(monkeypatch, WandbSink, "write", seen, "W&B", result_at=1)
    loggers = [WandbLogger(project="embproj-test", save_dir=str(wandb_offline)),
               TensorBoardLogger(str(tmp_path / "tb"))]
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30)
    _, warned = _fit(tmp_path, projector, logger=loggers)
    wandb.finish()
    assert warned == []

    by_run: dict[int, dict[str, Any]] = {}
    for label, result in seen:
        by_run.setdefault(result.val_index, {})[label] = result
    assert sorted(by_run) == list(range(EPOCHS))
    for run, results in by_run.items():
        assert sorted(results) == ["W&B", "local", "tensorboard", "view"]
        (result,) = {id(r): r for r in results.values()}.values()  # one object for all
        assert isinstance(result, RunResult) and result.epoch == run
    result = projector.previous["embeddings"]
    assert result is by_run[EPOCHS - 1]["view"]  # and it is the chain's previous run

    # A sink cannot change what the others (or the next run) see.
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.epoch = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.sample.labels = None
    with pytest.raises(TypeError):
        result.metrics["silhouette"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        result.columns["label"][0] = -1  # type: ignore[index]
    with pytest.raises(TypeError):
        result.lineage[0]["event"] = "vanish"  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        result.layouts["pca"][0, 0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        result.sample.embeddings[0, 0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        result.movers["index"][...] = 0  # type: ignore[index]
    # What the sinks wrote is that result's table.
    last = read_projections(projector.root).query(f"val_index == {EPOCHS - 1}")
    assert last["label"].tolist() == list(result.columns["label"])


class LocalWritesFail:
    """``os.replace`` of the local CSV writer's files (run CSV, metrics, lineage, schema) into
    ``folder`` fails with ENOSPC, every run; the view's and the ledger's files still land."""

    LOCAL = re.compile(r"val_\d+_epoch_\d+_step_\d+\.csv|metrics\.jsonl|lineage\.csv|schema\.json")

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        real = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            if str(dst).startswith(str(folder)) and self.LOCAL.fullmatch(Path(dst).name):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            real(src, dst, **kw)

        monkeypatch.setattr(os, "replace", replace)


def test_no_sink_reads_another_sinks_files(tmp_path, wandb_offline, monkeypatch):
    """The local CSV writer fails every run: the view page, the W&B view and the W&B tables
    still hold every run (they read no CSV file)."""
    import wandb

    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    out = tmp_path / "out"
    LocalWritesFail(out / "embproj" / "embeddings", monkeypatch)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                   output_dir=str(out))
    _, warned = _fit(tmp_path, projector, logger=logger)
    wandb.finish()

    folder = out / "embproj" / "embeddings"
    assert not list(folder.glob("val_*.csv")) and not (folder / "metrics.jsonl").exists()
    assert [w for w in warned if "local files" in w] == [
        f"lightning-embproj: writing to local files failed (OSError: [Errno 28] No space left "
        f"on device: '{folder}/schema.json'); the other outputs are still written and training "
        f"continues"]
    runs = list(range(EPOCHS))
    page = (folder / "view.html").read_text(encoding="utf-8")
    assert _page_runs(page) == runs
    assert _payload(page)["metrics"]["x"] == runs  # every run's metric curves too
    assert _page_runs(_wandb_view(wandb_offline)) == runs
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert [t["data"][0][t["columns"].index("val_index")] for t in tables] == runs
    evolution = wandb_tables(wandb_offline, "embproj/embeddings/evolution")
    cols = evolution[-1]["columns"]
    assert sorted({row[cols.index("val_index")] for row in evolution[-1]["data"]}) == runs


def test_table_columns_are_computed_once_per_run(tmp_path, wandb_offline, monkeypatch):
    """With every sink on (local files, view, W&B with movers, evolution and pictures,
    TensorBoard), a run's contract table is computed once."""
    import wandb

    real = columns_module.table_columns
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].val_index)
        return real(*args, **kwargs)

    for module in [m for n, m in sys.modules.items() if n.startswith("lightning_embproj")]:
        if getattr(module, "table_columns", None) is real:  # wherever it was imported to
            monkeypatch.setattr(module, "table_columns", counted)
    loggers = [WandbLogger(project="embproj-test", save_dir=str(wandb_offline)),
               TensorBoardLogger(str(tmp_path / "tb"))]
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=30)
    t, warned = _fit(tmp_path, projector, logger=loggers)
    wandb.finish()

    assert warned == []
    assert calls == list(range(EPOCHS))
    # ... and every sink wrote every run from it
    assert read_projections(projector.root)["val_index"].unique().tolist() == calls
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    movers = wandb_tables(wandb_offline, "embproj/embeddings/movers")
    assert len(tables) == EPOCHS and len(movers) >= EPOCHS - 1
    assert movers[-1]["columns"] == ["kind", "overlap", "foreign_fraction",
                                     *tables[-1]["columns"]]
    assert len(list(Path(t.loggers[1].log_dir).glob("embproj/embeddings/val_*/metadata.tsv"))) \
        == EPOCHS
    assert _page_runs(_wandb_view(wandb_offline)) == calls


def test_a_resumed_fit_in_a_new_process_still_shows_the_runs_before(tmp_path):
    """A new projector (all it knows is the checkpoint, as in a new process) resumes into the
    same folder: its view's history is seeded from the folder, so the page holds every run."""
    out, ckpt_dir = tmp_path / "out", tmp_path / "ckpt"
    first = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                               output_dir=str(out))
    _fit(tmp_path / "a", first, epochs=2, enable_checkpointing=True,
         callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    resumed = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=30,
                                 output_dir=str(out))
    _, warned = _fit(tmp_path / "b", resumed, epochs=4, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert warned == []
    page = (out / "embproj" / "embeddings" / "view.html").read_text(encoding="utf-8")
    assert _page_runs(page) == [0, 1, 2, 3]
    assert _payload(page)["metrics"]["x"] == [0, 1, 2, 3]
    assert read_metrics(out)["val_index"].tolist() == [0, 1, 2, 3]
