"""What the worker's queue holds and reports: a job, why one was dropped, a job's requested
stop, and a snapshot of the queue (:mod:`~lightning_embproj.runtime.worker` runs them).

Example:
    >>> Progress(completed=2, running="PCA", waiting=("t-SNE",)).pending
    2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

Job = Callable[[], None]
QUEUE_POLICY = "queue policy"
DEADLINE = "deadline"


class JobCancelled(BaseException):
    """Raised inside a job by :meth:`Worker.check_cancelled` after :meth:`Worker.cancel`.

    A ``BaseException``: the stages that isolate their failures (``except Exception``) must
    not take a requested stop for a failure of theirs."""


class Progress(NamedTuple):
    """A snapshot of the queue: ``completed`` counts every job finished (or failed) so far."""

    completed: int
    running: str | None  # label of the job being run, None when idle
    waiting: tuple[str, ...]  # labels of the queued jobs, next first

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return len(self.waiting) + int(self.running is not None)
