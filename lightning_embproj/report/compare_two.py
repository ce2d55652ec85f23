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
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.readers import list_validations, read_projections
from lightning_embproj.report.compare import find_sets, set_folder
from lightning_embproj.sinks.local import atomic_write_text
from lightning_embproj.sinks.view import PALETTE, reducers_in
from lightning_embproj.sinks.view.images import read_images

MIN_SHARED = 10  # ids two runs must share to align them and compare neighbourhoods
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


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str],
                 output: str | os.PathLike[str], *, name: str | None = None,
                 epoch: int | None = None, reducer: str | None = None, k: int = 10,
                 top: int = 30) -> list[Path]:
    """Compare one validation run of two training runs, per embedding set both have.

    For each set: B's layouts are rotated/reflected onto A's on their shared ids (orthogonal
    Procrustes, :func:`lightning_embproj.reduce.align.procrustes_align`); each shared point's
    neighbourhood overlap is the fraction of its ``k`` nearest shared points in A's layout
    that are also among its ``k`` nearest in B's layout (1 = same neighbours). The original
    embeddings are not kept in the local files, so neighbourhoods are those of the layouts.

    Writes ``<output>/<NAME>/compare.html`` (both layouts side by side, linked selection,
    colour by overlap, the ``top`` most changed points in a table) and
    ``<output>/<NAME>/neighbours_<reducer>.csv`` (every shared point, most changed first).

    Args:
        run_a, run_b: two log dirs (holding ``embproj/<NAME>/``) or two set folders.
        output: folder for the results.
        name: only this set (default: every set both runs have).
        epoch: compare the last validation run of this epoch in both (default: each run's
            last validation run).
        reducer: only this layout (default: every reducer both have).
        k: neighbours per point.
        top: rows of the table in the page.
    """
    import pandas as pd

    from lightning_embproj.reduce.align import procrustes_align
    from lightning_embproj.sinks.view import render_page
    from lightning_embproj.sinks.view.encode import encode_images, encode_points, point_keys

    paths = {"A": Path(run_a), "B": Path(run_b)}
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
        pairs = [(next(iter(found["A"])), next(iter(found["A"].values())),
                  next(iter(found["B"].values())))]
    else:
        names = [n for n in found["A"] if n in found["B"]]
        if name is not None:
            names = [name] if name in names else []
        if not names:
            raise ValueError(
                f"compare: no embedding set {'named ' + repr(name) + ' ' if name else ''}in both "
                f"runs; run A has {', '.join(found['A'])}; run B has {', '.join(found['B'])}")
        pairs = [(n, found["A"][n], found["B"][n]) for n in names]
    plans = []
    for set_name, (pa, na), (pb, nb) in pairs:  # check every set before writing
        ra, rb = pick_run(pa, na, epoch, "A"), pick_run(pb, nb, epoch, "B")
        a = read_projections(pa, na, validations=[ra[0]]).reset_index(drop=True)
        b = read_projections(pb, nb, validations=[rb[0]]).reset_index(drop=True)
        ka, kb = point_keys(a), point_keys(b)
        shared = sorted(set(ka) & set(kb))
        if len(shared) < MIN_SHARED:
            raise ValueError(
                f"compare: runs A and B share {len(shared)} ids in set {set_name!r} ({len(a)} "
                f"and {len(b)} tracked points); at least {MIN_SHARED} are needed to align the "
                "layouts and compare neighbourhoods. Do both runs track the same dataset with "
                "the same id_key?")
        both = [r for r in reducers_in(a) if r in reducers_in(b)
                and reducers_in(a)[r] == reducers_in(b)[r]]
        if reducer is not None:
            if reducer not in both:
                raise ValueError(f"compare: reducer {reducer!r} not in both runs of set "
                                 f"{set_name!r}; in both: {', '.join(both) or 'none'}")
            both = [reducer]
        if not both:
            raise ValueError(f"compare: runs A and B of set {set_name!r} have no layout in "
                             f"common (A: {', '.join(reducers_in(a))}; B: "
                             f"{', '.join(reducers_in(b))})")
        plans.append((set_name, a, b, ka, kb, ra, rb, both, (pa, na), (pb, nb)))
    written: list[Path] = []
    for set_name, a, b, ka, kb, ra, rb, both, (pa, na), (pb, nb) in plans:
        folder = Path(output) / set_name
        universe = list(dict.fromkeys(list(ka) + list(kb)))
        b = b.copy()
        extra: dict[str, np.ndarray] = {}
        tables, summary = {}, []
        for r in both:
            cols = [f"{r}_{ax}" for ax in "xyz"[: reducers_in(a)[r]]]
            fa = np.isfinite(a[cols].to_numpy(dtype=float)).all(axis=1)
            fb = np.isfinite(b[cols].to_numpy(dtype=float)).all(axis=1)
            aligned = procrustes_align(b.loc[fb, cols].to_numpy(dtype=float),
                                       kb[fb].to_numpy(dtype=str),
                                       a.loc[fa, cols].to_numpy(dtype=float),
                                       ka[fa].to_numpy(dtype=str))
            b.loc[fb, cols] = aligned
            common = sorted(set(ka[fa]) & set(kb[fb]))
            if len(common) < MIN_SHARED:
                raise ValueError(f"compare: only {len(common)} shared ids have a {r} layout "
                                 f"in both runs of set {set_name!r}; at least {MIN_SHARED} "
                                 "are needed")
            kk = min(k, len(common) - 1)
            xa = _label(a[cols], ka).loc[common].to_numpy(dtype=float)
            xb = _label(b[cols], kb).loc[common].to_numpy(dtype=float)
            near_a, near_b = layout_neighbours(xa, kk), layout_neighbours(xb, kk)
            overlap = neighbourhood_overlap(near_a, near_b)
            column = f"neighbourhood overlap ({r})"
            full = np.full(len(universe), np.nan)
            index = {key: i for i, key in enumerate(universe)}
            full[[index[c] for c in common]] = overlap
            extra[column] = full
            info = _label(a, ka)
            ids = info.loc[common, "sample_id"].astype(str).to_numpy()
            only_a = [" ".join(ids[j] for j in sorted(set(x) - set(y)))
                      for x, y in zip(near_a.tolist(), near_b.tolist(), strict=True)]
            only_b = [" ".join(ids[j] for j in sorted(set(y) - set(x)))
                      for x, y in zip(near_a.tolist(), near_b.tolist(), strict=True)]
            table = pd.DataFrame({"sample_id": ids})
            if "dataloader_idx" in info.columns:
                table["dataloader_idx"] = info.loc[common, "dataloader_idx"].to_numpy()
            if "label" in info.columns:
                table["label"] = info.loc[common, "label"].to_numpy()
            table["overlap"] = overlap.round(4)
            table["only_in_a"], table["only_in_b"] = only_a, only_b
            for j, ax in enumerate(cols):
                table[f"{ax}_a"], table[f"{ax}_b"] = xa[:, j], xb[:, j]
            table["_index"] = [index[c] for c in common]
            table = table.sort_values(["overlap", "sample_id"], kind="stable")
            csv_path = folder / f"neighbours_{r}.csv"
            atomic_write_text(csv_path, table.drop(columns="_index").to_csv(index=False))
            written.append(csv_path)
            shown = table.head(top)
            head = [c for c in ("sample_id", "dataloader_idx", "label", "overlap", "only_in_a",
                                "only_in_b") if c in shown.columns]
            tables[r] = {
                "title": f"The {len(shown)} points whose {r} neighbourhoods differ most "
                         f"(k={kk} nearest shared points in each run's layout; 1 = same "
                         "neighbours)",
                "columns": ["id" if c == "sample_id" else c.replace("_", " ") for c in head],
                "rows": [[str(v) for v in row] for row in shown[head].itertuples(index=False)],
                "index": [int(i) for i in shown["_index"]],
            }
            summary.append(f"{r} {overlap.mean():.2f}")
        # One point table for both panels: A's metadata, B's for points only B has.
        meta = pd.concat([a, b[~kb.isin(set(ka))]], ignore_index=True)
        meta["val_index"], meta["epoch"], meta["step"] = 0, ra[1], ra[2]
        for column, values in extra.items():
            meta[column] = np.nan
            pos = {key: i for i, key in enumerate(universe)}
            meta[column] = [values[pos[key]] for key in point_keys(meta)]
        if len(universe) > len(set(ka) & set(kb)):
            in_a, in_b = set(ka), set(kb)
            meta["in run"] = ["both" if key in in_a and key in in_b else
                              "A only" if key in in_a else "B only" for key in point_keys(meta)]
        points = encode_points(meta, keys=universe)
        thumbs = {**read_images(set_folder(pb, nb)), **read_images(set_folder(pa, na))}
        one = {"val_index": 0, "epoch": ra[1], "step": ra[2], "label": "A and B"}
        panels = []
        for which, df, run in (("A", a, ra), ("B", b, rb)):
            enc = encode_points(df.assign(val_index=0), keys=universe)
            panels.append({
                "title": f"{which}: {paths[which]} \\u2014 epoch {run[1]} \\u00b7 step {run[2]}"
                         + (" (aligned onto A)" if which == "B" else ""),
                "reducers": {r: enc["reducers"][r] for r in both}})
        points["runs"] = [one]
        points.pop("reducers")
        colour_by = f"neighbourhood overlap ({both[0]})"
        payload = {
            "title": f"{set_name}: A {paths['A'].name} vs B {paths['B'].name}",
            "note": (f"{len(set(ka) & set(kb))} shared ids ({len(a)} tracked in A, {len(b)} "
                     f"in B). B's layouts are rotated onto A's on the shared ids. Mean "
                     f"neighbourhood overlap (k={k} nearest in each layout; the original "
                     f"embeddings are not stored locally): {', '.join(summary)}. Select points "
                     "in either panel: they are highlighted in both."),
            "palette": list(PALETTE), "colour": colour_by, "points": points, "panels": panels,
            "metrics": None, "lineage": None, "images": encode_images(thumbs, universe),
            "tables": tables,
        }
        page = folder / COMPARE_FILE
        atomic_write_text(page, render_page(payload, panels=2))
        written.insert(len(written) - len(both), page)
    return written
