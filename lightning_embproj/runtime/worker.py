"""Run epoch-end jobs off the training thread, in order, one at a time.

One daemon thread processes jobs first in, first out, so at most one reduction is in flight and
epochs of a set are processed in order (alignment needs the previous one). A Worker never has two
threads: after a :meth:`Worker.close` whose wait ran out, the thread still running its job is
reused by the next :meth:`Worker.submit` (the new job waits behind it), and a thread started
after an old one has left its loop first waits for that one to end. When a set already
has ``max_pending`` jobs waiting, the oldest waiting one is dropped with a warning: the newest
epochs matter most, and memory stays bounded. A job that raises becomes one warning. Every job
that is dropped (by that policy, or at a :meth:`Worker.drain` deadline) is reported to
``on_drop(token, reason)``, so its owner can say which run it was and why. A running job can be
asked to stop (:meth:`Worker.cancel`): it calls :meth:`Worker.check_cancelled` at points where
stopping is safe, which raises :class:`JobCancelled`.

The thread is niced while training runs (:mod:`~lightning_embproj.runtime.nice`); after
:meth:`Worker.end_training` it gets its priority back where the OS permits (else it stays
niced, costless once the trainer is idle) and :meth:`Worker.job_threads` allows every core.
Jobs carry a label and finished ones are counted, so a caller can show what it waits for
(:func:`lightning_embproj.runtime.progress.finish_with_progress`).

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
import threading
from collections.abc import Callable

from lightning_embproj.runtime.jobs import DEADLINE, QUEUE_POLICY, Job, JobCancelled, Progress
from lightning_embproj.runtime.nice import nice_of, set_nice
from lightning_embproj.runtime.warn import WarnOnce


class Worker:
    """FIFO job runner; ``background=False`` runs each job at once on the caller's thread."""

    def __init__(
        self,
        background: bool = True,
        max_pending: int = 2,
        warn: WarnOnce | None = None,
        nice: int = 10,
        on_drop: Callable[[object, str], None] | None = None,
        training_threads: int = 1,
    ) -> None:
        self.background = background
        self.training_threads = training_threads
        self.on_drop = on_drop
        self.max_pending = max_pending
        self.nice = nice
        self.warn = warn or WarnOnce()
        # (key, job, label, token, droppable)
        self._queue: collections.deque[tuple[str, Job, str, object, bool]] = collections.deque()
        self._cancel = False
        self._cond = threading.Condition()
        self._busy = False
        self._label: str | None = None
        self._completed = 0
        self._training = True
        self._tid: int | None = None  # native id of the thread that lowered its priority
        self._base_nice: int | None = None  # its nice value before that
        self._closed = False
        # True from a thread's start until it leaves its loop (set under the lock): the one
        # thread that may take jobs. A thread object can still be alive for an instant after.
        self._running = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    @property
    def training_over(self) -> bool:
        """True after :meth:`end_training` (until :meth:`start_training`); read it at run time."""
        with self._cond:
            return not self._training

    def wait_training_over(self, timeout: float | None = None) -> bool:
        """Block until :meth:`end_training` (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._training, timeout)

    def job_threads(self) -> int:
        """CPU threads a job may use now: ``training_threads`` (default 1) while training
        runs, every core once it is over.

        Example:
            >>> w = Worker(background=False)
            >>> w.job_threads()
            1
            >>> w.end_training()
            >>> w.job_threads() == (os.cpu_count() or 1)
            True
        """
        return self.training_threads if self._training else (os.cpu_count() or 1)

    def thread_nice(self) -> int | None:
        """The worker thread's nice value now (None without a running thread, or where
        threads have no nice value of their own)."""
        with self._cond:
            tid = self._tid
        return nice_of(tid) if tid is not None else None

    def start_training(self) -> None:
        """Training (or a validation loop) runs: jobs stay niced and on one thread."""
        with self._cond:
            self._training = True
            if self._tid is not None and self._base_nice is not None:
                set_nice(self._tid, self._base_nice + self.nice)

    def end_training(self) -> None:
        """Training is over: queued jobs may use every core; the thread's priority is restored
        (where the OS allows raising it again)."""
        with self._cond:
            self._training = False
            self._cond.notify_all()
            if self._tid is not None and self._base_nice is not None:
                set_nice(self._tid, self._base_nice)

    def submit(
        self, key: str, job: Job, label: str | None = None, token: object = None,
        droppable: bool = True,
    ) -> None:
        """Queue ``job`` for set ``key`` (or run it now when not in background mode).

        ``label`` describes the job in progress reports (default: ``key``); ``token`` is what
        ``on_drop`` gets if the job is dropped; a job that is not ``droppable`` (work accepted
        earlier, such as runs restored from a checkpoint) is never dropped by the queue policy
        and does not count towards ``max_pending``.
        """
        label = key if label is None else label
        if not self.background:
            self._cancel = False
            self._run(key, job)
            with self._cond:
                self._completed += 1
            return
        gone: list[object] = []
        with self._cond:
            waiting = [i for i, entry in enumerate(self._queue) if entry[0] == key and entry[4]]
            if len(waiting) >= self.max_pending:
                gone.append(self._queue[waiting[0]][3])
                del self._queue[waiting[0]]
                self.dropped += 1
                self.warn(
                    f"worker:dropped:{key}",
                    f"epoch-end processing of {key!r} is slower than the epochs arrive; the "
                    f"oldest waiting epoch was skipped (more may be, without further warnings). "
                    f"Raise every_n_epochs or lower max_samples to avoid this.",
                )
            self._queue.append((key, job, label, token, droppable))
            self._closed = False  # a closed worker is reopened (fit after fit)
            if not self._running:
                # The previous thread (if any) has left its loop; the new one joins it first.
                self._running = True
                self._thread = threading.Thread(
                    target=self._loop, args=(self._thread,), name="embproj-worker", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        self._report(gone, QUEUE_POLICY)

    def _report(self, tokens: list[object], reason: str) -> None:
        if self.on_drop is not None:
            for token in tokens:
                self.on_drop(token, reason)

    def cancel(self) -> None:
        """Ask the running job to stop at its next :meth:`check_cancelled`."""
        with self._cond:
            self._cancel = True

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` in a job whose stop was asked for (:meth:`cancel`).

        Example:
            >>> w = Worker(background=False)
            >>> w.check_cancelled()
            >>> w.cancel()
            >>> w.check_cancelled()
            Traceback (most recent call last):
            ...
            lightning_embproj.runtime.jobs.JobCancelled: the job was asked to stop
        """
        if self._cancel:
            raise JobCancelled("the job was asked to stop")

    def _run(self, key: str, job: Job) -> None:
        try:
            job()
        except JobCancelled:
            pass  # asked for: the job's owner says what became of it
        except Exception as err:  # noqa: BLE001 - never let a projector job kill training
            self.warn(
                f"worker:error:{key}:{type(err).__name__}",
                f"epoch-end processing of {key!r} failed ({type(err).__name__}: {err}); "
                f"training continues",
            )

    def _loop(self, previous: threading.Thread | None) -> None:
        if previous is not None:
            previous.join()  # it has no job left, only its last instructions
        with self._cond:
            # Under the lock: start/end_training either see this thread's id or run first.
            self._tid = threading.get_native_id()
            self._base_nice = nice_of(self._tid) if self.nice > 0 else None
            if self._training and self._base_nice is not None:
                set_nice(self._tid, self._base_nice + self.nice)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._running = False
                    self._tid = self._base_nice = None
                    self._cond.notify_all()
                    return
                key, job, self._label, _, _ = self._queue.popleft()
                self._busy = True
                self._cancel = False
                self._cond.notify_all()  # progress: a new job started
            try:
                self._run(key, job)
            finally:
                with self._cond:
                    self._busy = False
                    self._label = None
                    self._completed += 1
                    self._cond.notify_all()

    def pending(self) -> int:
        """Jobs waiting or running."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def waiting(self, key: str) -> int:
        """Jobs of ``key`` (a set's name) queued and not yet started."""
        with self._cond:
            return sum(entry[0] == key for entry in self._queue)

    def progress(self) -> Progress:
        """What is running and waiting now, and how many jobs have finished so far."""
        with self._cond:
            return self._snapshot()

    def _snapshot(self) -> Progress:
        return Progress(
            self._completed, self._label if self._busy else None,
            tuple(entry[2] for entry in self._queue),
        )

    def wait_progress(self, seen: Progress, timeout: float | None = None) -> Progress:
        """Block until the queue differs from ``seen`` (a job started, ended or was queued or
        dropped) or ``timeout`` passes; return the new snapshot.

        Example:
            >>> w = Worker()
            >>> w.submit("emb", lambda: None, label="PCA")
            >>> w.wait_progress(Progress(0, None, ("PCA",)), timeout=30).completed in (0, 1)
            True
            >>> w.close(timeout=30)
            True
        """
        with self._cond:
            self._cond.wait_for(lambda: self._snapshot() != seen, timeout)
            return self._snapshot()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Finish the queued jobs and stop the thread, all within one ``timeout``.

        When the deadline passes first, the jobs still waiting are dropped (each reported to
        ``on_drop`` with reason :data:`DEADLINE`) and False is returned; a job already running
        is not interrupted here (see :meth:`cancel`) and finishes on its own (a later
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
                gone = [entry[3] for entry in self._queue]
                self._queue.clear()
            self._report(gone, DEADLINE)
        return self._stop(timeout, drop_late=False)

    def _stop(self, timeout: float | None, drop_late: bool) -> bool:
        """Close, wait up to ``timeout`` for the thread to leave its loop, then join it;
        ``drop_late``: drop the waiting jobs if it did not."""
        gone: list[object] = []
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            stopped = self._cond.wait_for(lambda: not self._running, timeout)
            if not stopped and drop_late:
                gone = [entry[3] for entry in self._queue]
                self._queue.clear()
            thread = self._thread
        self._report(gone, DEADLINE)
        if stopped and thread is not None:
            thread.join()  # it left its loop under the lock: only its return is left
        return stopped

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job runs (the queue may hold jobs); False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

