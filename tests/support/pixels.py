"""Reading pictures back by their pixels: where the plot frame is, which colours are drawn.

Used by the "one look" tests on the PNGs the W&B offline run and ``compare`` wrote: nothing is
asked of the code that drew them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def read_rgb(path: str | Path) -> np.ndarray:
    """The PNG as an ``(H, W, 3)`` int array."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` or plotly's ``rgb(r, g, b)`` as a tuple."""
    if colour.startswith("rgb"):
        r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:-1].split(","))
        return r, g, b
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def frame_lines(img: np.ndarray, axis: int, share: float) -> np.ndarray:
    """Indices of the columns (``axis=0``: each column's share over rows) or rows
    (``axis=1``) where more than ``share`` of the pixels are dark: a plot's frame lines."""
    dark = img.max(axis=2) < 110
    return np.flatnonzero(dark.mean(axis=axis) > share)


def blobs(img: np.ndarray, *, chromatic: bool = True, min_area: int = 4) -> list[dict[str, Any]]:
    """Connected groups of drawn (non-white) pixels: each one's centre and its most intense
    colour (the pixel furthest from white: a marker's fully covered middle). ``chromatic``:
    only coloured pixels (not greys: text, frame lines, grey markers)."""
    from scipy import ndimage

    spread = img.max(axis=2) - img.min(axis=2)
    drawn = spread > 60 if chromatic else img.min(axis=2) < 235
    labels, n = ndimage.label(drawn)
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        if len(ys) < min_area:
            continue
        pixels = img[ys, xs]
        best = pixels[np.argmin(pixels.sum(axis=1))]
        out.append({"x": float(xs.mean()), "y": float(ys.mean()),
                    "rgb": tuple(int(v) for v in best),
                    "box": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))})
    return out


def ink_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of every coloured pixel."""
    spread = img.max(axis=2) - img.min(axis=2)
    ys, xs = np.nonzero(spread > 60)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
