"""`embproj compare`: the slider view and a side-by-side PNG from a finished run's files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_embproj.__main__ import main
from lightning_embproj.compare import ALPHA, compare, default_epochs
from lightning_embproj.sinks.html_view import PALETTE
from lightning_embproj.sinks.local import write_projection
from lightning_embproj.types import EpochSample, Projection

REPO = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str = "emb", *, epochs: int = 5, n: int = 60,
             dims: int = 2) -> None:
    """Three label clusters that tighten epoch by epoch; one label is bad mathtext and HTML."""
    rng = np.random.default_rng(1)
    labels = np.array(["a", "b", r"$\bad$ <img src=x>"])[np.arange(n) % 3]
    centers = rng.normal(size=(3, dims)) * 6
    start = rng.normal(size=(n, dims)) * 4
    for e in range(epochs):
        t = e / (epochs - 1)
        pos = (1 - t) * start + t * (centers[np.arange(n) % 3] + rng.normal(size=(n, dims)))
        sample = EpochSample(name=name, keys=np.arange(n, dtype=np.int64),
                             sample_ids=list(range(n)), embeddings=np.zeros((n, 4), np.float32),
                             labels=labels, metadata={"text": [f"t{i}" for i in range(n)]})
        write_projection(root, Projection(
            sample=sample, epoch=e, step=10 * e, layouts={"pca": pos, "tsne": -pos},
            metrics={"silhouette": t, "knn_accuracy": 0.5 + t / 2}))


def png_check(path: Path, size: tuple[int, int]) -> None:
    """The PNG has the expected size, is not blank, and shows the label colours."""
    from PIL import Image

    img = Image.open(path)
    assert img.size == size
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert (rgb.min(1) < 200).mean() > 0.005  # enough ink
    for hex_colour in PALETTE[:3]:
        colour = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        target = ALPHA * colour + (1 - ALPHA) * 255  # drawn semi-transparent on white
        assert (np.abs(rgb - target).sum(1) < 30).sum() > 20, hex_colour


def test_default_epochs() -> None:
    assert default_epochs(range(10)) == [0, 5, 9]
    assert default_epochs([3, 4]) == [3, 4]
    assert default_epochs([7]) == [7]


def test_cli_subprocess_writes_view_and_png(tmp_path: Path) -> None:
    make_run(tmp_path / "logs")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-m", "lightning_embproj", "compare", str(tmp_path / "logs"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert out.returncode == 0, out.stderr
    view, png = tmp_path / "out" / "emb" / "view.html", tmp_path / "out" / "emb" / "compare_pca.png"
    assert out.stdout.split() == [str(view), str(png)]
    assert "plotly.js v" in view.read_text() and "<img src" not in view.read_text()
    png_check(png, (3 * 400, 460))  # epochs 0, 2, 4


def test_chosen_epochs_reducer_and_set(tmp_path: Path) -> None:
    make_run(tmp_path, "emb")
    make_run(tmp_path, "encoder.layer1", dims=3, epochs=3)
    paths = compare(tmp_path, tmp_path / "out", epochs=[0, 2], reducer="tsne")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == [
        "emb/view.html", "emb/compare_tsne.png",
        "encoder.layer1/view.html", "encoder.layer1/compare_tsne.png"]
    png_check(paths[1], (800, 460))
    png_check(paths[3], (800, 460))  # 3-D panels
    only = compare(tmp_path / "embproj" / "emb", tmp_path / "one")  # a set's own folder
    assert [p.name for p in only] == ["view.html", "compare_pca.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "nope"], "no embedding set 'nope' under .*; available: emb, other"),
    (["--name", "emb", "--epochs", "0", "7"], r"epochs \[7\] not in set 'emb'; available "
                                              r"epochs: \[0, 1, 2, 3, 4\]"),
    (["--reducer", "umap"], "reducer 'umap' not in set 'emb'; available: pca, tsne"),
    (["--max-epochs", "1"], "--max-epochs: expected an int >= 2, got 1"),
])
def test_bad_arguments_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str,
) -> None:
    make_run(tmp_path, "emb")
    make_run(tmp_path, "other", epochs=2)
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path), "--output", str(tmp_path / "out"), *args])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_missing_or_empty_log_dir_and_no_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: embproj compare" in err
    assert f"log dir '{tmp_path / 'nope'}' does not exist" in err
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path), "--output", str(tmp_path / "out")])
    assert "no embedding sets under" in capsys.readouterr().err
    assert main([]) == 2
    assert "compare" in capsys.readouterr().err
