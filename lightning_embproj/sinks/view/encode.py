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

import json
import re
from typing import Any

import numpy as np

from lightning_embproj.reduce.dispatch import REDUCERS as REDUCER_ORDER  # the one list of names
from lightning_embproj.sinks import palette
from lightning_embproj.sinks.columns import motion_columns
from lightning_embproj.sinks.view.coords import (  # noqa: F401 - re-exported: the page's codes
    LEVELS,
    MISSING,
    b64,
    decode_run,
    encode_run,
)

RESERVED = ("sample_id", "epoch", "step", "val_index")
RUN_FIELDS = (*RESERVED, "chain", "stage")  # a run's identity: neither metrics nor metadata
CATEGORICAL = ("label", "cluster", "dataloader_idx")  # always coloured as categories
MAX_TEXT = 500  # characters kept of one text value (hover shows fewer)
IMAGE_URI = re.compile(r"data:image/(png|jpeg|webp);base64,[A-Za-z0-9+/]+={0,2}")


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


def _is_numeric(name: str, series: Any) -> bool:
    """Drawn on a number scale: real-valued numbers, and integers with more distinct values
    than :data:`~lightning_embproj.sinks.palette.MAX_CATEGORIES`; bools, texts and few
    integers (digits 0-9) are categories, as are ``label``, ``cluster``, ``dataloader_idx``."""
    import pandas as pd

    if name in CATEGORICAL or not pd.api.types.is_numeric_dtype(series):
        return False
    return not (pd.api.types.is_bool_dtype(series) or palette.is_categorical(pd.unique(series)))


def category_colours(distinct: list[Any], grid: np.ndarray) -> dict[str, Any]:
    """Colours of a categorical column's values (codes into ``distinct``; ``grid`` holds the
    codes per run and point, -1 for none), from :mod:`~lightning_embproj.sinks.palette`.

    ``{"colours": [one per value]}`` when every run's values get the same colours; else also
    ``"run_colours"``, one such list per run (two values sharing a home colour in one run).
    """
    def for_codes(codes: np.ndarray) -> list[str]:
        return palette.colours(distinct, palette.colour_map([distinct[k] for k in codes]))

    every = for_codes(np.unique(grid[grid >= 0]))
    per_run = [for_codes(np.unique(row[row >= 0])) for row in grid]
    if all(run == every for run in per_run):
        return {"colours": every}
    return {"colours": every, "run_colours": per_run}


def _codes(values: Any) -> tuple[np.ndarray, list[Any]]:
    """Each value's code into the distinct values (numbers in numeric order), -1 for none."""
    import pandas as pd

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
    return order[codes], distinct


def _column(name: str, values: Any, fi: np.ndarray, slot: np.ndarray, n_runs: int,
            n: int, per_run: bool = False) -> dict[str, Any]:
    """One metadata column: numbers as float32, anything else as a dictionary of texts (with
    their colours); stored once when no point's value changes between runs (and not
    ``per_run``: a value that is empty in some runs, as motion is), else per run."""
    numeric = _is_numeric(name, values)
    if numeric:
        grid = np.full((n_runs, n), np.nan, dtype=np.float32)
        grid[fi, slot] = values.to_numpy(dtype=np.float32)
        fill: float = np.nan
        missing = np.isnan(grid)
        present = np.where(missing, np.inf, grid)
    else:
        codes, distinct = _codes(values)
        grid = np.full((n_runs, n), -1, dtype=np.int32)
        grid[fi, slot] = codes
        fill = -1
        missing, present = grid == -1, grid
    # Static when every point has one value in all the runs it is in.
    hi = np.where(missing, -np.inf, present).max(axis=0)
    lo = np.where(missing, np.inf, present).min(axis=0)
    static = not per_run and bool(np.all((hi == lo) | ~np.isfinite(hi)))
    # Codes in the smallest type that holds them: one byte a cell for up to 127 values.
    kind = "<f4" if numeric else ("<i1" if len(distinct) < 128 else "<i2"
                                  if len(distinct) < 32768 else "<i4")
    data = b64(np.where(np.isfinite(hi), hi, fill).astype(grid.dtype) if static else grid, kind)
    out: dict[str, Any] = {"name": name, "kind": "num" if numeric else "cat",
                           "per_run": not static, "data": data, "dtype": kind[1:]}
    if numeric:
        finite = grid[np.isfinite(grid)]
        out["range"] = [float(finite.min()), float(finite.max())] if finite.size else [0, 1]
        out["colour"] = True
        return out
    out["values"] = [text(v) for v in distinct]
    out["colour"] = name in CATEGORICAL or len(distinct) <= palette.MAX_CATEGORIES
    if out["colour"]:
        out.update(category_colours(distinct, grid))
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


def chain_info(kept: list[int], chains: dict[int, tuple[int, str]]) -> list[tuple[int, str]]:
    """(chain, stage) of each kept run; a run without a record continues the run before it.

    Example:
        >>> chain_info([0, 1, 2], {1: (1, "validate")})
        [(0, 'fit'), (1, 'validate'), (1, 'validate')]
    """
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
    info = chain_info(kept, run_chains(points) if chains is None else chains)
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
    motion = set(motion_columns(list(reducers)))
    columns = []
    for c in order + [c for c in meta if c not in order]:
        if c in motion:  # numbers, empty in a chain's first run (a column of None there)
            column = _column(c, pd.to_numeric(df[c], errors="coerce").astype(float), fi, slot,
                             len(kept), n, per_run=True)
            # offered as "moved in the embedding" / "moved in the layout", not by name
            column.update(colour=False, motion=True)
        else:
            column = _column(c, df[c], fi, slot, len(kept), n)
        columns.append(column)
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


def encode_images(images: dict[str, str] | None, keys: list[str]) -> dict[str, str]:
    """Point index (as text) -> thumbnail data URI, for the points in ``keys``; anything that
    is not a base64 PNG/JPEG/WebP data URI is dropped (the page only shows images it embeds)."""
    if not images:
        return {}
    index = {k: i for i, k in enumerate(keys)}
    return {str(index[k]): uri for k, uri in images.items()
            if k in index and isinstance(uri, str) and IMAGE_URI.fullmatch(uri)}
