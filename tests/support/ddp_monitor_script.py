"""A real 2-process DDP fit (gloo, CPU) with ``monitor``: each rank records the monitored
values it saw in ``trainer.callback_metrics`` after every validation run; run as a script.

    OMP_NUM_THREADS=1 python tests/support/ddp_monitor_script.py OUT

Lightning re-executes this script for rank 1. Rank r writes ``OUT/rank<r>.json``:
``[{"epoch": e, "values": {key: value}}, ...]``; rank 0's projector writes its files under
``OUT/files``. Rank 1 gets a different model (weights perturbed on rank 1 only would change
nothing in the gathered sample, so the ranks see different halves of the data instead: the
values must still be rank zero's, broadcast).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L

sys.path.insert(0, str(Path(__file__).parent))
from digits import DigitsModel, loaders  # noqa: E402

from lightning_embproj import EmbeddingProjector  # noqa: E402

MONITOR = ["knn_accuracy", "rankme", "uniformity", "silhouette"]


class Record(L.Callback):
    """After the projector (listed after it): what this rank's callback_metrics hold."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("embproj/")}
        self.seen.append({"epoch": trainer.current_epoch, "values": values})


def main() -> None:
    warnings.filterwarnings("ignore")
    out = sys.argv[1]
    L.seed_everything(0, workers=True, verbose=False)
    train, val = loaders(n_train=128, n_val=150, batch_size=32)
    record = Record()
    trainer = L.Trainer(
        default_root_dir=os.path.join(out, "root"), max_epochs=2, accelerator="cpu",
        devices=2, strategy="ddp", limit_train_batches=2, num_sanity_val_steps=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[EmbeddingProjector(label_key=1, reducers="pca", clusters=None,
                                      monitor=MONITOR, output_dir=os.path.join(out, "files")),
                   record],
    )
    trainer.fit(DigitsModel(), train, val)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record.seen))


if __name__ == "__main__":
    main()
    # As in ddp_script.py: gloo's threads may abort a finished process at exit; every result
    # is written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
