"""No silent wait: report the queued projections that ``fit`` / ``validate`` still waits for.

When training ends the background worker may still hold epochs (a t-SNE per validation run
takes seconds to minutes). :func:`finish_with_progress` marks training as over (queued jobs
may then use every core), shows a tqdm bar on stderr, advanced per finished job and naming
the job being run, and stops the worker. The bar is shown when there is something to wait
for and ``enabled`` is true; :func:`show_progress` is the callback's rule for ``enabled``:
rank zero, and the trainer shows progress bars or stderr is a terminal. Then
:func:`where_lines` says, once, where the view and files of the runs just written are.

Example:
    >>> from lightning_embproj.runtime.worker import Worker
    >>> w = Worker()
    >>> w.submit("emb", lambda: None, label=job_label("emb", 4000, ["tsne"], 3))
    >>> finish_with_progress(w, timeout=30, enabled=False)
    True
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lightning_embproj.runtime.jobs import Progress
from lightning_embproj.runtime.worker import Worker

PREFIX = "lightning-embproj"
_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


def job_label(name: str, n_points: int, reducers: Sequence[str], val_index: int) -> str:
    """What a queued job does, for progress reports.

    Example:
        >>> job_label("embeddings", 4000, ["pca", "tsne"], 3)
        'PCA + t-SNE 4,000 points, set embeddings, validation run 3'
    """
    methods = " + ".join(_NAMES.get(r, r) for r in reducers) or "metrics"
    return f"{methods} {n_points:,} points, set {name}, validation run {val_index}"


def show_progress(trainer: Any, stream: IO[str] | None = None) -> bool:
    """Whether to show the end-of-fit bar: on global rank zero, when the trainer shows
    progress bars (``enable_progress_bar``) or ``stream`` (default stderr) is a terminal."""
    if not getattr(trainer, "is_global_zero", True):
        return False
    if getattr(trainer, "progress_bar_callback", None) is not None:
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _title(n: int) -> str:
    return f"{PREFIX}: finishing {n} queued projection{'s' if n != 1 else ''}"


def finish_with_progress(
    worker: Worker,
    timeout: float | None = None,
    enabled: bool = True,
    file: IO[str] | None = None,
) -> bool:
    """Mark training over (:meth:`Worker.end_training`), wait for the queued jobs (with a bar
    when ``enabled``), stop the worker.

    The bar (``file``, default stderr) reads ``lightning-embproj: finishing N queued
    projections: done/N [elapsed] <label of the running job>``; jobs queued meanwhile raise
    its total. Returns True when everything finished within ``timeout`` (None: no limit);
    otherwise the worker goes on with its jobs, as :meth:`Worker.close` does.

    Example:
        >>> w = Worker(background=False)
        >>> finish_with_progress(w, enabled=False)
        True
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = worker.progress()
    if seen.pending and enabled:
        _wait_with_bar(worker, seen, deadline, file)  # shows the bar, then ends training
    else:
        worker.end_training()
    return worker.close(_left(deadline))


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _wait_with_bar(
    worker: Worker, seen: Progress, deadline: float | None, file: IO[str] | None
) -> None:
    from tqdm import tqdm

    start = seen.completed
    bar = tqdm(
        total=seen.pending, desc=_title(seen.pending), file=sys.stderr if file is None else file,
        unit="run", dynamic_ncols=True, leave=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]{postfix}",
    )
    # After the bar is up: whatever the queue does from here on is reported.
    worker.end_training()
    try:
        while True:
            bar.total = seen.completed - start + seen.pending  # jobs queued meanwhile count too
            bar.n = seen.completed - start
            label = seen.running or (seen.waiting[0] if seen.waiting else "")
            bar.set_postfix_str(label, refresh=False)
            bar.refresh()
            left = _left(deadline)
            if not seen.pending or left == 0.0:
                return
            seen = worker.wait_progress(seen, left)
    finally:
        bar.close()


def where_lines(root: str, written: Mapping[str, int], stage: str = "fit") -> list[str]:
    """One line per set that ``fit`` / ``validate`` wrote runs of (none when nothing was
    written): where its view and files are, and how many runs this call wrote, e.g.
    ``lightning-embproj: view file:///logs/embproj/embeddings/view.html · files
    /logs/embproj/embeddings/ (3 runs)`` (the view part only when ``view.html`` exists).

    Example:
        >>> where_lines("/logs", {})
        []
    """
    from lightning_embproj.sinks.local import set_dir

    lines = []
    for name, count in written.items():
        if count < 1:
            continue
        folder = set_dir(Path(root).resolve(), name)
        view = folder / "view.html"
        where = f"view {view.as_uri()} \u00b7 files " if view.is_file() else "files "
        runs = f"{count} run{'s' if count != 1 else ''}"
        lines.append(f"{PREFIX}: {where}{folder}{os.sep} ({runs}"
                     f"{'' if stage == 'fit' else f', {stage}'})")
    return lines


def print_where(root: str, written: Mapping[str, int], stage: str = "fit",
                file: IO[str] | None = None) -> None:
    """Print :func:`where_lines` to ``file`` (default stderr, where the bar is)."""
    for line in where_lines(root, written, stage):
        print(line, file=sys.stderr if file is None else file, flush=True)
