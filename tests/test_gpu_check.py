"""benchmarks/gpu_check.py runs where there is no GPU: it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real check")
def test_gpu_check_without_cuda_says_so_and_exits_cleanly():
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert "Traceback" not in done.stderr
