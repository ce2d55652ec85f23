"""The HTML view of one embedding set: a self-contained page with a validation-run slider.

Modules: :mod:`.encode` (pure: tables -> compact JSON-ready data; :mod:`.coords` the layouts'
codes, :mod:`.metric_panels`, :mod:`.lineage`), :mod:`.page` (the HTML with plotly.js and the
script inlined, strict CSP), :mod:`.assets` (the shipped ``static/view.html``, ``view.css``,
``view.js``), :mod:`.images` (the optional ``images.json`` thumbnails), :mod:`.history` (the
runs the view shows, kept in memory) and :mod:`.sink` (the view sink of a fit: renders from that
history). :func:`write_view` renders a set's local files instead, after the fact (as ``compare``
does). Colours come from :mod:`lightning_embproj.sinks.palette`, as in every other picture.

Example:
    >>> from lightning_embproj.sinks.view import write_view
    >>> write_view("lightning_logs/version_0", "embeddings")     # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/view.html')
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from lightning_embproj.sinks.view.encode import (
    encode_images,
    encode_points,
    reducers_in,
    run_chains,
    run_column,
    sorted_labels,
    thin_runs,
)
from lightning_embproj.sinks.view.images import read_images, write_thumbnails
from lightning_embproj.sinks.view.lineage import encode_lineage
from lightning_embproj.sinks.view.metric_panels import encode_metrics
from lightning_embproj.sinks.view.page import CSP, render_page

VIEW_FILE = "view.html"

__all__ = ["CSP", "VIEW_FILE", "build_payload", "reducers_in", "render_view",
           "sorted_labels", "thin_runs", "write_view"]


def default_colour(columns: list[dict[str, Any]]) -> str:
    """Colour by label, else by cluster, else by the first colourable column, else nothing."""
    names = [c["name"] for c in columns if c.get("colour")]
    return next((c for c in ("label", "cluster") if c in names), names[0] if names else "")


def build_payload(points: Any, metrics: Any | None, *, title: str, max_runs: int = 50,
                  n_runs: int | None = None, lineage: Any | None = None,
                  images: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the page draws, as plain JSON-ready data (see :func:`render_view`)."""
    data = encode_points(points, max_runs=max_runs, chains=run_chains(points, metrics))
    shown = len(data["runs"])
    total = max(n_runs or 0, points[run_column(points)].nunique())
    what = (f"showing {shown} of {total} validation runs (max_runs={max_runs}: the first, the "
            "last and evenly spaced runs between)" if shown < total
            else f"{total} validation run{'s' * (total != 1)}")
    chains = sum(r["start"] for r in data["runs"])
    apart = (f" The runs form {chains} chains (every fit / validate call starts one): runs of "
             "one chain are aligned to each other, a new chain's layout is independent, so "
             "trails, 'moved' and the axes start afresh at each marked chain start."
             if chains > 1 else "")
    note = (f"{what}; {data['n']} tracked points; reducers: {', '.join(data['reducers'])}. "
            "Drag the slider or press play to watch the layout change run by run; hover a "
            "point for its data; click, lasso or search to follow points." + apart)
    thumbs = encode_images(images, data["keys"])
    return {
        "title": title, "note": note,
        "colour": default_colour(data["columns"]),
        "points": {k: v for k, v in data.items() if k != "reducers"},
        "panels": [{"title": "", "reducers": data["reducers"]}],
        "metrics": encode_metrics(metrics),
        "lineage": encode_lineage(lineage, points, data["runs"]),
        "images": thumbs, "tables": None,
    }


def render_view(points: Any, metrics: Any | None, *, title: str, max_runs: int = 50,
                n_runs: int | None = None, lineage: Any | None = None,
                images: dict[str, str] | None = None) -> str:
    """The HTML page (a string) of one embedding set.

    Args:
        points: ``read_projections``'s table: one row per point per validation run.
        metrics: ``read_metrics``'s table (one row per validation run) or ``None``.
        title: the page's heading.
        max_runs: most runs on the slider: the first, the last and evenly spaced ones between.
        n_runs: runs in the whole set when ``points`` holds only the shown ones (for the note).
        lineage: ``read_lineage``'s table, or ``None`` (no lineage panel).
        images: point key -> thumbnail data URI (see :mod:`.images`), or ``None``.

    >>> page = render_view(read_projections("logs"), None, title="run 1")   # doctest: +SKIP
    """
    payload = build_payload(points, metrics, title=title, max_runs=max_runs, n_runs=n_runs,
                            lineage=lineage, images=images)
    return render_page(payload, panels=1)


def read_lineage_or_none(root: str | os.PathLike[str], name: str | None) -> Any | None:
    """The set's cluster lineage table, or ``None`` when there is none."""
    from lightning_embproj.readers import read_lineage

    try:
        table = read_lineage(root, name)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return table if table is not None and len(table) else None


def check_writable(folder: Path) -> None:
    """Raise the OS's own error when ``folder`` cannot take a file (read-only, a file in the
    way, no permission): the view reads the CSV files first, and their absence would hide the
    cause."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def write_view(root: str | os.PathLike[str], name: str, *, max_runs: int = 50,
               projection: Any | None = None) -> Path:
    """Render set ``name``'s local files to ``<root>/embproj/<name>/view.html``; returns it.

    For a folder after training: the view sink of a fit renders from its own history, never
    from these files. Only the runs the slider shows are read (at most ``max_runs`` files).
    With ``projection`` (a run) holding an image column, its thumbnails are added to
    ``images.json``.

    >>> write_view("lightning_logs/version_0", "embeddings")     # doctest: +SKIP
    """
    from lightning_embproj.readers import list_validations, read_metrics, read_projections
    from lightning_embproj.sinks.local import atomic_write_text, set_dir

    folder = set_dir(root, name)
    check_writable(folder)
    if projection is not None:
        try:
            write_thumbnails(folder, projection)
        except Exception as err:  # noqa: BLE001 - thumbnails are optional, the view is not
            warnings.warn(f"lightning-embproj: no thumbnails for {name!r}: {err}", stacklevel=2)
    runs = [int(v[0]) for v in list_validations(root, name)]
    points = read_projections(root, name, validations=thin_runs(runs, max_runs))
    page = render_view(points, read_metrics(root, name), title=f"{name} \u2014 {Path(root).name}",
                       max_runs=max_runs, n_runs=len(runs),
                       lineage=read_lineage_or_none(root, name), images=read_images(folder))
    path = folder / VIEW_FILE
    atomic_write_text(path, page)
    return path
