"""A chain's start, settled against the files already in its folder (rank zero only).

- **Numbering.** A new chain's runs are numbered after every run already in the folder, so a
  ``validate`` (in a new process too) never replaces a file of the fit it checks.
- **Another run's files.** Runs in the folder that another training run wrote (a different
  ``run_id`` in ``ledger.jsonl``, or files without a ledger) give one warning: the files mix.
  A resumed fit, or a ``validate`` with that run's checkpoint, is the same run: no warning.
- **A resumed fit** performs again the runs its chain had after the checkpoint: the files the
  interrupted process wrote for them are removed first (runs of other chains, such as a
  ``validate`` after the checkpoint, stay, and the resumed runs are numbered after them), and a
  run the checkpoint held as pending that the interrupted process had already logged to this
  W&B run is not logged a second time.
- **The sinks' histories** (:func:`rebuild_histories`), read from the local files here, by the
  chain owner, so that no sink reads another's files: the HTML view's runs of each set
  (:func:`seed_view`, once per process and output root), and, when a chain logs to a W&B run
  that the ledger says already got runs of this folder (a resumed fit, a ``validate`` in a new
  process), the W&B evolution and lineage tables (:func:`rebuild_wandb_history`).

Example:
    >>> from lightning_embproj.chain.owner import ChainState
    >>> state = ChainState()
    >>> state.start_chain("fit")
    >>> settle(state, "/nonexistent", ["z"], resumed=False, warn=lambda topic, msg: None)
    []
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.chain.ledger import PROJECTED, read_ledger_file
from lightning_embproj.chain.owner import ChainState
from lightning_embproj.collect.hashing import keys_of
from lightning_embproj.readers import read_lineage, read_metrics, read_projections
from lightning_embproj.sinks.local import LINEAGE_COLUMNS, forget_runs, run_files, set_dir
from lightning_embproj.sinks.view.history import SetView
from lightning_embproj.sinks.view.images import read_images
from lightning_embproj.sinks.wandb_history import WandbHistory

log = logging.getLogger("lightning_embproj")
Warn = Callable[[str, str], None]


def settle(
    state: ChainState, root: str, names: list[str], resumed: bool, warn: Warn
) -> list[tuple[str, int, str]]:
    """Settle the chain that starts now with ``root``'s files; returns the runs the resumed
    checkpoint held as pending that a W&B run already got: ``(set, val_index, W&B run id)``."""
    logged: list[tuple[str, int, str]] = []
    floor = state.counter.total
    chains: dict[int, set[str]] = {}  # chain number -> the chain uids the folder has under it
    for name in names:
        folder = set_dir(root, name)
        disk = read_ledger_file(folder)
        on_disk = written_runs(root, name)
        if resumed:
            gone = _forget_abandoned(state, root, name, disk, on_disk)
            if state.history is not None:  # this process logged them: the tables forget too
                state.history.of(name).forget(gone)
            if state.view is not None and state.view.root == root:
                state.view.of(name).forget(gone)
            disk = [r for r in disk if int(r["val_index"]) not in gone]
            on_disk = [v for v in on_disk if v not in gone]
            pending = {identity.val_index for sample, identity in state.restored_pending
                       if sample.name == name}
            logged += [(name, int(r["val_index"]), str(r.get("wandb", "")))
                       for r in disk if int(r["val_index"]) in pending
                       and r.get("status") == PROJECTED and r.get("wandb")]
        with state.lock:  # rewriting the folder's ledger keeps its other runs
            waiting = {i.val_index for sample, i in state.restored_pending if sample.name == name}
            state.ledger.adopt(name, disk, waiting)
            _continue_cluster_ids(state, root, name)
        floor = max(floor, max(on_disk, default=-1) + 1)
        for r in disk:
            chains.setdefault(int(r.get("chain", 0)), set()).add(str(r.get("chain_uid", "")))
        theirs = sorted({int(r["val_index"]) for r in disk
                         if r.get("run_id") not in ("", None, state.run_id)})
        if not disk and on_disk and not resumed:
            theirs = on_disk  # written before ledgers, by a run we cannot tell
        if theirs:
            warn(f"folder:{name}",
                 f"{str(folder)!r} already holds projections of another training run "
                 f"(validation runs {theirs[:5]}{' ...' if len(theirs) > 5 else ''}); this "
                 f"run's files are numbered after them but mix with them in the same folder. "
                 f"Give each run its own output_dir (or logger version / W&B run)")
    with state.lock:
        state.counter.total = floor
    state.renumber_chain(_chain_number(state, chains, resumed))
    return logged


def _chain_number(state: ChainState, chains: dict[int, set[str]], resumed: bool) -> int:
    """A number no other chain of the folder has: a resumed chain keeps the one its runs in
    the folder have (or its own, when free); a new chain follows every chain in the folder."""
    mine = [c for c, uids in chains.items() if state.chain_uid in uids]
    if mine:
        return mine[0]
    if resumed and state.counter.chain not in chains:
        return state.counter.chain
    return max(max(chains, default=-1) + 1, state.counter.chain if not resumed else 0)


def written_runs(root: str | os.PathLike[str], name: str) -> list[int]:
    """``val_index`` of every run with a file under one set's folder (CSV or ledger line)."""
    folder = set_dir(root, name)
    if not folder.is_dir():
        return []
    found = {v for v, _, _ in run_files(folder)}
    found.update(int(r["val_index"]) for r in read_ledger_file(folder))
    return sorted(found)


def _continue_cluster_ids(state: ChainState, root: str, name: str) -> None:
    """New clusters get ids after every id the folder's lineage has used: never one twice."""
    try:
        used = read_lineage(root, name)["cluster"]
    except (OSError, ValueError):
        return
    ids = [int(c) for c in used.tolist() if str(c).lstrip("-").isdigit()]
    if not ids:
        return
    after = max(ids) + 1
    state.next_cluster_id[name] = max(state.next_cluster_id.get(name, 0), after)
    if name in state.clusters:
        chain = state.clusters[name].clusters
        chain.next_id = max(chain.next_id, after)


def _forget_abandoned(state: ChainState, root: str, name: str, disk: list[dict[str, Any]],
                      on_disk: list[int]) -> set[int]:
    """Remove the files of the runs the interrupted process performed after the checkpoint in
    the checkpoint's chain: the resumed fit performs them again. Runs of other chains (a
    ``validate`` after the checkpoint) stay."""
    start = int(state.resumed_from or 0)
    recorded = {int(r["val_index"]): str(r.get("chain_uid", "")) for r in disk}
    gone = {v for v, uid in recorded.items() if v >= start and uid == state.chain_uid}
    gone |= {v for v in on_disk if v >= start and v not in recorded}  # files without a ledger
    if gone:
        forget_runs(root, name, gone)
        log.info("lightning-embproj: resuming %r at validation run %d: the files of runs %s, "
                 "written after the checkpoint, are replaced as those runs are performed again",
                 name, start, sorted(gone))
    return gone


def rebuild_histories(state: ChainState, root: str, names: list[str], wandb_run: str,
                      warn: Warn) -> None:
    """Fill what the sinks keep across runs from the folder's files at a chain's start: the
    view's runs of each set (once per process and root), and the W&B history when the W&B run
    ``wandb_run`` already got runs of this folder that this process did not log."""
    view = state.view_history(root)
    for name in names:
        seed_view(view.of(name), root, name, warn)
    if not wandb_run:
        return
    history = state.wandb_history(wandb_run)
    pending = {(s.name, i.val_index) for s, i in state.restored_pending}
    for name in names:
        if history.of(name).projected:
            continue  # this process logged to it already: the history is complete
        runs = [r.val_index for r in state.records(name)
                if r.status == PROJECTED and r.wandb == wandb_run
                and (name, r.val_index) not in pending]
        rebuild_wandb_history(history, previous_root(state, root), name, runs, warn)


def seed_view(view: SetView, root: str, name: str, warn: Warn) -> None:
    """Fill one set's view history from its local files (once): a view written after a resume
    in a new process, or a ``validate`` of a finished fit, still shows the runs before."""
    if view.seeded:
        return
    view.seeded = True
    folder = set_dir(root, name)
    runs = [v for v, _, _ in run_files(folder)] if folder.is_dir() else []
    if not runs:
        return
    try:
        points = read_projections(root, name, validations=view.to_read(runs))
        metrics, lineage = read_metrics(root, name), read_lineage(root, name)
    except (OSError, ValueError, KeyError) as err:
        warn(f"resume:view:{name}",
             f"the view of {name!r} could not read the runs already in {root!r} "
             f"({type(err).__name__}: {err}); it shows only the runs from now on")
        return
    view.seed(runs, points, metrics, lineage, read_images(folder))


def rebuild_wandb_history(
    history: WandbHistory, root: str, name: str, runs: list[int], warn: Warn
) -> None:
    """Refill one set's W&B history from the local files of ``runs`` (their ``val_index``)."""
    if not runs:
        return
    kept = history.of(name)
    try:
        points = read_projections(root, name, validations=runs)
        lineage = read_lineage(root, name)
    except (OSError, ValueError) as err:
        warn(f"resume:wandb:{name}",
             f"the W&B evolution and lineage tables of {name!r} could not be rebuilt from "
             f"{root!r} ({type(err).__name__}: {err}); they hold only the runs after the resume")
        return
    for (v, e, s), frame in points.groupby(["val_index", "epoch", "step"], sort=True):
        columns = {c: [_plain(x) for x in frame[c].tolist()] for c in frame.columns}
        loaders = frame["dataloader_idx"].tolist() if "dataloader_idx" in frame.columns else None
        keys = keys_of(frame["sample_id"].tolist(), loaders)
        kept.evolution.add((int(v), int(e), int(s)), columns, keys.tolist())
        kept.projected += 1
        kept.step = int(s)
    wanted = set(runs)
    rows = [[_plain(r[c]) for c in LINEAGE_COLUMNS]
            for r in lineage.to_dict("records") if int(r["val_index"]) in wanted]
    for v in sorted({int(r[0]) for r in rows}):
        kept.add_lineage(v, [r for r in rows if int(r[0]) == v], history.max_rows)
    kept.behind = True  # sent complete by the sink's finish (or at the next due run)


def _plain(value: Any) -> Any:
    """A CSV cell read back as the table cell it was: numpy scalars become Python values and
    empty numbers None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def previous_root(state: ChainState, root: str) -> str:
    """Where the runs before a resume were written: the checkpoint's root when it still exists."""
    return state.root if state.root and Path(state.root).is_dir() else root
