"""The view's data, encoded compactly: point metadata once, coordinates per run, quantised.

Pure functions from the local files' tables (``read_projections``, ``read_metrics``,
``read_lineage``) to one JSON-ready dict that the page's script decodes. Sizes at 20,000 points
x 50 runs x 2 reducers: coordinates are uint16 codes over each run's own range (2 bytes an axis,
base64; float32 or float64 for a run whose outliers would leave its bulk too few codes), static
texts are stored once as a dictionary plus int32 codes.

Example:
    >>> import pandas as pd
    >>> pts = pd.DataFrame({"sample_id": [1, 2, 1, 2], "val_index": [0, 0, 1, 1],
    ...                     "epoch": [0, 0, 1, 1], "step": [5, 5, 9, 9],
    ...                     "pca_x": [0.0, 1, 2, 3], "pca_y": [0.0, 1, 0, 1]})
    >>> data = encode_points(pts)
    >>> data["n"], [r["label"] for r in data["runs"]]
    (2, ['epoch 0 · step 5', 'epoch 1 · step 9'])
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from typing import Any

import numpy as np

from lightning_embproj.reduce.dispatch import REDUCERS as REDUCER_ORDER  # the one list of names

RESERVED = ("sample_id", "epoch", "step", "val_index")
RUN_FIELDS = (*RESERVED, "chain", "stage")  # a run's identity: neither metrics nor metadata
CATEGORICAL = ("label", "cluster", "dataloader_idx")  # always coloured as categories
MAX_CATEGORIES = 50  # a text column with more distinct values is shown, not coloured by
MAX_TEXT = 500  # characters kept of one text value (hover shows fewer)
MISSING = 65535  # uint16 code of a missing coordinate
LEVELS = 65534  # codes 0..65534 span each axis' range in one run
# Largest decode error allowed, as a fraction of a run's spread on that axis (the README
# promises 0.1%; the margin covers spreads measured on few points).
MAX_ERROR = 2.5e-4
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
    "#FF97FF", "#FECB52", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
IMAGE_URI = re.compile(r"data:image/(png|jpeg|webp);base64,[A-Za-z0-9+/]+={0,2}")

# Metric panels: (title, [(match, axis title)]); a metric joins the first panel whose rule
# matches. Metrics left over go to "other metrics".
UNITS = {
    "silhouette": "silhouette (−1..1)",
    "knn_accuracy": "kNN accuracy (fraction)",
    "trustworthiness": "trustworthiness (0..1)",
    "stability": "stability (Spearman, −1..1)",
    "drift/knn_overlap": "kNN neighbours kept (fraction)",
    "displacement": "displacement (× previous layout's RMS radius)",
    "clusters/count": "clusters (count)",
    "rankme": "RankMe (effective rank)",
    "uniformity": "uniformity (log E e^(−2d²); lower = more uniform)",
}


def _kind(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    if name.startswith("drift/") or last == "displacement":
        return "drift"
    if name.startswith("clusters/") or name == "cka_previous":
        return "clusters"
    if name in ("rankme", "uniformity"):
        return "health"
    if name in ("silhouette", "knn_accuracy") or last in ("trustworthiness", "stability"):
        return "scores"
    return "other"


PANELS = (
    ("scores", "Scores (0..1, higher is better)"),
    ("drift", "Drift & displacement since the previous run"),
    ("clusters", "Clusters"),
    ("health", "Embedding health"),
    ("other", "Other metrics"),
)


def b64(values: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of ``values`` as ``dtype``, base64 (decoded by typed arrays in JS)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


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


def thin_runs(runs: Any, max_runs: int) -> list[int]:
    """At most ``max_runs`` of the sorted run indices: the first, the last, evenly spaced between.

    >>> thin_runs(range(10), 4)
    [0, 3, 6, 9]
    """
    if max_runs < 2:
        raise ValueError(f"max_runs: expected an int >= 2, got {max_runs!r}")
    ordered = [int(e) for e in np.unique(np.asarray(list(runs) if not hasattr(runs, "__array__")
                                                    else runs))]
    if len(ordered) <= max_runs:
        return ordered
    idx = np.round(np.linspace(0, len(ordered) - 1, max_runs)).astype(int)
    return [ordered[i] for i in idx]


def sorted_labels(values: Any) -> list[Any]:
    """Distinct labels, numbers in numeric order, anything else by its text."""
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in distinct)
    return sorted(distinct, key=(lambda v: float(v)) if numeric else str)


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A value as one line of text, cut to ``limit`` characters (the page never parses it)."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    out = " ".join(str(value).split())
    return out if len(out) <= limit else out[: limit - 1] + "\u2026"


def run_column(points: Any) -> str:
    """The column that identifies a validation run: ``val_index`` (files from before it had
    one are keyed by ``epoch``)."""
    return "val_index" if "val_index" in points.columns else "epoch"


def point_keys(points: Any) -> Any:
    """One text key per point, equal across runs: ``sample_id``, or ``dataloader:sample_id``."""
    import pandas as pd

    codes, uniques = pd.factorize(points["sample_id"], use_na_sentinel=False)
    words = np.array([text(u, 200) for u in uniques] or [""], dtype=object)
    key = pd.Series(words[codes], index=points.index, dtype=object)
    if "dataloader_idx" in points.columns:
        key = points["dataloader_idx"].astype(str) + ":" + key
    return key


def spread(values: np.ndarray) -> float:
    """A run's spread on one axis: the range of its central 98% of points (an outlier row
    does not widen it), or the whole range where that is 0.

    >>> spread(np.r_[np.linspace(0, 1, 1000), 1e6])
    0.98...
    """
    lo, hi = np.percentile(values, [1, 99])
    return float(hi - lo) or float(values.max() - values.min())


def decode_run(run: dict[str, Any], dims: int) -> np.ndarray:
    """One encoded run back to (N, dims) float64, computed as the page's script does."""
    raw = base64.b64decode(run["data"])
    kind = run["enc"]
    if kind == "u2":
        q = np.frombuffer(raw, "<u2").reshape(-1, dims).astype(np.float64)
        lo = np.array([np.nan if v is None else v for v in run["lo"]])
        hi = np.array([np.nan if v is None else v for v in run["hi"]])
        out = lo + q * (hi - lo) / LEVELS
        out[q == MISSING] = np.nan
        return out
    q = np.frombuffer(raw, "<f4" if kind == "f4" else "<f8").reshape(-1, dims)
    return np.asarray(run["off"], dtype=np.float64) + q.astype(np.float64)


def encode_run(c: np.ndarray) -> dict[str, Any]:
    """One run's (N, dims) layout -> ``{"enc", "lo", "hi", "data"}`` (+ ``"off"`` for floats).

    ``enc`` is the smallest of ``u2`` (uint16 codes over this run's own [lo, hi] per axis;
    NaN -> MISSING), ``f4`` (float32 offsets from the run's median) and ``f8`` whose decode
    error is at most ``MAX_ERROR`` of the run's :func:`spread` on every axis. ``lo`` / ``hi``
    are each axis' finite min / max (``None`` without any): the page's axis ranges.
    """
    dims = c.shape[1]
    finite = np.isfinite(c)
    lo: list[float | None] = [None] * dims
    hi: list[float | None] = [None] * dims
    tol = np.zeros(dims)
    codes = np.full(c.shape, MISSING, dtype=np.uint16)
    for j in range(dims):
        ok = finite[:, j]
        if not ok.any():
            continue
        axis = c[ok, j]
        a, b = float(axis.min()), float(axis.max())
        lo[j], hi[j], tol[j] = a, b, MAX_ERROR * spread(axis)
        codes[ok, j] = np.round((axis - a) / ((b - a) or 1.0) * LEVELS).astype(np.uint16)

    def fits(run: dict[str, Any]) -> bool:
        err = np.abs(decode_run(run, dims) - c)
        return bool(np.all(np.where(finite, err, 0.0) <= tol))

    run = {"enc": "u2", "lo": lo, "hi": hi, "data": b64(codes, "<u2")}
    if fits(run):
        return run
    off = [float(np.median(c[finite[:, j], j])) if finite[:, j].any() else 0.0
           for j in range(dims)]
    run = {"enc": "f4", "lo": lo, "hi": hi, "off": off, "data": b64(c - np.array(off), "<f4")}
    if fits(run):
        return run
    return {"enc": "f8", "lo": lo, "hi": hi, "off": [0.0] * dims, "data": b64(c, "<f8")}


def _is_numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _column(name: str, values: Any, fi: np.ndarray, slot: np.ndarray, n_runs: int,
            n: int) -> dict[str, Any]:
    """One metadata column: numbers as float32, anything else as a dictionary of texts; stored
    once when no point's value changes between runs, else once per run."""
    import pandas as pd

    numeric = name not in CATEGORICAL and _is_numeric(values)
    if numeric:
        grid = np.full((n_runs, n), np.nan, dtype=np.float32)
        grid[fi, slot] = values.to_numpy(dtype=np.float32)
        fill: float = np.nan
    else:
        # list cells ((B, K) metadata) are unhashable: show them as their JSON text
        values = values.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        # One list of the unique objects for both lookups: iterating `uniques` again makes new
        # int / float objects (ids differ above 256), and factorize keeps 1, 1.0 and True apart
        # only by identity, so the objects themselves are the keys.
        found = list(uniques)
        distinct = sorted_labels(found)
        where = {id(v): i for i, v in enumerate(distinct)}
        order = np.array([where[id(u)] for u in found] + [-1], dtype=np.int64)
        words = [text(v) for v in distinct]
        # Codes in the smallest type that holds them: one byte a cell for up to 127 values.
        kind = "<i1" if len(words) < 128 else "<i2" if len(words) < 32768 else "<i4"
        grid = np.full((n_runs, n), -1, dtype=np.int32)
        grid[fi, slot] = order[codes]
        fill = -1
    # Static when every point has one value in all the runs it is in.
    present = grid if not numeric else np.where(np.isnan(grid), np.inf, grid)
    missing = (grid == -1) if not numeric else np.isnan(grid)
    hi = np.where(missing, -np.inf, present).max(axis=0)
    lo = np.where(missing, np.inf, present).min(axis=0)
    static = bool(np.all((hi == lo) | ~np.isfinite(hi)))
    if static:
        flat = np.where(np.isfinite(hi), hi, fill).astype(grid.dtype)
        data = b64(flat, "<f4" if numeric else kind)
    else:
        data = b64(grid, "<f4" if numeric else kind)
    out: dict[str, Any] = {"name": name, "kind": "num" if numeric else "cat",
                           "per_run": not static, "data": data,
                           "dtype": "f4" if numeric else kind[1:]}
    if not numeric:
        out["values"] = words
        out["colour"] = name in CATEGORICAL or len(words) <= MAX_CATEGORIES
    else:
        finite = grid[np.isfinite(grid)]
        out["range"] = [float(finite.min()), float(finite.max())] if finite.size else [0, 1]
        out["colour"] = True
    return out


def run_label(epoch: int, step: int, stage: str = "fit", chain: int | None = None) -> str:
    """A run's slider label: ``epoch E · step S``, then its stage when not ``fit`` and its chain
    when the page shows several.

    >>> run_label(3, 90, "validate", 1)
    'epoch 3 · step 90 · validate · chain 1'
    """
    parts = [f"epoch {epoch}", f"step {step}"]
    parts += [stage] if stage != "fit" else []
    parts += [f"chain {chain}"] if chain is not None else []
    return " \u00b7 ".join(parts)


def run_chains(points: Any, metrics: Any | None = None) -> dict[int, tuple[int, str]]:
    """Run -> (chain, stage), from the points' own ``chain`` / ``stage`` columns, else from the
    metrics rows (``read_metrics`` has them); runs found in neither are left out."""
    import pandas as pd

    out: dict[int, tuple[int, str]] = {}
    for table in (metrics, points):  # the points' own columns win
        if table is None or len(table) == 0 or "chain" not in table.columns:
            continue
        rc = run_column(table)
        stages = table["stage"] if "stage" in table.columns else ["fit"] * len(table)
        for run, chain, stage in zip(table[rc].tolist(), table["chain"].tolist(), stages,
                                     strict=True):
            if not pd.isna(chain):
                out[int(run)] = (int(chain), stage if isinstance(stage, str) else "fit")
    return out


def _chain_info(kept: list[int], chains: dict[int, tuple[int, str]]) -> list[tuple[int, str]]:
    """(chain, stage) of each kept run; a run without a record continues the run before it."""
    out, last = [], (0, "fit")
    for run in kept:
        last = chains.get(run, last)
        out.append(last)
    return out


def encode_points(points: Any, *, max_runs: int = 50, runs: list[int] | None = None,
                  keys: list[str] | None = None,
                  chains: dict[int, tuple[int, str]] | None = None) -> dict[str, Any]:
    """Points, metadata columns and per-run layouts of one embedding set.

    Args:
        points: ``read_projections``'s table: ``sample_id``, ``val_index``, ``epoch``,
            ``step``, metadata, ``label``, ``cluster``, ``R_x``/``R_y`` per reducer.
        max_runs: most runs kept (the first, the last and evenly spaced ones between).
        runs: keep exactly these runs (run column values), overriding ``max_runs``.
        keys: the point universe and its order (default: points in order of appearance).
        chains: run -> (chain, stage) (see :func:`run_chains`; default: the points' own
            ``chain`` / ``stage`` columns, else one chain of ``fit`` runs).

    Returns:
        ``{"n", "keys", "ids", "runs": [{val_index, epoch, step, chain, stage, start,
        label}], "columns", "reducers": {R: {"dims", "runs": [encode_run(...) per run]}}}``;
        ``start`` marks the first shown run of each chain.
    """
    import pandas as pd

    missing = [c for c in ("sample_id", "epoch") if c not in points.columns]
    reducers = reducers_in(points)
    if missing or not reducers or len(points) == 0:
        raise ValueError(
            "view: `points` needs rows with `sample_id`, `epoch` and at least one reducer's "
            f"R_x/R_y columns; got {len(points)} rows, columns {list(points.columns)}"
        )
    rc = run_column(points)
    kept = runs if runs is not None else thin_runs(points[rc], max_runs)
    df = points[points[rc].isin(kept)].sort_values(rc, kind="stable").reset_index(drop=True)
    kept = [int(v) for v in np.unique(df[rc].to_numpy())]
    first = df.drop_duplicates(rc).set_index(rc)
    info = _chain_info(kept, run_chains(points) if chains is None else chains)
    several = len({c for c, _ in info}) > 1
    run_info = []
    for k, (run, (chain, stage)) in enumerate(zip(kept, info, strict=True)):
        epoch = int(first.at[run, "epoch"])
        step = int(first.at[run, "step"]) if "step" in df else 0
        run_info.append({"val_index": run, "epoch": epoch, "step": step, "chain": chain,
                         "stage": stage, "start": k == 0 or info[k - 1][0] != chain,
                         "label": run_label(epoch, step, stage, chain if several else None)})
    key = point_keys(df)
    universe = list(dict.fromkeys(key)) if keys is None else list(keys)
    slot = pd.Index(universe).get_indexer(key)
    keep_rows = slot >= 0
    df, slot = df[keep_rows].reset_index(drop=True), slot[keep_rows]
    fi = df[rc].map({r: i for i, r in enumerate(kept)}).to_numpy(dtype=int)
    n = len(universe)
    ids = [""] * n
    last = pd.Series(np.arange(len(slot))).groupby(slot).last()  # a point's latest row
    sids = df["sample_id"].to_numpy(dtype=object)
    for k, row in zip(last.index.tolist(), last.tolist(), strict=True):
        ids[k] = text(sids[row], 200)
    layout_cols = {f"{r}_{a}" for r in reducers for a in "xyz"}
    meta = [c for c in df.columns if c not in RUN_FIELDS and c not in layout_cols]
    order = [c for c in ("label", "cluster", "dataloader_idx") if c in meta]
    columns = [_column(c, df[c], fi, slot, len(kept), n)
               for c in order + [c for c in meta if c not in order]]
    coded = {}
    for r, dims in reducers.items():
        xyz = np.full((len(kept), n, dims), np.nan, dtype=np.float64)
        for j, a in enumerate("xyz"[:dims]):
            xyz[fi, slot, j] = df[f"{r}_{a}"].to_numpy(dtype=np.float64)
        # Each run its own range: one shared range gave a run 1000x smaller than the largest
        # (or every run beside one with an outlier row) a few dozen distinct codes.
        coded[r] = {"dims": dims, "runs": [encode_run(xyz[f]) for f in range(len(kept))]}
    return {"n": n, "keys": universe, "ids": ids, "runs": run_info, "columns": columns,
            "reducers": coded}


def _finite(values: Any) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def encode_metrics(metrics: Any, runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metric curves grouped into panels by kind, each axis titled with its unit.

    Within a panel, metrics within [-1, 1] share the left axis; the others (counts, distances)
    take the right one, so a 0..1 score is never squashed by a count.

    >>> import pandas as pd
    >>> m = pd.DataFrame({"val_index": [0, 1], "epoch": [0, 1], "step": [5, 9],
    ...                   "silhouette": [0.1, 0.2], "pca/displacement": [None, 2.5]})
    >>> [p["title"] for p in encode_metrics(m)["panels"]]
    ['Scores (0..1, higher is better)', 'Drift & displacement since the previous run']
    """
    empty: dict[str, Any] = {"x": [], "runs": [], "panels": [], "starts": []}
    if metrics is None or len(metrics) == 0 or "epoch" not in metrics.columns:
        return empty
    import pandas as pd

    rc = run_column(metrics)
    metrics = metrics.sort_values(rc, kind="stable").drop_duplicates(rc, keep="last")
    runs_x = [int(v) for v in metrics[rc]]
    info = _chain_info(runs_x, run_chains(metrics))
    several = len({c for c, _ in info}) > 1
    steps = metrics["step"].tolist() if "step" in metrics.columns else [0] * len(metrics)
    labels = [run_label(int(e), int(s), stage, chain if several else None)
              for e, s, (chain, stage) in zip(metrics["epoch"].tolist(), steps, info, strict=True)]
    # Before a chain's first run: a gap (x between the runs, y None) so that no curve joins
    # two chains, and a marker line.
    x: list[float] = []
    rows: list[int | None] = []  # the metrics row of each x, None for a gap
    starts = []
    for k, run in enumerate(runs_x):
        if k and info[k][0] != info[k - 1][0]:
            x.append(run - 0.5)
            rows.append(None)
            starts.append({"x": run - 0.5, "chain": info[k][0], "stage": info[k][1]})
        x.append(run)
        rows.append(k)

    def spaced(column: list[Any]) -> list[Any]:
        return [None if k is None else column[k] for k in rows]

    values = {c: pd.to_numeric(metrics[c], errors="coerce").to_numpy(dtype=float)
              for c in metrics.columns if c not in RUN_FIELDS}
    cols = [c for c, v in values.items() if np.isfinite(v).any()]  # skip empty or text columns
    panels = []
    for kind, title in PANELS:
        names = [c for c in cols if _kind(c) == kind]
        if not names:
            continue
        bounded = [c for c in names
                   if np.abs(values[c][np.isfinite(values[c])]).max() <= 1.0 + 1e-9]
        if kind == "drift":  # overlap fractions left, displacements right, whatever their size
            bounded = [c for c in names if c.startswith("drift/")]
        if kind in ("scores", "health"):  # health: RankMe left, uniformity (log, < 0) right
            bounded = [c for c in names if c != "uniformity"]
        if not bounded:  # one axis only: it is the left one
            bounded = names
        axes = []
        for side, group in (("left", bounded), ("right", [c for c in names if c not in bounded])):
            if not group:
                continue
            units = list(dict.fromkeys(UNITS.get(c, UNITS.get(c.rsplit("/", 1)[-1], ""))
                                       for c in group))
            unit = " · ".join(u for u in units if u) or (
                "value (−1..1)" if side == "left" else "value")
            if kind == "clusters" and side == "left" and "clusters/count" not in group:
                unit = "agreement (ARI / NMI / CKA, 1 = same)"
            if kind == "scores":
                unit = "score (unitless, 1 = best)"
            axes.append({"side": side, "title": unit,
                         "series": [{"name": c, "y": spaced(_finite(values[c]))}
                                    for c in group]})
        panels.append({"kind": kind, "title": title, "axes": axes})
    return {"x": x, "runs": [lab or "" for lab in spaced(labels)], "panels": panels,
            "starts": starts}


def _from_list(value: Any) -> list[str]:
    """``from_clusters`` as written by any sink: a list, ``"1;2"``, ``"[1, 2]"`` or empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [text(v, 40) for v in value]
    return re.findall(r"-?\d+|[A-Za-z_][\w.-]*", str(value))


def encode_lineage(lineage: Any, points: Any, runs: list[dict[str, Any]],
                   max_runs: int = 20) -> dict[str, Any] | None:
    """Sankey nodes (a cluster in a run) and flows (members shared with the previous run).

    Flows count the tracked points that are in cluster ``a`` at one shown run and in ``b`` at
    the next of the same chain, from the ``cluster`` column; without it, a lineage row's
    ``size`` is split evenly over its ``from_clusters``. Node hover: run, size, event, top
    labels. Only the last ``max_runs`` shown runs are drawn; a run alone in its chain (a
    ``validate()`` after ``fit()``) has no flows and is listed in ``alone`` instead. ``None``
    without lineage rows.
    """
    if lineage is None or len(lineage) == 0 or "cluster" not in lineage.columns:
        return None
    rc = run_column(lineage)
    if rc not in lineage.columns:
        return None
    chain_of = {r["val_index"]: r.get("chain", 0) for r in runs}
    per_chain = Counter(chain_of.values())
    lone = [r for r in chain_of if per_chain[chain_of[r]] == 1] if len(runs) > 1 else []
    drawn = [r for r in chain_of if r not in lone]
    shown = drawn[-max_runs:]
    label_of = {r["val_index"]: r["label"] for r in runs}
    rows = lineage[lineage[rc].isin(shown)]
    if len(rows) == 0:
        return None
    node_of: dict[tuple[int, str], int] = {}
    nodes: dict[str, list[Any]] = {"label": [], "hover": [], "x": [], "y": []}
    has_members = points is not None and "cluster" in points.columns
    pts = points[points[run_column(points)].isin(shown)] if has_members else None
    for k, run in enumerate(shown):
        here = rows[rows[rc] == run]
        # A `vanish` row names a cluster of the previous run: it annotates that run's node.
        alive = here[here.get("event", "") != "vanish"] if "event" in here else here
        clusters = list(dict.fromkeys(text(c, 40) for c in alive["cluster"]))
        for i, c in enumerate(clusters):
            mine = alive[alive["cluster"].map(lambda v: text(v, 40)) == c]
            events = ", ".join(dict.fromkeys(text(e, 20) for e in mine.get("event", [])))
            size = text(mine["size"].max(), 20) if "size" in mine else ""
            top = ""
            if pts is not None and "label" in pts.columns:
                members = pts[(pts[run_column(pts)] == run)
                              & (pts["cluster"].map(lambda v: text(v, 40)) == c)]
                counts = members["label"].map(lambda v: text(v, 24)).value_counts().head(3)
                top = ", ".join(f"{lab} ({cnt})" for lab, cnt in counts.items())
            node_of[(run, c)] = len(nodes["label"])
            nodes["label"].append(c)
            nodes["hover"].append(
                [f"cluster {c}", label_of.get(run, f"run {run}"), f"size {size}",
                 f"event {events}"] + ([f"top labels: {top}"] if top else []))
            nodes["x"].append(0.001 + 0.998 * k / max(len(shown) - 1, 1))
            nodes["y"].append(0.001 + 0.998 * (i + 0.5) / max(len(clusters), 1))
    links: dict[str, list[Any]] = {"source": [], "target": [], "value": []}
    for prev, run in zip(shown, shown[1:], strict=False):
        if chain_of[prev] != chain_of[run]:
            continue  # a new chain's clusters do not come from the previous chain's
        if pts is not None:
            rcp = run_column(pts)
            a = pts[pts[rcp] == prev].assign(_k=lambda d: point_keys(d))
            b = pts[pts[rcp] == run].assign(_k=lambda d: point_keys(d))
            both = a[["_k", "cluster"]].merge(b[["_k", "cluster"]], on="_k")
            flows = both.groupby(["cluster_x", "cluster_y"]).size()
            for (ca, cb), cnt in flows.items():
                s, t = node_of.get((prev, text(ca, 40))), node_of.get((run, text(cb, 40)))
                if s is not None and t is not None:
                    links["source"].append(s)
                    links["target"].append(t)
                    links["value"].append(int(cnt))
        else:
            for _, row in rows[rows[rc] == run].iterrows():
                if row.get("event") == "vanish":
                    continue
                sources = _from_list(row.get("from_clusters"))
                t = node_of[(run, text(row["cluster"], 40))]
                for f in sources:
                    s = node_of.get((prev, f))
                    if s is not None:
                        links["source"].append(s)
                        links["target"].append(t)
                        members = float(row.get("size", 1) or 1)
                        links["value"].append(members / len(sources))
    return {"nodes": nodes, "links": links, "runs": [label_of.get(r, "") for r in shown],
            "clipped": len(drawn) > len(shown), "alone": [label_of[r] for r in lone]}


def encode_images(images: dict[str, str] | None, keys: list[str]) -> dict[str, str]:
    """Point index (as text) -> thumbnail data URI, for the points in ``keys``; anything that
    is not a base64 PNG/JPEG/WebP data URI is dropped (the page only shows images it embeds)."""
    if not images:
        return {}
    index = {k: i for i, k in enumerate(keys)}
    return {str(index[k]): uri for k, uri in images.items()
            if k in index and isinstance(uri, str) and IMAGE_URI.fullmatch(uri)}
