"""Cluster evolution stage: clusters with stable ids, lineage events and health per run.

After reduce / align / score, each projected validation run of a set gets:

- ``cluster``: a cluster id per tracked point (k-means or HDBSCAN in the original space,
  :mod:`lightning_embproj.evolve.clusters`; HDBSCAN noise ``-1``), and lineage rows ``survive`` /
  ``split`` / ``merge`` / ``emerge`` / ``vanish`` (MONIC), both from one overlap matrix with the
  previous run (:func:`lightning_embproj.evolve.lineage.transition`): an id passes on only through
  those events, an emerging cluster gets an id never used before in the chain;
- metrics: ``clusters/*``, ``rankme``, ``uniformity``, ``cka_previous``, ``R/stability``
  (:mod:`lightning_embproj.metrics.health`, :mod:`~lightning_embproj.metrics.stability`), and a
  per-label table when labels are set (:mod:`lightning_embproj.metrics.labels`).

The projection's sample was checked where the run entered the pipeline (``pipeline.process_run``):
the parts here take its arrays as they are (``check_input=False``).

:func:`evolve` returns these values (:class:`Evolved`) and the next chain state
(:class:`SetChain`); the chain state is replaced, never mutated, so a checkpoint taken while a
run is being processed holds either the state before it or after it.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.results import EpochSample, Projection
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(9, 1, (20, 4))])
    >>> p = Projection(EpochSample("z", np.arange(40), list(range(40)), X), epoch=0, step=1)
    >>> out = evolve(p, None, SetChain(), EvolveSettings(n_clusters=2))
    >>> sorted(set(out.clusters.tolist())), [r["event"] for r in out.lineage]
    ([0, 1], ['emerge', 'emerge'])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from lightning_embproj.evolve.cluster_chain import ClusterChain
from lightning_embproj.evolve.clusters import cluster_points, cluster_scores
from lightning_embproj.evolve.overlap import shared_rows
from lightning_embproj.metrics.health import health_metrics
from lightning_embproj.metrics.labels import per_label_table
from lightning_embproj.metrics.stability import StabilityPool
from lightning_embproj.results import EpochSample, Projection

CLUSTER_METHODS = ("kmeans", "hdbscan")


@dataclass
class EvolveSettings:
    """``clusters``: ``"kmeans"``, ``"hdbscan"`` or None (no clusters, no lineage);
    ``smoothing``: temporal smoothing of the clustering (``cluster_points(smoothing=...)``;
    k-means seeded from the previous run's clusters, kept in the chain)."""

    clusters: str | None = "kmeans"
    n_clusters: int | None = None
    survive_threshold: float = 0.7
    split_threshold: float = 0.3
    seed: int = 0
    smoothing: bool = True


@dataclass
class SetChain:
    """What one set carries from run to run: cluster ids and pooled stability pairs."""

    clusters: ClusterChain = field(default_factory=ClusterChain)
    stability: dict[str, StabilityPool] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "clusters": self.clusters.state_dict(),
            "stability": {r: pool.state_dict() for r, pool in self.stability.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SetChain:
        clusters = state.get("clusters")
        return cls(
            clusters=ClusterChain() if clusters is None else ClusterChain.from_state_dict(clusters),
            stability={
                r: StabilityPool.from_state_dict(s) for r, s in state.get("stability", {}).items()
            },
        )


def _no_warn(topic: str, message: str) -> None:
    """Default for ``warn``: stay silent."""


@dataclass
class Evolved:
    """What :func:`evolve` found for one run: cluster ids, lineage rows, per-label rows, metrics
    (health, ``clusters/*``, ``R/stability``, in that order) and the next chain state."""

    chain: SetChain
    metrics: dict[str, float] = field(default_factory=dict)
    clusters: np.ndarray | None = None
    lineage: list[dict[str, Any]] | None = None
    per_label: list[dict[str, Any]] | None = None


def evolve(
    projection: Projection,
    previous: Projection | None,
    chain: SetChain,
    settings: EvolveSettings,
    warn: Callable[[str, str], None] = _no_warn,
    val_index: int = 0,
) -> Evolved:
    """Clusters, lineage, cluster / health metrics and per-label rows of ``projection`` (run
    ``val_index``) and the next chain state (``chain`` itself is left as it was).

    Each part that fails becomes one warning and is left out of this run; with clusters on, a
    failed clustering leaves empty ``cluster`` cells so every run keeps the same columns.
    """
    out = Evolved(copy.deepcopy(chain))
    sample = projection.sample
    X = np.asarray(sample.embeddings, dtype=np.float32)
    prev = previous.sample if previous is not None else None
    step = f"at validation run {val_index} for {sample.name!r}"

    def guarded(topic: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one failed part must not stop the others
            warn(f"evolve:{topic}:{type(err).__name__}",
                 f"{topic} failed {step} ({type(err).__name__}: {err}); the other outputs "
                 f"are still written")
            return None

    metrics = guarded("embedding health", lambda: health_metrics(
        sample.keys, X, prev.keys if prev is not None else None,
        prev.embeddings if prev is not None else None, check_input=False,
    ))
    for name, value in (metrics or {}).items():
        out.metrics[name.removeprefix("health/")] = value
    if settings.clusters is not None:
        clustered = guarded("clustering", lambda: _clusters(sample, out, settings))
        if clustered is None:
            out.clusters = np.full(len(sample), None, dtype=object)
    labels = sample.labels
    if labels is not None:
        out.per_label = guarded("the per-label table", lambda: per_label_table(
            sample.keys, X, labels, prev.keys if prev is not None else None,
            prev.embeddings if prev is not None else None,
            neighbours=projection.knn, check_input=False,
        ))
    if previous is not None:
        for reducer, layout in projection.layouts.items():
            value = guarded(
                f"{reducer} stability",
                partial(_stability, out.chain, reducer, projection, previous, layout),
            )
            if value is not None:
                out.metrics[f"{reducer}/stability"] = value
    return out


def _clusters(sample: EpochSample, out: Evolved, settings: EvolveSettings) -> bool:
    chain = out.chain.clusters
    prev_keys, prev_ids = chain.prev_keys, chain.prev_ids
    first = prev_keys.size == 0
    # The previous run's ids come from the cluster chain (already checkpointed state): the
    # same ids as the previous run's ``cluster`` column, always integers.
    raw = cluster_points(
        np.asarray(sample.embeddings, dtype=np.float32), method=str(settings.clusters),
        n_clusters=settings.n_clusters, labels=sample.labels, seed=settings.seed,
        keys=sample.keys, smoothing=settings.smoothing,
        previous=None if first else (prev_keys, prev_ids), check_input=False,
    )
    step = chain.update(sample.keys, raw, settings.survive_threshold, settings.split_threshold,
                        check_input=False)
    out.clusters = step.ids
    out.lineage = step.rows
    out.metrics.update(cluster_scores(
        sample.keys, step.ids, sample.labels,
        None if first else prev_keys, None if first else prev_ids, check_input=False,
    ))
    return True


def _stability(
    chain: SetChain, reducer: str, projection: Projection, previous: Projection,
    layout: np.ndarray,
) -> float:
    prev_layout = previous.layouts.get(reducer)
    if prev_layout is None:
        return math.nan
    ip, ic = shared_rows(previous.sample.keys, projection.sample.keys)
    pool = chain.stability.setdefault(reducer, StabilityPool())
    if ip.size >= 3:
        pool.add(
            projection.sample.keys[ic],
            np.asarray(previous.sample.embeddings, dtype=np.float64)[ip],
            np.asarray(projection.sample.embeddings, dtype=np.float64)[ic],
            np.asarray(prev_layout, dtype=np.float64)[ip], np.asarray(layout)[ic],
            check_input=False,
        )
    return pool.value()
