"""The cluster state between runs: the previous run's keys and stable ids, the next free id.

Each run goes through :func:`lightning_embproj.evolve.lineage.transition` and becomes the
previous run of the next.

Example:
    >>> chain = ClusterChain()
    >>> chain.update([1, 2, 3], [0, 0, 1]).ids.tolist()
    [0, 0, 1]
    >>> chain.update([1, 2, 3], [5, 5, 5]).ids.tolist()
    [0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_embproj import checks
from lightning_embproj.evolve.lineage import Transition, transition


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
