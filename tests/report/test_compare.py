"""`embproj compare`: one run's view and PNG; two runs aligned side by side (real digits fits)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from browser import launch_chromium
from digits import load_example

from lightning_embproj.__main__ import main
from lightning_embproj.readers import list_validations
from lightning_embproj.report.compare import ALPHA, compare, default_epochs
from lightning_embproj.report.compare_two import (
    compare_runs,
    layout_neighbours,
    neighbourhood_overlap,
)
from lightning_embproj.results import EpochSample, RunIdentity
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.local import set_dir, write_projection
from lightning_embproj.sinks.palette import colour_map, hex_rgb
from lightning_embproj.sinks.view.images import write_thumbnails

REPO = Path(__file__).resolve().parents[2]
BAD_LABEL = r"$\bad$ <img src=x onerror=window.__pwned=1>"


def make_run(root: Path, name: str = "emb", *, epochs: int = 5, n: int = 60, dims: int = 2,
             reducers: tuple[str, ...] = ("pca", "tsne"), seed: int = 1,
             id_offset: int = 0, images: bool = False) -> None:
    """Three label clusters that tighten epoch by epoch; one label is bad mathtext and HTML.

    Epoch 0 is validated twice (val_index 0 and 1): an epoch's PNG panel shows its last run.
    With ``images``, an 8x8 image per point whose thumbnails go to ``images.json``.
    """
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", BAD_LABEL])[np.arange(n) % 3]
    centers = rng.normal(size=(3, dims)) * 6
    start = rng.normal(size=(n, dims)) * 4
    runs = [(0, 0), *((e + 1, e) for e in range(epochs))]
    for v, e in runs:
        t = e / (epochs - 1)
        pos = (1 - t) * start + t * (centers[np.arange(n) % 3] + rng.normal(size=(n, dims)))
        meta: dict[str, Any] = {"text": [f"t{i}" for i in range(n)]}
        if images:
            meta["image"] = (np.arange(n)[:, None, None, None] * np.ones((1, 8, 8, 1)) * 4
                             ).astype(np.uint8)
        sample = EpochSample(name=name, keys=np.arange(n, dtype=np.int64),
                             sample_ids=[i + id_offset for i in range(n)],
                             embeddings=np.zeros((n, 4), np.float32),
                             labels=labels, metadata=meta)
        layouts = {"pca": pos, "tsne": -pos}
        result = run_result(
            sample, RunIdentity(v, epoch=e, step=10 * v), {r: layouts[r] for r in reducers},
            metrics={"silhouette": t, "knn_accuracy": 0.5 + t / 2})
        write_projection(root, result)
        if images:
            write_thumbnails(set_dir(root, name), result)


def png_check(path: Path, size: tuple[int, int]) -> None:
    """The PNG has the expected size, is not blank, and shows the label colours."""
    from PIL import Image

    img = Image.open(path)
    assert img.size == size
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert (rgb.min(1) < 200).mean() > 0.005  # enough ink
    for hex_colour in colour_map(["a", "b", BAD_LABEL]).values():
        colour = np.array(hex_rgb(hex_colour))
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
    (["--reducer", "umap"], "reducer 'umap' not in set 'emb'; available: pca, tsne; "
                            "reducer 'umap' not in set 'other'"),
    (["--max-epochs", "1"], "--max-runs: expected an int >= 2, got 1"),
    (["--epoch", "1"], "--epoch picks the run compared in two runs; for one run use --epochs"),
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
        main(["compare", str(tmp_path), str(tmp_path / "nope"), "--output", str(tmp_path)])
    assert f"run '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path), "--output", str(tmp_path / "out")])
    assert "no embedding sets under" in capsys.readouterr().err
    assert main([]) == 2
    assert "compare" in capsys.readouterr().err


def test_a_set_without_the_reducer_does_not_block_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    make_run(tmp_path, "emb")
    make_run(tmp_path, "pca_only", reducers=("pca",))
    assert main(["compare", str(tmp_path), "--output", str(tmp_path / "out"),
                 "--reducer", "tsne"]) == 0
    out = capsys.readouterr()
    assert [Path(p).relative_to(tmp_path / "out").as_posix() for p in out.out.split()] == [
        "emb/view.html", "emb/compare_tsne.png", "pca_only/view.html"]
    assert "no PNG for set 'pca_only': reducer 'tsne' not in set 'pca_only'" in out.err


def test_layout_neighbourhoods() -> None:
    xy = np.random.default_rng(0).normal(size=(50, 2))
    near = layout_neighbours(xy, 5)
    assert near.shape == (50, 5) and not (near == np.arange(50)[:, None]).any()
    rotated = xy @ np.array([[0.0, -1.0], [1.0, 0.0]]) * 3 + 7  # same neighbourhoods
    assert neighbourhood_overlap(near, layout_neighbours(rotated, 5)).tolist() == [1.0] * 50
    shuffled = layout_neighbours(np.random.default_rng(1).normal(size=(50, 2)), 5)
    assert neighbourhood_overlap(near, shuffled).mean() < 0.4


def test_two_runs_without_shared_ids_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    make_run(tmp_path / "a", epochs=2)
    make_run(tmp_path / "b", epochs=2, id_offset=1000)
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
              str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "runs A and B share 0 ids in set 'emb' (60 and 60 tracked points); at least 10" in err
    assert "same id_key" in err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
              str(tmp_path / "out"), "--epoch", "9"])
    assert "epoch 9 not in run A" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_two_real_digits_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example()
    runs = [example.run(tmp_path / f"seed{s}", epochs=2, max_samples=250, seed=s,
                        reducers=("pca", "tsne"), use_wandb=False) for s in (0, 1)]
    assert main(["compare", str(runs[0]), str(runs[1]), "--output", str(tmp_path / "out"),
                 "--epoch", "1"]) == 0
    folder = tmp_path / "out" / "embeddings"
    assert capsys.readouterr().out.split() == [
        str(folder / "compare.html"), str(folder / "neighbours_pca.csv"),
        str(folder / "neighbours_tsne.csv")]
    for reducer in ("pca", "tsne"):
        table = pd.read_csv(folder / f"neighbours_{reducer}.csv")
        # Both runs track the same 250 ids (same dataset and id_key), most changed first.
        assert len(table) == 250 and table["sample_id"].is_unique
        assert table["overlap"].is_monotonic_increasing
        assert table["overlap"].between(0, 1).all() and 0 < table["overlap"].mean() < 1
        # Different seeds: some neighbourhoods differ, and the table names the neighbours.
        changed = table[table["overlap"] < 1]
        assert len(changed) > 10 and changed["only_in_a"].str.split().str.len().gt(0).all()
        # B was rotated onto A: closer to A than B's own layout (read back from its files).
        a = table[[f"{reducer}_x_a", f"{reducer}_y_a"]].to_numpy()
        aligned = table[[f"{reducer}_x_b", f"{reducer}_y_b"]].to_numpy()
        raw = pd.read_csv(next((runs[1] / "embproj" / "embeddings").glob(
            f"val_{list_validations(runs[1])[-1][0]:04d}_*.csv"))).set_index("sample_id")
        raw_b = raw.loc[table["sample_id"], [f"{reducer}_x", f"{reducer}_y"]].to_numpy()
        assert np.linalg.norm(aligned - a) <= np.linalg.norm(raw_b - a) + 1e-9
        assert np.allclose(np.linalg.norm(aligned - aligned.mean(0), axis=1),
                           np.linalg.norm(raw_b - raw_b.mean(0), axis=1), atol=1e-3)
    page = (folder / "compare.html").read_text(encoding="utf-8")
    assert "250 shared ids" in page and "plotly.js v" in page
    # The digits' images (images.json, written beside the CSV files) are the thumbnails.
    assert re.search(r'"images":\{"\d+":"data:image/png;base64,', page)


def test_compare_page_in_browser(tmp_path: Path) -> None:
    make_run(tmp_path / "a", epochs=3, seed=1)
    make_run(tmp_path / "b", epochs=3, seed=2)
    paths = compare_runs(tmp_path / "a", tmp_path / "b", tmp_path / "out", top=10)
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                   else (problems.append(r.request.url), r.abort()))
        page.goto(paths[0].as_uri())
        page.wait_for_selector("#embproj-view[data-ready='1']", timeout=60_000)
        assert page.input_value("#colour") == "neighbourhood overlap (pca)"
        assert page.is_hidden("#player")  # one run per panel: no slider
        rows = page.locator("#table tbody tr")
        assert rows.count() == 10
        # Linked selection: a table row follows the point in both panels.
        first_id = rows.nth(0).locator("td").nth(0).text_content()
        rows.nth(0).click()
        page.wait_for_function("window.embproj.state.sel.length === 1")
        for k in (0, 1):
            assert page.evaluate(
                f"document.getElementById('plot-{k}')._fullData[2].x.length") == 1
        assert page.text_content("#selected li strong") == first_id
        assert "on" in (rows.nth(0).get_attribute("class") or "")
        # A click in panel B selects in A too.
        xy = page.evaluate("""() => {
            const gd = document.getElementById('plot-1'), L = gd._fullLayout;
            const r = gd.getBoundingClientRect(), t = gd._fullData[0];
            return [r.left + L.xaxis._offset + L.xaxis.l2p(t.x[5]),
                    r.top + L.yaxis._offset + L.yaxis.l2p(t.y[5])]; }""")
        page.mouse.click(*xy)
        page.wait_for_function("window.embproj.state.sel.length === 2")
        assert page.evaluate("document.getElementById('plot-0')._fullData[2].x.length") == 2
        # The hostile label is shown as text in the table and the legend, never run.
        page.select_option("#colour", "label")
        assert BAD_LABEL in str(page.text_content("#legend"))
        assert page.evaluate("window.__pwned") is None and page.query_selector("img") is None
        assert problems == []
        page.close()


def natural_order_within_ties(ids: list[int], overlaps: list[float]) -> bool:
    """Ids ascend by value wherever the overlap is the same (and some tie spans 9 to 10)."""
    groups: dict[float, list[int]] = {}
    for i, o in zip(ids, overlaps, strict=True):
        groups.setdefault(o, []).append(i)
    assert any(min(g) < 10 <= max(g) for g in groups.values())  # a tie that string order breaks
    return all(g == sorted(g) for g in groups.values())


def test_compare_page_titles_ids_and_changed_points(tmp_path: Path) -> None:
    """compare.html: panel titles render (no raw escapes), the changed points are listed with
    numeric ids in numeric order, with their metadata and thumbnails."""
    make_run(tmp_path / "a", epochs=3, seed=1, images=True)
    make_run(tmp_path / "b", epochs=3, seed=2, images=True)
    paths = compare_runs(tmp_path / "a", tmp_path / "b", tmp_path / "out", reducer="pca",
                         top=60)
    csv = pd.read_csv(tmp_path / "out" / "emb" / "neighbours_pca.csv")
    assert natural_order_within_ties(csv["sample_id"].tolist(), csv["overlap"].tolist())
    assert csv["text"].tolist() == [f"t{i}" for i in csv["sample_id"]]
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(paths[0].as_uri())
        page.wait_for_selector("#embproj-view[data-ready='1']", timeout=60_000)
        titles = [page.text_content(f"#panel-title-{k}") for k in (0, 1)]
        head = page.eval_on_selector_all("#table thead th", "els => els.map(e => e.textContent)")
        rows = page.eval_on_selector_all("#table tbody tr", """trs => trs.map(tr => ({
            cells: [...tr.querySelectorAll('td')].map(td => td.textContent),
            img: (tr.querySelector('img.thumb') || {}).src || ''}))""")
        assert problems == []
        page.close()
    assert titles[0] == f"A: {tmp_path / 'a'} \u2014 epoch 2 \u00b7 step 30"
    assert titles[1].startswith(f"B: {tmp_path / 'b'} \u2014 epoch 2") and "\\u" not in titles[1]
    assert head[:5] == ["", "id", "label", "text", "overlap"]
    assert len(rows) == 60
    ids = [int(r["cells"][1]) for r in rows]
    assert natural_order_within_ties(ids, [float(r["cells"][4]) for r in rows])
    assert [r["cells"][3] for r in rows] == [f"t{i}" for i in ids]  # each point's own text
    assert all(r["img"].startswith("data:image/png;base64,") for r in rows)
