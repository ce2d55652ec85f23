"""After the run: the slider view and a side-by-side PNG of chosen epochs, from the local files.

Writes, for each embedding set (or the one named), into ``<output>/<NAME>/``:

- ``view.html``: the epoch-slider page (see :mod:`lightning_embproj.sinks.html_view`);
- ``compare_<reducer>.png``: the chosen epochs side by side (default: first, middle, last),
  coloured by label, on shared axes; 400 x 460 pixels per epoch.

Example:
    >>> compare("lightning_logs/version_0", "report", epochs=[0, 5, 9], reducer="tsne")
    ... # doctest: +SKIP
    [PosixPath('report/embeddings/view.html'), PosixPath('report/embeddings/compare_tsne.png')]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.sinks.html_view import (
    PALETTE,
    VIEW_FILE,
    reducers_in,
    render_view,
    sorted_labels,
)
from lightning_embproj.sinks.local import (
    atomic_write_text,
    list_sets,
    read_metrics,
    read_projections,
)

PANEL_INCHES = 4.0  # each epoch's panel; with DPI 100 the PNG is 400 px wide per epoch
HEIGHT_INCHES = 4.6  # panel plus the label legend below it
DPI = 100
MAX_LEGEND = 20
ALPHA = 0.85
TITLE_METRICS = ("silhouette", "knn_accuracy")


def default_epochs(epochs: Sequence[int]) -> list[int]:
    """First, middle and last of the available epochs (fewer when there are fewer).

    >>> default_epochs([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    [0, 5, 9]
    """
    ordered = sorted(set(epochs))
    return sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]})


def _plain(value: Any, limit: int = 24) -> str:
    """A label as matplotlib text: short, and `$` escaped so it is not read as mathtext."""
    text = " ".join(str(value).split())
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def plot_epochs(points: Any, metrics: Any | None, path: Path, *, epochs: Sequence[int],
                reducer: str, title: str = "") -> Path:
    """Draw ``epochs`` of one reducer's layout side by side into a PNG at ``path``."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'The compare PNG needs matplotlib: pip install "lightning-embproj[view]"'
        ) from err
    dims = reducers_in(points)[reducer]
    cols = [f"{reducer}_{a}" for a in "xyz"[:dims]]
    shown = points[points["epoch"].isin(list(epochs))]
    lims = [(float(np.nanmin(shown[c])), float(np.nanmax(shown[c]))) for c in cols]
    lims = [(lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1)) for lo, hi in lims]
    has_label = "label" in points.columns
    labels = (sorted_labels(points["label"].astype(object).where(points["label"].notna(),
                                                                  "(missing)"))
              if has_label else [None])
    by_epoch = metrics.set_index("epoch") if metrics is not None and len(metrics) else None

    fig = Figure(figsize=(PANEL_INCHES * len(epochs), HEIGHT_INCHES), dpi=DPI)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.80, bottom=0.16, wspace=0.06)
    size = float(np.clip(3000 / max(len(shown) / len(epochs), 1), 3, 30))  # fewer points: bigger
    handles = []
    for i, epoch in enumerate(epochs):
        ax = fig.add_subplot(1, len(epochs), i + 1, **({"projection": "3d"} if dims == 3 else {}))
        rows = shown[shown["epoch"] == epoch]
        row_labels = (rows["label"].astype(object).where(rows["label"].notna(), "(missing)")
                      if has_label else None)
        for g, lab in enumerate(labels):
            sel = rows if row_labels is None else rows[(row_labels == lab).to_numpy()]
            xyz = [sel[c].to_numpy() for c in cols]
            h = ax.scatter(*xyz, s=size, alpha=ALPHA, linewidths=0,  # type: ignore[misc]
                           color=PALETTE[g % len(PALETTE)], label=_plain(lab))
            if i == 0:
                handles.append(h)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_xticks([])
        ax.set_yticks([])
        if dims == 3:
            ax.set_zlim(*lims[2])  # type: ignore[attr-defined]
            ax.set_zticks([])  # type: ignore[attr-defined]
        scores = []
        if by_epoch is not None and epoch in by_epoch.index:
            scores = [f"{m} {float(by_epoch.at[epoch, m]):.3f}" for m in TITLE_METRICS
                      if m in by_epoch.columns and np.isfinite(by_epoch.at[epoch, m])]
        ax.set_title("\n".join([f"epoch {epoch}", ", ".join(scores)]), fontsize=9)
    fig.suptitle(_plain(title, 80) + f" ({reducer})", fontsize=12, y=0.985)
    if has_label:
        extra = len(handles) - MAX_LEGEND
        fig.legend(handles=handles[:MAX_LEGEND], loc="lower center", markerscale=2.5,
                   ncol=min(len(handles[:MAX_LEGEND]), 10), fontsize=8, frameon=False,
                   title=f"label (+{extra} more)" if extra > 0 else "label",
                   title_fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)
    return path


def compare(log_dir: str | os.PathLike[str], output: str | os.PathLike[str],
            name: str | None = None, epochs: Sequence[int] | None = None,
            reducer: str | None = None, *, max_epochs: int = 50) -> list[Path]:
    """Write ``view.html`` and ``compare_<reducer>.png`` per embedding set; returns the paths.

    Args:
        log_dir: the finished run's log dir (holding ``embproj/<NAME>/epoch_*.csv``).
        output: folder for the results, one sub-folder per set.
        name: only this embedding set (default: every set found).
        epochs: epochs of the PNG (default: first, middle, last).
        reducer: layout of the PNG, e.g. ``"tsne"`` (default: the first of pca, tsne, umap
            present).
        max_epochs: most frames of the slider view.
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"compare: log dir {str(root)!r} does not exist")
    # A set's own folder (holding epoch_*.csv) works too.
    sets = [root.name] if any(root.glob("epoch_*.csv")) else list_sets(root)
    if not sets:
        raise ValueError(f"compare: no embedding sets under {str(root)!r} "
                         "(expected embproj/<NAME>/epoch_*.csv)")
    if name is not None and name not in sets:
        raise ValueError(f"compare: no embedding set {name!r} under {str(root)!r}; "
                         f"available: {', '.join(sets)}")
    plans = []
    for set_name in [name] if name is not None else sets:  # check every set before writing
        points = read_projections(root, set_name)
        available = sorted({int(e) for e in points["epoch"]})
        chosen = default_epochs(available) if not epochs else [int(e) for e in epochs]
        unknown = [e for e in chosen if e not in available]
        if unknown:
            raise ValueError(f"compare: epochs {unknown} not in set {set_name!r}; "
                             f"available epochs: {available}")
        reducers = list(reducers_in(points))
        r = reducer if reducer is not None else next(iter(reducers), None)
        if r not in reducers:
            raise ValueError(f"compare: reducer {reducer!r} not in set {set_name!r}; "
                             f"available: {', '.join(reducers)}")
        plans.append((set_name, points, chosen, r))
    written: list[Path] = []
    for set_name, points, chosen, r in plans:
        metrics = read_metrics(root, set_name)
        folder = Path(output) / set_name
        title = f"{set_name} \u2014 {root.name}"
        view = folder / VIEW_FILE
        atomic_write_text(view, render_view(points, metrics, title=title, max_epochs=max_epochs))
        png = plot_epochs(points, metrics, folder / f"compare_{r}.png", epochs=chosen,
                          reducer=str(r), title=title)
        written += [view, png]
    return written
