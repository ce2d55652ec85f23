"""Import the heavy libraries of the background stages early, on a niced thread.

A process's first t-SNE, clustering and picture pay their libraries' imports (openTSNE and the
scikit-learn modules it pulls in, KMeans, matplotlib's Agg canvas): ~2.5 s on 2 loaded cores,
inside the first run's job, which ends up after training in a short fit. :func:`preload`
imports them on a daemon thread at the worker's lower priority while the first epoch trains;
a job that needs a module meanwhile waits on Python's import lock for the same import, never
importing twice. A library that is not installed is skipped (the stage that needs it says so).

Example:
    >>> t = preload(["json"])
    >>> t.join(timeout=30)
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

from lightning_embproj.runtime import native
from lightning_embproj.runtime.nice import nice_of, set_nice

#: What the stages import lazily, in the order they first need it.
MODULES = (
    "scipy.linalg", "scipy.sparse", "sklearn.neighbors", "openTSNE", "openTSNE.affinity",
    "sklearn.cluster", "sklearn.metrics", "scipy.stats", "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)


def preload(modules: Sequence[str] = MODULES, nice: int = 10) -> threading.Thread:
    """Start a daemon thread importing ``modules`` (niced by ``nice`` where threads have
    their own priority); returns it."""
    thread = threading.Thread(target=_import_all, args=(list(modules), nice),
                              name="embproj-preload", daemon=True)
    thread.start()
    return thread


def _import_all(modules: list[str], nice: int) -> None:
    tid = threading.get_native_id()
    base = nice_of(tid)
    if base is not None and nice > 0:
        set_nice(tid, base + nice)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - missing or broken: the stage says so
            continue


def ready_for_jobs(thread: threading.Thread | None) -> None:
    """Call on the training thread before a background job may start: waits for the preload's
    imports (if any), then scans the native libraries here (see :mod:`~.runtime.native`), so
    the worker never walks the dynamic loader while another thread imports."""
    if thread is not None:
        thread.join()
    native.scan()
