"""Warn once per topic: a failing sink or reducer must not flood the log every epoch.

Example:
    >>> w = WarnOnce()
    >>> w("sink:wandb", "W&B logging failed")   # doctest: +SKIP
    >>> guarded(w, "sink:view", "writing the view", lambda: 1 / 0)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any


class ProjectorWarning(UserWarning):
    """Something went wrong in the projector; training goes on."""


class WarnOnce:
    """Issue a :class:`ProjectorWarning` the first time each topic is seen (thread-safe)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, topic: str, message: str) -> None:
        with self._lock:
            if topic in self._seen:
                return
            self._seen.add(topic)
        warnings.warn(f"lightning-embproj: {message}", ProjectorWarning, stacklevel=2)

    def reset(self) -> None:
        """Forget the topics seen: a new ``fit`` / ``validate`` warns afresh."""
        with self._lock:
            self._seen.clear()


def guarded(warn: Callable[[str, str], None], topic: str, what: str,
            fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a failure becomes one warning per topic and kind of error, and None (an
    output failing must not stop training)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported, and the other outputs go on
        warn(f"{topic}:{type(err).__name__}",
             f"{what} failed ({type(err).__name__}: {err}); the other outputs are still "
             f"written and training continues")
        return None
