"""Local copy of every projected validation run, one plain CSV file per run.

Layout under ``<root>/embproj/<NAME>/``:

- ``val_0003_epoch_0001_step_120.csv``: the contract's columns (images left out), one row per
  tracked point, for validation run 3 (the 4th this callback ran), at epoch 1, global step 120.
  Several validation runs per epoch (``val_check_interval``) never share a file.
- ``metrics.jsonl``: one JSON object per run,
  ``{"val_index": 3, "epoch": 1, "step": 120, "chain": 0, "stage": "fit", "metrics": {...}}``
  (``chain``: the run's chain, see :class:`~lightning_embproj.results.RunIdentity`).
- ``ledger.jsonl``: every validation run the Trainer performed and what became of it
  (projected, not selected, dropped, empty, failed, interrupted; :func:`read_ledger`).
- ``schema.json``: the kind of each column (``str``, ``int``, ``float``, ``bool``, ``json``), so
  :func:`read_projections` returns ids and texts as written: ``"000123"`` stays a string.
- ``movers.csv``: every run's movers (``val_index``, ``epoch``, ``step``, then the movers
  table's columns: ``kind``, ``overlap``, ``foreign_fraction`` and the run's table columns
  of those points); ``per_label.csv``: every run's per-label rows (``val_index``, ``epoch``,
  ``step``, ``label``, ``count``, ...). One file each per set, a run's rows replaced when it
  is written again (after a resume), as ``metrics.jsonl`` and ``lineage.csv``; read back by
  :func:`read_movers` / :func:`read_per_label`.

Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
tab or CR) are written with a leading ``'`` (as OWASP advises for CSV files); so is a text that
already starts with ``'``. :func:`read_projections` removes exactly that one ``'`` again.
Files are written to a temporary name and renamed, so a reader never sees half a file.

The files are read back by :mod:`lightning_embproj.readers`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from lightning_embproj.results import RunResult
from lightning_embproj.sinks.columns import mover_columns

SUBDIR = "embproj"
RUN_FILE = "val_{val_index:04d}_epoch_{epoch:04d}_step_{step}.csv"
METRICS_FILE = "metrics.jsonl"
SCHEMA_FILE = "schema.json"
LINEAGE_FILE = "lineage.csv"
LINEAGE_COLUMNS = (
    "val_index", "epoch", "step", "cluster", "event", "from_clusters", "size", "overlap",
)
MOVERS_FILE = "movers.csv"
PER_LABEL_FILE = "per_label.csv"
RUN_TABLES = (LINEAGE_FILE, MOVERS_FILE, PER_LABEL_FILE)
"""The files holding rows of every run, ``val_index`` first: a forgotten run leaves them all."""
RUN_KEYS = ("val_index", "epoch", "step")
_RUN_RE = re.compile(r"val_(\d+)_epoch_(\d+)_step_(\d+)\.csv")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def set_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Folder of one embedding set: ``<root>/embproj/<name>``."""
    return Path(root) / SUBDIR / name


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write text or bytes to ``path`` via a temporary file and a rename (no half files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: two writers of one file never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        # A full disk or an interrupt must not leave half-written temporary files behind.
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, text)


def run_file_name(projection: RunResult) -> str:
    """``val_0003_epoch_0001_step_120.csv``: the file of one validation run."""
    return RUN_FILE.format(
        val_index=projection.val_index, epoch=projection.epoch, step=projection.step
    )


def column_kind(values: list[Any]) -> str:
    """The schema kind of a column: ``str``, ``json`` (list cells), ``bool``, ``int``, ``float``.

    Example:
        >>> column_kind(["007", "12"]), column_kind([1, 2]), column_kind([1, 2.5, None])
        ('str', 'int', 'float')
    """
    present = [v for v in values if v is not None]
    if not present:
        return "float"  # nothing known yet (a first run's motion): numbers, empty
    if any(isinstance(v, str) for v in present):
        return "str"
    if any(isinstance(v, (list, tuple, dict)) for v in present):
        return "json"
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    return "float"


def _csv_cell(value: Any, kind: str) -> Any:
    if value is None:
        return ""
    if kind == "json":
        return json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_projection(root: str | os.PathLike[str], projection: RunResult) -> Path:
    """Write one validation run's CSV (its contract columns without images), its metrics line
    and the schema; returns the CSV path."""
    folder = set_dir(root, projection.name)
    cols = projection.table(images=False)
    kinds = {name: column_kind(values) for name, values in cols.items()}
    _update_schema(folder, kinds)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols.keys())
    cells = [[_csv_cell(v, kinds[name]) for v in values] for name, values in cols.items()]
    writer.writerows(zip(*cells, strict=True))
    path = folder / run_file_name(projection)
    atomic_write_text(path, buf.getvalue())
    _write_metrics(folder, projection)
    if projection.lineage is not None:
        _write_lineage(folder, projection)
    _write_movers(folder, projection, kinds)
    _write_per_label(folder, projection)
    return path


def _write_movers(folder: Path, projection: RunResult, kinds: dict[str, str]) -> None:
    """This run's movers into ``movers.csv`` (images left out; cells as in the run's CSV)."""
    cols = mover_columns(projection, projection.table(images=False))
    n = len(cols.get("kind", []))
    keys = {k: [getattr(projection, k)] * n for k in RUN_KEYS}
    rows = [{name: _row_cell(values[i], kinds.get(name, "float"))
             for name, values in {**keys, **cols}.items()} for i in range(n)]
    replace_run_rows(folder / MOVERS_FILE, projection.val_index, [*keys, *cols], rows)


def _write_per_label(folder: Path, projection: RunResult) -> None:
    """This run's per-label rows into ``per_label.csv``."""
    table = list(projection.per_label or [])
    names = list(table[0]) if table else []
    keys = {k: getattr(projection, k) for k in RUN_KEYS}
    rows = [{**keys, **{c: _row_cell(r[c], "str" if c == "label" else "float")
                        for c in names}} for r in table]
    replace_run_rows(folder / PER_LABEL_FILE, projection.val_index, [*keys, *names], rows)


def _row_cell(value: Any, kind: str) -> Any:
    """A cell of ``movers.csv`` / ``per_label.csv``: as in a run's CSV, NaN left empty."""
    if isinstance(value, float) and value != value:
        return ""
    return _csv_cell(value, kind)


def replace_run_rows(path: Path, val_index: int, columns: list[str],
                     rows: list[dict[str, Any]]) -> None:
    """Rewrite the run table ``path`` (``val_index`` first) with run ``val_index``'s rows
    replaced by ``rows`` (none: removed), sorted by run, atomically. Columns are the file's,
    then any new ones (a later run's columns widen the file; missing cells are empty). A file
    that does not exist is written only when there are rows."""
    header: list[str] = []
    kept: list[dict[str, Any]] = []
    if path.exists():
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            kept = [r for r in reader if r.get("val_index") != str(val_index)]
    elif not rows:
        return
    header += [c for c in dict.fromkeys(columns) if c not in header]
    body = sorted([*kept, *rows], key=lambda r: int(r["val_index"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(body)
    atomic_write_text(path, buf.getvalue())


def _write_lineage(folder: Path, projection: RunResult) -> None:
    """``lineage.csv``: every run's lineage rows; a rerun (after a resume) replaces its rows."""
    path = folder / LINEAGE_FILE
    kept: list[list[str]] = []
    if path.exists():
        with open(path, encoding="utf-8", newline="") as fh:
            kept = [row for row in list(csv.reader(fh))[1:]
                    if row and row[0] != str(projection.val_index)]
    run = [projection.val_index, projection.epoch, projection.step]
    rows = [*kept, *([*run, *(r[c] for c in LINEAGE_COLUMNS[3:])]
                     for r in projection.lineage or [])]
    rows.sort(key=lambda row: int(row[0]))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(LINEAGE_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _update_schema(folder: Path, kinds: dict[str, str]) -> None:
    """Merge this run's column kinds into ``schema.json`` (a column seen as text stays text)."""
    path = folder / SCHEMA_FILE
    known = read_schema(folder)
    merged = dict(known)
    for name, kind in kinds.items():
        old = merged.get(name)
        if old is None or old == kind:
            merged[name] = kind
        elif {old, kind} == {"int", "float"}:
            merged[name] = "float"
        else:
            merged[name] = "str"
    if merged != known or not path.exists():
        atomic_write_text(path, json.dumps({"columns": merged}, indent=1))


def read_schema(folder: Path) -> dict[str, str]:
    try:
        return dict(json.loads((folder / SCHEMA_FILE).read_text(encoding="utf-8"))["columns"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_metrics(folder: Path, projection: RunResult) -> None:
    """Keep one line per validation run: a rerun (after a resume) replaces its line."""
    entries = [
        e for e in read_jsonl(folder / METRICS_FILE) if e["val_index"] != projection.val_index
    ]
    entries.append({
        "val_index": projection.val_index, "epoch": projection.epoch, "step": projection.step,
        "chain": projection.chain, "stage": projection.stage, "metrics": dict(projection.metrics),
    })
    entries.sort(key=lambda e: e["val_index"])
    atomic_write_text(folder / METRICS_FILE, "".join(json.dumps(e) + "\n" for e in entries))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or "val_index" not in entry:
                # A damaged line (an old crash, a hand edit) must not hide the other runs or
                # stop later runs from being written.
                warnings.warn(f"lightning-embproj: skipping unreadable line {number} of {path}",
                              stacklevel=3)
                continue
            entries.append(entry)
    return entries


def run_files(folder: Path) -> dict[tuple[int, int, int], Path]:
    """(val_index, epoch, step) -> CSV file, from the file names; other names are ignored."""
    found = {}
    for f in folder.glob("val_*.csv"):
        match = _RUN_RE.fullmatch(f.name)
        if match:
            found[(int(match[1]), int(match[2]), int(match[3]))] = f
    return dict(sorted(found.items()))


def forget_runs(root: str | os.PathLike[str], name: str, runs: set[int]) -> None:
    """Remove one set's files of the runs ``runs`` (``val_index``): their CSV files and their
    lines in ``metrics.jsonl``, ``lineage.csv``, ``movers.csv`` and ``per_label.csv``. A fit
    resumed from a checkpoint performs the runs after it again under the same ``val_index``:
    the interrupted process's files of those runs must not stay beside the new ones."""
    folder = set_dir(root, name)
    if not folder.is_dir() or not runs:
        return
    for (v, _, _), f in run_files(folder).items():
        if v in runs:
            f.unlink(missing_ok=True)
    entries = read_jsonl(folder / METRICS_FILE)
    kept = [e for e in entries if int(e["val_index"]) not in runs]
    if len(kept) != len(entries):
        atomic_write_text(folder / METRICS_FILE, "".join(json.dumps(e) + "\n" for e in kept))
    for path in (folder / f for f in RUN_TABLES):
        if not path.exists():
            continue
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        body = [r for r in rows[1:] if r and int(r[0]) not in runs]
        if len(body) != len(rows) - 1:
            buf = io.StringIO()
            csv.writer(buf).writerows([rows[0], *body])
            atomic_write_text(path, buf.getvalue())

