"""Where this process sits: rank, world size and validation dataset lengths, from the Trainer.

Everything here reads the Trainer's strategy, never ``torch.distributed`` state: a
single-device Trainer inside an already initialised process group (a sweep under torchrun or
Ray) is one process as far as the projector is concerned.

Lightning turns the validation loaders (one loader, a list, a dict, nested collections, or a
``CombinedLoader``) into one flat list and numbers them in that order: ``dataloader_idx`` is a
position in that list. :func:`flat_loaders` flattens the same way, in either Lightning namespace.

Without ``id_key`` an id is a position in the validation run, which names a dataset sample only
when the loader does not shuffle: :func:`check_position_ids` refuses shuffling samplers.

Example:
    >>> from torch.utils.data import DataLoader
    >>> loaders = {"a": DataLoader(range(30)), "b": [DataLoader(range(7))]}
    >>> dataset_length(loaders, 1)
    7
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_embproj.collect.collector import Placement


def world(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` as the Trainer's strategy sees them.

    Example:
        >>> from types import SimpleNamespace
        >>> world(SimpleNamespace(strategy=SimpleNamespace(global_rank=1, world_size=2)))
        (1, 2)
    """
    strategy = getattr(trainer, "strategy", None)
    return strategy_world(strategy if strategy is not None else trainer)


def strategy_world(strategy: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of a Lightning strategy; ``None`` is one process.

    Example:
        >>> strategy_world(None)
        (0, 1)
    """
    # Lightning's Trainer does the same: strategies without `world_size` are one process.
    size = int(getattr(strategy, "world_size", 1) or 1)
    rank = int(getattr(strategy, "global_rank", 0) or 0)
    return rank, size


def flat_loaders(loaders: Any) -> list[Any]:
    """The validation loaders in the order Lightning numbers them (``dataloader_idx``).

    A ``CombinedLoader`` (either namespace) gives its ``flattened`` list; dicts are walked in
    their iteration order and lists / tuples in order, nested ones depth first; anything else is
    one loader. ``None`` is no loaders.

    Example:
        >>> flat_loaders({"a": "A", "b": ("B", {"c": "C"})})
        ['A', 'B', 'C']
    """
    if loaders is None:
        return []
    flattened = getattr(loaders, "flattened", None)
    if isinstance(flattened, list) and hasattr(loaders, "iterables"):
        return [leaf for item in flattened for leaf in flat_loaders(item)]
    if isinstance(loaders, Mapping):
        return [leaf for item in loaders.values() for leaf in flat_loaders(item)]
    if isinstance(loaders, (list, tuple)):
        return [leaf for item in loaders for leaf in flat_loaders(item)]
    return [loaders]


def dataset_length(loaders: Any, dataloader_idx: int) -> int | None:
    """Length of the map-style dataset behind loader ``dataloader_idx``; ``None`` if unknown.

    Unknown: no such loader, a loader without a ``dataset``, an ``IterableDataset`` (the
    ``DistributedSampler`` layout that derived ids rely on does not apply to it), or a dataset
    without ``len``.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> dataset_length([DataLoader(range(5)), DataLoader(range(3))], 0)
        5
    """
    from torch.utils.data import IterableDataset

    flat = flat_loaders(loaders)
    if not 0 <= dataloader_idx < len(flat):
        return None
    dataset = getattr(flat[dataloader_idx], "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset):
        return None
    try:
        return int(len(dataset))
    except (TypeError, NotImplementedError):
        return None


def loader_order(loader: Any) -> tuple[str, str]:
    """How a loader orders its dataset: ``("sequential" | "shuffled" | "other", sampler)``.

    ``"sequential"``: dataset order (a ``SequentialSampler``, an unshuffled
    ``DistributedSampler`` over the loader's dataset, an ``IterableDataset``, no sampler);
    ``"shuffled"``: a random order (``RandomSampler``, i.e. ``shuffle=True``,
    ``SubsetRandomSampler``, ``WeightedRandomSampler``, ``DistributedSampler(shuffle=True)``,
    also inside a batch sampler or Lightning's ``DistributedSamplerWrapper``); ``"other"``: a
    sampler this cannot tell.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> loader_order(DataLoader(range(8), shuffle=True))
        ('shuffled', 'RandomSampler (shuffle=True)')
        >>> loader_order(DataLoader(range(8)))
        ('sequential', 'SequentialSampler')
    """
    from torch.utils.data import (
        BatchSampler,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
        WeightedRandomSampler,
    )

    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        return "sequential", "IterableDataset"
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        # A custom batch sampler decides the order; its inner sampler, if any, tells more.
        sampler = getattr(batch_sampler, "sampler", batch_sampler)
    elif batch_sampler is not None:
        sampler = batch_sampler.sampler
    inner = sampler
    while inner is not None:
        name = type(inner).__name__
        if isinstance(inner, RandomSampler):
            return "shuffled", f"{name} (shuffle=True)"
        if isinstance(inner, (SubsetRandomSampler, WeightedRandomSampler)):
            return "shuffled", name
        if isinstance(inner, DistributedSampler):
            if getattr(inner, "shuffle", False):
                return "shuffled", f"{name}(shuffle=True)"
            # Lightning's DistributedSamplerWrapper spreads a user's sampler over the ranks.
            wrapped = getattr(getattr(inner, "dataset", None), "_sampler", None)
            if wrapped is None:
                return "sequential", f"{name}(shuffle=False)"
            inner = wrapped
            continue
        if isinstance(inner, SequentialSampler):
            return "sequential", name
        return "other", name
    return "sequential", "no sampler"


def check_position_ids(loaders: Any) -> str | None:
    """Refuse validation loaders whose positions are not dataset indices, for ids derived
    without ``id_key``; returns a warning for a sampler it cannot tell (else None).

    Raises:
        ValueError: a loader draws its samples in a random order (see :func:`loader_order`),
            naming ``id_key``, the sampler and both fixes.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> check_position_ids([DataLoader(range(8)), DataLoader(range(4), shuffle=True)])
        Traceback (most recent call last):
        ...
        ValueError: EmbeddingProjector needs `id_key` for validation dataloader 1: ...Random...
    """
    notes = []
    for idx, loader in enumerate(flat_loaders(loaders)):
        order, sampler = loader_order(loader)
        if order == "shuffled":
            raise ValueError(
                f"EmbeddingProjector needs `id_key` for validation dataloader {idx}: it draws "
                f"its samples with {sampler}, but without `id_key` a point's sample_id is its "
                f"position in the validation run, which is its dataset index only when the "
                f"loader does not shuffle: every run would track other samples under the same "
                f"ids (wrong sample_ids, drift where nothing changed). Either pass `id_key` (the "
                f"key of a stable id per sample in the validation_step outputs or the batch), "
                f"or make the validation loader sequential (shuffle=False, no random sampler)."
            )
        if order == "other":
            notes.append(f"{idx} ({sampler})")
    if not notes:
        return None
    return (
        f"validation dataloader {', '.join(notes)} uses a sampler the projector does not know: "
        f"without `id_key` a point's sample_id is its position in the validation run, the "
        f"dataset index only for a sequential sampler. If the sampler reorders or subsets the "
        f"dataset, sample_ids do not name the real samples (and shuffled, runs do not track "
        f"the same ones): pass `id_key`"
    )


def placement(trainer: Any, dataloader_idx: int, *, ids_derived: bool = True) -> Placement:
    """Where this rank's validation rows sit, for ids derived from dataset positions.

    Args:
        trainer: the Lightning Trainer (``strategy`` and ``val_dataloaders`` are read).
        dataloader_idx: the loader the current batch came from.
        ids_derived: ``False`` when ``id_key`` gives the ids: then no dataset length is needed.

    Returns:
        The rank, the world size and, for derived ids, the length of the loader's dataset
        (``DistributedSampler`` padding wraps around it; on one process it only tells how far
        the positions' schedule may be simulated ahead, and may be None).

    Raises:
        ValueError: on more than one process with derived ids when the loader's dataset length
            is unknown (an ``IterableDataset``, no ``len``): padded duplicates could not be told
            apart from real samples, so the projector needs ``id_key``.

    Example:
        >>> from types import SimpleNamespace
        >>> from torch.utils.data import DataLoader
        >>> loaders = {"a": DataLoader(range(9)), "b": DataLoader(range(4))}
        >>> strategy = SimpleNamespace(global_rank=1, world_size=2)
        >>> t = SimpleNamespace(strategy=strategy, val_dataloaders=loaders)
        >>> placement(t, 1)
        Placement(rank=1, world_size=2, dataset_len=4)
    """
    rank, size = world(trainer)
    if not ids_derived:
        return Placement(rank=rank, world_size=size)
    loaders = getattr(trainer, "val_dataloaders", None)
    length = dataset_length(loaders, dataloader_idx)
    if size == 1:
        return Placement(dataset_len=length)
    if length is None:
        raise ValueError(
            f"EmbeddingProjector needs `id_key` under DDP (world size {size}) for validation "
            f"dataloader {dataloader_idx}: without it ids are positions in the dataset, which "
            f"needs a map-style dataset with a length to undo DistributedSampler's interleaving "
            f"and padding, but {_describe(loaders, dataloader_idx)}. Return a stable id per "
            f"sample from validation_step (or in the batch) and pass its key as `id_key`."
        )
    return Placement(rank=rank, world_size=size, dataset_len=length)


def _describe(loaders: Any, dataloader_idx: int) -> str:
    from torch.utils.data import IterableDataset

    flat = flat_loaders(loaders)
    if not 0 <= dataloader_idx < len(flat):
        return f"the trainer has {len(flat)} validation loader(s)"
    dataset = getattr(flat[dataloader_idx], "dataset", None)
    if dataset is None:
        return f"the loader ({type(flat[dataloader_idx]).__name__}) has no `dataset`"
    iterable = isinstance(dataset, IterableDataset)
    kind = "an IterableDataset" if iterable else "a dataset without len()"
    return f"its dataset {type(dataset).__name__} is {kind}"
