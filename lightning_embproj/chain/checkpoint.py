"""Checkpoint-safe (de)serialisation of samples and runs: tensors, lists and plain Python only.

A run is saved with what the next run needs of it (its points, identity, layouts and metrics)
and restored as a :class:`~lightning_embproj.results.RunResult` of those (no clusters, lineage,
per-label rows or movers: they are not carried from run to run).

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

import dataclasses
from typing import Any

import numpy as np
import torch

from lightning_embproj import checks
from lightning_embproj.collect.hashing import keys_of
from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.sinks.columns import run_result


def _tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    # A run's arrays are read-only views; torch wants memory it may write.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _pack(value: np.ndarray | list[Any] | None) -> Any:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return _tensor(arr)
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
    """``sample`` with its keys recomputed from its ids with the current hash (a new sample)."""
    return dataclasses.replace(sample, keys=keys_of(sample.sample_ids, sample.dataloader_idx))


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


def projection_to_state(p: RunResult) -> dict[str, Any]:
    return {
        "sample": sample_to_state(p.sample),
        **p.identity.to_state(),
        "layouts": {k: _tensor(v) for k, v in p.layouts.items()},
        # plain floats: a numpy scalar would make torch.load(weights_only=True) refuse the file
        "metrics": {str(k): float(v) for k, v in p.metrics.items()},
    }


def projection_from_state(state: dict[str, Any], rekey: bool = False) -> RunResult:
    """The run saved by :func:`projection_to_state`; ``rekey``: recompute its keys (see
    :func:`rehash`). Its sample enters the pipeline here (checked, as a new run's is in
    :func:`~lightning_embproj.pipeline.process_run`); its kNN is computed again when needed."""
    sample = sample_from_state(state["sample"])
    return run_result(
        checks.sample(rehash(sample) if rekey else sample), RunIdentity.from_state(state),
        {k: v.numpy() for k, v in state["layouts"].items()}, metrics=dict(state["metrics"]),
    )


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint file at ``path`` as Lightning saved it, mapped lazily where the format
    allows (only the few entries read are paged in).

    Lightning before 2.5 restores callback state only in ``fit``; a ``validate(ckpt_path=...)``
    then reads its epoch, step and run counter here.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.ckpt")
        >>> torch.save({"epoch": 2, "global_step": 189}, path)
        >>> read_checkpoint(path)["global_step"]
        189
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)
