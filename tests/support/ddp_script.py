"""Real DDP fits (2 CPU processes, gloo) for tests/test_ddp_fit.py; run as a script.

Lightning's ``strategy="ddp"`` re-executes this script for rank 1, so every rank runs the same
fits in the same order. Rank 0's callback writes the local CSV files under ``OUT/<scenario>``,
which the test reads back. The model is frozen (lr 0) and seeded, so its embeddings equal a
single-process run's.

    OMP_NUM_THREADS=1 python tests/ddp_script.py OUT [scenario ...]
    OMP_NUM_THREADS=1 python tests/ddp_script.py OUT alone

``alone`` is no DDP fit: this process joins a gloo process group of 2 as rank 0 (as in a sweep
under torchrun or Ray) and runs a single-device fit, while the test process is rank 1 and only
waits in the group; a collective started by the projector would time out (30 s) and fail the fit.
"""

from __future__ import annotations

import datetime
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from digits import DictDigits, DigitsModel, digits_tensors, loaders  # noqa: E402

from lightning_embproj import EmbeddingProjector  # noqa: E402


class NaNOnRank1(DigitsModel):
    """Rank 1's embeddings are all NaN: it ends the epoch with no tracked rows."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        if self.global_rank == 1:
            out["embeddings"] = torch.full_like(out["embeddings"], float("nan"))
        return out


class NumbersAsTextOnRank1(DigitsModel):
    """Rank 1 returns numbers where rank 0 has texts: the ranks disagree on a column."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        if self.global_rank == 1:
            out["text"] = torch.zeros(len(out["labels"]))
        return out


# name -> (n_val, max_samples, batch_size, id_key, model class); a tuple n_val is a dict of
# validation loaders with those sizes.
SCENARIOS: dict[str, tuple[int | tuple[int, ...], int, int, str | None, type]] = {
    "padded": (301, 400, 64, None, DigitsModel),      # 301 on 2 ranks: sample 0 seen twice
    "bottomk": (301, 100, 32, "id", DigitsModel),     # max_samples < dataset, explicit ids
    "one": (1, 50, 64, None, DigitsModel),            # rank 1 only sees the padded copy
    "nan_rank": (120, 200, 16, None, NaNOnRank1),     # rank 1 has no samples at all
    "dict": ((57, 301), 400, 64, None, DigitsModel),  # two loaders, each padded on rank 1
    # last: it ends the fit with an error on every rank (recorded per rank, not raised)
    "disagree": (64, 50, 32, None, NumbersAsTextOnRank1),
}
DICT_KEYS = ("short", "long")  # insertion order differs from sorted order on purpose
ALONE = (120, 200, 32)  # n_val, max_samples, batch_size of the single-device fit in a group


def val_dict(sizes: tuple[int, ...], batch_size: int) -> dict[str, DataLoader]:
    """One loader per size over distinct digits; loader i's texts read ``#<(i+1)*10000 + id>``."""
    x, y = digits_tensors()
    loaders_: dict[str, DataLoader] = {}
    start = 128
    for i, (key, n) in enumerate(zip(DICT_KEYS, sizes, strict=True)):
        data = DictDigits(x[start : start + n], y[start : start + n], offset=(i + 1) * 10_000)
        loaders_[key] = DataLoader(data, batch_size=batch_size)
        start += n
    return loaders_


def projector(out: str, name: str, max_samples: int, id_key: str | None) -> EmbeddingProjector:
    return EmbeddingProjector(
        label_key="y", id_key=id_key, metadata_keys=["text"], reducers="pca",
        max_samples=max_samples, output_dir=os.path.join(out, name),
    )


def run(out: str, name: str, devices: int, strategy: str | None = "ddp") -> None:
    n_val, max_samples, batch_size, id_key, model_cls = SCENARIOS[name]
    L.seed_everything(0, workers=True, verbose=False)
    sizes = n_val if isinstance(n_val, tuple) else (n_val,)
    train, val = loaders(n_train=128, n_val=sizes[0], batch_size=batch_size, dict_batches=True)
    val_loaders: Any = val_dict(sizes, batch_size) if isinstance(n_val, tuple) else val
    fit(out, name, projector(out, name, max_samples, id_key), model_cls, train, val_loaders,
        devices=devices, strategy=strategy)


def fit(out: str, name: str, callback: EmbeddingProjector, model_cls: type, train: Any,
        val: Any, devices: int, strategy: str | None) -> None:
    kwargs: dict[str, Any] = dict(strategy=strategy) if strategy else {}
    trainer = L.Trainer(
        default_root_dir=os.path.join(out, name, "root"), max_epochs=2, accelerator="cpu",
        devices=devices, limit_train_batches=2, num_sanity_val_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[callback], **kwargs,
    )
    trainer.fit(model_cls(dict_batches=True, frozen=True), train, val)


def alone_in_group(out: str) -> None:
    """Rank 0 of a gloo group of 2 (the test process is rank 1 and only waits): a single-device
    fit, no DDP strategy, as in a sweep that initialised the process group itself."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'alone_init')}",
                            rank=0, world_size=2, timeout=datetime.timedelta(seconds=180))
    try:
        n_val, max_samples, batch_size = ALONE
        L.seed_everything(0, workers=True, verbose=False)
        train, val = loaders(n_train=128, n_val=n_val, batch_size=batch_size, dict_batches=True)
        fit(out, "alone", projector(out, "alone", max_samples, None), DigitsModel, train, val,
            devices=1, strategy=None)
    finally:
        dist.destroy_process_group()


def main() -> None:
    warnings.filterwarnings("ignore")
    out, names = sys.argv[1], sys.argv[2:] or list(SCENARIOS)
    if names == ["alone"]:
        alone_in_group(out)
        return
    for name in names:
        if name != "disagree":
            run(out, name, devices=2)
            continue
        try:
            run(out, name, devices=2)
        except ValueError as err:
            rank = os.environ.get("LOCAL_RANK", "0")
            Path(out, name).mkdir(parents=True, exist_ok=True)
            Path(out, name, f"error_rank{rank}.txt").write_text(str(err))


if __name__ == "__main__":
    main()
    # With torch 2.13, gloo's threads now and then abort a finished process at interpreter exit
    # ("terminate called without an active exception", signal 6; seen in about one run in
    # three, also before this project's DDP changes). Every result is written by now: leave
    # without running C++ destructors, so the exit code is the script's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
