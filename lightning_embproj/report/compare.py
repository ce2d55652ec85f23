"""After the run: the view and a PNG of chosen epochs of one run, or two runs side by side.

One run (``compare LOG_DIR``), for each embedding set (or the one named), into
``<output>/<NAME>/``:

- ``view.html``: the view (see :mod:`lightning_embproj.sinks.view`);
- ``compare_<reducer>.png``: the chosen epochs side by side (default: first, middle, last; the
  last validation run of each), coloured by label (the one palette), on shared axes at equal
  scale; 400 x 460 pixels per epoch.

Two runs (``compare RUN_A RUN_B``) are :mod:`~lightning_embproj.report.compare_two`.

Example:
    >>> compare("lightning_logs/version_0", "report", epochs=[0, 5, 9], reducer="tsne")
    ... # doctest: +SKIP
    [PosixPath('report/embeddings/view.html'), PosixPath('report/embeddings/compare_tsne.png')]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.readers import (
    find_run,
    list_sets,
    list_validations,
    read_metrics,
    read_projections,
)
from lightning_embproj.sinks import palette
from lightning_embproj.sinks.local import atomic_write_text, set_dir
from lightning_embproj.sinks.plot import equal_scale
from lightning_embproj.sinks.view import (
    VIEW_FILE,
    read_lineage_or_none,
    reducers_in,
    render_view,
)
from lightning_embproj.sinks.view.images import read_images

PANEL_INCHES = 4.0  # each epoch's panel; with DPI 100 the PNG is 400 px wide per epoch
# Panel plus the label legend below it: 460 px. The float just above 4.6, because
# 4.6 * 100 = 459.99999999999994 and matplotlib < 3.11 truncates that to 459 px.
HEIGHT_INCHES = float(np.nextafter(4.6, 5.0))
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


def _label_values(rows: Any) -> list[Any]:
    """The rows' labels as objects, ``None`` where missing."""
    values = rows["label"].astype(object)
    return values.where(values.notna(), None).tolist()


def _panel_title(by_epoch: Any, epoch: int) -> str:
    scores = []
    if by_epoch is not None and epoch in by_epoch.index:
        scores = [f"{m} {float(by_epoch.at[epoch, m]):.3f}" for m in TITLE_METRICS
                  if m in by_epoch.columns and np.isfinite(by_epoch.at[epoch, m])]
    return "\n".join([f"epoch {epoch}", ", ".join(scores)])


def _legend(fig: Any, values: list[Any], mapping: dict[Any, str]) -> None:
    """The labels under the panels, in natural order, markers at full colour."""
    from matplotlib.lines import Line2D

    keys = sorted(mapping, key=palette.natural_key)
    entries = [(_plain(k), mapping[k]) for k in keys]
    if any(v is None for v in values):
        entries.append(("(missing)", palette.MISSING))
    handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colour, label=text)
               for text, colour in entries[:MAX_LEGEND]]
    extra = len(entries) - MAX_LEGEND
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=8,
               frameon=False, title=f"label (+{extra} more)" if extra > 0 else "label",
               title_fontsize=8, handletextpad=0.2, columnspacing=1.0)


def _equal_axes(ax: Any, fig: Any, lims: list[tuple[float, float]]) -> None:
    """Shared limits at equal scale: 2-D widened to the panel's box, 3-D a box in the
    limits' proportions."""
    if len(lims) == 3:
        spans = [hi - lo for lo, hi in lims]
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_zlim(*lims[2])
        ax.set_box_aspect([max(s / max(spans), 0.01) for s in spans])
        ax.set_zticks([])
        return
    box = ax.get_position()
    width, height = fig.get_size_inches()
    x0, x1, y0, y1 = equal_scale((*lims[0], *lims[1]), box.width * width, box.height * height)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def plot_epochs(points: Any, metrics: Any | None, path: Path, *, epochs: Sequence[int],
                reducer: str, title: str = "") -> Path:
    """Draw ``epochs`` of one reducer's layout side by side into a PNG at ``path``: shared
    axes at equal scale, each label in its colour of the one palette
    (:mod:`lightning_embproj.sinks.palette`)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'The compare PNG needs matplotlib: pip install "lightning-embproj[view]"'
        ) from err
    dims = reducers_in(points)[reducer]
    cols = [f"{reducer}_{a}" for a in "xyz"[:dims]]
    # Several validation runs can share an epoch: each epoch's panel shows its last run.
    last_run = points.groupby("epoch")["val_index"].max()
    shown = points[points["val_index"].isin([last_run[e] for e in epochs if e in last_run])]
    lims = [(float(np.nanmin(shown[c])), float(np.nanmax(shown[c]))) for c in cols]
    lims = [(lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1)) for lo, hi in lims]
    has_label = "label" in points.columns
    mapping = palette.colour_map(_label_values(shown)) if has_label else {}
    by_epoch = (metrics.sort_values("val_index").drop_duplicates("epoch", keep="last")
                .set_index("epoch") if metrics is not None and len(metrics) else None)

    fig = Figure(figsize=(PANEL_INCHES * len(epochs), HEIGHT_INCHES), dpi=DPI)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.80, bottom=0.16, wspace=0.06)
    size = float(np.clip(3000 / max(len(shown) / len(epochs), 1), 3, 30))  # fewer points: bigger
    for i, epoch in enumerate(epochs):
        ax = fig.add_subplot(1, len(epochs), i + 1, **({"projection": "3d"} if dims == 3 else {}))
        rows = shown[shown["epoch"] == epoch]
        colours = (palette.colours(_label_values(rows), mapping) if has_label
                   else palette.SINGLE)
        ax.scatter(*[rows[c].to_numpy() for c in cols], s=size, alpha=ALPHA,  # type: ignore[misc]
                   linewidths=0, c=colours)
        ax.set_xticks([])
        ax.set_yticks([])
        _equal_axes(ax, fig, lims)
        ax.set_title(_panel_title(by_epoch, epoch), fontsize=9)
    fig.suptitle(_plain(title, 80) + f" ({reducer})", fontsize=12, y=0.985)
    if has_label:
        _legend(fig, _label_values(shown), mapping)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)
    return path


LINEAGE_SUMMARY_FILE = "lineage_summary.csv"


def lineage_summary(lineage: Any) -> Any:
    """One row per validation run: ``val_index``, ``epoch``, ``step``, the number of clusters,
    and how many clusters survived, merged, split (each split cluster once), emerged, vanished.

    Example:
        >>> lineage_summary(read_lineage("logs"))          # doctest: +SKIP
           val_index  epoch  step  clusters  survive  merge  split  emerge  vanish
    """
    import pandas as pd

    from lightning_embproj.evolve.lineage import EVENTS, event_counts

    rows = []
    for (v, e, s), group in lineage.groupby(["val_index", "epoch", "step"], sort=True):
        records = group.to_dict("records")
        clusters = {r["cluster"] for r in records if r["event"] != "vanish"}
        rows.append({"val_index": v, "epoch": e, "step": s, "clusters": len(clusters),
                     **event_counts(records)})
    return pd.DataFrame(rows, columns=["val_index", "epoch", "step", "clusters", *EVENTS])


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def compare(log_dir: str | os.PathLike[str], output: str | os.PathLike[str],
            name: str | None = None, epochs: Sequence[int] | None = None,
            reducer: str | None = None, *, max_runs: int = 50,
            on_skip: Callable[[str], None] = _warn, latest: bool = False) -> list[Path]:
    """Write ``view.html`` and ``compare_<reducer>.png`` per embedding set, and with clusters
    ``lineage_summary.csv`` (:func:`lineage_summary`); returns the paths.

    A set that lacks the asked reducer or epochs gets its view but no PNG (``on_skip`` says
    why); only when no set has them is it an error.

    Args:
        log_dir: the finished run's log dir (holding ``embproj/<NAME>/``), one set's folder,
            or any folder above one run (a W&B ``save_dir``: the run is found below it).
        output: folder for the results, one sub-folder per set.
        name: only this embedding set (default: every set found).
        epochs: epochs of the PNG (default: first, middle, last).
        reducer: layout of the PNG, e.g. ``"tsne"`` (default: the first of pca, tsne, umap
            present in each set).
        max_runs: most validation runs on the view's slider.
        on_skip: called with a message for each set whose PNG is skipped.
        latest: ``log_dir`` holds several runs below it: take the newest (latest file
            written); without it that is an error listing them
            (:func:`lightning_embproj.readers.find_run`).
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"compare: log dir {str(root)!r} does not exist")
    root = find_run(root, latest)
    found = find_sets(root)
    if not found:
        raise ValueError(f"compare: no embedding sets under {str(root)!r} "
                         "(expected embproj/<NAME>/val_*.csv)")
    if name is not None and name not in found:
        raise ValueError(f"compare: no embedding set {name!r} under {str(root)!r}; "
                         f"available: {', '.join(found)}")
    # every set checked first
    plans = [_plan(s, *found[s], epochs, reducer)
             for s in ([name] if name is not None else list(found))]
    problems = [plan[-1] for plan in plans if plan[-1]]
    if len(problems) == len(plans):
        raise ValueError("compare: " + "; ".join(problems))
    written: list[Path] = []
    for set_name, path, arg, points, chosen, r, problem in plans:
        metrics = read_metrics(path, arg)
        folder = Path(output) / set_name
        title = f"{set_name} \u2014 {root.name}"
        view = folder / VIEW_FILE
        lineage = read_lineage_or_none(path, arg)
        atomic_write_text(view, render_view(points, metrics, title=title, max_runs=max_runs,
                                            lineage=lineage,
                                            images=read_images(set_folder(path, arg))))
        written.append(view)
        if lineage is not None:
            summary = folder / LINEAGE_SUMMARY_FILE
            atomic_write_text(summary, lineage_summary(lineage).to_csv(index=False))
            written.append(summary)
        if problem:
            on_skip(f"compare: no PNG for set {set_name!r}: {problem}")
            continue
        written.append(plot_epochs(points, metrics, folder / f"compare_{r}.png", epochs=chosen,
                                   reducer=str(r), title=title))
    return written


def _plan(set_name: str, path: Path, arg: str | None, epochs: Sequence[int] | None,
          reducer: str | None) -> tuple[Any, ...]:
    """``(set, path, name argument, points, epochs, reducer, problem)`` of one set: the
    problem (epochs or reducer it lacks) leaves it without a PNG."""
    points = read_projections(path, arg)
    available = sorted({int(e) for e in points["epoch"]})
    chosen = default_epochs(available) if not epochs else [int(e) for e in epochs]
    unknown = [e for e in chosen if e not in available]
    reducers = list(reducers_in(points))
    r = reducer if reducer is not None else next(iter(reducers), None)
    problem = None
    if unknown:
        problem = f"epochs {unknown} not in set {set_name!r}; available epochs: {available}"
    elif r not in reducers:
        problem = (f"reducer {reducer!r} not in set {set_name!r}; available: "
                   f"{', '.join(reducers)}")
    return (set_name, path, arg, points, chosen, None if problem else r, problem)


def set_folder(path: Path, name: str | None) -> Path:
    """The folder of a set as :func:`find_sets` names it: ``path`` itself when ``name`` is None
    (``path`` is one set's folder), else the set ``name`` under the log dir ``path``.

    Example:
        >>> set_folder(Path("logs"), "z").parts[-3:]
        ('logs', 'embproj', 'z')
    """
    return path if name is None else set_dir(path, name)


def find_sets(path: str | os.PathLike[str]) -> dict[str, tuple[Path, str | None]]:
    """Set name -> (path, name argument for the readers), for a log dir or one set's folder."""
    p = Path(path)
    names = list_sets(p)
    if names:
        return {n: (p, n) for n in names}
    try:
        runs = list_validations(p)
    except (ValueError, FileNotFoundError, OSError):
        return {}
    return {p.name: (p, None)} if runs else {}
