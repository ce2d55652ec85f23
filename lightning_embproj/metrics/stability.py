"""Temporal stability of a layout sequence (Vernier et al., EuroVis 2020), pooled over runs.

Each tracked point's step length between two consecutive runs, in the original space and in
the aligned layout; their Spearman correlation (``scipy.stats.spearmanr``) says whether the
layout moves most the points the model moved most. :class:`StabilityPool` keeps a bounded,
fixed sample of those pairs across runs.

Example:
    >>> rng = np.random.default_rng(0)
    >>> X0 = rng.normal(size=(50, 8))
    >>> step = rng.normal(size=(50, 1)) * rng.normal(size=(50, 8))
    >>> L0 = X0[:, :2]
    >>> temporal_stability(X0, X0 + step, L0, L0 + 2 * step[:, :2]) > 0.5
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.collect.hashing import splitmix64

_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's own increment


def step_lengths(
    X_prev: np.ndarray, X: np.ndarray, L_prev: np.ndarray, L: np.ndarray, *,
    check_input: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Each matched row's step length in the original space and in the layout.

    Example:
        >>> z = np.zeros((2, 2))
        >>> [d.tolist() for d in step_lengths(z, z + [3.0, 4.0], z, z + 1.0)][0]
        [5.0, 5.0]
    """
    if check_input:
        X_prev, X = checks.matrix(X_prev, "X_prev"), checks.matrix(X, "X")
        L_prev, L = checks.matrix(L_prev, "L_prev"), checks.matrix(L, "L")
    if X_prev.shape != X.shape or L_prev.shape != L.shape or X.shape[0] != L.shape[0]:
        raise ValueError(
            "X_prev, X must have one shape and L_prev, L another, with the same rows; got "
            f"{X_prev.shape}, {X.shape}, {L_prev.shape}, {L.shape}"
        )
    d_orig = np.linalg.norm(X.astype(np.float64) - X_prev, axis=1)
    d_lay = np.linalg.norm(L.astype(np.float64) - L_prev, axis=1)
    return d_orig, d_lay


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """``scipy.stats.spearmanr`` of two samples (average ranks for ties), NaN with fewer than 3
    values or a constant side (where scipy warns).

    Example:
        >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
        0.5
    """
    from scipy.stats import spearmanr

    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def temporal_stability(
    X_prev: np.ndarray, X: np.ndarray, L_prev: np.ndarray, L: np.ndarray
) -> float:
    """Spearman correlation of step lengths in the original space and in the layout.

    Vernier et al. (EuroVis 2020) for one pair of consecutive runs, rows already matched
    (same points, same order), layouts aligned. 1: the layout moves most the points the model
    moved most. NaN with fewer than 3 rows or no movement on one side. Pool several runs with
    :class:`StabilityPool`.

    Example:
        >>> X0 = np.arange(12.0).reshape(4, 3) ** 2
        >>> temporal_stability(X0, 2 * X0, X0[:, :2], 3 * X0[:, :2])
        1.0
    """
    return spearman(*step_lengths(X_prev, X, L_prev, L))


def _priority(keys: np.ndarray, run: int) -> np.ndarray:
    """A fixed pseudo-random order of (run, point) pairs: splitmix64 of key + run * golden."""
    # splitmix64 adds one golden ratio itself: (run - 1) here make it key + run * golden
    offset = np.uint64(((run - 1) * _GOLDEN) % 2**64)
    with np.errstate(over="ignore"):
        return splitmix64(keys.astype(np.uint64) + offset)


class StabilityPool:
    """Step lengths pooled over consecutive runs for :func:`temporal_stability`, bounded.

    Keeps at most ``capacity`` (original, layout) step-length pairs: those with the smallest
    hash of (run number, key), a fixed uniform sample of all pairs seen (bottom-k, as the
    sampler does), so memory is ``O(capacity)`` and the result does not depend on timing.
    :meth:`state_dict` holds plain ints and lists (``torch.load(weights_only=True)`` refuses
    numpy arrays).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> pool = StabilityPool(capacity=1000)
        >>> X0 = rng.normal(size=(40, 4)); X1 = X0 + rng.normal(size=(40, 4))
        >>> pool.add(np.arange(40), X0, X1, X0[:, :2], X1[:, :2])
        >>> pool.add(np.arange(40), X1, X1, X1[:, :2], X1[:, :2] + 1e-3 * (X1 - X0)[:, :2])
        >>> len(pool), round(pool.value(), 2) > 0.5
        (80, True)
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if not isinstance(capacity, (int, np.integer)) or capacity < 3:
            raise ValueError(f"capacity must be an int >= 3, got {capacity!r}")
        self.capacity = int(capacity)
        self.runs = 0
        self.priority = np.zeros(0, dtype=np.uint64)
        self.original = np.zeros(0)
        self.layout = np.zeros(0)

    def __len__(self) -> int:
        return int(self.priority.size)

    def add(
        self,
        keys: np.ndarray | Sequence[int],
        X_prev: np.ndarray,
        X: np.ndarray,
        L_prev: np.ndarray,
        L: np.ndarray,
        *,
        check_input: bool = True,
    ) -> None:
        """Add one pair of consecutive runs, rows matched; ``keys`` name the rows.

        ``check_input=False``: the arrays come from checked runs (see
        :mod:`lightning_embproj.checks`)."""
        d_orig, d_lay = step_lengths(X_prev, X, L_prev, L, check_input=check_input)
        if check_input:
            keys = checks.keys(keys, "keys", rows=d_orig.size)
        prio = np.concatenate([self.priority, _priority(np.asarray(keys), self.runs)])
        a = np.concatenate([self.original, d_orig])
        b = np.concatenate([self.layout, d_lay])
        if prio.size > self.capacity:
            keep = np.argsort(prio, kind="stable")[: self.capacity]
            prio, a, b = prio[keep], a[keep], b[keep]
        self.priority, self.original, self.layout = prio, a, b
        self.runs += 1

    def value(self) -> float:
        """Spearman correlation over the pooled pairs (NaN with fewer than 3)."""
        return spearman(self.original, self.layout)

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity, "runs": self.runs,
            "priority": self.priority.tolist(), "original": self.original.tolist(),
            "layout": self.layout.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StabilityPool:
        try:
            pool = cls(int(state["capacity"]))
            pool.runs = int(state["runs"])
            pool.priority = np.asarray(state["priority"], dtype=np.uint64).reshape(-1)
            pool.original = np.asarray(state["original"], dtype=np.float64).reshape(-1)
            pool.layout = np.asarray(state["layout"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "stability pool state must be a dict with 'capacity', 'runs' (ints) and "
                f"'priority', 'original', 'layout' (lists of equal length); got {state!r:.200}"
            ) from err
        if not pool.priority.size == pool.original.size == pool.layout.size:
            raise ValueError(
                "stability pool state: 'priority', 'original', 'layout' lengths differ"
            )
        return pool
