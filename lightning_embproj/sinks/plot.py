"""Scatter pictures of a layout for W&B's image panel (which has a step slider).

Rendering uses matplotlib's Agg canvas through the object API (``Figure``), never ``pyplot``:
it runs on the background thread, and pyplot's global figure registry is not thread-safe and
would keep every figure alive. Axes stay fixed across validation runs (:func:`widen`) and at
equal scale (:func:`equal_scale`), and each label has its colour of the one palette
(:mod:`lightning_embproj.sinks.palette`, as in the view and the reports), so stepping through
the pictures shows real motion.

A 3-D layout is drawn by its first two axes (the ``R_x``, ``R_y`` columns; the layouts are
aligned, so those axes are stable across runs too); the 3-D cloud itself is W&B's ``R_3d``.

Example:
    >>> import numpy as np
    >>> xy = np.array([[0.0, 0.0], [1.0, 2.0]])
    >>> widen(None, xy, margin=0.1)
    (-0.1, 1.1, -0.2, 2.2)
    >>> widen((-0.1, 1.1, -0.2, 2.2), xy / 2)      # never shrinks
    (-0.1, 1.1, -0.2, 2.2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj.sinks import palette

Limits = tuple[float, float, float, float]
"""``(x_min, x_max, y_min, y_max)`` of a plot's axes."""

MAX_LEGEND = 20
"""Legend entries shown (numbers by value, then texts); more are counted in a last entry."""
WIDTH, HEIGHT, DPI = 640, 480, 80  # pixels: the plot, the legend beside it, no blank margin


def widen(limits: Limits | None, points: np.ndarray, margin: float = 0.05) -> Limits:
    """Axis limits holding ``points``: the first ones plus ``margin``, then only ever wider.

    Starting from ``limits`` (None: the points' range plus ``margin`` of it on each side), an
    axis is widened only when points fall outside it, by ``margin`` of the widened range past
    the outermost point; it never shrinks. Non-finite points are ignored.

    Example:
        >>> widen((0.0, 1.0, 0.0, 1.0), np.array([[2.0, 0.5]]), margin=0.0)
        (0.0, 2.0, 0.0, 1.0)
    """
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    if xy.size == 0:
        return limits if limits is not None else (-1.0, 1.0, -1.0, 1.0)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    if limits is None:
        pad = np.where(hi > lo, (hi - lo) * margin, 1.0)  # one point still gets a box
        return _limits(lo - pad, hi + pad)
    old_lo = np.array([limits[0], limits[2]])
    old_hi = np.array([limits[1], limits[3]])
    span = np.maximum(hi, old_hi) - np.minimum(lo, old_lo)  # the margin of the widened axis
    new_lo = np.where(lo < old_lo, lo - span * margin, old_lo)
    new_hi = np.where(hi > old_hi, hi + span * margin, old_hi)
    return _limits(new_lo, new_hi)


def _limits(lo: np.ndarray, hi: np.ndarray) -> Limits:
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def equal_scale(limits: Limits, width: float, height: float) -> Limits:
    """``limits`` widened on one axis, about its centre, so that a box of ``width`` x
    ``height`` pixels shows both axes at the same scale (a unit is as long across as up).

    Example:
        >>> equal_scale((-400.0, 400.0, -25.0, 25.0), 200, 100)
        (-400.0, 400.0, -200.0, 200.0)
    """
    x0, x1, y0, y1 = limits
    per_px = max((x1 - x0) / width, (y1 - y0) / height)
    xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
    return (xc - per_px * width / 2, xc + per_px * width / 2,
            yc - per_px * height / 2, yc + per_px * height / 2)


def legend_entries(labels: Sequence[Any], limit: int = MAX_LEGEND
                   ) -> tuple[list[tuple[str, str]], int]:
    """``(text, colour)`` of the distinct labels in natural order (at most ``limit``), and how
    many more there are; colours from :mod:`lightning_embproj.sinks.palette`."""
    mapping = palette.colour_map(labels)
    keys = sorted(mapping, key=palette.natural_key)
    missing = any(palette.category_key(v) is None for v in labels)
    entries = [(str(k), mapping[k]) for k in keys] + ([("(none)", palette.MISSING)]
                                                       if missing else [])
    return entries[:limit], max(0, len(entries) - limit)


def render(
    layout: np.ndarray,
    limits: Limits,
    title: str,
    labels: Sequence[Any] | None = None,
    legend_title: str = "label",
) -> np.ndarray:
    """The scatter of ``layout``'s first two axes as an RGB ``(HEIGHT, WIDTH, 3)`` uint8 image.

    Points are coloured by ``labels`` through the one palette (one colour without labels),
    with a legend of the labels shown beside the plot; the plot takes the rest of the picture
    and both axes have the same scale (``limits`` widened on one axis, :func:`equal_scale`).

    Raises:
        ImportError: matplotlib is not installed (the ``view`` extra).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.lines import Line2D

    xy = np.asarray(layout, dtype=np.float64)[:, :2]
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI,
                 layout=ConstrainedLayoutEngine(w_pad=2 / DPI, h_pad=2 / DPI))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [palette.SINGLE] * len(xy) if labels is None else palette.colours(labels)
    ax.scatter(xy[:, 0], xy[:, 1], s=6, c=colours, linewidths=0, alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if labels is not None:
        entries, more = legend_entries(labels)
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=col,
                          label=text[:20]) for text, col in entries]
        if more:
            handles.append(Line2D([], [], linestyle="", label=f"+{more} more"))
        fig.legend(handles=handles, title=legend_title, fontsize=7, title_fontsize=7,
                   loc="outside right upper", frameon=False, handletextpad=0.2,
                   borderaxespad=0.2)
    # The layout places the plot beside the legend; then the limits are made equal-scale for
    # the plot's box (twice: the new limits' tick labels may move the box a little).
    for _ in range(2):
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
        fig.draw_without_rendering()
        box = ax.get_window_extent()
        x0, x1, y0, y1 = equal_scale(limits, box.width, box.height)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    fig.set_layout_engine("none")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
