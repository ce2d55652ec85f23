"""ranks.py: rank and world size from the strategy, dataset lengths of every val loader shape."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from digits import DigitsModel, digits_tensors, trainer
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_embproj.collect import Placement
from lightning_embproj.ranks import dataset_length, flat_loaders, placement, world


def loader(n: int, batch_size: int = 8) -> DataLoader:
    x, y = digits_tensors(n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Stream(IterableDataset):
    def __iter__(self):
        x, y = digits_tensors(10)
        return iter(zip(x, y, strict=True))


def ddp_trainer(val_dataloaders: Any, rank: int = 1, world_size: int = 2) -> Any:
    """The two attributes placement reads, as a DDP Trainer has them."""
    strategy = SimpleNamespace(global_rank=rank, world_size=world_size)
    return SimpleNamespace(strategy=strategy, val_dataloaders=val_dataloaders)


def combined_loader_classes() -> list[type]:
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    classes: list[type] = [CombinedLoader]
    try:
        from pytorch_lightning.utilities.combined_loader import CombinedLoader as PLCombined

        classes.append(PLCombined)
    except ImportError:
        pass
    return classes


SHAPES = {
    "single": lambda a, b, c: a,
    "list": lambda a, b, c: [a, b, c],
    "tuple": lambda a, b, c: (a, b, c),
    "dict": lambda a, b, c: {"z": a, "m": b, "a": c},  # iteration order, not sorted keys
    "nested": lambda a, b, c: {"first": [a, b], "second": {"deep": (c,)}},
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("combined", combined_loader_classes(), ids=lambda c: c.__module__)
def test_flat_loaders_numbers_loaders_as_lightning_does(shape, combined):
    a, b, c = loader(37), loader(11), loader(23)
    loaders = SHAPES[shape](a, b, c)
    lightning_order = combined(loaders, "sequential").flattened
    assert flat_loaders(loaders) == lightning_order
    assert flat_loaders(combined(loaders, "sequential")) == lightning_order
    expected = [37] if shape == "single" else [37, 11, 23]
    assert [dataset_length(loaders, i) for i in range(len(expected))] == expected


def test_dataset_length_unknown_cases():
    loaders = [loader(5), DataLoader(Stream(), batch_size=4), [1, 2, 3]]
    assert dataset_length(loaders, 0) == 5
    assert dataset_length(loaders, 1) is None  # IterableDataset
    assert dataset_length(loaders, 2) is None  # no dataset at all
    assert dataset_length(loaders, 3) is None  # no such loader
    assert dataset_length(None, 0) is None


def test_world_reads_the_strategy_not_torch_distributed():
    assert world(ddp_trainer(None, rank=3, world_size=4)) == (3, 4)
    assert world(SimpleNamespace(global_rank=0, world_size=1)) == (0, 1)  # no strategy
    assert world(SimpleNamespace(strategy=SimpleNamespace())) == (0, 1)   # no world_size
    real = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)
    assert world(real) == (0, 1)


@pytest.mark.parametrize("combined", [None, *combined_loader_classes()],
                         ids=lambda c: "dict" if c is None else c.__module__)
def test_placement_under_ddp_for_each_loader_of_a_dict(combined):
    loaders: Any = {"long": loader(301), "short": loader(57)}
    if combined is not None:
        loaders = combined(loaders, "sequential")
    assert placement(ddp_trainer(loaders), 0) == Placement(rank=1, world_size=2, dataset_len=301)
    assert placement(ddp_trainer(loaders), 1) == Placement(rank=1, world_size=2, dataset_len=57)


def test_placement_on_one_process_needs_no_length():
    loaders = DataLoader(Stream(), batch_size=4)
    assert placement(ddp_trainer(loaders, rank=0, world_size=1), 0) == Placement()


def test_placement_with_id_key_needs_no_length():
    loaders = [loader(9), DataLoader(Stream(), batch_size=4)]
    where = placement(ddp_trainer(loaders), 1, ids_derived=False)
    assert where == Placement(rank=1, world_size=2, dataset_len=None)


def test_placement_without_a_length_under_ddp_asks_for_id_key():
    loaders = {"ok": loader(9), "stream": DataLoader(Stream(), batch_size=4)}
    with pytest.raises(ValueError, match=r"needs `id_key` under DDP \(world size 2\) for "
                                         r"validation dataloader 1.*its dataset Stream is an "
                                         r"IterableDataset.*pass its key as `id_key`"):
        placement(ddp_trainer(loaders), 1)
    with pytest.raises(ValueError, match="the trainer has 2 validation loader"):
        placement(ddp_trainer(loaders), 2)


class RecordLengths(L.Callback):
    """In a real fit: the length placement finds per dataloader_idx, and the rows Lightning
    actually passes for that index (they must agree, or the index mapping is wrong)."""

    def __init__(self) -> None:
        self.found: dict[int, set[int | None]] = defaultdict(set)
        self.rows: dict[int, int] = defaultdict(int)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if trainer.sanity_checking:
            return
        as_ddp = ddp_trainer(trainer.val_dataloaders, rank=0, world_size=2)
        self.found[dataloader_idx].add(placement(as_ddp, dataloader_idx).dataset_len)
        self.rows[dataloader_idx] += len(batch[0])


@pytest.mark.parametrize("kind", ["list", "dict", "combined", "nested"])
def test_real_fit_passes_dataloader_idx_in_the_order_placement_uses(tmp_path, kind):
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    a, b, c = loader(37, 16), loader(11, 16), loader(23, 16)
    val: Any = {
        "list": [a, b, c],
        "dict": {"z": a, "m": b, "a": c},
        "combined": CombinedLoader({"z": a, "m": b, "a": c}, "sequential"),
        "nested": {"first": [a, b], "second": {"deep": (c,)}},
    }[kind]
    record = RecordLengths()
    torch.manual_seed(0)
    fit = trainer(tmp_path, [record], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    fit.fit(DigitsModel(), loader(16), val)
    assert dict(record.rows) == {0: 37, 1: 11, 2: 23}
    assert dict(record.found) == {0: {37}, 1: {11}, 2: {23}}
