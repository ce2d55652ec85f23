"""Run epoch-end jobs off the training thread, in order, one at a time.

One daemon thread processes jobs first in, first out, so at most one reduction is in flight and
epochs of a set are processed in order (alignment needs the previous one). When a set already
has ``max_pending`` jobs waiting, the oldest waiting one is dropped with a warning: the newest
epochs matter most, and memory stays bounded. A job that raises becomes one warning.

The thread runs at a lower CPU priority (``nice``, Linux per-thread): on 2 cores a t-SNE in a
plain thread cost the training loop ~1/3 of its steps, at nice +10 about none, as much as a
separate process would (benchmarks/bench_worker.py), without pickling the epoch to a process.

Example:
    >>> out = []
    >>> w = Worker(background=False)
    >>> w.submit("emb", lambda: out.append(1))
    >>> w.flush()
    True
    >>> out
    [1]
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from collections.abc import Callable

from lightning_embproj.warn import WarnOnce

Job = Callable[[], None]


class Worker:
    """FIFO job runner; ``background=False`` runs each job at once on the caller's thread."""

    def __init__(
        self,
        background: bool = True,
        max_pending: int = 2,
        warn: WarnOnce | None = None,
        nice: int = 10,
    ) -> None:
        self.background = background
        self.max_pending = max_pending
        self.nice = nice
        self.warn = warn or WarnOnce()
        self._queue: collections.deque[tuple[str, Job]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, key: str, job: Job) -> None:
        """Queue ``job`` for set ``key`` (or run it now when not in background mode)."""
        if not self.background:
            self._run(key, job)
            return
        with self._cond:
            waiting = [i for i, (k, _) in enumerate(self._queue) if k == key]
            if len(waiting) >= self.max_pending:
                del self._queue[waiting[0]]
                self.dropped += 1
                self.warn(
                    f"worker:dropped:{key}",
                    f"epoch-end processing of {key!r} is slower than the epochs arrive; the "
                    f"oldest waiting epoch was skipped (more may be, without further warnings). "
                    f"Raise every_n_epochs or lower max_samples to avoid this.",
                )
            self._queue.append((key, job))
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(
                    target=self._loop, name="embproj-worker", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self, key: str, job: Job) -> None:
        try:
            job()
        except Exception as err:  # noqa: BLE001 - never let a projector job kill training
            self.warn(
                f"worker:error:{key}:{type(err).__name__}",
                f"epoch-end processing of {key!r} failed ({type(err).__name__}: {err}); "
                f"training continues",
            )

    def _loop(self) -> None:
        _lower_priority(self.nice)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                key, job = self._queue.popleft()
                self._busy = True
            try:
                self._run(key, job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def pending(self) -> int:
        """Jobs waiting or running."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float | None = None, cancel: bool = False) -> None:
        """Finish (or with ``cancel``, drop) the waiting jobs and stop the thread."""
        with self._cond:
            if cancel:
                self._queue.clear()
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux: per thread); a no-op where unsupported."""
    # Only Linux gives threads their own nice value; elsewhere the id could name a process.
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # not permitted or not per-thread on this platform: run at normal priority
        pass
