"""Scatter pictures of a layout for W&B's image panel (which has a step slider).

Rendering uses matplotlib's Agg canvas through the object API (``Figure``), never ``pyplot``:
it runs on the background thread, and pyplot's global figure registry is not thread-safe and
would keep every figure alive. Axes stay fixed across validation runs (:func:`widen`), and each
label keeps its colour (:class:`Palette`), so stepping through the pictures shows real motion.

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

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

Limits = tuple[float, float, float, float]
"""``(x_min, x_max, y_min, y_max)`` of a plot's axes."""

MAX_LEGEND = 20
"""Labels with their own colour and legend entry; the rest share the grey "other"."""
OTHER = "other"
SIZE_INCHES = 6.0
DPI = 80  # 480 x 480 pixels: ~40-110 KB as PNG at 2,000 points
# tab20 without its two greys (grey is "other"), then the greys' neighbours for labels 19-20.
_TAB20 = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#393b79", "#637939",
]
_OTHER_COLOUR = "#7f7f7f"
_SINGLE_COLOUR = "#1f77b4"


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


class Palette:
    """A fixed colour per label for one embedding set: the same label, the same colour.

    The first run's :data:`MAX_LEGEND` most frequent labels (in sorted order) get the colours;
    labels seen later take the free ones; past that they are drawn grey as "other".

    Example:
        >>> p = Palette()
        >>> p.colours(["b", "a", "b"])
        ['#ff7f0e', '#1f77b4', '#ff7f0e']
    """

    def __init__(self, max_entries: int = MAX_LEGEND) -> None:
        self.max_entries = min(max_entries, len(_TAB20))
        self.assigned: dict[str, str] = {}

    def _assign(self, labels: Sequence[str]) -> None:
        free = self.max_entries - len(self.assigned)
        if free <= 0:
            return
        counts = Counter(lab for lab in labels if lab not in self.assigned)
        top = sorted(counts, key=lambda lab: (-counts[lab], _natural(lab)))[:free]
        for lab in sorted(top, key=_natural):
            self.assigned[lab] = _TAB20[len(self.assigned)]

    def colours(self, labels: Sequence[Any]) -> list[str]:
        """One colour per point, assigning colours to new labels first."""
        names = [str(lab) for lab in labels]
        self._assign(names)
        return [self.assigned.get(lab, _OTHER_COLOUR) for lab in names]


def _natural(label: str) -> tuple[int, float, str]:
    """Numbers by value before other strings ("2" before "10")."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def render(
    layout: np.ndarray,
    limits: Limits,
    title: str,
    labels: Sequence[Any] | None = None,
    palette: Palette | None = None,
    legend_title: str = "label",
) -> np.ndarray:
    """The scatter of ``layout``'s first two axes as an RGB ``(H, W, 3)`` uint8 image.

    Points are coloured by ``labels`` through ``palette`` (one colour without labels), with a
    legend of the labels shown (at most :data:`MAX_LEGEND` plus "other").

    Raises:
        ImportError: matplotlib is not installed (the ``view`` extra).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xy = np.asarray(layout, dtype=np.float64)[:, :2]
    fig = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles: list[Any] = []
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c=_SINGLE_COLOUR, linewidths=0, alpha=0.8)
    else:
        palette = palette or Palette()
        colours = palette.colours(labels)
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c=colours, linewidths=0, alpha=0.8)
        shown = set(colours)
        entries = [(lab, col) for lab, col in palette.assigned.items() if col in shown]
        if _OTHER_COLOUR in shown:
            entries.append((OTHER, _OTHER_COLOUR))
        handles = [
            Line2D([], [], marker="o", linestyle="", markersize=5, color=col, label=lab[:20])
            for lab, col in entries
        ]
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if handles:
        ax.legend(handles=handles, title=legend_title, fontsize=7, title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.subplots_adjust(left=0.09, right=0.78, bottom=0.07, top=0.93)
    else:
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.07, top=0.93)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
