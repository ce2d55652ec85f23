"""One palette for every picture: the W&B pictures, the HTML view, compare's PNG and page.

Pure (no matplotlib, no plotly): colours are ``#rrggbb`` texts, so each renderer takes them as
they are and the view gets them in its data (it has no palette of its own).

**The scheme.** A categorical value's colour depends on the value, never on the order in which
values turned up, so label 3 is the same red in every picture of every run:

- an integer (an ``int``, a ``bool``, an integral float, or a text such as ``"7"``) takes
  ``CATEGORICAL[v mod 32]``: labels 0-9 are matplotlib's tab10 order (blue, orange, green,
  red, ...; its grey left out), 10-31 further colours picked to stay apart (CIE76
  distance >= 27 from every other colour and from the greys);
- ``-1`` (HDBSCAN's noise, the usual "no label") is :data:`NOISE` grey; a missing value is
  :data:`MISSING`, a lighter grey;
- any other text takes the colour its CRC-32 picks (the same on every machine);
- values drawn together never look alike while at most 32 are drawn: when values of one
  picture share a home colour (cluster ids 3 and 35, two texts whose hashes meet), the first
  (numbers by value, then texts alphabetically) keeps it and each other takes the next colour
  that no value of that picture calls home. Only those values' colours depend on what else is
  drawn; cluster ids, which are never reused, no longer use the palette up.

Real-valued numbers are drawn on :data:`SEQUENTIAL` (viridis); integer, text and bool columns
with at most :data:`MAX_CATEGORIES` distinct values are categorical (:func:`is_categorical`).

Example:
    >>> colours([0, 1, 3, -1, None])
    ['#1f77b4', '#ff7f0e', '#d62728', '#9a9a9a', '#d0d0d0']
    >>> colour_map([3, 35])           # 35's home is 3's: it moves to the next free colour
    {3: '#d62728', 35: '#9467bd'}
    >>> colour_map([35]) == {35: CATEGORICAL[3]}
    True
"""

from __future__ import annotations

import math
import numbers
import re
import zlib
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

CATEGORICAL = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#0000ff", "#ff1eff", "#005a3c", "#690fb4", "#f0b478", "#00e100", "#ff0078",
    "#69690f", "#96d296", "#0078ff", "#960f4b", "#ff8787", "#964b00", "#c300a5", "#b4b4f0",
    "#00e196", "#d269ff", "#ffb400", "#87d21e", "#ffb4d2", "#004bff", "#5a3c69", "#005a00",
)
"""32 categorical colours; value ``v`` (an integer) is at home at ``v mod 32``."""
NOISE = "#9a9a9a"
"""``-1``: HDBSCAN's noise points."""
MISSING = "#d0d0d0"
"""No value (None, NaN, an empty cell)."""
SEQUENTIAL = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
              "#6ece58", "#b5de2b", "#fde725")
"""viridis in 10 stops, for real-valued numbers."""
SINGLE = CATEGORICAL[0]
"""Points drawn without a colour column."""
MAX_CATEGORIES = 50
"""Most distinct values of a column drawn as categories (more: a number scale, or none)."""

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
Key = Hashable  # an int or a str (see category_key)


def category_key(value: Any) -> int | str | None:
    """The value a colour is keyed by: an int for integers (``True``, ``3.0``, ``"3"``), else
    the text; ``None`` for a missing value.

    >>> [category_key(v) for v in (True, 3.0, "3", "cat", 0.5, float("nan"), None)]
    [1, 3, 3, 'cat', '0.5', None, None]
    """
    if value is None or type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing
        return None
    if isinstance(value, str):
        return int(value) if _INTEGER.fullmatch(value) else value
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()  # numpy scalars
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else f"{value:.6g}"
    return str(value)


def natural_key(key: int | str) -> tuple[int, int, str]:
    """Numbers by value before texts (``2`` before ``10``), texts alphabetically."""
    return (0, key, "") if isinstance(key, int) else (1, 0, key)


def home(key: int | str) -> int:
    """The index in :data:`CATEGORICAL` a value calls home."""
    if isinstance(key, int):
        return key % len(CATEGORICAL)
    return zlib.crc32(key.encode("utf-8")) % len(CATEGORICAL)


def colour_map(values: Iterable[Any]) -> dict[Any, str]:
    """Colour of each distinct value drawn together, keyed by :func:`category_key`.

    Every value at its home colour, except where values share one: then the first (in
    :func:`natural_key` order) keeps it and the others take the next colours no value here
    calls home (past 32 values colours repeat). ``-1`` is :data:`NOISE`; missing values
    are left out (they are :data:`MISSING`).
    """
    keys = sorted({k for k in map(category_key, values) if k is not None}, key=natural_key)
    out: dict[Any, str] = {}
    claims: dict[int, list[int | str]] = {}
    for key in keys:
        if key == -1:
            out[key] = NOISE
        else:
            claims.setdefault(home(key), []).append(key)
    taken = set(claims)
    n = len(CATEGORICAL)
    for slot, group in sorted(claims.items(), key=lambda item: natural_key(item[1][0])):
        out[group[0]] = CATEGORICAL[slot]
        for key in group[1:]:
            free = next((s % n for s in range(slot + 1, slot + n) if s % n not in taken), slot)
            taken.add(free)
            out[key] = CATEGORICAL[free]
    return out


def colours(values: Sequence[Any], mapping: dict[Any, str] | None = None) -> list[str]:
    """One colour per value (``mapping``: a :func:`colour_map` of a wider set of values, e.g.
    every run's; default: the map of ``values`` themselves)."""
    mapping = colour_map(values) if mapping is None else mapping
    out = []
    for value in values:
        key = category_key(value)
        out.append(MISSING if key is None else mapping.get(key, CATEGORICAL[home(key)]))
    return out


def is_categorical(values: Iterable[Any], max_categories: int = MAX_CATEGORIES) -> bool:
    """Whether a column is drawn in categories: bools, integers (integral floats too) and
    texts with at most ``max_categories`` distinct values; never real-valued numbers.
    ``values`` may be the column's distinct values (``pandas.unique``): that is all it reads.

    >>> is_categorical([0, 3, 9, 3]), is_categorical([0.5, 1.0]), is_categorical(range(80))
    (True, False, False)
    """
    distinct: set[Any] = set()
    for value in values:
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            if not math.isfinite(float(value)):
                continue
            if not float(value).is_integer():
                return False  # a real-valued number
        key = category_key(value)
        if key is not None:
            distinct.add(key)
            if len(distinct) > max_categories:
                return False
    return True


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as ``(r, g, b)``.

    >>> hex_rgb("#1f77b4")
    (31, 119, 180)
    """
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def for_page() -> dict[str, Any]:
    """The colours the view's script uses besides each column's own (its only palette)."""
    return {"noise": NOISE, "missing": MISSING, "sequential": list(SEQUENTIAL),
            "single": SINGLE, "series": list(CATEGORICAL[:10])}
