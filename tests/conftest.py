from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))  # digits, browser, ...


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every folder under tmp_path; yields the wandb dir."""
    root = tmp_path / "wandb_root"
    root.mkdir()
    for var, sub in [("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
        path = root / sub
        path.mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield root
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    yield




def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say so at the end when browser tests were skipped (``-q`` hides skip reasons)."""
    from browser import REQUIRE_ENV, SKIPPED

    reasons = [str(r.longrepr[2]) for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and SKIPPED in str(r.longrepr[2])]
    for reason in sorted(set(reasons)):
        why = reason.split(SKIPPED, 1)[1].strip()
        terminalreporter.write_line(
            f"{reasons.count(reason)} browser test(s) skipped: {why} "
            f"[{REQUIRE_ENV}=1 makes this a failure]", yellow=True, bold=True)
