"""The ledger: every validation run the Trainer performed, per set, and what became of it.

One :class:`RunRecord` per ``(set, val_index)``. A run's status moves forward only:

- ``queued``: collected, waiting for the background worker;
- ``projected``: reduced, scored and written (``wandb`` names the W&B run that got it);
- ``not_selected``: not projected by ``every_n_epochs`` / ``every_n_validations``;
- ``dropped``: skipped by the queue policy (``max_queued_epochs``), with the one warning;
- ``empty``: no tracked rows (every row non-finite, or none gathered);
- ``failed``: processing raised (``reason`` says what);
- ``interrupted``: not finished when an exception's shutdown deadline passed; the run stays in
  the callback's checkpoint state, so a checkpoint saved after it (Lightning's
  ``OnExceptionCheckpoint``) holds it and ``fit(ckpt_path=...)`` processes it.

The ledger is saved in the callback's checkpoint state and written per set to
``<root>/embproj/NAME/ledger.jsonl``: a line is appended when a run is performed (so a killed
process leaves it behind), and the file is rewritten whole, one line per run, when runs are
written; the last line of a run is its status. :func:`read_ledger` reads it back.

Example:
    >>> ledger = Ledger()
    >>> _ = ledger.record("z", 0, 0, 10, chain=0, stage="fit", status=QUEUED)
    >>> _ = ledger.update("z", 0, PROJECTED)
    >>> [(r.val_index, r.status) for r in ledger.runs("z")]
    [(0, 'projected')]
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED = "queued"
PROJECTED = "projected"
NOT_SELECTED = "not_selected"
DROPPED = "dropped"
EMPTY = "empty"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (QUEUED, PROJECTED, NOT_SELECTED, DROPPED, EMPTY, FAILED, INTERRUPTED)
FINAL = frozenset({PROJECTED, NOT_SELECTED, DROPPED, EMPTY, FAILED})
LEDGER_FILE = "ledger.jsonl"
COLUMNS = ("val_index", "epoch", "step", "chain", "stage", "status", "reason", "wandb", "run_id",
           "chain_uid")


@dataclass
class RunRecord:
    """One validation run of one set: its identity, its status and, when it failed, why."""

    name: str
    val_index: int
    epoch: int
    step: int
    chain: int
    stage: str
    status: str
    reason: str = ""
    wandb: str = ""  # id of the W&B run that logged it, "" when none did
    run_id: str = ""  # the projector lineage that performed it (see ChainState.run_id)
    chain_uid: str = ""  # its chain, unique across processes (``chain`` is its number)

    def line(self) -> str:
        """The record as one JSON line (without the set name: the file is per set)."""
        fields = dataclasses.asdict(self)
        fields.pop("name")
        return json.dumps(fields)


class Ledger:
    """Every validation run per set, in ``val_index`` order."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, int], RunRecord] = {}

    def record(
        self, name: str, val_index: int, epoch: int, step: int, chain: int, stage: str,
        status: str, reason: str = "", run_id: str = "", chain_uid: str = "",
    ) -> RunRecord:
        """Record a run performed now (replacing a record of the same run)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        entry = RunRecord(name, val_index, epoch, step, chain, stage, status, reason,
                          run_id=run_id, chain_uid=chain_uid)
        self._records[(name, val_index)] = entry
        return entry

    def update(self, name: str, val_index: int, status: str, reason: str = "",
               wandb: str | None = None) -> RunRecord | None:
        """Set the status of a recorded run (None when the run is not in the ledger). A run
        written once stays ``projected`` when processing it again (after a resume) stops or
        fails: its files are still there."""
        entry = self._records.get((name, val_index))
        if entry is None:
            return None
        if entry.status == PROJECTED and status in (QUEUED, INTERRUPTED, FAILED, DROPPED):
            return entry
        entry.status, entry.reason = status, reason
        if wandb is not None:
            entry.wandb = wandb
        return entry

    def get(self, name: str, val_index: int) -> RunRecord | None:
        return self._records.get((name, val_index))

    def runs(self, name: str | None = None) -> list[RunRecord]:
        """The records of one set (or of every set), by ``val_index``."""
        found = [r for (n, _), r in self._records.items() if name is None or n == name]
        return sorted(found, key=lambda r: (r.val_index, r.name))

    def names(self) -> list[str]:
        return sorted({n for n, _ in self._records})

    def adopt(self, name: str, records: list[dict[str, Any]], waiting: set[int]) -> None:
        """Add records read from a set's ``ledger.jsonl`` for runs not recorded here (the runs
        another process wrote into the same folder), so rewriting the file keeps them; a run
        recorded here as still waiting that the file says was written was written after the
        checkpoint these records come from: the file is newer. A run the file says is queued
        that is not ``waiting`` here was left by a process that ended first: interrupted."""
        known = {f.name for f in dataclasses.fields(RunRecord)} - {"name"}
        for fields in records:
            key = (name, int(fields["val_index"]))
            if fields.get("status") == QUEUED and key[1] not in waiting:
                fields = {**fields, "status": INTERRUPTED,
                          "reason": "the process that performed it ended before writing it"}
            mine = self._records.get(key)
            if mine is None or (mine.status in (QUEUED, INTERRUPTED)
                                and fields.get("status") == PROJECTED):
                self._records[key] = RunRecord(name, **{k: v for k, v in fields.items()
                                                        if k in known})

    def state_dict(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.runs()]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self._records = {}
        known = {f.name for f in dataclasses.fields(RunRecord)}
        for fields in state:
            entry = RunRecord(**{k: v for k, v in fields.items() if k in known})
            self._records[(entry.name, entry.val_index)] = entry

    def write(self, folder: Path, name: str) -> None:
        """Write one set's ``ledger.jsonl`` into its folder (atomically)."""
        from lightning_embproj.sinks.local import atomic_write_text

        text = "".join(r.line() + "\n" for r in self.runs(name))
        atomic_write_text(folder / LEDGER_FILE, text)

    def append(self, folder: Path, name: str, val_index: int) -> None:
        """Append one run's record to the set's ``ledger.jsonl`` (a run just performed)."""
        entry = self._records.get((name, val_index))
        if entry is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LEDGER_FILE, "a", encoding="utf-8") as fh:
            fh.write(entry.line() + "\n")


def read_ledger_file(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of one set's ``ledger.jsonl``, the last line of each run, by ``val_index``
    (empty when there is none)."""
    path = Path(folder) / LEDGER_FILE
    if not path.exists():
        return []
    records: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(entry, dict) and "val_index" in entry:
            records[int(entry["val_index"])] = entry
    return [records[v] for v in sorted(records)]
