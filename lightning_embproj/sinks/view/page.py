"""The self-contained HTML page: plotly.js inlined, the data as one JSON block, a strict CSP.

The page is ``static/view.html`` with its ``{{slot}}`` markers filled in one pass
(:func:`fill`): the title as escaped text, the data as :func:`json_block`, and the shipped
stylesheet and script and plotly.js as they are (checked not to close their element). Nothing
from the data is ever joined into the HTML; the script builds the page from the data block.

Example:
    >>> page = render_page({"title": "t", ...})      # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from lightning_embproj.sinks import palette
from lightning_embproj.sinks.view.assets import read_asset
from lightning_embproj.sinks.view.coords import LEVELS, MISSING
from lightning_embproj.sinks.view.encode import IMAGE_URI

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; form-action 'none'"
)
SLOT = re.compile(r"\{\{(\w+)\}\}")
# What a trusted asset may not hold: the end of the element it is inlined into.
CLOSERS = {"css": re.compile(r"</style", re.I), "plotly": re.compile(r"</script", re.I),
           "script": re.compile(r"</script", re.I)}


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


def escape_text(value: str) -> str:
    """Text for an element's content or a double-quoted attribute (``'`` stays as it is).

    >>> escape_text('<b> & "x"')
    '&lt;b&gt; &amp; &quot;x&quot;'
    """
    return html.escape(value, quote=False).replace('"', "&quot;")


def fill(template: str, *, text: dict[str, str], data: dict[str, Any],
         assets: dict[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced once, in one pass (nothing inserted is
    read again): ``text`` values escaped (:func:`escape_text`), ``data`` values as
    :func:`json_block`, ``assets`` (ours and plotly's code) as they are, refused if they
    would close their element. Every slot must be given and every value used.

    >>> fill("<p>{{a}}</p>", text={"a": "<i>"}, data={}, assets={})
    '<p>&lt;i&gt;</p>'
    """
    values = {**{k: escape_text(v) for k, v in text.items()},
              **{k: json_block(v) for k, v in data.items()}}
    for name, code in assets.items():
        closer = CLOSERS.get(name)
        if closer is None or closer.search(code):
            raise ValueError(f"view: asset {name!r} is not known or would close its element")
        values[name] = code
    slots = SLOT.findall(template)
    if sorted(slots) != sorted(values):
        raise ValueError(f"view: the template's slots {sorted(slots)} are not the values "
                         f"given {sorted(values)}")
    return SLOT.sub(lambda m: values[m[1]], template)


def render_page(payload: dict[str, Any], *, panels: int | None = None) -> str:
    """The whole page for one payload (see :func:`lightning_embproj.sinks.view.build_payload`):
    one scatter panel per ``payload["panels"]`` entry (``panels``, if given, must agree).

    The page's constants (the coordinate codes, the image pattern) and its colours besides each
    column's own (:func:`lightning_embproj.sinks.palette.for_page`) are added to the data, so
    the script repeats none of them.
    """
    if panels is not None and panels != len(payload.get("panels", [])):
        raise ValueError(f"view: {panels} panels asked, the payload has "
                         f"{len(payload.get('panels', []))}")
    data = {**payload, "colours": palette.for_page(),
            "constants": {"missing": MISSING, "levels": LEVELS, "image": IMAGE_URI.pattern}}
    return fill(read_asset("view.html"), text={"csp": CSP, "title": str(payload.get("title", ""))},
                data={"data": data},
                assets={"css": read_asset("view.css"), "plotly": plotly_js(),
                        "script": read_asset("view.js")})
