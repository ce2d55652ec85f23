"""The background worker: one thread at most, ever; ``drain`` keeps one deadline.

Jobs are held on ``threading.Event`` gates, so the tests do not depend on timing; the only clock
assertion is a generous upper bound on ``drain``'s deadline.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from lightning_embproj.runtime.warn import ProjectorWarning, WarnOnce
from lightning_embproj.runtime.worker import Worker

WAIT = 30.0  # an upper bound for gates: reached only if the worker is broken


class Jobs:
    """Jobs that record the thread they ran on and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.done: list[str] = []
        self.threads: list[threading.Thread] = []
        self.others_alive: list[threading.Thread] = []

    def job(self, name: str, gate: threading.Event | None = None,
            started: threading.Event | None = None):
        def run() -> None:
            me = threading.current_thread()
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.others_alive += [t for t in self.threads if t is not me and t.is_alive()]
                if me not in self.threads:
                    self.threads.append(me)
            if started is not None:
                started.set()
            if gate is not None:
                assert gate.wait(WAIT)
            with self.lock:
                self.running -= 1
                self.done.append(name)

        return run


def test_submit_after_a_timed_out_close_reuses_the_busy_thread():
    jobs, gate, started = Jobs(), threading.Event(), threading.Event()
    w = Worker(max_pending=10)
    w.submit("emb", jobs.job("stuck", gate, started))
    assert started.wait(WAIT)
    assert w.close(timeout=0.01) is False  # the job holds the thread
    w.submit("emb", jobs.job("next"))
    w.submit("other", jobs.job("other"))
    assert jobs.done == []  # queued behind the stuck job, not run on a second thread
    gate.set()
    assert w.flush(timeout=WAIT)
    assert w.close(timeout=WAIT)
    assert jobs.done == ["stuck", "next", "other"]
    assert len(jobs.threads) == 1 and jobs.most == 1 and jobs.others_alive == []
    assert not jobs.threads[0].is_alive()


def test_never_two_threads_across_many_close_and_submit_cycles():
    jobs = Jobs()
    w = Worker(max_pending=1000)
    for i in range(200):
        w.submit("emb", jobs.job(str(i)))
        w.close(timeout=0)  # the thread may be running, leaving its loop, or gone
    assert w.close(timeout=WAIT)
    assert jobs.done == [str(i) for i in range(200)]  # nothing lost, in order
    assert jobs.most == 1
    # a thread started after another one only took jobs once the old one had ended
    assert jobs.others_alive == []


def test_close_with_cancel_drops_waiting_jobs_but_finishes_the_running_one():
    jobs, gate, started = Jobs(), threading.Event(), threading.Event()
    w = Worker(max_pending=10)
    w.submit("emb", jobs.job("running", gate, started))
    assert started.wait(WAIT)
    w.submit("emb", jobs.job("waiting"))
    gate.set()
    assert w.close(timeout=WAIT, cancel=True)
    assert jobs.done == ["running"]


def test_drain_finishes_the_queue_and_stops_the_thread():
    jobs, gate = Jobs(), threading.Event()
    w = Worker(max_pending=10)
    for i in range(3):
        w.submit("emb", jobs.job(str(i), gate if i == 0 else None))
    gate.set()
    assert w.drain(timeout=WAIT) is True
    assert jobs.done == ["0", "1", "2"]
    assert w.pending() == 0 and not jobs.threads[0].is_alive()


def test_drain_keeps_one_deadline_and_drops_the_rest():
    jobs, gate, started = Jobs(), threading.Event(), threading.Event()
    w = Worker(max_pending=10, warn=WarnOnce())
    w.submit("emb", jobs.job("stuck", gate, started))
    w.submit("emb", jobs.job("queued"))
    assert started.wait(WAIT)
    t0 = time.monotonic()
    drained = w.drain(timeout=0.5)
    waited = time.monotonic() - t0
    assert drained is False
    assert jobs.done == []  # it returned while the job was still held
    assert waited < 10.0  # one 0.5 s deadline, with room for a busy machine
    gate.set()
    jobs.threads[0].join(WAIT)
    assert not jobs.threads[0].is_alive()
    assert jobs.done == ["stuck"]  # the queued job was dropped at the deadline


def test_drain_without_work_and_in_synchronous_mode():
    assert Worker().drain(timeout=0) is True
    done: list[int] = []
    w = Worker(background=False)
    w.submit("emb", lambda: done.append(1))
    assert w.drain(timeout=0) is True and done == [1]


def test_a_worker_reopens_after_drain():
    jobs = Jobs()
    w = Worker()
    w.submit("emb", jobs.job("fit 1"))
    assert w.drain(timeout=WAIT)
    w.submit("emb", jobs.job("fit 2"))
    assert w.drain(timeout=WAIT)
    assert jobs.done == ["fit 1", "fit 2"] and jobs.others_alive == []


# -- progress, labels and the end of training -------------------------------------------------
def test_progress_names_the_running_and_waiting_jobs_and_counts_finished_ones():
    gate, started = threading.Event(), threading.Event()
    w = Worker(max_pending=10)
    w.submit("emb", Jobs().job("a", gate, started), label="t-SNE run 0")
    w.submit("emb", lambda: None, label="t-SNE run 1")
    w.submit("other", lambda: None)  # no label: the set's name
    assert started.wait(WAIT)
    seen = w.progress()
    assert seen.running == "t-SNE run 0"
    assert seen.waiting == ("t-SNE run 1", "other") and seen.pending == 3
    gate.set()
    while seen.pending:  # every change wakes the waiter; it never misses the end
        seen = w.wait_progress(seen, WAIT)
    assert seen.completed == 3 and seen.running is None and seen.waiting == ()
    assert w.close(WAIT)


def test_a_failing_job_still_counts_as_finished():
    w = Worker(max_pending=10, warn=WarnOnce())
    with pytest.warns(ProjectorWarning, match="ZeroDivisionError"):
        w.submit("emb", lambda: 1 / 0, label="broken")
        assert w.flush(WAIT)
    assert w.progress().completed == 1
    assert w.close(WAIT)


def _can_lower_nice_again() -> bool:
    """Whether this process may lower a thread's nice value once raised (root, RLIMIT_NICE)."""
    out: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, base + 1))
        try:
            os.setpriority(os.PRIO_PROCESS, tid, base)
            out.append(True)
        except OSError:
            out.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return out[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_end_training_gives_jobs_every_core_and_the_thread_its_priority_back():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    w = Worker(max_pending=10)
    seen: list[tuple[bool, int, int]] = []

    def record() -> None:
        tid = threading.get_native_id()
        seen.append((w.training_over, w.job_threads(), os.getpriority(os.PRIO_PROCESS, tid)))

    w.submit("emb", record)
    assert w.flush(WAIT)
    w.submit("emb", lambda: (w.wait_training_over(WAIT), record()))  # held until training ends
    w.end_training()
    assert w.flush(WAIT)
    w.start_training()  # the next fit: niced and on one thread again, on the same thread
    w.submit("emb", record)
    assert w.close(WAIT)
    restored = base if _can_lower_nice_again() else min(19, base + 10)
    assert seen == [
        (False, 1, min(19, base + 10)),
        (True, os.cpu_count() or 1, restored),
        (False, 1, min(19, base + 10)),
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_a_thread_started_after_training_is_not_niced():
    w = Worker(max_pending=10)
    w.end_training()
    seen: list[tuple[int, int]] = []
    w.submit("emb", lambda: seen.append(
        (w.job_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))))
    assert w.close(WAIT)
    assert seen == [(os.cpu_count() or 1, os.getpriority(os.PRIO_PROCESS, 0))]
