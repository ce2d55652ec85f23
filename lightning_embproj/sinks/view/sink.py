"""The HTML view sink: each set's page, rendered from the view's own history of runs.

Per run it adds the run's :class:`~lightning_embproj.results.RunResult` to the set's
:class:`~lightning_embproj.sinks.view.history.SetView`, renders the page from it and writes
``<root>/embproj/NAME/view.html`` (and ``images.json`` when there are new thumbnails). It reads
no file: what the local CSV writer managed to write does not change the page. The last page of
each set stays available (:meth:`ViewSink.page`): the W&B sink logs it when ``fit`` ends.

With ``deferred(name)`` true (a later run of the set already waits in the queue, as at the end
of a fit), the run joins the history but the page is rendered by the next run, or by
:meth:`finish`: a page the next run replaces within seconds is not worth rendering.

Example:
    >>> sink = ViewSink(ViewHistory("lightning_logs/version_0"))   # doctest: +SKIP
    >>> sink.write(result)                                          # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/view.html')
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from lightning_embproj.results import RunResult
from lightning_embproj.sinks.local import atomic_write_text, set_dir
from lightning_embproj.sinks.view import VIEW_FILE
from lightning_embproj.sinks.view.history import ViewHistory
from lightning_embproj.sinks.view.images import IMAGES_FILE, images_json


class ViewSink:
    """Writes each set's view from ``history`` (kept by the chain owner across calls)."""

    def __init__(self, history: ViewHistory,
                 deferred: Callable[[str], bool] | None = None) -> None:
        self.history = history
        self.deferred = deferred
        self.pages: dict[str, str] = {}
        self._stale: set[str] = set()  # sets whose last runs are not on their page yet
        self._lock = threading.Lock()

    @property
    def root(self) -> str:
        return self.history.root

    def write(self, result: RunResult) -> Path:
        """Add the run to its set's history, render the page and write it (unless
        ``deferred``); returns the file."""
        name = result.name
        with self._lock:
            self.history.of(name).add(result)
            self._stale.add(name)
            if self.deferred is None or not self.deferred(name):
                self._render(name)
        return set_dir(self.root, name) / VIEW_FILE

    def finish(self) -> None:
        """Render and write every page a deferred run left behind."""
        with self._lock:
            for name in sorted(self._stale):
                self._render(name)

    def _render(self, name: str) -> None:
        kept = self.history.of(name)
        page = self.pages[name] = kept.page(self.history.title(name))
        self._stale.discard(name)
        folder = set_dir(self.root, name)
        atomic_write_text(folder / VIEW_FILE, page)
        if kept.images_new:
            try:
                atomic_write_text(folder / IMAGES_FILE,
                                  images_json(kept.images, kept.images_column))
                kept.images_new = False
            except Exception as err:  # noqa: BLE001 - thumbnails are optional, the view is not
                warnings.warn(f"lightning-embproj: no thumbnails for {name!r}: {err}",
                              stacklevel=2)

    def page(self, name: str) -> str | None:
        """The set's page with every run written so far (None before its first run)."""
        with self._lock:
            if name in self._stale:
                self._render(name)
            return self.pages.get(name)
