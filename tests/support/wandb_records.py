"""Read an offline W&B run's ``run-*.wandb`` log back (LevelDB-style log of Record protos).

wandb 0.31 ships no Python reader for it, so tests parse it here: 7-byte file header, then 32 KiB
blocks of records, each with a 7-byte header (crc32, little-endian length, type) where a record
may be split into FIRST/MIDDLE/LAST fragments.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: str) -> list[bytes]:
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:4] == b":W&B", "not a W&B run log"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def settle() -> None:
    """``wandb.finish()`` returns before the offline run log is complete (seen: 32 KB, then
    45 KB 1.5 s later); ``wandb.teardown()`` waits for the writer. Call before reading."""
    import wandb

    if wandb.run is None:
        wandb.teardown()


def run_log(root: Any) -> str:
    settle()
    files = glob.glob(os.path.join(str(root), "**", "offline-run-*", "run-*.wandb"),
                      recursive=True)
    assert len(files) == 1, f"expected one offline run under {root}, found {files}"
    return files[0]


def history(root: Any) -> list[dict[str, Any]]:
    """Every ``run.log`` call of the one offline run under ``root``, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in _records(run_log(root)):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(dict(pair for item in record.history.item for pair in _leaves(
                item.key or "/".join(item.nested_key), json.loads(item.value_json))))
    return rows


def _leaves(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(key/sub/..., leaf) pairs: older wandb (0.16) writes a logged dict as one item, newer
    wandb one item per leaf; rows look the same with both."""
    if isinstance(value, dict):
        for sub, inner in value.items():
            yield from _leaves(f"{key}/{sub}", inner)
    else:
        yield key, value


def scalars(root: Any, key: str) -> list[tuple[int, Any]]:
    """(trainer/global_step, value) of every logged value of ``key``."""
    return [(row.get("trainer/global_step"), row[key]) for row in history(root) if key in row]
