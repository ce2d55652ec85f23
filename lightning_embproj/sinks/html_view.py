"""A self-contained HTML page with an epoch slider over one embedding set's local files.

The page needs no network: plotly.js is inlined and a Content-Security-Policy forbids any fetch.
Every string from the user's data is HTML-escaped before plotly sees it (plotly renders a subset
of HTML in hover and legend text).

Example:
    >>> from lightning_embproj.sinks.html_view import write_view
    >>> write_view("lightning_logs/version_0", "embeddings")     # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/view.html')
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.sinks.local import (
    atomic_write_text,
    list_epochs,
    read_metrics,
    read_projections,
    set_dir,
)

VIEW_FILE = "view.html"
RESERVED = ("sample_id", "epoch", "step", "dataloader_idx", "label")
REDUCER_ORDER = ("pca", "tsne", "umap")
MAX_TEXT = 80  # characters of a hover value before it is cut with an ellipsis
# Plotly's default ten, then tab10: twenty distinct label colours before they repeat.
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
    "#FF97FF", "#FECB52", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
NO_LABEL = "points"
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; form-action 'none'"
)


def reducers_in(points: Any) -> dict[str, int]:
    """Reducer name -> number of dimensions, from the ``R_x``/``R_y`` (``R_z``) columns.

    >>> import pandas as pd
    >>> reducers_in(pd.DataFrame(columns=["sample_id", "tsne_x", "tsne_y", "pca_x", "pca_y"]))
    {'pca': 2, 'tsne': 2}
    """
    cols = set(points.columns)
    found = {c[:-2]: 3 if f"{c[:-2]}_z" in cols else 2
             for c in points.columns if c.endswith("_x") and f"{c[:-2]}_y" in cols}
    known = [r for r in REDUCER_ORDER if r in found]
    return {r: found[r] for r in known + [r for r in found if r not in known]}


def thin_epochs(epochs: Any, max_epochs: int) -> list[int]:
    """At most ``max_epochs`` of the sorted epochs: the first, the last, evenly spaced between.

    >>> thin_epochs(range(10), 4)
    [0, 3, 6, 9]
    """
    if max_epochs < 2:
        raise ValueError(f"max_epochs: expected an int >= 2, got {max_epochs!r}")
    ordered = sorted({int(e) for e in epochs})
    if len(ordered) <= max_epochs:
        return ordered
    idx = np.round(np.linspace(0, len(ordered) - 1, max_epochs)).astype(int)
    return [ordered[i] for i in idx]


def sorted_labels(values: Any) -> list[Any]:
    """Distinct labels, numbers in numeric order, anything else by its text."""
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in distinct)
    return sorted(distinct, key=(lambda v: float(v)) if numeric else str)


def esc(value: Any, limit: int = MAX_TEXT) -> str:
    """Text safe to give plotly: one line, cut to ``limit`` characters, then HTML-escaped."""
    if isinstance(value, (float, np.floating)):
        text = "" if np.isnan(value) else f"{value:.4g}"
    else:
        text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    # quote=False: plotly shows `&quot;` verbatim, and with `<` escaped no tag can open.
    return html.escape(text, quote=False)


def _b64(values: np.ndarray) -> dict[str, str]:
    """A plotly.js typed array: 4 bytes a coordinate instead of ~18 characters of JSON."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return {"dtype": "f4", "bdata": base64.b64encode(data).decode("ascii")}


def _hover_texts(df: Any, meta: list[str]) -> np.ndarray:
    """``name: value`` lines per row; each distinct value is escaped once (runs repeat them)."""
    cols = ["sample_id"] + [c for c in ("dataloader_idx", "label") if c in df.columns] + meta
    out = None
    for col in cols:
        values = df[col].astype(object)
        cache = {v: esc(v) for v in values.unique()}
        part = f"{esc(col, 40)}: " + values.map(cache)
        out = part if out is None else out + "<br>" + part
    assert out is not None
    return out.to_numpy(dtype=object)


def _range(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo) or 1.0
    return [lo - pad, hi + pad]


def _metric_panels(metrics: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Curves of every metric column; scores within [-1, 1] on top, the rest (drift) below."""
    if metrics is None or len(metrics) == 0 or "epoch" not in metrics.columns:
        return [], []
    import pandas as pd

    metrics = metrics.sort_values("epoch")
    values = {c: pd.to_numeric(metrics[c], errors="coerce").to_numpy(dtype=float)
              for c in metrics.columns if c not in ("epoch", "step")}
    cols = [c for c, v in values.items() if np.isfinite(v).any()]  # skip empty or text columns
    bounded = [c for c in cols if np.abs(values[c][np.isfinite(values[c])]).max() <= 1.0]
    groups = [g for g in (bounded, [c for c in cols if c not in bounded]) if g]
    traces = []
    for i, group in enumerate(groups):
        for c in group:
            traces.append({
                "type": "scatter", "mode": "lines+markers", "name": esc(c, 40),
                "x": metrics["epoch"].tolist(),
                "y": [float(v) if np.isfinite(v) else None for v in values[c]],
                "xaxis": f"x{i + 2}", "yaxis": f"y{i + 2}", "legend": "legend2",
                "hovertemplate": f"{esc(c, 40)}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>",
            })
    return traces, [f"x{i + 2}" for i in range(len(groups))]


def figure_dict(points: Any, metrics: Any | None, *, max_epochs: int = 50) -> dict[str, Any]:
    """The plotly figure (a plain dict with ``frames``) behind :func:`render_view`."""
    missing = [c for c in ("sample_id", "epoch") if c not in points.columns]
    reducers = reducers_in(points)
    if missing or not reducers or len(points) == 0:
        raise ValueError(
            "render_view: `points` needs rows with `sample_id`, `epoch` and at least one "
            f"reducer's R_x/R_y columns; got {len(points)} rows, columns {list(points.columns)}"
        )
    epochs = thin_epochs(points["epoch"], max_epochs)
    df = points[points["epoch"].isin(epochs)].reset_index(drop=True)
    three_d = max(reducers.values()) == 3
    axes = "xyz"[: 3 if three_d else 2]
    layout_cols = {f"{r}_{a}" for r in reducers for a in "xyz"}
    meta = [c for c in df.columns if c not in RESERVED and c not in layout_cols]
    has_label = "label" in df.columns
    if has_label:
        df["label"] = df["label"].astype(object).where(df["label"].notna(), "(missing)")

    # One trace per label; a point keeps one slot (its place in that trace) in every frame, so
    # plotly's `ids` move it from epoch to epoch. A point absent from an epoch is NaN (hidden).
    key = df["sample_id"].astype(str)
    if "dataloader_idx" in df.columns:
        key = df["dataloader_idx"].astype(str) + ":" + key
    labels = sorted_labels(df["label"]) if has_label else [NO_LABEL]
    label_idx = (df["label"].map({v: i for i, v in enumerate(labels)}).to_numpy(dtype=int)
                 if has_label else np.zeros(len(df), dtype=int))
    row_pairs = list(zip(label_idx.tolist(), key.tolist(), strict=True))
    pairs = sorted(dict.fromkeys(row_pairs), key=lambda p: p[0])
    slot_of = {p: i for i, p in enumerate(pairs)}
    slot = np.array([slot_of[p] for p in row_pairs])
    bounds = np.searchsorted([p[0] for p in pairs], np.arange(len(labels) + 1))
    fi = df["epoch"].map({e: i for i, e in enumerate(epochs)}).to_numpy(dtype=int)

    texts = _hover_texts(df, meta)
    last = np.empty(len(pairs), dtype=object)
    last[slot] = texts  # rows are in epoch order: the latest epoch's text wins
    # Hover texts go into every frame only when some value changes between epochs.
    frame_texts = None
    if np.any(last[slot] != texts):
        frame_texts = np.full((len(epochs), len(pairs)), "", dtype=object)
        frame_texts[fi, slot] = texts
    coords: dict[str, np.ndarray] = {}
    for r, dims in reducers.items():
        c = np.full((len(epochs), len(pairs), len(axes)), np.nan, dtype=np.float32)
        for j, a in enumerate(axes):
            c[fi, slot, j] = df[f"{r}_{a}"].to_numpy(dtype=np.float32) if j < dims else 0.0
        coords[r] = c

    def trace_data(r: str, g: int, f: int) -> dict[str, Any]:
        lo, hi = bounds[g], bounds[g + 1]
        out: dict[str, Any] = {a: _b64(coords[r][f, lo:hi, j]) for j, a in enumerate(axes)}
        if frame_texts is not None:
            out["text"] = frame_texts[f, lo:hi].tolist()
        return out

    scatter = [{
        "type": "scatter3d" if three_d else "scatter", "mode": "markers",
        "name": esc(lab, 24), "visible": n == 0, "hovertemplate": "%{text}<extra></extra>",
        "ids": [str(i) for i in range(bounds[g], bounds[g + 1])],
        "text": last[bounds[g]:bounds[g + 1]].tolist(),
        "marker": {"color": PALETTE[g % len(PALETTE)], "size": 3 if three_d else 6,
                   "opacity": 0.8},
        **trace_data(r, g, len(epochs) - 1),
    } for n, r in enumerate(reducers) for g, lab in enumerate(labels)]
    metric_traces, metric_axes = _metric_panels(metrics)

    def ranges(r: str) -> dict[str, Any]:
        pre = "scene." if three_d else ""
        out: dict[str, Any] = {}
        for j, a in enumerate(axes):
            out[f"{pre}{a}axis.range"] = _range(coords[r][..., j])
            out[f"{pre}{a}axis.title.text"] = esc(f"{r}_{a}")
        return out

    def marks(epoch: int) -> list[dict[str, Any]]:
        return [{"type": "line", "xref": ax, "yref": f"y{ax[1:]} domain", "x0": epoch,
                 "x1": epoch, "y0": 0, "y1": 1, "line": {"color": "#555", "dash": "dot"}}
                for ax in metric_axes]

    split = 0.56 if metric_axes else 0.86
    layout: dict[str, Any] = {
        "hovermode": "closest", "margin": {"t": 60, "l": 50}, "shapes": marks(epochs[-1]),
        # Labels in rows above the scatter, above the reducer buttons: a vertical legend at
        # the scatter's right edge overlapped the points in plotly.js 3.
        "legend": {"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.1,
                   "yanchor": "bottom", "itemsizing": "constant",
                   "title": {"text": "label" if has_label else ""}},
    }
    for k, v in ranges(next(iter(reducers))).items():
        *path, leaf = k.split(".")
        node = layout
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = v
    if three_d:
        layout["scene"].update({"domain": {"x": [0, split], "y": [0, 1]}, "aspectmode": "cube"})
    else:
        layout["xaxis"].update({"domain": [0, split], "zeroline": False})
        layout["yaxis"].update({"zeroline": False})
    for i, ax in enumerate(metric_axes):
        top = 1 - i / len(metric_axes)
        layout[f"xaxis{ax[1:]}"] = {"domain": [0.8, 1], "anchor": f"y{ax[1:]}",
                                    "title": {"text": "epoch"}}
        layout[f"yaxis{ax[1:]}"] = {"domain": [top - 1 / len(metric_axes) + 0.08, top - 0.02],
                                    "anchor": ax, "title": {"text": ["score", "drift"][i]}}
    if metric_axes:
        layout["legend2"] = {"x": 0.8, "y": -0.12, "yanchor": "top", "orientation": "h"}
    # Moving the epoch marker on the metric panels needs a redraw; 3-D scenes always do.
    redraw = three_d or bool(metric_axes)
    step = {"mode": "immediate", "frame": {"duration": 0, "redraw": redraw},
            "transition": {"duration": 300}}
    play = {"frame": {"duration": 700, "redraw": redraw}, "transition": {"duration": 400},
            "fromcurrent": False, "mode": "immediate"}
    stop = {"frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0},
            "mode": "immediate"}
    n_scatter = len(scatter)
    layout["sliders"] = [{
        "active": len(epochs) - 1, "x": 0.08, "len": split - 0.08, "y": 0, "yanchor": "top",
        "currentvalue": {"prefix": "epoch "}, "pad": {"t": 40},
        "steps": [{"label": str(e), "method": "animate", "args": [[str(e)], step]}
                  for e in epochs],
    }]
    layout["updatemenus"] = [
        {"type": "buttons", "direction": "left", "x": 0.0, "y": 0, "xanchor": "left",
         "yanchor": "top", "pad": {"t": 55},
         "buttons": [{"label": "\u25b6", "method": "animate", "args": [None, play]},
                     {"label": "\u275a\u275a", "method": "animate", "args": [[None], stop]}]},
        {"type": "buttons", "direction": "right", "x": 0.0, "y": 1.08, "xanchor": "left",
         "showactive": True, "active": 0,
         "buttons": [{"label": esc(r, 20), "method": "update", "args": [
             {"visible": [k // len(labels) == n for k in range(n_scatter)]
              + [True] * len(metric_traces)}, ranges(r)]} for n, r in enumerate(reducers)]},
    ]
    frames = [{"name": str(e), "traces": list(range(n_scatter)), "layout": {"shapes": marks(e)},
               "data": [trace_data(r, g, f) for r in reducers for g in range(len(labels))]}
              for f, e in enumerate(epochs)]
    return {"data": scatter + metric_traces, "layout": layout, "frames": frames}


def render_view(
    points: Any, metrics: Any | None, *, title: str, max_epochs: int = 50,
    n_epochs: int | None = None,
) -> str:
    """The HTML page (a string) for one embedding set's points and per-epoch metrics.

    Args:
        points: the table of ``read_projections``: ``sample_id``, ``epoch``, metadata,
            ``label``, ``R_x``, ``R_y`` (``R_z``) per reducer; one row per point per epoch.
        metrics: the table of ``read_metrics`` (one row per epoch) or ``None``.
        title: shown as the page's heading.
        max_epochs: most animation frames; longer runs keep the first and the last epoch and
            epochs evenly spaced between.
        n_epochs: epochs in the run when ``points`` holds only the shown ones (for the note).

    >>> page = render_view(read_projections("logs"), None, title="run 1")   # doctest: +SKIP
    """
    try:
        import plotly.io as pio
    except ImportError as err:
        raise ImportError(
            'The HTML view needs plotly: pip install "lightning-embproj[view]"'
        ) from err
    fig = figure_dict(points, metrics, max_epochs=max_epochs)
    div = pio.to_html(
        fig, include_plotlyjs=True, full_html=False, auto_play=False, validate=False,
        div_id="embproj-view", default_height="85vh",
        # plotly.js shows a "Share chart" button that uploads the data to Plotly Cloud: never.
        config={"displaylogo": False, "responsive": True, "showSendToCloud": False,
                "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud"]},
        post_script="document.getElementById('{plot_id}').dataset.ready = '1';",
    )
    n_shown = len(fig["frames"])
    n_all = max(n_epochs or 0, points["epoch"].nunique())
    shown = (f"showing {n_shown} of {n_all} epochs (max_epochs={max_epochs}: the first, the "
             "last and evenly spaced epochs between)" if n_shown < n_all else f"{n_all} epochs")
    reducers = ", ".join(esc(r) for r in reducers_in(points))
    note = (f"{shown}; reducers: {reducers}. Drag the slider or press \u25b6 to watch the "
            "layout change epoch by epoch; hover a point for its data.")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{esc(title, 200)}</title>\n"
        "<style>body{font-family:sans-serif;margin:8px 16px}h1{font-size:20px;margin:4px 0}"
        "#embproj-note{color:#555;font-size:13px;margin:2px 0 6px}</style>\n"
        f'</head><body>\n<h1>{esc(title, 200)}</h1>\n<p id="embproj-note">{note}</p>\n'
        f"{div}\n</body></html>\n"
    )


def write_view(root: str | os.PathLike[str], name: str, *, max_epochs: int = 50) -> Path:
    """Render set ``name``'s local files to ``<root>/embproj/<name>/view.html``; returns it.

    Only the epochs the slider shows are read (at most ``max_epochs`` files), so rewriting the
    view after every epoch costs the same at epoch 1,000 as at epoch 50.

    >>> write_view("lightning_logs/version_0", "embeddings")     # doctest: +SKIP
    """
    epochs = list_epochs(root, name)
    points = read_projections(root, name, epochs=thin_epochs(epochs, max_epochs))
    metrics = read_metrics(root, name)
    page = render_view(points, metrics, title=f"{name} \u2014 {Path(root).name}",
                       max_epochs=max_epochs, n_epochs=len(epochs))
    path = set_dir(root, name) / VIEW_FILE
    atomic_write_text(path, page)
    return path
