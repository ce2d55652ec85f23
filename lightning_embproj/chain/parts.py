"""What spans validation runs, declared part by part (the owner is
:class:`~lightning_embproj.chain.owner.ChainState`): the checkpoint keys that hold each part,
how it is saved, and what a resumed ``fit``, a new chain and another entry point with a
checkpoint do to it. A test checks that the owner's state holds exactly these keys.

Example:
    >>> [p.name for p in PARTS][:3]
    ['counters', 'chain', 'pending']
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One piece of state that spans runs: the checkpoint keys that hold it (``keys``), how it
    is saved, and what a resumed fit, a new chain and another entry point with a checkpoint
    (``validate`` / ``test`` / ``predict``) do to it."""

    name: str
    keys: tuple[str, ...]
    saved: str
    resumed_fit: str
    new_chain: str
    other_ckpt: str


PARTS: tuple[Part, ...] = (
    Part("counters", ("runs",),
         "checkpoint: val_index total, chain index, runs and epochs of the chain",
         "restored; val_index then follows every run the folder keeps",
         "val_index counts on after every run in the folder; the chain index follows every "
         "chain in the folder; chain runs and epochs from 0",
         "val_index raised to the checkpoint's when higher; nothing else"),
    Part("chain", ("chain_uid",), "checkpoint: the chain's id, unique across processes",
         "restored: the resumed runs belong to the checkpoint's chain", "a new id",
         "ignored"),
    Part("pending", ("pending",), "checkpoint: sample and identity of every run not yet written",
         "restored and processed first, in val_index order",
         "empty (finished before fit / validate returns; interrupted runs stay in the ledger)",
         "ignored: they belong to the checkpoint's fit"),
    Part("previous", ("previous",),
         "checkpoint: the last written run per set (ids, vectors, layouts)",
         "restored: the next run aligns to it", "cleared", "ignored"),
    Part("clusters", ("chains", "next_cluster_id"),
         "checkpoint: cluster ids, next free id and stability pairs per set",
         "restored", "cleared, but the next free cluster id carries on (ids never reused)",
         "ignored"),
    Part("ledger", ("ledger",), "checkpoint, and <root>/embproj/NAME/ledger.jsonl",
         "restored; the folder's records are adopted, but the checkpoint chain's records "
         "after it are dropped with their files (those runs are performed again)",
         "kept; the folder's records are adopted", "kept; the checkpoint's records are not "
         "added"),
    Part("wandb history", ("wandb_run", "root"),
         "the W&B run id and the folder of the written runs; the history itself is rebuilt "
         "from the local files", "rebuilt when the W&B run is the one the ledger says got the "
         "runs, else fresh", "kept while the W&B run is the same",
         "kept while the W&B run is the same"),
    Part("view history", (), "not saved: rebuilt from the local files of the output root",
         "kept in the same process (runs performed again are left out); in a new process "
         "rebuilt from the folder", "kept while the output root is the same, else rebuilt",
         "kept while the output root is the same"),
    Part("run_id", ("run_id",), "checkpoint: the id of the training run these runs belong to",
         "restored", "kept", "adopted, so that run's folder is not 'another run'"),
    Part("monitored", ("monitored",),
         "checkpoint: the value last logged per `monitor` metric (`embproj/NAME/<metric>`)",
         "restored: logged again by the runs before the first projected one", "cleared",
         "ignored"),
    Part("hash version", ("hash_version",), "checkpoint: the id hash the keys were made with",
         "an older one: keys recomputed from the ids, cluster chain restarted", "-", "-"),
)
