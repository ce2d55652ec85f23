"""Two training runs side by side: ``compare RUN_A RUN_B``.

One validation run of each (the last, or of a chosen epoch), B's layouts rotated onto A's on
their shared ids, shown side by side with linked selection, and how much each shared point's
layout neighbourhood differs between the two (a CSV of the most-changed points per reducer).

Example:
    >>> compare_runs("logs/run_a", "logs/run_b", "report")  # doctest: +SKIP
    [PosixPath('report/embeddings/compare.html'), ...]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.readers import find_run, list_validations, read_projections
from lightning_embproj.reduce.align import procrustes_align
from lightning_embproj.report.compare import find_sets, set_folder
from lightning_embproj.sinks.columns import motion_columns
from lightning_embproj.sinks.local import atomic_write_text
from lightning_embproj.sinks.view import reducers_in
from lightning_embproj.sinks.view.encode import (
    RUN_FIELDS,
    encode_images,
    encode_points,
    point_keys,
    text,
)
from lightning_embproj.sinks.view.images import read_images
from lightning_embproj.sinks.view.page import render_page

MIN_SHARED = 10  # ids two runs must share to align them and compare neighbourhoods
SUMMARY_TOP = 5  # most changed points per reducer in the printed summary
COMPARE_FILE = "compare.html"


def pick_run(path: Path, name: str | None, epoch: int | None, which: str) -> tuple[int, int, int]:
    """``(val_index, epoch, step)`` of the last validation run (of ``epoch`` when given)."""
    runs = list_validations(path, name)
    if epoch is None:
        return runs[-1]
    match = [r for r in runs if r[1] == epoch]
    if not match:
        raise ValueError(f"compare: epoch {epoch} not in run {which} ({str(path)!r}); "
                         f"available epochs: {sorted({r[1] for r in runs})}")
    return match[-1]


def layout_neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` indices of each row's ``k`` nearest other rows (Euclidean), nearest first.

    >>> layout_neighbours(np.array([[0.0], [1.0], [3.0], [7.0]]), 1).ravel().tolist()
    [1, 0, 1, 2]
    """
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)
    # Drop each row itself (ties can put it second: remove it wherever it is).
    rows = np.arange(len(xy))[:, None]
    keep = index != rows
    return np.array([r[m][:k] for r, m in zip(index, keep, strict=True)])


def neighbourhood_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the fraction of its neighbours in ``a`` that are also its neighbours in ``b``.

    >>> neighbourhood_overlap(np.array([[1, 2], [0, 2]]), np.array([[2, 3], [0, 2]])).tolist()
    [0.5, 1.0]
    """
    k = a.shape[1]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(),
                                                              strict=True)])


def _label(df: Any, keys: Any) -> Any:
    return df.assign(_key=keys.to_numpy()).drop_duplicates("_key").set_index("_key")


def id_order(key: str) -> list[tuple[int, int, str]]:
    """Sort key for ids as text: digit runs by value ("2" before "10", "s9" before "s10").

    >>> sorted(["10", "2", "100", "s10", "s9"], key=id_order)
    ['2', '10', '100', 's9', 's10']
    """
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key) if t]


def _pairs(paths: dict[str, Path], name: str | None
           ) -> list[tuple[str, tuple[Path, str | None], tuple[Path, str | None]]]:
    """(set name, A's (path, name), B's (path, name)) of each set both runs have."""
    found = {}
    for which, p in paths.items():
        if not p.is_dir():
            raise FileNotFoundError(f"compare: run {which} {str(p)!r} does not exist")
        found[which] = find_sets(p)
        if not found[which]:
            raise ValueError(f"compare: no embedding sets in run {which} {str(p)!r} "
                             "(expected a log dir with embproj/<NAME>/val_*.csv, or a set folder)")
    single = all(len(f) == 1 and next(iter(f.values()))[1] is None for f in found.values())
    if single:  # two set folders: compare them whatever their names
        return [(next(iter(found["A"])), next(iter(found["A"].values())),
                 next(iter(found["B"].values())))]
    names = [n for n in found["A"] if n in found["B"]]
    if name is not None:
        names = [name] if name in names else []
    if not names:
        raise ValueError(
            f"compare: no embedding set {'named ' + repr(name) + ' ' if name else ''}in both "
            f"runs; run A has {', '.join(found['A'])}; run B has {', '.join(found['B'])}")
    return [(n, found["A"][n], found["B"][n]) for n in names]


def _plan(set_name: str, src_a: tuple[Path, str | None], src_b: tuple[Path, str | None],
          epoch: int | None, reducer: str | None) -> dict[str, Any]:
    """One set's two runs read and checked (enough shared ids, a layout in common)."""
    ra, rb = pick_run(*src_a, epoch, "A"), pick_run(*src_b, epoch, "B")
    a = read_projections(*src_a, validations=[ra[0]]).reset_index(drop=True)
    b = read_projections(*src_b, validations=[rb[0]]).reset_index(drop=True)
    ka, kb = point_keys(a), point_keys(b)
    shared = set(ka) & set(kb)
    if len(shared) < MIN_SHARED:
        raise ValueError(
            f"compare: runs A and B share {len(shared)} ids in set {set_name!r} ({len(a)} "
            f"and {len(b)} tracked points); at least {MIN_SHARED} are needed to align the "
            "layouts and compare neighbourhoods. Do both runs track the same dataset with "
            "the same id_key?")
    both = [r for r in reducers_in(a) if reducers_in(b).get(r) == reducers_in(a)[r]]
    if reducer is not None:
        if reducer not in both:
            raise ValueError(f"compare: reducer {reducer!r} not in both runs of set "
                             f"{set_name!r}; in both: {', '.join(both) or 'none'}")
        both = [reducer]
    if not both:
        raise ValueError(f"compare: runs A and B of set {set_name!r} have no layout in "
                         f"common (A: {', '.join(reducers_in(a))}; B: "
                         f"{', '.join(reducers_in(b))})")
    return {"name": set_name, "a": a, "b": b.copy(), "ka": ka, "kb": kb, "ra": ra, "rb": rb,
            "both": both, "src_a": src_a, "src_b": src_b,
            "universe": list(dict.fromkeys(list(ka) + list(kb)))}


def _metadata(info: Any) -> list[str]:
    """A's metadata columns (texts, numbers, cluster) for the table of changed points."""
    layouts = {f"{r}_{ax}" for r in reducers_in(info) for ax in "xyz"}
    skip = {*RUN_FIELDS, "sample_id", "dataloader_idx", "label"} | layouts | _motion(info)
    return [c for c in info.columns if c not in skip and not c.startswith("_")]


def _motion(info: Any) -> set[str]:
    """The motion columns (``knn_kept``, ``R_moved``): each run's motion within its own
    chain, which says nothing about two runs compared."""
    return set(motion_columns(list(reducers_in(info)))) & set(info.columns)


def _neighbours(plan: dict[str, Any], r: str, k: int) -> tuple[Any, np.ndarray, int]:
    """Align B's ``r`` layout onto A's; the table of shared points (most changed first, ids
    in natural order among equals), their overlap over the universe, and the k used."""
    import pandas as pd

    a, b, ka, kb = plan["a"], plan["b"], plan["ka"], plan["kb"]
    cols = [f"{r}_{ax}" for ax in "xyz"[: reducers_in(a)[r]]]
    fa = np.isfinite(a[cols].to_numpy(dtype=float)).all(axis=1)
    fb = np.isfinite(b[cols].to_numpy(dtype=float)).all(axis=1)
    b.loc[fb, cols] = procrustes_align(b.loc[fb, cols].to_numpy(dtype=float),
                                       kb[fb].to_numpy(dtype=str),
                                       a.loc[fa, cols].to_numpy(dtype=float),
                                       ka[fa].to_numpy(dtype=str))
    common = sorted(set(ka[fa]) & set(kb[fb]), key=id_order)
    if len(common) < MIN_SHARED:
        raise ValueError(f"compare: only {len(common)} shared ids have a {r} layout in both "
                         f"runs of set {plan['name']!r}; at least {MIN_SHARED} are needed")
    kk = min(k, len(common) - 1)
    xa = _label(a[cols], ka).loc[common].to_numpy(dtype=float)
    xb = _label(b[cols], kb).loc[common].to_numpy(dtype=float)
    near_a, near_b = layout_neighbours(xa, kk), layout_neighbours(xb, kk)
    overlap = neighbourhood_overlap(near_a, near_b)
    index = {key: i for i, key in enumerate(plan["universe"])}
    full = np.full(len(plan["universe"]), np.nan)
    full[[index[c] for c in common]] = overlap
    info = _label(a, ka).loc[common]
    ids = info["sample_id"].astype(str).to_numpy()
    table = pd.DataFrame({"sample_id": ids})
    for c in ("dataloader_idx", "label", *_metadata(info)):
        if c in info.columns:
            table[c] = info[c].to_numpy()
    table["overlap"] = overlap.round(4)
    table["only_in_a"] = [" ".join(ids[j] for j in sorted(set(x) - set(y)))
                          for x, y in zip(near_a.tolist(), near_b.tolist(), strict=True)]
    table["only_in_b"] = [" ".join(ids[j] for j in sorted(set(y) - set(x)))
                          for x, y in zip(near_a.tolist(), near_b.tolist(), strict=True)]
    for j, ax in enumerate(cols):
        table[f"{ax}_a"], table[f"{ax}_b"] = xa[:, j], xb[:, j]
    table["_index"] = [index[c] for c in common]
    # `common` is in natural id order: a stable sort by overlap keeps it among equals.
    return table.sort_values("overlap", kind="stable"), full, kk


def _page_table(table: Any, r: str, kk: int, top: int) -> dict[str, Any]:
    """The ``top`` most changed points for the page: id, label, metadata (texts cut), overlap
    and the neighbours only one run has; the page adds each point's thumbnail."""
    shown = table.head(top)
    coords = {f"{r}_{ax}_{w}" for ax in "xyz" for w in "ab"}
    head = [c for c in shown.columns if c != "_index" and c not in coords]
    return {
        "title": f"The {len(shown)} points whose {r} neighbourhoods differ most (k={kk} nearest "
                 "shared points in each run's layout; 1 = same neighbours)",
        "columns": ["id" if c == "sample_id" else c.replace("_", " ") for c in head],
        "rows": [[text(v, 120) for v in row] for row in shown[head].itertuples(index=False)],
        "index": [int(i) for i in shown["_index"]],
    }


def _point_table(plan: dict[str, Any], extra: dict[str, np.ndarray]) -> dict[str, Any]:
    """One point table for both panels: A's metadata, B's for points only B has, the
    overlap columns, and which run has each point when they differ."""
    import pandas as pd

    a, b, ka, kb, ra = plan["a"], plan["b"], plan["ka"], plan["kb"], plan["ra"]
    meta = pd.concat([a, b[~kb.isin(set(ka))]], ignore_index=True)
    meta = meta.drop(columns=sorted(_motion(meta)))
    meta["val_index"], meta["epoch"], meta["step"] = 0, ra[1], ra[2]
    keys = point_keys(meta)
    pos = {key: i for i, key in enumerate(plan["universe"])}
    for column, values in extra.items():
        meta[column] = [values[pos[key]] for key in keys]
    if len(plan["universe"]) > len(set(ka) & set(kb)):
        in_a, in_b = set(ka), set(kb)
        meta["in run"] = ["both" if key in in_a and key in in_b else
                          "A only" if key in in_a else "B only" for key in keys]
    points = encode_points(meta, keys=plan["universe"])
    points["runs"] = [{"val_index": 0, "epoch": ra[1], "step": ra[2], "label": "A and B"}]
    points.pop("reducers")
    return points


def summary_text(name: str, shared: int, n_a: int, n_b: int, tables: Mapping[str, Any],
                 kk: int, top: int = SUMMARY_TOP) -> str:
    """A few lines on one set's comparison: shared ids, the mean neighbourhood overlap per
    reducer, and per reducer the ``top`` most changed points (id, label, overlap).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"sample_id": ["7", "2"], "label": [3, 1], "overlap": [0.1, 0.9]})
        >>> print(summary_text("emb", 2, 2, 3, {"pca": t}, 10))
        emb: 2 shared ids (2 tracked in A, 3 in B); mean neighbourhood overlap (k=10): pca 0.50
          most changed (pca): 7 (label 3) 0.10, 2 (label 1) 0.90
    """
    means = ", ".join(f"{r} {t['overlap'].mean():.2f}" for r, t in tables.items())
    lines = [f"{name}: {shared} shared ids ({n_a} tracked in A, {n_b} in B); mean "
             f"neighbourhood overlap (k={kk}): {means}"]
    for r, t in tables.items():
        head = t.head(top)
        labels = head["label"].tolist() if "label" in head.columns else [None] * len(head)
        points = [f"{i}{'' if lab is None else f' (label {text(lab, 40)})'} {o:.2f}"
                  for i, lab, o in zip(head["sample_id"], labels, head["overlap"], strict=True)]
        lines.append(f"  most changed ({r}): {', '.join(points)}")
    return "\n".join(lines)


def _write_set(plan: dict[str, Any], paths: dict[str, Path], output: Path, k: int,
               top: int, summary: Callable[[str], None] | None = None) -> list[Path]:
    folder = output / plan["name"]
    written: list[Path] = []
    extra: dict[str, np.ndarray] = {}
    tables, means, changed = {}, [], {}
    for r in plan["both"]:
        table, full, kk = _neighbours(plan, r, k)
        changed[r] = table
        csv_path = folder / f"neighbours_{r}.csv"
        atomic_write_text(csv_path, table.drop(columns="_index").to_csv(index=False))
        written.append(csv_path)
        extra[f"neighbourhood overlap ({r})"] = full
        tables[r] = _page_table(table, r, kk, top)
        means.append(f"{r} {np.nanmean(full):.2f}")
    panels = []
    for which, df, run in (("A", plan["a"], plan["ra"]), ("B", plan["b"], plan["rb"])):
        enc = encode_points(df.assign(val_index=0), keys=plan["universe"])
        panels.append({
            "title": f"{which}: {paths[which]} \u2014 epoch {run[1]} \u00b7 step {run[2]}"
                     + (" (aligned onto A)" if which == "B" else ""),
            "reducers": {r: enc["reducers"][r] for r in plan["both"]}})
    thumbs = {**read_images(set_folder(*plan["src_b"])), **read_images(set_folder(*plan["src_a"]))}
    shared, a, b = len(set(plan["ka"]) & set(plan["kb"])), plan["a"], plan["b"]
    payload = {
        "title": f"{plan['name']}: A {paths['A'].name} vs B {paths['B'].name}",
        "note": (f"{shared} shared ids ({len(a)} tracked in A, {len(b)} in B). B's layouts "
                 "are rotated onto A's on the shared ids. Mean neighbourhood overlap (k="
                 f"{k} nearest in each layout; the original embeddings are not stored "
                 f"locally): {', '.join(means)}. Select points in either panel: they are "
                 "highlighted in both."),
        "colour": f"neighbourhood overlap ({plan['both'][0]})",
        "points": _point_table(plan, extra), "panels": panels, "metrics": None,
        "lineage": None, "images": encode_images(thumbs, plan["universe"]), "tables": tables,
    }
    page = folder / COMPARE_FILE
    atomic_write_text(page, render_page(payload))
    if summary is not None:
        summary(summary_text(plan["name"], shared, len(a), len(b), changed, kk))
    return [page, *written]


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str],
                 output: str | os.PathLike[str], *, name: str | None = None,
                 epoch: int | None = None, reducer: str | None = None, k: int = 10,
                 top: int = 30, latest: bool = False,
                 summary: Callable[[str], None] | None = None) -> list[Path]:
    """Compare one validation run of two training runs, per embedding set both have.

    For each set: B's layouts are rotated/reflected onto A's on their shared ids (orthogonal
    Procrustes, :func:`lightning_embproj.reduce.align.procrustes_align`); each shared point's
    neighbourhood overlap is the fraction of its ``k`` nearest shared points in A's layout
    that are also among its ``k`` nearest in B's layout (1 = same neighbours). The original
    embeddings are not kept in the local files, so neighbourhoods are those of the layouts.

    Writes ``<output>/<NAME>/compare.html`` (both layouts side by side, linked selection,
    colour by overlap, the ``top`` most changed points in a table with their metadata and
    thumbnails) and ``<output>/<NAME>/neighbours_<reducer>.csv`` (every shared point, most
    changed first, ids in natural order among equals: 2 before 10).

    Args:
        run_a, run_b: two log dirs (holding ``embproj/<NAME>/``), two set folders, or folders
            above one run each (a W&B ``save_dir``).
        output: folder for the results.
        name: only this set (default: every set both runs have).
        epoch: compare the last validation run of this epoch in both (default: each run's
            last validation run).
        reducer: only this layout (default: every reducer both have).
        k: neighbours per point.
        top: rows of the table in the page.
        latest: a folder holding several runs below it stands for its newest one (else that
            is an error listing them, see :func:`lightning_embproj.readers.find_run`).
        summary: called with a few lines per set (:func:`summary_text`): shared ids, mean
            neighbourhood overlap, the most changed points.
    """
    paths = {"A": find_run(Path(run_a), latest), "B": find_run(Path(run_b), latest)}
    # every set checked before anything is written
    plans = [_plan(n, a, b, epoch, reducer) for n, a, b in _pairs(paths, name)]
    return [p for plan in plans
            for p in _write_set(plan, paths, Path(output), k, top, summary)]
