"""The self-contained HTML page: plotly.js inlined, the data as one JSON block, a strict CSP.

Example:
    >>> page = render_page({"title": "t", ...}, panels=1)      # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from typing import Any

from lightning_embproj.sinks.view.assets import CSS, JS

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; form-action 'none'"
)


def plotly_js() -> str:
    """plotly.js from the installed ``plotly`` package (the ``view`` extra)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as err:
        raise ImportError(
            'The HTML view needs plotly: pip install "lightning-embproj[view]"'
        ) from err
    return str(get_plotlyjs())


def json_block(payload: dict[str, Any]) -> str:
    """``payload`` as JSON that is safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u`` escapes, so no text from the data can close the
    block or open a tag; NaN is refused (it is not JSON).

    >>> json_block({"t": "</script><b>"})
    '{"t":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(payload: dict[str, Any], *, panels: int = 1) -> str:
    """The whole page for one payload (see :mod:`lightning_embproj.sinks.view.build`)."""
    plots = "".join(
        f'<div class="panel"><h2 id="panel-title-{k}"></h2>'
        f'<div class="plot" id="plot-{k}"></div></div>' for k in range(panels))
    title = html.escape(str(payload.get("title", "")))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head><body>\n"
        '<main id="embproj-view">\n'
        '<header><h1 id="title"></h1><p id="note"></p></header>\n'
        '<div id="toolbar" class="bar">'
        '<label data-control>layout <select id="reducer"></select></label>'
        '<label data-control>colour by <select id="colour"></select></label>'
        '<label data-control>trail <select id="trail"><option value="0">off</option>'
        '<option value="3">3 runs</option><option value="6">6 runs</option>'
        '<option value="12">12 runs</option><option value="1000">all runs</option>'
        "</select></label>"
        '<span class="search" data-control><input id="search" type="search" '
        'placeholder="find an id or a text" aria-label="find an id or a text">'
        '<button id="find" type="button">find</button></span>'
        '<span id="search-msg" data-control></span>'
        '<button id="clear" type="button" data-control>clear selection</button>'
        "</div>\n"
        '<div id="legend" data-control></div>\n'
        f'<div id="main"><div id="plots">{plots}</div>'
        '<aside id="side" data-control><h2>Followed points <span id="count"></span></h2>'
        '<p id="side-hint" class="hint">Click a point, draw a lasso (toolbar above the plot) '
        "or find an id or text to follow points across runs: they stay highlighted and draw "
        "their trail.</p><ol id=\"selected\"></ol></aside></div>\n"
        '<div id="player" class="bar">'
        '<button id="play" type="button" data-control>\u25b6 play</button>'
        '<div id="track"><input id="slider" type="range" min="0" step="1" '
        'aria-label="validation run" data-control><div id="chain-marks" hidden></div></div>'
        '<span id="run-label" data-control></span>'
        '<span id="chain-note" data-control hidden></span></div>\n'
        '<section id="lineage-panel" hidden><h2>Cluster lineage</h2>'
        '<p id="lineage-note" class="hint"></p><div id="lineage"></div></section>\n'
        '<section id="table-panel" hidden><h2 id="table-title"></h2>'
        '<div id="table-wrap"><table id="table"></table></div></section>\n'
        '<section id="metrics"></section>\n'
        "</main>\n"
        '<div id="tooltip" hidden></div>\n'
        f'<script type="application/json" id="embproj-data">{json_block(payload)}</script>\n'
        f"<script>{plotly_js()}</script>\n"
        f"<script>{JS}</script>\n"
        "</body></html>\n"
    )
