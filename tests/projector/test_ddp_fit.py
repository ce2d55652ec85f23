"""DDP for real: Lightning ``strategy="ddp"`` on 2 CPU processes (gloo), files read back.

One subprocess (tests/ddp_script.py) runs every scenario; Lightning re-executes it for rank 1.
Each epoch's table must hold every validation sample exactly once (``DistributedSampler``
padding deduplicated), with texts, and equal a single-process run of the same frozen model.
A single-device fit inside an initialised process group of 2 must project without collectives.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightning_embproj import read_projections
from lightning_embproj.collect.hashing import hash_ids

SCRIPT = Path(__file__).parents[1] / "support" / "ddp_script.py"
ROOT = SCRIPT.parent.parent


def script_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled")


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], cwd=ROOT, env=script_env(), capture_output=True,
        text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def epochs(out: Path, name: str) -> list[pd.DataFrame]:
    df = read_projections(out / name)
    assert sorted(df["epoch"].unique()) == [0, 1], "one table per epoch, none from sanity check"
    return [g.sort_values("sample_id").reset_index(drop=True) for _, g in df.groupby("epoch")]


def single_process(tmp_path: Path, name: str) -> list[pd.DataFrame]:
    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_script import run

    run(str(tmp_path), name, devices=1, strategy=None)
    return epochs(tmp_path, name)


def assert_texts(df: pd.DataFrame, offset: int) -> None:
    expected = [f"digit {y} #{i + offset}" for i, y in zip(df["sample_id"], df["label"],
                                                          strict=True)]
    assert df["text"].tolist() == expected


def test_padded_shards_hold_every_sample_once_like_one_process(ddp_out, tmp_path):
    # 301 samples on 2 ranks: DistributedSampler pads rank 1 with a second copy of sample 0.
    ref = single_process(tmp_path, "padded")
    for got, want in zip(epochs(ddp_out, "padded"), ref, strict=True):
        assert got["sample_id"].tolist() == list(range(301))
        assert_texts(got, offset=10_000)  # derived ids point at the right rows on each rank
        pd.testing.assert_frame_equal(got[["sample_id", "text", "label"]],
                                      want[["sample_id", "text", "label"]])
        np.testing.assert_allclose(got[["pca_x", "pca_y"]], want[["pca_x", "pca_y"]], atol=1e-4)


def test_bottom_k_with_ids_equals_one_process(ddp_out, tmp_path):
    ids = 10_000 + np.arange(301)
    expected = sorted(ids[np.argsort(hash_ids(ids, 0))[:100]].tolist())
    ref = single_process(tmp_path, "bottomk")
    for got, want in zip(epochs(ddp_out, "bottomk"), ref, strict=True):
        assert got["sample_id"].tolist() == expected
        assert_texts(got, offset=0)
        pd.testing.assert_frame_equal(got[["sample_id", "text", "label"]],
                                      want[["sample_id", "text", "label"]])
        np.testing.assert_allclose(got[["pca_x", "pca_y"]], want[["pca_x", "pca_y"]], atol=1e-4)


def test_one_validation_sample_on_two_ranks(ddp_out):
    for got in epochs(ddp_out, "one"):
        assert got["sample_id"].tolist() == [0]
        assert_texts(got, offset=10_000)


def test_rank_without_samples_does_not_hang(ddp_out):
    # 120 samples, no padding: rank 0 sees the even positions; rank 1's rows are all NaN.
    for got in epochs(ddp_out, "nan_rank"):
        assert got["sample_id"].tolist() == list(range(0, 120, 2))
        assert_texts(got, offset=10_000)


def test_ranks_disagreeing_on_a_column_fail_alike_without_hanging(ddp_out):
    """Rank 1 returns numbers where rank 0 has texts: both ranks get the same clear error
    (the subprocess finished within its timeout, so nobody hung)."""
    errors = [(ddp_out / "disagree" / f"error_rank{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert "metadata 'text' holds Python objects (texts) on rank 0 vs numbers" in errors[0]


def test_dict_of_uneven_loaders_holds_every_sample_once_per_loader(ddp_out, tmp_path):
    """{"short": 57, "long": 301} on 2 ranks: each loader is padded on rank 1 with its own
    sample 0; ids are derived, so both dataset lengths must be found from the dict."""
    ref = single_process(tmp_path, "dict")
    for got, want in zip(epochs(ddp_out, "dict"), ref, strict=True):
        assert sorted(got["dataloader_idx"].unique()) == [0, 1]
        for idx, n in enumerate((57, 301)):
            rows = got[got["dataloader_idx"] == idx]
            assert rows["sample_id"].tolist() == list(range(n))
            assert_texts(rows, offset=(idx + 1) * 10_000)
        columns = ["dataloader_idx", "sample_id", "text", "label"]
        got = got.sort_values(["dataloader_idx", "sample_id"]).reset_index(drop=True)
        want = want.sort_values(["dataloader_idx", "sample_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got[columns], want[columns])
        np.testing.assert_allclose(got[["pca_x", "pca_y"]], want[["pca_x", "pca_y"]], atol=1e-4)


def test_single_device_fit_inside_a_process_group_projects_alone(tmp_path):
    """A sweep (torchrun, Ray) initialised a process group of 2; the script is rank 0 and fits
    on one device, this test process is rank 1 and never joins a collective. A collective
    started by the projector would time out after 180 s and fail the fit."""
    import torch.distributed as dist

    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path), "alone"], cwd=ROOT, env=script_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Generous: the script imports Lightning before it joins; rank 1 runs no collective.
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'alone_init'}", rank=1,
                                world_size=2, timeout=datetime.timedelta(seconds=240))
        try:
            stdout, stderr = process.communicate(timeout=240)
        finally:
            dist.destroy_process_group()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stdout[-3000:] + stderr[-5000:]
    for got in epochs(tmp_path, "alone"):
        assert got["sample_id"].tolist() == list(range(120))
        assert_texts(got, offset=10_000)
