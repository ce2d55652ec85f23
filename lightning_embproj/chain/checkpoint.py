"""Checkpoint-safe (de)serialisation of projections: tensors, lists and plain Python only.

Lightning may load checkpoints with ``torch.load(weights_only=True)``, which refuses numpy
arrays; everything here is a ``torch.Tensor``, a list, a str, an int or a float.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.results import EpochSample
    >>> s = EpochSample("e", np.array([3, 1]), ["a", "b"], np.ones((2, 2), np.float32),
    ...                 labels=np.array([0, 1]))
    >>> back = sample_from_state(sample_to_state(s))
    >>> back.sample_ids, back.labels.tolist()
    (['a', 'b'], [0, 1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_embproj import checks
from lightning_embproj.collect.hashing import keys_of
from lightning_embproj.results import EpochSample, Projection


def _pack(value: np.ndarray | list[Any] | None) -> Any:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(arr))
    return [v.item() if hasattr(v, "item") else v for v in arr.tolist()]


def _unpack(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.numpy()
    out = np.empty(len(value), dtype=object)
    out[:] = value
    return out


def rehash(sample: EpochSample) -> EpochSample:
    """Recompute ``sample.keys`` from its ids with the current hash (in place; returns it)."""
    sample.keys = keys_of(sample.sample_ids, sample.dataloader_idx)
    return sample


def sample_to_state(sample: EpochSample) -> dict[str, Any]:
    return {
        "name": sample.name,
        "keys": _pack(sample.keys),
        "sample_ids": list(sample.sample_ids),
        "embeddings": _pack(sample.embeddings),
        "labels": _pack(sample.labels),
        "metadata": {k: _pack(v) for k, v in sample.metadata.items()},
        "dataloader_idx": _pack(sample.dataloader_idx),
    }


def sample_from_state(state: dict[str, Any]) -> EpochSample:
    return EpochSample(
        name=state["name"],
        keys=_unpack(state["keys"]),
        sample_ids=list(state["sample_ids"]),
        embeddings=_unpack(state["embeddings"]),
        labels=_unpack(state["labels"]),
        metadata={k: _unpack(v) for k, v in state["metadata"].items()},
        dataloader_idx=_unpack(state["dataloader_idx"]),
    )


def projection_to_state(p: Projection) -> dict[str, Any]:
    return {
        "sample": sample_to_state(p.sample),
        "epoch": p.epoch,
        "step": p.step,
        "val_index": p.val_index,
        "chain": p.chain,
        "stage": p.stage,
        "layouts": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.layouts.items()},
        # plain floats: a numpy scalar would make torch.load(weights_only=True) refuse the file
        "metrics": {str(k): float(v) for k, v in p.metrics.items()},
    }


def projection_from_state(state: dict[str, Any]) -> Projection:
    """The previous run back from a checkpoint: its sample enters the pipeline here (checked,
    as ``project_epoch`` checks a new run's), its kNN is computed again when needed."""
    return Projection(
        sample=checks.sample(sample_from_state(state["sample"])),
        epoch=int(state["epoch"]),
        step=int(state["step"]),
        layouts={k: v.numpy() for k, v in state["layouts"].items()},
        metrics=dict(state["metrics"]),
        # checkpoints written before validation runs were counted knew only the epoch
        val_index=int(state.get("val_index", state["epoch"])),
        chain=int(state.get("chain", 0)),
        stage=str(state.get("stage", "fit")),
    )
