"""Local copy of every epoch's projection, one plain CSV file per epoch.

Layout under ``<root>/embproj/<NAME>/``:

- ``epoch_0003.csv``: the contract's columns (images left out), one row per tracked point;
- ``metrics.jsonl``: one JSON object per epoch, ``{"epoch": 3, "step": 120, "metrics": {...}}``.

Files are written to a temporary name and renamed, so a reader never sees half a file.

Example:
    >>> df = read_projections("lightning_logs/version_0")       # doctest: +SKIP
    >>> df.groupby("epoch").size()                               # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning_embproj.columns import table_columns
from lightning_embproj.types import Projection

SUBDIR = "embproj"
EPOCH_FILE = "epoch_{epoch:04d}.csv"
METRICS_FILE = "metrics.jsonl"
_EPOCH_RE = re.compile(r"epoch_(\d+)\.csv")


def set_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Folder of one embedding set: ``<root>/embproj/<name>``."""
    return Path(root) / SUBDIR / name


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: two writers of one file never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        # A full disk or an interrupt must not leave half-written temporary files behind.
        tmp.unlink(missing_ok=True)
        raise


def write_projection(root: str | os.PathLike[str], projection: Projection) -> Path:
    """Write one epoch's CSV and append its metrics line; returns the CSV path."""
    folder = set_dir(root, projection.name)
    cols = table_columns(projection, include_images=False)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols.keys())
    writer.writerows(zip(*cols.values(), strict=True))
    path = folder / EPOCH_FILE.format(epoch=projection.epoch)
    atomic_write_text(path, buf.getvalue())
    _write_metrics(folder, projection)
    return path


def _write_metrics(folder: Path, projection: Projection) -> None:
    """Keep one line per epoch: a rerun of an epoch (after a resume) replaces its line."""
    entries = [e for e in _read_jsonl(folder / METRICS_FILE) if e["epoch"] != projection.epoch]
    entries.append(
        {"epoch": projection.epoch, "step": projection.step, "metrics": projection.metrics}
    )
    entries.sort(key=lambda e: e["epoch"])
    atomic_write_text(folder / METRICS_FILE, "".join(json.dumps(e) + "\n" for e in entries))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
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
            if not isinstance(entry, dict) or "epoch" not in entry:
                # A damaged line (an old crash, a hand edit) must not hide the other epochs or
                # stop later epochs from being written.
                warnings.warn(f"lightning-embproj: skipping unreadable line {number} of {path}",
                              stacklevel=3)
                continue
            entries.append(entry)
    return entries


def _sets_root(p: Path) -> Path:
    """The folder holding the set folders: ``<log dir>/embproj``, or ``p`` itself."""
    return p / SUBDIR if (p / SUBDIR).is_dir() else p


def _resolve(path: str | os.PathLike[str], name: str | None) -> Path:
    """Accept a log dir (holding ``embproj/``), an ``embproj`` dir, or one set's folder."""
    p = Path(path)
    if list(p.glob("epoch_*.csv")) or (p / METRICS_FILE).exists():
        return p
    base = _sets_root(p)
    names = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    if name is None:
        if len(names) != 1:
            raise ValueError(
                f"read_projections: pass `name`, one of {names}, for the embedding sets "
                f"under {str(base)!r}" if names else
                f"read_projections: no embedding sets found under {str(p)!r} "
                f"(expected {SUBDIR}/<name>/epoch_*.csv)"
            )
        name = names[0]
    if name not in names:
        raise ValueError(
            f"read_projections: no embedding set {name!r} under {str(base)!r}; found {names}"
        )
    return base / name


def list_sets(path: str | os.PathLike[str]) -> list[str]:
    """Names of the embedding sets written under a log dir (or its ``embproj`` folder)."""
    base = _sets_root(Path(path))
    return sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("epoch_*.csv")))


def _epoch_files(folder: Path) -> dict[int, Path]:
    """Epoch -> CSV file, from the file names (``epoch_0003.csv``); other names are ignored."""
    found = {}
    for f in folder.glob("epoch_*.csv"):
        match = _EPOCH_RE.fullmatch(f.name)
        if match:
            found[int(match.group(1))] = f
    return dict(sorted(found.items()))


def list_epochs(path: str | os.PathLike[str], name: str | None = None) -> list[int]:
    """The epochs written for one embedding set, sorted, without reading the files.

    Example:
        >>> list_epochs("lightning_logs/version_0")                 # doctest: +SKIP
        [0, 1, 2]
    """
    return list(_epoch_files(_resolve(path, name)))


def read_projections(
    path: str | os.PathLike[str], name: str | None = None, epochs: Iterable[int] | None = None
) -> Any:
    """Read every epoch of one embedding set back into one ``pandas.DataFrame``.

    Args:
        path: the trainer's log dir, its ``embproj`` folder, or one set's folder.
        name: the embedding set; may be left out when there is only one.
        epochs: read only these epochs (see :func:`list_epochs`); epochs without a file are
            skipped. Default: all.

    Returns:
        A DataFrame with the contract's columns and one row per point per epoch, sorted by epoch.
    """
    import pandas as pd

    folder = _resolve(path, name)
    by_epoch = _epoch_files(folder)
    if epochs is not None:
        wanted = {int(e) for e in epochs}
        by_epoch = {e: f for e, f in by_epoch.items() if e in wanted}
    files = list(by_epoch.values())
    if not files:
        raise FileNotFoundError(
            f"read_projections: no epoch_*.csv files in {str(folder)!r}"
            + (f" for epochs {sorted(wanted)}" if epochs is not None else "")
        )
    frames = [pd.read_csv(f, keep_default_na=False, na_values=[""]) for f in files]
    return pd.concat(frames, ignore_index=True).sort_values("epoch", kind="stable")


def read_metrics(path: str | os.PathLike[str], name: str | None = None) -> Any:
    """Read the per-epoch metrics of one embedding set into a DataFrame (one row per epoch)."""
    import pandas as pd

    folder = _resolve(path, name)
    rows = [
        {"epoch": e["epoch"], "step": e["step"], **e["metrics"]}
        for e in _read_jsonl(folder / METRICS_FILE)
    ]
    return pd.DataFrame(rows)
