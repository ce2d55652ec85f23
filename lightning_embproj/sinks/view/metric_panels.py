"""The view's metric panels: one panel per kind of metric, each axis titled with its unit.

Pure: ``read_metrics``'s table -> JSON-ready curves (see :func:`encode_metrics`).

Example:
    >>> import pandas as pd
    >>> m = pd.DataFrame({"val_index": [0, 1], "epoch": [0, 1], "step": [5, 9],
    ...                   "silhouette": [0.1, 0.2], "pca/displacement": [None, 2.5]})
    >>> [p["title"] for p in encode_metrics(m)["panels"]]
    ['Scores (0..1, higher is better)', 'Drift & displacement since the previous run']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_embproj.sinks.view.encode import (
    RUN_FIELDS,
    chain_info,
    run_chains,
    run_column,
    run_label,
)

# A metric joins the first panel whose kind (:func:`_kind`) it has; the rest go to "other".
UNITS = {
    "silhouette": "silhouette (−1..1)",
    "knn_accuracy": "kNN accuracy (fraction)",
    "trustworthiness": "trustworthiness (0..1)",
    "stability": "stability (Spearman, −1..1)",
    "drift/knn_overlap": "kNN neighbours kept (fraction)",
    "displacement": "displacement (× previous layout's RMS radius)",
    "motion_explained": "layout motion explained by real motion (Spearman, −1..1)",
    "clusters/count": "clusters (count)",
    "rankme": "RankMe (effective rank)",
    "uniformity": "uniformity (log E e^(−2d²); lower = more uniform)",
}
PANELS = (
    ("scores", "Scores (0..1, higher is better)"),
    ("drift", "Drift & displacement since the previous run"),
    ("clusters", "Clusters"),
    ("health", "Embedding health"),
    ("other", "Other metrics"),
)


def _kind(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    if name.startswith("drift/") or last in ("displacement", "motion_explained"):
        return "drift"
    if name.startswith("clusters/") or name == "cka_previous":
        return "clusters"
    if name in ("rankme", "uniformity"):
        return "health"
    if name in ("silhouette", "knn_accuracy") or last in ("trustworthiness", "stability"):
        return "scores"
    return "other"


def _finite(values: Any) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def _gapped(runs_x: list[int], info: list[tuple[int, str]]
            ) -> tuple[list[float], list[int | None], list[dict[str, Any]]]:
    """x of each point, the metrics row of each x (None for a gap) and the chain starts.

    Before a chain's first run: a gap (x between the runs, y None) so that no curve joins
    two chains, and a marker line.
    """
    x: list[float] = []
    rows: list[int | None] = []
    starts = []
    for k, run in enumerate(runs_x):
        if k and info[k][0] != info[k - 1][0]:
            x.append(run - 0.5)
            rows.append(None)
            starts.append({"x": run - 0.5, "chain": info[k][0], "stage": info[k][1]})
        x.append(run)
        rows.append(k)
    return x, rows, starts


def _left(kind: str, names: list[str], values: dict[str, np.ndarray]) -> list[str]:
    """The metrics of a panel on its left axis: those within [-1, 1], by kind's rule."""
    bounded = [c for c in names if np.abs(values[c][np.isfinite(values[c])]).max() <= 1 + 1e-9]
    if kind == "drift":  # overlap fractions left, displacements right, whatever their size
        bounded = [c for c in names if c.startswith("drift/")]
    if kind in ("scores", "health"):  # health: RankMe left, uniformity (log, < 0) right
        bounded = [c for c in names if c != "uniformity"]
    return bounded or names  # one axis only: it is the left one


def _unit(kind: str, side: str, group: list[str]) -> str:
    units = list(dict.fromkeys(UNITS.get(c, UNITS.get(c.rsplit("/", 1)[-1], "")) for c in group))
    unit = " · ".join(u for u in units if u) or ("value (−1..1)" if side == "left" else "value")
    if kind == "clusters" and side == "left" and "clusters/count" not in group:
        unit = "agreement (ARI / NMI / CKA, 1 = same)"
    if kind == "scores":
        unit = "score (unitless, 1 = best)"
    return unit


def _panels(values: dict[str, np.ndarray], spaced: Callable[[list[Any]], list[Any]]
            ) -> list[dict[str, Any]]:
    cols = [c for c, v in values.items() if np.isfinite(v).any()]  # skip empty or text columns
    panels = []
    for kind, title in PANELS:
        names = [c for c in cols if _kind(c) == kind]
        if not names:
            continue
        left = _left(kind, names, values)
        axes = [{"side": side, "title": _unit(kind, side, group),
                 "series": [{"name": c, "y": spaced(_finite(values[c]))} for c in group]}
                for side, group in (("left", left), ("right", [c for c in names
                                                                if c not in left]))
                if group]
        panels.append({"kind": kind, "title": title, "axes": axes})
    return panels


def encode_metrics(metrics: Any, runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metric curves grouped into panels by kind, each axis titled with its unit.

    Within a panel, metrics within [-1, 1] share the left axis; the others (counts, distances)
    take the right one, so a 0..1 score is never squashed by a count.
    """
    empty: dict[str, Any] = {"x": [], "runs": [], "panels": [], "starts": []}
    if metrics is None or len(metrics) == 0 or "epoch" not in metrics.columns:
        return empty
    import pandas as pd

    rc = run_column(metrics)
    metrics = metrics.sort_values(rc, kind="stable").drop_duplicates(rc, keep="last")
    runs_x = [int(v) for v in metrics[rc]]
    info = chain_info(runs_x, run_chains(metrics))
    several = len({c for c, _ in info}) > 1
    steps = metrics["step"].tolist() if "step" in metrics.columns else [0] * len(metrics)
    labels = [run_label(int(e), int(s), stage, chain if several else None)
              for e, s, (chain, stage) in zip(metrics["epoch"].tolist(), steps, info, strict=True)]
    x, rows, starts = _gapped(runs_x, info)

    def spaced(column: list[Any]) -> list[Any]:
        return [None if k is None else column[k] for k in rows]

    values = {c: pd.to_numeric(metrics[c], errors="coerce").to_numpy(dtype=float)
              for c in metrics.columns if c not in RUN_FIELDS}
    return {"x": x, "runs": [lab or "" for lab in spaced(labels)],
            "panels": _panels(values, spaced), "starts": starts}
