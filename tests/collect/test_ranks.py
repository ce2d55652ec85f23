"""ranks.py: rank and world size from the strategy, dataset lengths of every val loader shape,
and shuffled validation loaders refused when ids are positions."""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from digits import DictDigits, DigitsModel, digits_tensors, trainer
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.collect.collector import Placement
from lightning_embproj.collect.ranks import (
    check_position_ids,
    dataset_length,
    flat_loaders,
    loader_order,
    placement,
    world,
)
from lightning_embproj.runtime.warn import ProjectorWarning


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
    loaders = [DataLoader(Stream(), batch_size=4), loader(9)]
    assert placement(ddp_trainer(loaders, rank=0, world_size=1), 0) == Placement()
    # known, it bounds how far the schedule of positions is simulated ahead
    assert placement(ddp_trainer(loaders, rank=0, world_size=1), 1) == Placement(dataset_len=9)


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


# -- shuffled validation loaders without id_key (issue 16) ------------------------------------
def _dataset(n: int = 64) -> TensorDataset:
    x, y = digits_tensors(n)
    return TensorDataset(x, y)


def _distributed_wrapper(sampler: Any) -> Any:
    """What Lightning's DDP puts around a user's own sampler."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    return DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False)


SHUFFLED: dict[str, Any] = {
    "shuffle": lambda d: DataLoader(d, batch_size=16, shuffle=True),
    "subset-random": lambda d: DataLoader(d, batch_size=16,
                                          sampler=SubsetRandomSampler(range(len(d)))),
    "weighted-random": lambda d: DataLoader(
        d, batch_size=16, sampler=WeightedRandomSampler([1.0] * len(d), len(d))),
    "distributed-shuffle": lambda d: DataLoader(
        d, batch_size=16, sampler=DistributedSampler(d, num_replicas=1, rank=0, shuffle=True)),
}
SHUFFLED_NAMES = {"shuffle": r"RandomSampler \(shuffle=True\)",
                  "subset-random": "SubsetRandomSampler",
                  "weighted-random": "WeightedRandomSampler",
                  "distributed-shuffle": r"DistributedSampler\(shuffle=True\)"}
MESSAGE = (r"EmbeddingProjector needs `id_key` for validation dataloader {idx}: it draws its "
           r"samples with {sampler}, but without `id_key` a point's sample_id is its position "
           r"in the validation run.*Either pass `id_key`.*or make the validation loader "
           r"sequential \(shuffle=False, no random sampler\)")


def refused(idx: int = 0, kind: str = "shuffle") -> str:
    return MESSAGE.format(idx=idx, sampler=SHUFFLED_NAMES[kind])


class Reversed(Sampler):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n - 1, -1, -1))

    def __len__(self) -> int:
        return self.n


def test_loader_order_tells_sequential_shuffled_and_unknown_samplers():
    d = _dataset()
    for kind, make in SHUFFLED.items():
        order, sampler = loader_order(make(d))
        assert order == "shuffled" and re.fullmatch(SHUFFLED_NAMES[kind], sampler), kind
    shuffled_in_batches = DataLoader(d, batch_sampler=BatchSampler(RandomSampler(d), 16, False))
    assert loader_order(shuffled_in_batches)[0] == "shuffled"
    wrapped = DataLoader(d, batch_size=16, sampler=_distributed_wrapper(SubsetRandomSampler(
        range(len(d)))))
    assert loader_order(wrapped) == ("shuffled", "SubsetRandomSampler")
    sequential = [
        DataLoader(d, batch_size=16),
        DataLoader(d, batch_size=16,
                   sampler=DistributedSampler(d, num_replicas=2, rank=1, shuffle=False)),
        DataLoader(d, batch_sampler=BatchSampler(SequentialSampler(d), 16, False)),
        DataLoader(Stream(), batch_size=4),
    ]
    assert [loader_order(x)[0] for x in sequential] == ["sequential"] * 4
    assert loader_order(DataLoader(d, sampler=Reversed(len(d)))) == ("other", "Reversed")
    assert loader_order(DataLoader(d, sampler=_distributed_wrapper(Reversed(len(d))))) == (
        "other", "Reversed")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_check_position_ids_finds_a_shuffled_loader_in_any_shape(shape):
    d = _dataset()
    a, c = DataLoader(d, batch_size=16), DataLoader(d, batch_size=8)
    b = DataLoader(d, batch_size=16, shuffle=True)
    assert check_position_ids(SHAPES[shape](a, a, c)) is None
    idx = 0 if shape == "single" else 1
    with pytest.raises(ValueError, match=refused(idx)):
        check_position_ids(SHAPES[shape](b if shape == "single" else a, b, c))
    for combined in combined_loader_classes():
        with pytest.raises(ValueError, match="validation dataloader 1: it draws"):
            check_position_ids(combined({"z": a, "m": b, "a": c}, "sequential"))
    note = check_position_ids([a, DataLoader(d, sampler=Reversed(len(d)))])
    assert note is not None and note.startswith("validation dataloader 1 (Reversed) uses a "
                                                "sampler the projector does not know")
    assert "pass `id_key`" in note


def _fit_steps(tmp_path: Any, projector: Any) -> tuple[Any, list[int], Any]:
    """A trainer and a model that records its training steps."""
    model = DigitsModel()
    steps: list[int] = []
    original = model.training_step
    model.training_step = lambda batch, batch_idx: steps.append(batch_idx) or original(
        batch, batch_idx)
    return trainer(tmp_path, [projector], max_epochs=2, limit_train_batches=2), steps, model


@pytest.mark.parametrize("kind", list(SHUFFLED))
def test_a_fit_with_a_shuffled_loader_and_no_id_key_fails_before_training(tmp_path, kind):
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=32)
    fit, steps, model = _fit_steps(tmp_path, projector)
    with pytest.raises(ValueError, match=refused(0, kind)):
        fit.fit(model, loader(64, 16), SHUFFLED[kind](_dataset(48)))
    assert steps == []  # the sanity check refused it


@pytest.mark.parametrize("kind", ["list", "dict", "combined"])
def test_a_shuffled_loader_among_several_fails_naming_its_index(tmp_path, kind):
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    a, b = loader(40, 16), DataLoader(_dataset(30), batch_size=16, shuffle=True)
    val: Any = {"list": [a, b], "dict": {"a": a, "b": b},
                "combined": CombinedLoader({"a": a, "b": b}, "sequential")}[kind]
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=32)
    fit, steps, model = _fit_steps(tmp_path, projector)
    with pytest.raises(ValueError, match=refused(1)):
        fit.fit(model, loader(64, 16), val)
    assert steps == []


def test_validate_with_a_shuffled_loader_fails_also_after_a_fit(tmp_path):
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=32,
                                   background=False)
    shuffled = DataLoader(_dataset(48), batch_size=16, shuffle=True)
    fresh = trainer(tmp_path / "fresh", [projector])
    with pytest.raises(ValueError, match=refused()):
        fresh.validate(DigitsModel(), shuffled)
    # After a fit with a sequential loader: validate's own loader is the one checked.
    fit = trainer(tmp_path / "fit", [projector], max_epochs=1, limit_train_batches=2)
    model = DigitsModel()
    fit.fit(model, loader(64, 16), loader(48, 16))
    with pytest.raises(ValueError, match=refused()):
        fit.validate(model, shuffled)


def test_with_id_key_a_shuffled_loader_tracks_the_real_samples(tmp_path):
    """A frozen model: the same samples every run, so no drift, and each id's label is its
    sample's label."""
    x, y = digits_tensors(400)
    val = DataLoader(DictDigits(x[200:400], y[200:400], offset=10_000), batch_size=32,
                     shuffle=True)
    train = DataLoader(DictDigits(x[:200], y[:200]), batch_size=50)
    projector = EmbeddingProjector(label_key="labels", id_key="id", reducers="pca",
                                   max_samples=64, background=False)
    fit = trainer(tmp_path, [projector], max_epochs=3, limit_train_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(DigitsModel(dict_batches=True, frozen=True), train, val)
    assert not [w for w in caught if issubclass(w.category, ProjectorWarning)]
    df = read_projections(fit.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 64, 1: 64, 2: 64}
    for sid, label in zip(df["sample_id"], df["label"], strict=True):
        assert label == int(y[200 + sid - 10_000])
    metrics = read_metrics(fit.log_dir)
    assert metrics["drift/knn_overlap"].dropna().tolist() == [1.0, 1.0]


def test_an_unknown_sampler_without_id_key_warns_once_and_the_fit_goes_on(tmp_path):
    d = _dataset(48)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=32,
                                   background=False)
    fit = trainer(tmp_path, [projector], max_epochs=2, limit_train_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(DigitsModel(), loader(64, 16), DataLoader(d, batch_size=16,
                                                          sampler=Reversed(len(d))))
    notes = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    assert len(notes) == 1 and "validation dataloader 0 (Reversed)" in notes[0], notes
    assert len(read_projections(fit.log_dir)) == 64
