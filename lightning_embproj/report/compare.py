"""After the run: the view and a PNG of chosen epochs of one run, or two runs side by side.

One run (``compare LOG_DIR``), for each embedding set (or the one named), into
``<output>/<NAME>/``:

- ``view.html``: the view (see :mod:`lightning_embproj.sinks.view`);
- ``compare_<reducer>.png``: the chosen epochs side by side (default: first, middle, last; the
  last validation run of each), coloured by label, on shared axes; 400 x 460 pixels per epoch.

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

from lightning_embproj.readers import list_sets, list_validations, read_metrics, read_projections
from lightning_embproj.sinks.local import atomic_write_text, set_dir
from lightning_embproj.sinks.view import (
    PALETTE,
    VIEW_FILE,
    read_lineage_or_none,
    reducers_in,
    render_view,
    sorted_labels,
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
    # Several validation runs can share an epoch: each epoch's panel shows its last run.
    last_run = points.groupby("epoch")["val_index"].max()
    shown = points[points["val_index"].isin([last_run[e] for e in epochs if e in last_run])]
    lims = [(float(np.nanmin(shown[c])), float(np.nanmax(shown[c]))) for c in cols]
    lims = [(lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1)) for lo, hi in lims]
    has_label = "label" in points.columns
    labels = (sorted_labels(points["label"].astype(object).where(points["label"].notna(),
                                                                  "(missing)"))
              if has_label else [None])
    by_epoch = (metrics.sort_values("val_index").drop_duplicates("epoch", keep="last")
                .set_index("epoch") if metrics is not None and len(metrics) else None)

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
            on_skip: Callable[[str], None] = _warn) -> list[Path]:
    """Write ``view.html`` and ``compare_<reducer>.png`` per embedding set, and with clusters
    ``lineage_summary.csv`` (:func:`lineage_summary`); returns the paths.

    A set that lacks the asked reducer or epochs gets its view but no PNG (``on_skip`` says
    why); only when no set has them is it an error.

    Args:
        log_dir: the finished run's log dir (holding ``embproj/<NAME>/``), or one set's folder.
        output: folder for the results, one sub-folder per set.
        name: only this embedding set (default: every set found).
        epochs: epochs of the PNG (default: first, middle, last).
        reducer: layout of the PNG, e.g. ``"tsne"`` (default: the first of pca, tsne, umap
            present in each set).
        max_runs: most validation runs on the view's slider.
        on_skip: called with a message for each set whose PNG is skipped.
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"compare: log dir {str(root)!r} does not exist")
    found = find_sets(root)
    if not found:
        raise ValueError(f"compare: no embedding sets under {str(root)!r} "
                         "(expected embproj/<NAME>/val_*.csv)")
    if name is not None and name not in found:
        raise ValueError(f"compare: no embedding set {name!r} under {str(root)!r}; "
                         f"available: {', '.join(found)}")
    plans, problems = [], []
    for set_name in [name] if name is not None else list(found):  # check every set first
        path, arg = found[set_name]
        points = read_projections(path, arg)
        available = sorted({int(e) for e in points["epoch"]})
        chosen = default_epochs(available) if not epochs else [int(e) for e in epochs]
        unknown = [e for e in chosen if e not in available]
        reducers = list(reducers_in(points))
        r = reducer if reducer is not None else next(iter(reducers), None)
        problem = None
        if unknown:
            problem = (f"epochs {unknown} not in set {set_name!r}; available epochs: "
                       f"{available}")
        elif r not in reducers:
            problem = (f"reducer {reducer!r} not in set {set_name!r}; available: "
                       f"{', '.join(reducers)}")
        if problem:
            problems.append(problem)
        plans.append((set_name, path, arg, points, chosen, None if problem else r, problem))
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
