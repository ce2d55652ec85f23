"""Untrusted metadata on a real fit: escaped wherever rendered, never used as a path, no secrets.

One fit writes every output at once (local CSV, HTML view, TensorBoard projector files, an
offline W&B run) with texts that try HTML/script injection, TSV breaking (tabs, newlines),
spreadsheet formulas (in texts and in sample ids) and path tricks, while the environment holds a
W&B API key and another secret.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lightning_embproj import EmbeddingProjector, read_projections

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex chars, like a real W&B key
OTHER_SECRET = "s3cr3t-env-value-that-must-not-leak"
FILE_SECRET = "contents-of-a-file-named-in-metadata"
SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'
# Cells a spreadsheet would run as a formula (or that start with the quote that defuses one),
# then cells that must stay as they are.
FORMULAS = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "'quoted", "\tTAB", "\rCR"]
PLAIN = ["plain", "a=b", "1-2"]
CELLS = FORMULAS + PLAIN
ID_PREFIXES = ["=", "+", "-", "@", "'", "", "x"]

_opened: list[str] = []
_recording = False


def _audit(event: str, args: tuple) -> None:
    if _recording and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # cannot be removed: it only records while _recording is set


class Hostile(DigitsModel):
    """Validation outputs with hostile texts, string labels and ids that look like paths."""

    def __init__(self, secret_path: str) -> None:
        super().__init__()
        self.secret_path = secret_path

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        n = len(out["labels"])
        base = batch_idx * n
        texts = [SCRIPT, IMG, "tab\there", "new\nline\r\nrow", self.secret_path,
                 "../../../../etc/passwd", f"file://{self.secret_path}", "=cmd|' /C calc'!A0"]
        out["text"] = [f"{texts[(base + i) % len(texts)]} #{base + i}" for i in range(n)]
        out["path"] = [self.secret_path] * n
        out["name"] = [f"{IMG} label {int(y)}" for y in out["labels"]]
        out["formula"] = [CELLS[(base + i) % len(CELLS)] for i in range(n)]
        out["sid"] = [f"{ID_PREFIXES[(base + i) % len(ID_PREFIXES)]}{base + i}" for i in range(n)]
        return out


def point_index(sample_id: str) -> int:
    """The running index at the end of an id (``"=12"`` -> 12), whatever came before it."""
    found = re.search(r"(\d+)$", sample_id)
    assert found is not None, sample_id
    return int(found.group(1))


def cell_for(index: int) -> str:
    """The ``formula`` cell the model gave point ``index``."""
    return CELLS[index % len(CELLS)]


def raw_run_rows(folder: Path) -> list[dict[str, str]]:
    """The cells of every run's CSV (val_*.csv) in a set folder, as written."""
    rows: list[dict[str, str]] = []
    for f in sorted(folder.glob("val_*.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "pca_x" in (reader.fieldnames or []):
                rows.extend(reader)
    return rows


@pytest.fixture
def hostile_fit(tmp_path, wandb_offline, monkeypatch):
    global _recording
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(FILE_SECRET)
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", OTHER_SECRET)
    out = tmp_path / "out"
    wandb_logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    tb_logger = TensorBoardLogger(str(tmp_path / "tb"))
    projector = EmbeddingProjector(metadata_keys=["text", "path", "name", "formula"],
                                   label_key="name", id_key="sid", reducers="pca",
                                   max_samples=40, max_text_length=120, output_dir=str(out))
    train, val = loaders(n_train=64, n_val=40, batch_size=20)
    t = trainer(tmp_path, [projector], max_epochs=2, limit_train_batches=2,
                logger=[wandb_logger, tb_logger])
    _opened.clear()
    _recording = True
    try:
        t.fit(Hostile(str(secret_file)), train, val)
        projector.flush()
    finally:
        _recording = False
    import wandb

    wandb.finish()
    return {"out": out, "tb": Path(tb_logger.log_dir), "wandb": wandb_offline, "tmp": tmp_path,
            "secret": secret_file}


def test_texts_are_escaped_in_every_rendered_output(hostile_fit):
    out, tb = hostile_fit["out"], hostile_fit["tb"]
    # local CSV: texts read back exactly (CSV quoting, no escaping needed)
    df = read_projections(out)
    assert len(df) == 80
    texts = set(df["text"])
    assert any(t.startswith(SCRIPT) for t in texts)
    assert any(t.startswith("new\nline\r\nrow #") for t in texts)
    assert any(t.startswith("tab\there #") for t in texts)
    # HTML view: no tag from the data survives; the escaped text is there
    page = (out / "embproj" / "embeddings" / "view.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "\\u003cscript\\u003ealert('x')\\u003c/script" in page  # the data block's \u escapes
    # TensorBoard metadata: one header + one line per point, every line with the same cells
    for epoch in (0, 1):
        run = f"val_{epoch:04d}_epoch_{epoch:04d}"
        tsv = tb / "embproj" / "embeddings" / run / "metadata.tsv"
        lines = tsv.read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines) == 1 + 40 + 1
        header = lines[0].split("\t")
        assert all(len(line.split("\t")) == len(header) for line in lines[1:-1])
        assert any("tab\\there" in line for line in lines)
        assert any("new\\nline\\r\\nrow" in line for line in lines)
    # the W&B table keeps the texts as plain strings (W&B renders them as text)
    table = wandb_tables(hostile_fit["wandb"], "embproj/embeddings")[0]
    col = table["columns"].index("text")
    assert any(row[col].startswith(SCRIPT) for row in table["data"])


def test_no_secret_is_written_anywhere(hostile_fit):
    leaked = []
    for root in {hostile_fit["tmp"], hostile_fit["wandb"]}:
        for f in Path(root).rglob("*"):
            if not f.is_file() or f == hostile_fit["secret"]:
                continue
            data = f.read_bytes()
            for secret in (API_KEY, OTHER_SECRET, FILE_SECRET):
                if secret.encode() in data:
                    leaked.append((str(f), secret))
    assert leaked == []


def test_paths_in_metadata_are_never_opened(hostile_fit):
    secret = str(hostile_fit["secret"])
    assert not [p for p in _opened if p.endswith(("secret.txt", "passwd"))], _opened
    # the path is kept as text, not followed: the CSV cell is the path itself
    rows = raw_run_rows(hostile_fit["out"] / "embproj" / "embeddings")
    assert len(rows) == 80 and {row["path"] for row in rows} == {secret}


def test_csv_cells_a_spreadsheet_would_run_are_defused_and_read_back_exactly(hostile_fit):
    rows = raw_run_rows(hostile_fit["out"] / "embproj" / "embeddings")
    assert len(rows) == 80
    for row in rows:
        index = point_index(row["sample_id"])
        # a text cell starting with = + - @ tab CR or ' gets one leading '; any other stays
        given_id, given = f"{ID_PREFIXES[index % len(ID_PREFIXES)]}{index}", cell_for(index)
        assert row["sample_id"] == (f"'{given_id}" if given_id[0] in "=+-@'" else given_id)
        assert row["formula"] == (f"'{given}" if given in FORMULAS else given), row
        assert row["text"].startswith("'=cmd") or not row["text"].startswith(tuple("=+-@\t\r"))
        # numbers are not text: a negative coordinate is written as a plain number
        for col in ("pca_x", "pca_y"):
            assert not row[col].startswith("'") and np.isfinite(float(row[col]))
    assert any(row["pca_x"].startswith("-") for row in rows)
    assert {row["formula"] for row in rows} == {f"'{c}" for c in FORMULAS} | set(PLAIN)
    # read back: the values exactly as the model gave them, ids that look like numbers as text
    df = read_projections(hostile_fit["out"])
    assert len(df) == 80
    for sample_id, formula in zip(df["sample_id"], df["formula"], strict=True):
        index = point_index(sample_id)
        assert sample_id == f"{ID_PREFIXES[index % len(ID_PREFIXES)]}{index}"
        assert formula == cell_for(index)
    assert set(df["formula"]) == set(CELLS)
    # W&B shows text cells as text: its table keeps them unchanged
    table = wandb_tables(hostile_fit["wandb"], "embproj/embeddings")[0]
    col = table["columns"].index("formula")
    assert {row[col] for row in table["data"]} == set(CELLS)
