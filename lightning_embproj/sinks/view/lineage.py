"""The view's cluster lineage: a Sankey of clusters per run, flows = members shared.

Pure: ``read_lineage``'s table (and the points, for members) -> JSON-ready nodes and links
(see :func:`encode_lineage`). Each node has its cluster's colour in that run's scatter (the one
palette, :mod:`lightning_embproj.sinks.palette`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from lightning_embproj.sinks import palette
from lightning_embproj.sinks.view.encode import point_keys, run_column, text


def _from_list(value: Any) -> list[str]:
    """``from_clusters`` as written by any sink: a list, ``"1;2"``, ``"[1, 2]"`` or empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [text(v, 40) for v in value]
    return re.findall(r"-?\d+|[A-Za-z_][\w.-]*", str(value))


def _top_labels(pts: Any, run: int, cluster: str) -> str:
    if pts is None or "label" not in pts.columns:
        return ""
    members = pts[(pts[run_column(pts)] == run) & (pts["cluster"].map(lambda v: text(v, 40))
                                                   == cluster)]
    counts = members["label"].map(lambda v: text(v, 24)).value_counts().head(3)
    return ", ".join(f"{lab} ({cnt})" for lab, cnt in counts.items())


def _nodes(rows: Any, rc: str, shown: list[int], pts: Any, label_of: dict[int, str]
           ) -> tuple[dict[str, list[Any]], dict[tuple[int, str], int]]:
    """A node per (run, cluster): label, hover lines, position, and its scatter colour."""
    node_of: dict[tuple[int, str], int] = {}
    nodes: dict[str, list[Any]] = {"label": [], "hover": [], "x": [], "y": [], "colour": []}
    for k, run in enumerate(shown):
        here = rows[rows[rc] == run]
        # A `vanish` row names a cluster of the previous run: it annotates that run's node.
        alive = here[here.get("event", "") != "vanish"] if "event" in here else here
        clusters = list(dict.fromkeys(text(c, 40) for c in alive["cluster"]))
        members = (pts.loc[pts[run_column(pts)] == run, "cluster"].tolist()
                   if pts is not None else clusters)
        colour = palette.colour_map(members or clusters)
        for i, c in enumerate(clusters):
            mine = alive[alive["cluster"].map(lambda v: text(v, 40)) == c]
            events = ", ".join(dict.fromkeys(text(e, 20) for e in mine.get("event", [])))
            size = text(mine["size"].max(), 20) if "size" in mine else ""
            top = _top_labels(pts, run, c)
            node_of[(run, c)] = len(nodes["label"])
            nodes["label"].append(c)
            nodes["hover"].append(
                [f"cluster {c}", label_of.get(run, f"run {run}"), f"size {size}",
                 f"event {events}"] + ([f"top labels: {top}"] if top else []))
            nodes["x"].append(0.001 + 0.998 * k / max(len(shown) - 1, 1))
            nodes["y"].append(0.001 + 0.998 * (i + 0.5) / max(len(clusters), 1))
            nodes["colour"].append(palette.colours([c], colour)[0])
    return nodes, node_of


def _links(rows: Any, rc: str, pairs: list[tuple[int, int]], pts: Any,
           node_of: dict[tuple[int, str], int]) -> dict[str, list[Any]]:
    """Flows between consecutive runs of a chain: members shared (from the points' cluster
    column), else each lineage row's size split evenly over its ``from_clusters``."""
    links: dict[str, list[Any]] = {"source": [], "target": [], "value": []}

    def add(s: int | None, t: int | None, value: float) -> None:
        if s is not None and t is not None:
            links["source"].append(s)
            links["target"].append(t)
            links["value"].append(value)

    for prev, run in pairs:
        if pts is not None:
            rcp = run_column(pts)
            a = pts[pts[rcp] == prev].assign(_k=lambda d: point_keys(d))
            b = pts[pts[rcp] == run].assign(_k=lambda d: point_keys(d))
            both = a[["_k", "cluster"]].merge(b[["_k", "cluster"]], on="_k")
            for (ca, cb), cnt in both.groupby(["cluster_x", "cluster_y"]).size().items():
                add(node_of.get((prev, text(ca, 40))), node_of.get((run, text(cb, 40))),
                    int(cnt))
            continue
        for _, row in rows[rows[rc] == run].iterrows():
            if row.get("event") == "vanish":
                continue
            sources = _from_list(row.get("from_clusters"))
            t = node_of[(run, text(row["cluster"], 40))]
            for f in sources:
                add(node_of.get((prev, f)), t, float(row.get("size", 1) or 1) / len(sources))
    return links


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
    has_members = points is not None and "cluster" in points.columns
    pts = points[points[run_column(points)].isin(shown)] if has_members else None
    nodes, node_of = _nodes(rows, rc, shown, pts, label_of)
    # a new chain's clusters do not come from the previous chain's
    pairs = [(a, b) for a, b in zip(shown, shown[1:], strict=False) if chain_of[a] == chain_of[b]]
    return {"nodes": nodes, "links": _links(rows, rc, pairs, pts, node_of),
            "runs": [label_of.get(r, "") for r in shown],
            "clipped": len(drawn) > len(shown), "alone": [label_of[r] for r in lone]}
