"""benchmarks/gpu_check.py runs where there is no GPU: it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks", "gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real check")
def test_gpu_check_without_cuda_says_so_and_exits_cleanly():
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert "Traceback" not in done.stderr


def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    """The script's own code paths, small and on the CPU, so that a GPU session does not spend
    its device time on a bug: every part gives its rows, none fails, the metrics agree."""
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r for r in out.read_text().splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert len([r for r in rows if r.startswith("| sync-free")]) == 4
    assert all("| ran |" in r for r in rows if r.startswith("| sync-free"))
    assert any(r.startswith("| collection per 256-row batch") for r in rows)
    assert any(r.startswith("| run pipeline") and "tsne/trustworthiness" in r for r in rows)
    metrics = [r for r in rows if r.startswith("| metrics pass")]
    assert len(metrics) == 2
    assert all(float(r.split("max metric difference ")[1].split(" ")[0]) < 1e-3 for r in metrics)
    assert all(float(r.split("(motion_explained ")[1].split(")")[0]) < 1e-2 for r in metrics)
    assert not [r for r in rows if "FAIL" in r]
