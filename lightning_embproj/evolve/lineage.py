"""Cluster lineage between runs: MONIC events, and the stable cluster ids that follow them.

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

Ids pass on only through these events, decided by the same overlap matrix
(:func:`transition`), so the ``cluster`` column and the lineage cannot disagree:

- a cluster fed by one ``P`` (``survive``) takes ``P``'s id; fed by several (``merge``), the
  id of the main parent, the one that put the most shared members into it (ties: the
  smaller id);
- a split's id goes to its largest part (most of ``P``'s shared members; ties: the part
  numbered first) among the parts that take no id through ``survive`` / ``merge`` (and no
  larger split's id), so a part that continues another cluster keeps that one;
- every other cluster (``emerge``, and the smaller parts of a split) gets a fresh id: the
  chain's next free id, never one used before; a ``vanish``-ed id is never alive again.

Example:
    >>> step = transition([], [], [1, 2, 3, 4], [0, 0, 1, 1], next_id=0)
    >>> step.ids.tolist(), [(r["cluster"], r["event"]) for r in step.rows], step.next_id
    ([0, 0, 1, 1], [(0, 'emerge'), (1, 'emerge')], 2)
    >>> # keys 1, 2 stay together, 3, 4 become noise, 5, 6 are new points
    >>> step = transition([1, 2, 3, 4], step.ids, [1, 2, 3, 4, 5, 6], [3, 3, -1, -1, 8, 8],
    ...                   next_id=step.next_id)
    >>> step.ids.tolist(), [(r["cluster"], r["event"], r["from_clusters"]) for r in step.rows]
    ([0, 0, -1, -1, 2, 2], [(0, 'survive', '0'), (1, 'vanish', ''), (2, 'emerge', '')])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.clusters import (
    NOISE,
    check_ids,
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


class Transition(NamedTuple):
    """One run's cluster ids and lineage rows, and the chain's next free id after it."""

    ids: np.ndarray
    rows: list[dict[str, Any]]
    next_id: int


def transition(
    prev_keys: np.ndarray | Sequence[int],
    prev_ids: np.ndarray | Sequence[int],
    keys: np.ndarray | Sequence[int],
    raw_ids: np.ndarray | Sequence[int],
    next_id: int,
    survive_threshold: float = 0.7,
    split_threshold: float = 0.3,
    *,
    check_input: bool = True,
) -> Transition:
    """This run's stable cluster ids and its MONIC lineage rows, from one overlap matrix.

    ``prev_keys`` / ``prev_ids``: the previous run's tracking keys and stable ids (empty on the
    first run); ``keys`` / ``raw_ids``: this run's keys and cluster numbers as the clustering
    gave them (any ints, ``-1`` noise); ``next_id``: the chain's next free id (above every id
    used so far). Returns :class:`Transition`: ``ids`` (``(N,)`` int64, noise stays ``-1``),
    ``rows`` (dicts with the keys of :data:`LINEAGE_COLUMNS`, ``cluster`` holding the new
    ids) and the next free id. Fresh ids are handed out in the order of the raw numbers. See
    the module docstring for the events and for which cluster takes which id.
    ``check_input=False``: the keys are checked already (a checked run's, a restored chain's).

    Example:
        >>> # P0 (keys 1-4) goes whole into raw 0 (it survives), P1 (5-8) splits 2 / 2
        >>> step = transition([1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 1, 1, 1, 1],
        ...                   [1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 1, 1], next_id=2)
        >>> step.ids.tolist()
        [0, 0, 0, 0, 0, 0, 1, 1]
        >>> [(r["cluster"], r["event"], r["from_clusters"]) for r in step.rows]
        [(0, 'survive', '0'), (0, 'split', '1'), (1, 'split', '1')]
    """
    survive_threshold, split_threshold = check_thresholds(survive_threshold, split_threshold)
    if check_input:
        prev_keys = checks.keys(prev_keys, "prev_keys")
        keys = checks.keys(keys, "keys")
    prev_keys, keys = np.asarray(prev_keys, dtype=np.int64), np.asarray(keys, dtype=np.int64)
    prev_ids = check_ids(prev_ids, prev_keys.size, "prev_ids")
    raw = check_ids(raw_ids, keys.size, "raw_ids")
    if isinstance(next_id, bool) or not isinstance(next_id, (int, np.integer)) or next_id < 0:
        raise ValueError(f"next_id must be a non-negative int, got {next_id!r}")
    if prev_ids.size and prev_ids.max() >= next_id:
        raise ValueError(
            f"next_id ({next_id}) must exceed every previous id (max {int(prev_ids.max())})"
        )
    next_id = int(next_id)

    cur_all, cur_size = np.unique(raw[raw != NOISE], return_counts=True)
    prev_all, prev_size = np.unique(prev_ids[prev_ids != NOISE], return_counts=True)
    ip, ic = shared_rows(prev_keys, keys)
    # The one overlap matrix of this run: rows = previous clusters with shared members,
    # columns = current raw clusters with shared members.
    prev_u, cur_u, n, a, _ = overlap_counts(prev_ids[ip], raw[ic])
    f = n / a[:, None] if n.size else np.zeros((prev_u.size, cur_u.size))

    feeds: dict[int, int] = {}  # previous row -> the current column it feeds
    parts: dict[int, list[int]] = {}  # previous row -> current columns it splits into
    for i in range(prev_u.size):
        if not cur_u.size:
            break
        j = int(np.argmax(f[i]))
        if f[i, j] >= survive_threshold - _TOL:
            feeds[i] = j
            continue
        into = np.flatnonzero((f[i] >= split_threshold - _TOL) & (n[i] > 0))
        if into.size >= 2:
            parts[i] = into.tolist()
    fed_by: dict[int, list[int]] = {}  # current column -> previous rows feeding it
    for i, j in feeds.items():
        fed_by.setdefault(j, []).append(i)
    part_of: dict[int, list[int]] = {}  # current column -> previous rows it is a part of
    for i, cols in parts.items():
        for j in cols:
            part_of.setdefault(j, []).append(i)

    heir: dict[int, int] = {}  # current column -> previous row whose id it takes
    for j, sources in fed_by.items():
        heir[j] = min(sources, key=lambda i: (-n[i, j], prev_u[i]))
    claims = sorted(
        ((i, j) for i, cols in parts.items() for j in cols if j not in fed_by),
        key=lambda ij: (-n[ij], prev_u[ij[0]], cur_u[ij[1]]),
    )
    placed: set[int] = set()
    for i, j in claims:  # largest parts first: each split id to one part, each part one id
        if i not in placed and j not in heir:
            heir[j] = i
            placed.add(i)

    col = {int(c): j for j, c in enumerate(cur_u.tolist())}  # -1: no shared members
    new_ids = np.empty(cur_all.size, dtype=np.int64)
    for k, c in enumerate(cur_all.tolist()):
        jc = col.get(c, -1)
        if jc in heir:
            new_ids[k] = prev_u[heir[jc]]
        else:
            new_ids[k] = next_id
            next_id += 1
    ids = np.full(raw.shape, NOISE, dtype=np.int64)
    inside = raw != NOISE
    ids[inside] = new_ids[np.searchsorted(cur_all, raw[inside])]

    rows: list[dict[str, Any]] = []
    for k, c in enumerate(cur_all.tolist()):
        cid, size, jc = int(new_ids[k]), int(cur_size[k]), col.get(c, -1)
        sources, split_from = fed_by.get(jc, []), part_of.get(jc, [])
        if len(sources) == 1:
            rows.append(_row(cid, "survive", [prev_u[sources[0]]], size, f[sources[0], jc]))
        elif sources:
            pooled = n[sources, jc].sum() / a[sources].sum()
            rows.append(_row(cid, "merge", prev_u[sources].tolist(), size, pooled))
        for i in split_from:
            rows.append(_row(cid, "split", [prev_u[i]], size, f[i, jc]))
        if not sources and not split_from:
            best = float(f[:, jc].max()) if jc >= 0 and prev_u.size else 0.0
            rows.append(_row(cid, "emerge", [], size, best))
    fate = set(feeds) | set(parts)
    best_out = dict(zip(prev_u.tolist(), (f.max(axis=1) if f.size else np.zeros(prev_u.size))
                        .tolist(), strict=True))
    row_of = {int(p): i for i, p in enumerate(prev_u.tolist())}
    for p, size in zip(prev_all.tolist(), prev_size.tolist(), strict=True):
        if row_of.get(p) not in fate:
            rows.append(_row(p, "vanish", [], size, best_out.get(p, 0.0)))
    rows.sort(key=lambda r: (r["cluster"], EVENTS.index(r["event"]), r["from_clusters"]))
    return Transition(ids, rows, next_id)


@dataclass
class ClusterChain:
    """The cluster state between runs: the previous run's keys and ids, the next free id.

    Plain lists and an int, so :meth:`state_dict` goes into a Lightning checkpoint as is.

    Example:
        >>> chain = ClusterChain()
        >>> chain.update([10, 11, 12], [0, 0, 1]).ids.tolist()
        [0, 0, 1]
        >>> ClusterChain.from_state_dict(chain.state_dict()) == chain
        True
    """

    keys: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    next_id: int = 0

    def update(
        self,
        keys: np.ndarray | Sequence[int],
        raw_ids: np.ndarray | Sequence[int],
        survive_threshold: float = 0.7,
        split_threshold: float = 0.3,
        *,
        check_input: bool = True,
    ) -> Transition:
        """This run's ids and lineage (:func:`transition`); this run becomes the previous.

        ``check_input=False``: ``keys`` are a checked run's."""
        if check_input:
            keys = checks.keys(keys, "keys")
        step = transition(self.keys, self.ids, keys, raw_ids, self.next_id,
                          survive_threshold, split_threshold, check_input=False)
        self.keys = np.asarray(keys, dtype=np.int64).tolist()
        self.ids = step.ids.tolist()
        self.next_id = step.next_id
        return step

    @property
    def prev_keys(self) -> np.ndarray:
        return np.asarray(self.keys, dtype=np.int64)

    @property
    def prev_ids(self) -> np.ndarray:
        return np.asarray(self.ids, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "ids": list(self.ids), "next_id": int(self.next_id)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClusterChain:
        """Restore :meth:`state_dict`; without ``next_id`` it continues after the largest id."""
        try:
            keys = [int(k) for k in state["keys"]]
            ids = [int(i) for i in state["ids"]]
            next_id = int(state.get("next_id", max(ids, default=-1) + 1))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                "cluster chain state must be a dict with 'keys' and 'ids' (lists of ints of "
                f"equal length) and 'next_id' (int); got {state!r:.200}"
            ) from err
        if len(keys) != len(ids):
            raise ValueError(
                f"cluster chain state has {len(keys)} keys but {len(ids)} ids: lengths must match"
            )
        checks.keys(keys, "cluster chain state keys")  # the keys enter the pipeline here
        if ids and next_id <= max(ids):
            raise ValueError(
                f"cluster chain state has next_id {next_id}, not above its largest id "
                f"{max(ids)}: ids would be reused"
            )
        return cls(keys, ids, next_id)


def event_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Number of events of each kind (every kind present): a split counts once, not per part.

    Example:
        >>> rows = transition([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 5, 5], 1).rows
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
