"""Run epoch-end jobs off the training thread, in order, one at a time.

One daemon thread processes jobs first in, first out, so at most one reduction is in flight and
epochs of a set are processed in order (alignment needs the previous one). A Worker never has two
threads: after a :meth:`Worker.close` whose wait ran out, the thread still running its job is
reused by the next :meth:`Worker.submit` (the new job waits behind it), and a thread started
after an old one has left its loop first waits for that one to end. When a set already
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
        # True from a thread's start until it leaves its loop (set under the lock): the one
        # thread that may take jobs. A thread object can still be alive for an instant after.
        self._running = False
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
            self._closed = False  # a closed worker is reopened (fit after fit)
            if not self._running:
                # The previous thread (if any) has left its loop; the new one joins it first.
                self._running = True
                self._thread = threading.Thread(
                    target=self._loop, args=(self._thread,), name="embproj-worker", daemon=True
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

    def _loop(self, previous: threading.Thread | None) -> None:
        if previous is not None:
            previous.join()  # it has no job left, only its last instructions
        _lower_priority(self.nice)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._running = False
                    self._cond.notify_all()
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

    def drain(self, timeout: float | None = None) -> bool:
        """Finish the queued jobs and stop the thread, all within one ``timeout``.

        When the deadline passes first, the jobs still waiting are dropped and False is returned;
        a job already running cannot be interrupted and finishes on its own (a later
        :meth:`submit` queues behind it, on the same thread).

        Example:
            >>> w = Worker()
            >>> w.submit("emb", lambda: None)
            >>> w.drain(timeout=30)
            True
        """
        return self._stop(timeout, drop_late=True)

    def close(self, timeout: float | None = None, cancel: bool = False) -> bool:
        """Finish (or with ``cancel``, drop) the waiting jobs and stop the thread.

        Returns True when the thread stopped within ``timeout``; otherwise it goes on with
        the jobs it has (unlike :meth:`drain`, which drops them at the deadline).
        """
        if cancel:
            with self._cond:
                self._queue.clear()
        return self._stop(timeout, drop_late=False)

    def _stop(self, timeout: float | None, drop_late: bool) -> bool:
        """Close, wait up to ``timeout`` for the thread to leave its loop, then join it;
        ``drop_late``: drop the waiting jobs if it did not."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            stopped = self._cond.wait_for(lambda: not self._running, timeout)
            if not stopped and drop_late:
                self._queue.clear()
            thread = self._thread
        if stopped and thread is not None:
            thread.join()  # it left its loop under the lock: only its return is left
        return stopped


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
