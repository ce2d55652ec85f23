"""A thread's own CPU priority (its nice value), where the OS gives threads one (Linux).

The worker and the preload thread run niced while training runs: on 2 cores a t-SNE in a plain
thread cost the training loop ~1/3 of its steps, at nice +10 about none, as much as a separate
process would (``benchmarks/bench_worker.py``), without pickling the epoch to a process. A
whole fit's jobs next to a CPU training that already uses every core still slow it by about half
(the README's *Performance*, ``priority``): the nice value governs the cores, not the caches or
the interpreter lock.

Example:
    >>> import threading
    >>> tid = threading.get_native_id()
    >>> nice_of(tid) is None or isinstance(nice_of(tid), int)
    True
"""

from __future__ import annotations

import os
import sys


def nice_of(tid: int) -> int | None:
    """Thread ``tid``'s nice value; None where threads have no nice value of their own."""
    # Only Linux gives threads their own nice value; elsewhere the id could name a process.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


def set_nice(tid: int, value: int) -> bool:
    """Set thread ``tid``'s nice value (clamped to -20..19); False where not permitted (an
    unprivileged user may raise its nice value but not lower it back)."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, value)))
    except OSError:  # not permitted, or the thread has just ended: leave it as it is
        return False
    return True
