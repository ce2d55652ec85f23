"""Cluster lineage between two runs: MONIC transitions (survive, split, merge, emerge, vanish).

MONIC (Spiliopoulou et al., KDD 2006) on the tracking keys present in both runs. With
``f(P, C) = |P & C| / |P|``, the fraction of previous cluster ``P``'s shared members now in
current cluster ``C`` (noise, ``-1``, is no cluster on either side):

- ``P`` *feeds* ``C`` when ``f(P, C) >= survive_threshold`` (> 0.5, so at most one ``C``);
- ``P`` *splits* when it feeds no cluster and ``f(P, C) >= split_threshold`` for two or
  more ``C`` (its *parts*).

Rows (one per event; columns :data:`LINEAGE_COLUMNS`):

- ``survive``: one row per current cluster fed by exactly one ``P``; ``from_clusters`` is
  ``P``'s id, ``overlap`` is ``f(P, C)``.
- ``merge``: one row per current cluster fed by two or more ``P``; ``from_clusters`` lists
  them, ``overlap`` is the fraction of their pooled shared members that went into ``C``.
- ``split``: one row per (splitting ``P``, part ``C``); ``cluster`` is the part's id,
  ``from_clusters`` is ``P``'s id, ``overlap`` is ``f(P, C)``. A split into two parts gives
  two rows. A part can also have a ``survive`` / ``merge`` row (it received another cluster).
- ``emerge``: one row per current cluster that is neither fed nor a part;
  ``from_clusters`` is empty, ``overlap`` the largest ``f(P, C)`` of any ``P`` (0 with no
  shared members).
- ``vanish``: one row per previous cluster that neither feeds a cluster nor splits (also one
  whose members all left the sample); ``cluster`` is its id, ``size`` its size in the
  previous run, ``from_clusters`` empty, ``overlap`` its largest ``f(P, C)``.

``size`` is the cluster's number of members in its run (all keys, not only shared ones).
Rows are sorted by ``cluster``, then event in :data:`EVENTS` order. The first run (no
previous clusters) gives one ``emerge`` row per cluster.

The events depend on the overlaps only; the ids come from
:func:`lightning_embproj.clusters.match_clusters` (Jaccard). They agree in the usual cases (a
survivor keeps its id; one part of a split and the largest member of a merge keep theirs).
They can disagree when a small cluster is absorbed whole into a large one that mostly
continues another: that row is a ``survive`` whose ``from_clusters`` differs from ``cluster``.

Example:
    >>> rows = lineage_events([1, 2, 3, 4], [0, 0, 1, 1], [1, 2, 3, 4], [0, 0, 1, 1])
    >>> [(r["cluster"], r["event"], r["from_clusters"]) for r in rows]
    [(0, 'survive', '0'), (1, 'survive', '1')]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj.clusters import (
    NOISE,
    check_ids,
    check_keys,
    overlap_counts,
    shared_rows,
)

EVENTS: tuple[str, ...] = ("survive", "merge", "split", "emerge", "vanish")
LINEAGE_COLUMNS: tuple[str, ...] = ("cluster", "event", "from_clusters", "size", "overlap")
_TOL = 1e-12  # 7 / 10 must count as >= 0.7


def check_thresholds(survive_threshold: Any, split_threshold: Any) -> tuple[float, float]:
    """The MONIC thresholds as floats; impossible or contradictory values raise a ValueError
    that names the option, the allowed range and the given value.

    ``survive_threshold`` must be in (0.5, 1]: above one half, so that a cluster survives into
    at most one cluster (above 1 nothing could survive). ``split_threshold`` must be in
    (0, 0.5]: a split has two or more parts, each holding at least ``split_threshold`` of the
    cluster, so two parts must fit in one cluster (above 0.5 nothing could split); it is then
    always below ``survive_threshold``.

    Example:
        >>> check_thresholds(0.7, 0.3)
        (0.7, 0.3)
        >>> check_thresholds(0.7, 0.6)
        Traceback (most recent call last):
        ...
        ValueError: split_threshold must be in (0, 0.5]: ... got 0.6
    """
    survive = _fraction(survive_threshold, "survive_threshold", "(0.5, 1]")
    split = _fraction(split_threshold, "split_threshold", "(0, 0.5]")
    if not 0.5 < survive <= 1.0:
        raise ValueError(
            f"survive_threshold must be in (0.5, 1]: above one half, so that a cluster survives "
            f"into at most one cluster; got {survive_threshold!r}"
        )
    if not 0.0 < split <= 0.5:
        raise ValueError(
            "split_threshold must be in (0, 0.5]: a split needs two or more parts, each holding "
            "at least split_threshold of the cluster's tracked members, so two parts must fit "
            f"in one cluster; got {split_threshold!r}"
        )
    return survive, split


def _fraction(value: Any, option: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{option} must be a number in {allowed}, got {value!r}")
    return float(value)


def _row(cluster: int, event: str, sources: Sequence[int], size: int, overlap: float) -> dict:
    return {
        "cluster": int(cluster),
        "event": event,
        "from_clusters": ",".join(str(int(s)) for s in sorted(sources)),
        "size": int(size),
        "overlap": float(overlap),
    }


def lineage_events(
    prev_keys: np.ndarray | Sequence[int],
    prev_ids: np.ndarray | Sequence[int],
    keys: np.ndarray | Sequence[int],
    ids: np.ndarray | Sequence[int],
    survive_threshold: float = 0.7,
    split_threshold: float = 0.3,
) -> list[dict[str, Any]]:
    """MONIC events from the previous run's clusters to this run's, as table rows.

    ``prev_keys`` / ``prev_ids``: the previous run's tracking keys and stable cluster ids
    (empty on the first run); ``keys`` / ``ids``: this run's. Each row is a dict with the keys
    of :data:`LINEAGE_COLUMNS`: ``cluster`` (int id), ``event`` (one of :data:`EVENTS`),
    ``from_clusters`` (str, previous ids joined by ``","``, ascending; ``""`` for emerge and
    vanish), ``size`` (int), ``overlap`` (float in [0, 1]). See the module docstring for the
    exact rule of each event.

    Example:
        >>> rows = lineage_events([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 5, 5])
        >>> [(r["cluster"], r["event"], r["from_clusters"], r["overlap"]) for r in rows]
        [(0, 'split', '0', 0.5), (5, 'split', '0', 0.5)]
    """
    survive_threshold, split_threshold = check_thresholds(survive_threshold, split_threshold)
    prev_keys = check_keys(prev_keys, "prev_keys")
    prev_ids = check_ids(prev_ids, prev_keys.size, "prev_ids")
    keys = check_keys(keys, "keys")
    ids = check_ids(ids, keys.size, "ids")

    cur_all, cur_size = np.unique(ids[ids != NOISE], return_counts=True)
    prev_all, prev_size = np.unique(prev_ids[prev_ids != NOISE], return_counts=True)
    size_of = dict(zip(cur_all.tolist(), cur_size.tolist(), strict=True))
    prev_size_of = dict(zip(prev_all.tolist(), prev_size.tolist(), strict=True))

    ip, ic = shared_rows(prev_keys, keys)
    prev_u, cur_u, n, a, _ = overlap_counts(prev_ids[ip], ids[ic])
    f = n / a[:, None] if n.size else np.zeros((prev_u.size, cur_u.size))
    col = {int(c): j for j, c in enumerate(cur_u.tolist())}

    feeders: dict[int, list[int]] = {}  # current id -> previous rows that feed it
    parts: dict[int, list[int]] = {}  # current id -> previous rows it is a split part of
    fate: set[int] = set()  # previous ids that feed or split
    best_out = f.max(axis=1) if f.size else np.zeros(prev_u.size)
    for i, p in enumerate(prev_u.tolist()):
        if f.shape[1] == 0:
            continue
        j = int(np.argmax(f[i]))
        if f[i, j] >= survive_threshold - _TOL:
            feeders.setdefault(int(cur_u[j]), []).append(i)
            fate.add(p)
            continue
        split_into = np.flatnonzero(f[i] >= split_threshold - _TOL)
        if split_into.size >= 2:
            for jj in split_into.tolist():
                parts.setdefault(int(cur_u[jj]), []).append(i)
            fate.add(p)

    rows: list[dict[str, Any]] = []
    for c in cur_all.tolist():
        size = size_of[c]
        fed = feeders.get(c, [])
        jc = col.get(c)
        if len(fed) == 1:
            rows.append(_row(c, "survive", [prev_u[fed[0]]], size, float(f[fed[0], jc])))
        elif len(fed) >= 2:
            pooled = n[fed, jc].sum() / a[fed].sum()
            rows.append(_row(c, "merge", prev_u[fed].tolist(), size, pooled))
        for i in parts.get(c, []):
            rows.append(_row(c, "split", [prev_u[i]], size, float(f[i, jc])))
        if not fed and c not in parts:
            best = float(f[:, jc].max()) if jc is not None and f.shape[0] else 0.0
            rows.append(_row(c, "emerge", [], size, best))
    best_of = dict(zip(prev_u.tolist(), best_out.tolist(), strict=True))
    for p in prev_all.tolist():
        if p not in fate:
            rows.append(_row(p, "vanish", [], prev_size_of[p], best_of.get(p, 0.0)))
    rows.sort(key=lambda r: (r["cluster"], EVENTS.index(r["event"]), r["from_clusters"]))
    return rows


def event_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Number of events of each kind (every kind present): a split counts once, not per part.

    Example:
        >>> rows = lineage_events([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 5, 5])
        >>> event_counts(rows)
        {'survive': 0, 'merge': 0, 'split': 1, 'emerge': 0, 'vanish': 0}
    """
    counts = dict.fromkeys(EVENTS, 0)
    split_parents = set()
    for r in rows:
        if r["event"] == "split":
            split_parents.add(r["from_clusters"])
        else:
            counts[r["event"]] += 1
    counts["split"] = len(split_parents)
    return counts
