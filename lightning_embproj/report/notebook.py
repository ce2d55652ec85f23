"""The view inline in a Jupyter notebook: ``lightning_embproj.show(path)``.

The same offline page as ``view.html`` (plotly inlined, no network), put in an ``<iframe>``
through its ``srcdoc`` attribute: no file URL or server is needed, so it works in JupyterLab,
classic notebooks and VS Code alike, offline. No IPython is needed either: :func:`show` returns
an object with ``_repr_html_``, which Jupyter displays when it is a cell's value (use
``IPython.display.display(show(...))`` inside a loop).

Example:
    >>> from lightning_embproj import show
    >>> show("lightning_logs/version_0")           # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

VIEW_FILE = "view.html"  # as sinks.view.VIEW_FILE, without importing the view's dependencies


@dataclass(frozen=True)
class ViewDisplay:
    """A view page for Jupyter: ``_repr_html_`` gives an ``<iframe srcdoc=...>`` holding it."""

    path: Path
    height: int = 820

    def page(self) -> str:
        """The page itself (read when displayed, so a view rewritten meanwhile is current)."""
        return self.path.read_text(encoding="utf-8")

    def _repr_html_(self) -> str:
        # srcdoc: the whole page, HTML-escaped once (the browser unescapes it); sandboxed to
        # its scripts (no access to the notebook), downloads allowed for plotly's PNG button.
        return (
            f'<iframe title="lightning-embproj view: {html.escape(str(self.path))}" '
            f'sandbox="allow-scripts allow-downloads" '
            f'style="width: 100%; height: {int(self.height)}px; border: 0" '
            f'srcdoc="{html.escape(self.page(), quote=True)}"></iframe>'
        )

    def __repr__(self) -> str:
        return f"ViewDisplay({str(self.path)!r})"


def find_view(path: str | os.PathLike[str], name: str | None = None, *,
              latest: bool = False) -> Path:
    """The ``view.html`` for ``path``: the file itself, a folder holding one (a set's folder,
    or a ``compare`` output's ``<output>/<NAME>/``), or wherever the readers find the set
    (a log dir, a folder above a run: :func:`lightning_embproj.readers.find_run`)."""
    from lightning_embproj.readers import find_set

    p = Path(path)
    if p.is_file():
        return p
    if (p / VIEW_FILE).is_file():
        return p / VIEW_FILE
    view = find_set(p, name, latest=latest) / VIEW_FILE
    if not view.is_file():
        raise FileNotFoundError(
            f"show: no {VIEW_FILE} in {str(view.parent)!r}: the view is written with the "
            f"`view` extra (pip install \"lightning-embproj[view]\"); `embproj compare "
            f"{view.parent} --output DIR` writes one from the files")
    return view


def show(path: str | os.PathLike[str], name: str | None = None, *, latest: bool = False,
         height: int = 820) -> ViewDisplay:
    """Display a run's view inline in Jupyter (the offline page in an iframe).

    Args:
        path: a log dir, a folder above one run (a W&B ``save_dir``), a set's folder, or a
            ``view.html``.
        name: the embedding set, when there are several.
        latest: ``path`` holds several runs below it: show the newest.
        height: of the frame, in pixels.

    Returns:
        A :class:`ViewDisplay`; Jupyter renders it as a cell's value.
    """
    return ViewDisplay(find_view(path, name, latest=latest), height)
