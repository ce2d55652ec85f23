"""Per-stage timings of each validation run's background job, always on and cheap.

A :class:`Trace` is a list of spans ``(name, depth, start, seconds)`` on one clock
(``time.perf_counter``): the job's stages (``stage("t-SNE")``) and, nested inside them, their
parts (``t-SNE chunk`` per 50 iterations, the W&B sink's table / picture / ``log``). Code deep in
a stage records into the trace of the job running on its thread (:func:`stage`), so nothing is
passed down: with no trace active a :func:`stage` costs one thread-local lookup. A run's trace
also holds how long it waited in the queue (``queue wait``, from ``submit`` to the job's start)
and the job's own wall time, so a caller can check what the stages add up to.

Example:
    >>> t = Trace("run 0", queued_at=time.perf_counter())
    >>> with t.active():
    ...     with stage("PCA"):
    ...         with stage("inner"):
    ...             pass
    >>> [s.name for s in t.spans], [s.depth for s in t.spans]
    (['queue wait', 'inner', 'PCA'], [0, 1, 0])
    >>> t.stage_sum() <= t.wall + t.queue_wait
    True
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

QUEUE_WAIT = "queue wait"
_local = threading.local()


@dataclass(frozen=True)
class Span:
    """One timed stage: ``depth`` 0 for a job's stages, 1+ for parts nested in them."""

    name: str
    depth: int
    start: float  # time.perf_counter()
    seconds: float


@dataclass
class Trace:
    """The spans of one job (see the module docstring); ``start`` / ``end``: the job's own
    run, on the ``perf_counter`` clock (NaN until it ran)."""

    label: str
    queued_at: float | None = None
    spans: list[Span] = field(default_factory=list)
    start: float = float("nan")
    end: float = float("nan")
    _depth: int = 0

    @property
    def wall(self) -> float:
        """Seconds the job itself ran (without its queue wait)."""
        return self.end - self.start

    @property
    def queue_wait(self) -> float:
        """Seconds from ``submit`` to the job's start (0 when not queued)."""
        return next((s.seconds for s in self.spans if s.name == QUEUE_WAIT), 0.0)

    @contextlib.contextmanager
    def active(self) -> Iterator[Trace]:
        """Run the job: its thread records into this trace until the block ends."""
        self.start = time.perf_counter()
        if self.queued_at is not None:
            self.spans.append(Span(QUEUE_WAIT, 0, self.queued_at, self.start - self.queued_at))
        before = getattr(_local, "trace", None)
        _local.trace = self
        try:
            yield self
        finally:
            _local.trace = before
            self.end = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as a span named ``name`` (nested blocks one level deeper)."""
        depth = self._depth
        self._depth = depth + 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._depth = depth
            self.spans.append(Span(name, depth, t0, time.perf_counter() - t0))

    def stage_sum(self) -> float:
        """Seconds of the job's stages (depth 0, the queue wait not included)."""
        return sum(s.seconds for s in self.spans if s.depth == 0 and s.name != QUEUE_WAIT)

    def totals(self) -> dict[str, tuple[int, int, float]]:
        """``name -> (depth, count, seconds)`` in order of first appearance (a chunked
        stage's parts add up)."""
        out: dict[str, tuple[int, int, float]] = {}
        for s in sorted(self.spans, key=lambda s: (s.start, s.depth)):
            depth, count, seconds = out.get(s.name, (s.depth, 0, 0.0))
            out[s.name] = (depth, count + 1, seconds + s.seconds)
        return out

    def format(self) -> str:
        """One line per stage, parts indented: ``  t-SNE chunk x8 2.31 s``."""
        lines = [f"{self.label}: job {self.wall:.2f} s, stages {self.stage_sum():.2f} s, "
                 f"queue wait {self.queue_wait:.2f} s"]
        for name, (depth, count, seconds) in self.totals().items():
            if name == QUEUE_WAIT:
                continue
            times = f" x{count}" if count > 1 else ""
            lines.append(f"{'  ' * (depth + 1)}{name}{times} {seconds:.3f} s")
        return "\n".join(lines)


def current() -> Trace | None:
    """The trace of the job running on this thread, None when there is none."""
    return getattr(_local, "trace", None)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block into the current thread's trace; without one, do nothing."""
    trace = getattr(_local, "trace", None)
    if trace is None:
        yield
        return
    with trace.stage(name):
        yield
