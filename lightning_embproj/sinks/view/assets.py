"""The page's files, shipped as package data in ``static/`` and inlined into every view (no
file is ever fetched): ``view.html`` (the template), ``view.css``, ``view.js``.

Every text from the data reaches the page through ``textContent`` (hover card, legend, side
panel, table) or through ``esc`` before plotly sees it (axis titles, trace names, Sankey labels:
plotly renders a subset of HTML there). The data itself is a JSON ``<script>`` block whose
``<``, ``>`` and ``&`` are ``\\u`` escapes, so no text can close it
(:func:`~lightning_embproj.sinks.view.page.json_block`).

Example:
    >>> "function render()" in read_asset("view.js")
    True
"""

from __future__ import annotations

from functools import cache
from importlib import resources

ASSETS = ("view.html", "view.css", "view.js")


@cache
def read_asset(name: str) -> str:
    """The text of ``static/<name>`` (one of :data:`ASSETS`) from the installed package."""
    if name not in ASSETS:
        raise ValueError(f"no view asset {name!r}; the assets are {', '.join(ASSETS)}")
    files = resources.files("lightning_embproj.sinks.view").joinpath("static", name)
    return files.read_text(encoding="utf-8")
