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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.overlap import NOISE, check_ids, overlap_counts, shared_rows

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
    next_id = _checked_next_id(next_id, prev_ids)

    ip, ic = shared_rows(prev_keys, keys)
    match = _match(prev_ids[ip], raw[ic], survive_threshold, split_threshold)
    cur_all, cur_size = np.unique(raw[raw != NOISE], return_counts=True)
    new_ids, next_id = _assign_ids(match, cur_all, next_id)
    ids = np.full(raw.shape, NOISE, dtype=np.int64)
    inside = raw != NOISE
    ids[inside] = new_ids[np.searchsorted(cur_all, raw[inside])]

    rows = _current_rows(match, cur_all, cur_size, new_ids) + _vanish_rows(match, prev_ids)
    rows.sort(key=lambda r: (r["cluster"], EVENTS.index(r["event"]), r["from_clusters"]))
    return Transition(ids, rows, next_id)


def _checked_next_id(next_id: Any, prev_ids: np.ndarray) -> int:
    if isinstance(next_id, bool) or not isinstance(next_id, (int, np.integer)) or next_id < 0:
        raise ValueError(f"next_id must be a non-negative int, got {next_id!r}")
    if prev_ids.size and prev_ids.max() >= next_id:
        raise ValueError(
            f"next_id ({next_id}) must exceed every previous id (max {int(prev_ids.max())})"
        )
    return int(next_id)


@dataclass
class _Match:
    """The overlap matrix of one run (rows: previous clusters with shared members, columns:
    current raw clusters with shared members) and what became of each previous cluster."""

    prev_u: np.ndarray  # previous id of each row
    cur_u: np.ndarray  # raw number of each column
    n: np.ndarray  # shared members of row i now in column j
    a: np.ndarray  # shared members of row i
    f: np.ndarray  # n / a
    feeds: dict[int, int]  # previous row -> the current column it feeds
    parts: dict[int, list[int]]  # previous row -> current columns it splits into
    fed_by: dict[int, list[int]]  # current column -> previous rows feeding it
    part_of: dict[int, list[int]]  # current column -> previous rows it is a part of

    def column(self, raw: int) -> int:
        """The column of raw cluster number ``raw``; -1 when it has no shared members."""
        j = int(np.searchsorted(self.cur_u, raw))
        return j if j < self.cur_u.size and self.cur_u[j] == raw else -1


def _match(prev_shared: np.ndarray, raw_shared: np.ndarray, survive: float, split: float
           ) -> _Match:
    prev_u, cur_u, n, a, _ = overlap_counts(prev_shared, raw_shared)
    f = n / a[:, None] if n.size else np.zeros((prev_u.size, cur_u.size))
    feeds: dict[int, int] = {}
    parts: dict[int, list[int]] = {}
    for i in range(prev_u.size if cur_u.size else 0):
        j = int(np.argmax(f[i]))
        if f[i, j] >= survive - _TOL:
            feeds[i] = j
            continue
        into = np.flatnonzero((f[i] >= split - _TOL) & (n[i] > 0))
        if into.size >= 2:
            parts[i] = into.tolist()
    fed_by: dict[int, list[int]] = {}
    for i, j in feeds.items():
        fed_by.setdefault(j, []).append(i)
    part_of: dict[int, list[int]] = {}
    for i, cols in parts.items():
        for j in cols:
            part_of.setdefault(j, []).append(i)
    return _Match(prev_u, cur_u, n, a, f, feeds, parts, fed_by, part_of)


def _heirs(m: _Match) -> dict[int, int]:
    """Current column -> the previous row whose id it takes (see the module docstring)."""
    heir = {j: min(rows, key=lambda i: (-m.n[i, j], m.prev_u[i])) for j, rows in m.fed_by.items()}
    claims = sorted(
        ((i, j) for i, cols in m.parts.items() for j in cols if j not in m.fed_by),
        key=lambda ij: (-m.n[ij], m.prev_u[ij[0]], m.cur_u[ij[1]]),
    )
    placed: set[int] = set()
    for i, j in claims:  # largest parts first: each split id to one part, each part one id
        if i not in placed and j not in heir:
            heir[j] = i
            placed.add(i)
    return heir


def _assign_ids(m: _Match, cur_all: np.ndarray, next_id: int) -> tuple[np.ndarray, int]:
    """The stable id of each current raw cluster in ``cur_all``, and the next free id."""
    heir = _heirs(m)
    new_ids = np.empty(cur_all.size, dtype=np.int64)
    for k, c in enumerate(cur_all.tolist()):
        j = m.column(c)
        if j in heir:
            new_ids[k] = m.prev_u[heir[j]]
        else:
            new_ids[k] = next_id
            next_id += 1
    return new_ids, next_id


def _current_rows(m: _Match, cur_all: np.ndarray, cur_size: np.ndarray, new_ids: np.ndarray
                  ) -> list[dict[str, Any]]:
    """The survive / merge / split / emerge rows of the current clusters."""
    rows: list[dict[str, Any]] = []
    for k, c in enumerate(cur_all.tolist()):
        cid, size, j = int(new_ids[k]), int(cur_size[k]), m.column(c)
        sources, split_from = m.fed_by.get(j, []), m.part_of.get(j, [])
        if len(sources) == 1:
            rows.append(_row(cid, "survive", [m.prev_u[sources[0]]], size, m.f[sources[0], j]))
        elif sources:
            pooled = m.n[sources, j].sum() / m.a[sources].sum()
            rows.append(_row(cid, "merge", m.prev_u[sources].tolist(), size, pooled))
        for i in split_from:
            rows.append(_row(cid, "split", [m.prev_u[i]], size, m.f[i, j]))
        if not sources and not split_from:
            best = float(m.f[:, j].max()) if j >= 0 and m.prev_u.size else 0.0
            rows.append(_row(cid, "emerge", [], size, best))
    return rows


def _vanish_rows(m: _Match, prev_ids: np.ndarray) -> list[dict[str, Any]]:
    """One row per previous cluster that neither feeds a cluster nor splits."""
    prev_all, prev_size = np.unique(prev_ids[prev_ids != NOISE], return_counts=True)
    fate = set(m.feeds) | set(m.parts)
    best_out = m.f.max(axis=1) if m.f.size else np.zeros(m.prev_u.size)
    best_of = dict(zip(m.prev_u.tolist(), best_out.tolist(), strict=True))
    row_of = {int(p): i for i, p in enumerate(m.prev_u.tolist())}
    return [
        _row(p, "vanish", [], size, best_of.get(p, 0.0))
        for p, size in zip(prev_all.tolist(), prev_size.tolist(), strict=True)
        if row_of.get(p) not in fate
    ]


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
