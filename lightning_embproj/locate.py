"""Find a run's files: the runs below any folder, the one to read, a set's folder, the set names.

A run is a folder holding ``embproj/<NAME>/`` with files: a trainer's log dir, or with a
``WandbLogger`` ``<save_dir>/<project>/<run id>``. Every reader takes a path through
:func:`find_set` (the readers re-export these functions: ``readers.find_run`` and
``lightning_embproj.find_run`` are the same).

Example:
    >>> find_run("lightning_logs/version_0")          # doctest: +SKIP
    PosixPath('lightning_logs/version_0')
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from lightning_embproj.sinks.local import METRICS_FILE, SUBDIR, run_files


def _sets_root(p: Path) -> Path:
    """The folder holding the set folders: ``<log dir>/embproj``, or ``p`` itself."""
    return p / SUBDIR if (p / SUBDIR).is_dir() else p


def _is_set_folder(p: Path) -> bool:
    return bool(run_files(p)) or (p / METRICS_FILE).exists() or (p / "ledger.jsonl").exists()


MAX_SEARCH_DEPTH = 6
"""How deep below a folder :func:`find_runs` looks for runs (``<save_dir>/<project>/<run id>``
is 2 deep)."""


def _holds_files(p: Path) -> bool:
    """``p`` is a run (holds ``embproj/<set>/`` with files), an ``embproj`` folder or a set."""
    if _is_set_folder(p):
        return True
    base = _sets_root(p)
    return base.is_dir() and any(d.is_dir() and _is_set_folder(d) for d in base.iterdir())


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """The runs below ``path``: folders holding ``embproj/<NAME>/`` with files, in path order
    (hidden folders are skipped; at most :data:`MAX_SEARCH_DEPTH` levels down; nothing below a
    run's ``embproj`` folder is searched).

    Example:
        >>> find_runs("wandb_logs")                            # doctest: +SKIP
        [PosixPath('wandb_logs/demo/3kx9q2ab'), PosixPath('wandb_logs/demo/w1m0c7zd')]
    """
    root = Path(path)
    found: list[Path] = []
    for folder, dirs, _ in os.walk(root):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        if SUBDIR in dirs and _holds_files(here):
            found.append(here)
            dirs.clear()
            continue
        deeper = depth < MAX_SEARCH_DEPTH
        dirs[:] = sorted(d for d in dirs if deeper and not d.startswith("."))
    return found


def last_written(run: Path) -> float:
    """The newest modification time of a file in a run's ``embproj`` folder (its sets)."""
    newest = 0.0
    for folder, _, files in os.walk(_sets_root(run)):
        for f in files:
            with contextlib.suppress(OSError):  # a temporary file renamed meanwhile
                newest = max(newest, os.stat(os.path.join(folder, f)).st_mtime)
    return newest


def find_run(path: str | os.PathLike[str], latest: bool = False) -> Path:
    """The run to read for ``path``: ``path`` itself when it holds the files (a run, its
    ``embproj`` folder, a set's folder); else the one run below it (:func:`find_runs`); with
    several, the newest (latest file written) when ``latest``, else a ``ValueError`` listing
    them with their run ids (folder names) and times. ``path`` as given when none is found
    (the caller says what is missing).

    Example:
        >>> find_run("wandb_logs")                             # doctest: +SKIP
        PosixPath('wandb_logs/demo/3kx9q2ab')
    """
    p = Path(path)
    if not p.is_dir() or _holds_files(p):
        return p
    runs = find_runs(p)
    if len(runs) <= 1:
        return runs[0] if runs else p
    times = {r: last_written(r) for r in runs}
    if latest:
        return max(runs, key=lambda r: (times[r], str(r)))
    listing = "; ".join(
        f"{r} (run {r.name}, last written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(times[r]))})"
        for r in sorted(runs, key=lambda r: (times[r], str(r))))
    raise ValueError(
        f"{len(runs)} runs under {str(p)!r}: {listing}. Pass one run's folder, or latest=True "
        f"(--latest on the command line) for the newest")


def find_set(path: str | os.PathLike[str], name: str | None = None, *,
             latest: bool = False) -> Path:
    """The folder of one embedding set: ``path`` may be a log dir (holding ``embproj/``), an
    ``embproj`` dir, one set's folder, or a folder above one run (several: ``latest`` or an
    error, see :func:`find_run`); ``name`` picks the set when there are several.

    Example:
        >>> find_set("lightning_logs/version_0", "embeddings")          # doctest: +SKIP
        PosixPath('lightning_logs/version_0/embproj/embeddings')
    """
    p = find_run(path, latest)
    if _is_set_folder(p):
        return p
    base = _sets_root(p)
    names = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    if name is None:
        if len(names) != 1:
            raise ValueError(
                f"read_projections: pass `name`, one of {names}, for the embedding sets "
                f"under {str(base)!r}" if names else
                f"read_projections: no embedding sets found under {str(p)!r} "
                f"(expected {SUBDIR}/<name>/val_*.csv)"
            )
        name = names[0]
    if name not in names:
        raise ValueError(
            f"read_projections: no embedding set {name!r} under {str(base)!r}; found {names}"
        )
    return base / name


def list_sets(path: str | os.PathLike[str], *, latest: bool = False) -> list[str]:
    """Names of the embedding sets written under a log dir (or its ``embproj`` folder, or a
    folder above one run: see :func:`find_run`)."""
    base = _sets_root(find_run(path, latest))
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if d.is_dir() and run_files(d))
