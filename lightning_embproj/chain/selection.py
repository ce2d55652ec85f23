"""Which validation runs are projected: counting runs and validating epochs, per chain.

A *validation run* is one pass of the Trainer's validation loop (the sanity check is not one).
Its identity is ``(val_index, epoch, step)``: Lightning may validate several times per epoch
(``val_check_interval=0.25``), every k-th epoch (``check_val_every_n_epoch``, at epochs
k-1, 2k-1, ...), every N steps across epochs, or once in ``validate()``, so neither the epoch nor
the step alone names a run.

- ``val_index`` counts every validation run this callback has seen, across ``fit`` /
  ``validate`` calls and resumes, so two runs never share a file or a frame.
- A run is projected when its epoch is selected by ``every_n_epochs`` and its position among the
  chain's runs by ``every_n_validations``. ``every_n_epochs`` counts the epochs that *validate*:
  with ``check_val_every_n_epoch=2`` (epochs 1, 3, 5, 7 validate) and ``every_n_epochs=2``,
  epochs 1 and 5 are projected. The first validating epoch and the first run are always
  projected.

Example:
    >>> from lightning_embproj.options import ProjectorOptions
    >>> c, opts = RunCounter(), ProjectorOptions(every_n_epochs=2)
    >>> [c.next(epoch, opts).selected for epoch in (1, 3, 5, 7)]
    [True, False, True, False]
    >>> c.next(7, opts).val_index
    4
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_embproj.options import ProjectorOptions


@dataclass
class Run:
    """One validation run: its index and whether it is projected."""

    val_index: int
    selected: bool


class RunCounter:
    """Counts validation runs (for ever), chains, and per chain runs and validating epochs."""

    def __init__(self) -> None:
        self.total = 0
        self.chain = -1  # no chain started yet: the first is chain 0
        self.chain_runs = 0
        self.chain_epochs = 0
        self.last_epoch: int | None = None

    def start_chain(self) -> None:
        """A new ``fit`` / ``validate``: selection starts over; ``val_index`` keeps counting."""
        self.chain += 1
        self.chain_runs = 0
        self.chain_epochs = 0
        self.last_epoch = None

    def next(self, epoch: int, options: ProjectorOptions) -> Run:
        """Count the validation run that starts now, at ``epoch``."""
        if epoch != self.last_epoch:
            self.chain_epochs += 1
            self.last_epoch = epoch
        run = Run(
            val_index=self.total,
            selected=(self.chain_epochs - 1) % options.every_n_epochs == 0
            and self.chain_runs % options.every_n_validations == 0,
        )
        self.total += 1
        self.chain_runs += 1
        return run

    def state_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "chain": self.chain, "chain_runs": self.chain_runs,
            "chain_epochs": self.chain_epochs, "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = int(state.get("total", self.total))
        self.chain = int(state.get("chain", self.chain))
        self.chain_runs = int(state.get("chain_runs", self.chain_runs))
        self.chain_epochs = int(state.get("chain_epochs", self.chain_epochs))
        last = state.get("last_epoch", self.last_epoch)
        self.last_epoch = None if last is None else int(last)


def never_projected_reason(trainer: Any, stage: str) -> str | None:
    """Why this Trainer will run no validation at all, or None when it will (best effort)."""
    limit = getattr(trainer, "limit_val_batches", 1.0)
    if limit == 0:
        return "limit_val_batches=0 disables validation"
    if stage != "fit":
        return None
    every = getattr(trainer, "check_val_every_n_epoch", 1)
    max_epochs = getattr(trainer, "max_epochs", None)
    if every is not None and max_epochs is not None and 0 < max_epochs < every:
        return (
            f"check_val_every_n_epoch={every} with max_epochs={max_epochs}: Lightning validates "
            f"at the end of epochs {every - 1}, {2 * every - 1}, ..., so never in this fit"
        )
    return None


def warn_if_never_projected(
    trainer: Any, stage: str, options: ProjectorOptions, warn: Callable[[str, str], None]
) -> None:
    """One warning at ``setup`` when the settings can never project anything."""
    reason = never_projected_reason(trainer, stage)
    if reason is not None:
        warn("never", f"nothing will be projected in this {stage}: {reason}")
