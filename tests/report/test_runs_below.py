"""Runs found below any folder (a W&B save_dir), the end-of-fit line, the two-run summary,
the W&B vector column, and ``show`` in a notebook frame."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import launch_chromium
from digits import DigitsModel, loaders, trainer, wandb_tables
from test_compare import make_run

from lightning_embproj import EmbeddingProjector, read_projections, show
from lightning_embproj.__main__ import main
from lightning_embproj.readers import find_run, find_runs, list_sets
from lightning_embproj.report.compare import compare
from lightning_embproj.sinks.view import write_view
from lightning_embproj.sinks.view.encode import text


def _age(run: Path, seconds: float) -> None:
    """Make every file of a run ``seconds`` older."""
    for folder, _, files in os.walk(run):
        for f in files:
            path = os.path.join(folder, f)
            t = os.stat(path).st_mtime - seconds
            os.utime(path, (t, t))


def test_several_runs_below_a_folder_are_listed_and_latest_picks_the_newest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    save = tmp_path / "save"
    old, new = save / "demo" / "run0old", save / "demo" / "run1new"
    make_run(old, n=60)
    make_run(new, n=45)
    (save / "wandb" / "offline-run-x" / "files").mkdir(parents=True)  # W&B's own folder
    _age(old, 3600)
    assert find_runs(save) == [old, new]
    listing = (r"2 runs under '.*save': .*run0old \(run run0old, last written \d{4}-\d\d-\d\d "
               r"\d\d:\d\d:\d\d\); .*run1new \(run run1new, last written .*\)\. Pass one run's "
               r"folder, or latest=True \(--latest on the command line\) for the newest")
    with pytest.raises(ValueError, match=listing):
        compare(save, tmp_path / "out")
    with pytest.raises(ValueError, match=listing):
        read_projections(save)
    assert len(read_projections(save, latest=True).query("val_index == 0")) == 45
    assert list_sets(save, latest=True) == ["emb"]
    # The CLI: the listing and how to pick, exit 2, nothing written; --latest takes the newest.
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(save), "--output", str(tmp_path / "out")])
    assert exc.value.code == 2 and re.search(listing, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert main(["compare", str(save), "--output", str(tmp_path / "out"), "--latest"]) == 0
    assert [Path(p).name for p in capsys.readouterr().out.split()] == [
        "view.html", "compare_pca.png"]
    assert "emb \u2014 run1new" in (tmp_path / "out" / "emb" / "view.html").read_text()
    _age(new, 7200)  # now the other one is the newest
    assert find_run(save, latest=True) == old
    # One run below: found without asking; a run's own folder is taken as it is.
    assert find_run(save / "demo" / "run0old") == old
    single = tmp_path / "single"
    make_run(single / "p" / "abc", n=30)
    assert find_run(single) == single / "p" / "abc"
    assert len(read_projections(single).query("val_index == 0")) == 30


def test_two_runs_print_a_summary_beside_the_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    make_run(tmp_path / "a", epochs=3, seed=1)
    make_run(tmp_path / "b", epochs=3, seed=2)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    folder = tmp_path / "out" / "emb"
    # stdout: only the paths (for scripts); the summary on stderr.
    assert out.out.split() == [str(folder / "compare.html"), str(folder / "neighbours_pca.csv"),
                               str(folder / "neighbours_tsne.csv")]
    lines = out.err.splitlines()
    pca = pd.read_csv(folder / "neighbours_pca.csv", keep_default_na=False)
    tsne = pd.read_csv(folder / "neighbours_tsne.csv", keep_default_na=False)
    assert lines[0] == ("emb: 60 shared ids (60 tracked in A, 60 in B); mean neighbourhood "
                        f"overlap (k=10): pca {pca['overlap'].mean():.2f}, "
                        f"tsne {tsne['overlap'].mean():.2f}")
    for line, (reducer, table) in zip(lines[1:], [("pca", pca), ("tsne", tsne)], strict=True):
        expected = ", ".join(f"{r.sample_id} (label {text(r.label, 40)}) {r.overlap:.2f}"
                             for r in table.head(5).itertuples())
        assert line == f"  most changed ({reducer}): {expected}"
    assert len(lines) == 3 and "(label $\\bad$ <img src=x onerror=window.__pwne\u2026)" in out.err


def test_fit_with_wandb_then_compare_the_save_dir(
    tmp_path: Path, wandb_offline: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    """A real fit with an offline WandbLogger: ``compare <save_dir>`` finds the run below it,
    the end of fit says where the view and files are, and the W&B table has the vectors."""
    from lightning.pytorch.loggers import WandbLogger

    save = wandb_offline
    logger = WandbLogger(project="demo", save_dir=str(save))
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=60,
                                   vectors=8)
    train, val = loaders(n_train=128, n_val=60, batch_size=32)
    trainer(tmp_path, [projector], max_epochs=2, logger=logger).fit(DigitsModel(), train, val)
    err = capfd.readouterr().err
    run = Path(projector.root)
    assert run.parent == save / "demo" and run.name == logger.experiment.id
    folder = (run / "embproj" / "embeddings").resolve()
    line = (f"lightning-embproj: view {(folder / 'view.html').as_uri()} \u00b7 files "
            f"{folder}{os.sep} (2 runs)")
    assert [x for x in err.splitlines() if x.startswith("lightning-embproj:")] == [line]
    import wandb

    wandb.finish()
    # Whatever folder above the run: compare and the readers find it.
    paths = compare(save, tmp_path / "out")
    assert [p.name for p in paths] == ["view.html", "lineage_summary.csv", "compare_pca.png"]
    assert len(read_projections(save)) == 120
    # The raw vector column: 16-d embeddings, PCA to the 8 dims asked for, not in the CSV.
    tables = wandb_tables(save, "embproj/embeddings")
    assert len(tables) == 2
    for table in tables:
        cells = np.array([row[table["columns"].index("embedding")] for row in table["data"]])
        assert cells.shape == (60, 8)
        assert np.allclose(cells.mean(axis=0), 0, atol=1e-4)  # centred principal components
        var = cells.var(axis=0)
        assert (np.diff(var) <= 1e-6).all() and var[0] > 0
    assert "embedding" not in read_projections(save).columns
    # Nothing written (a validate with no validation batches): no line.
    capfd.readouterr()
    trainer(tmp_path, [EmbeddingProjector(reducers="pca")], limit_val_batches=0).validate(
        DigitsModel(), val)
    assert "lightning-embproj: view" not in capfd.readouterr().err


def test_show_renders_the_view_in_a_notebook_frame(tmp_path: Path) -> None:
    make_run(tmp_path / "save" / "demo" / "r1", n=45)
    write_view(tmp_path / "save" / "demo" / "r1", "emb")
    shown = show(tmp_path / "save")  # a folder above the run, as the readers take it
    assert shown.path == tmp_path / "save" / "demo" / "r1" / "embproj" / "emb" / "view.html"
    markup = shown._repr_html_()
    assert markup.startswith("<iframe ") and "<script" not in markup  # all inside srcdoc
    notebook = tmp_path / "notebook.html"
    notebook.write_text(f"<!doctype html><html><body><h1>cell</h1>{markup}</body></html>",
                        encoding="utf-8")
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                   else (problems.append(r.request.url), r.abort()))
        page.goto(notebook.as_uri())
        frame = page.frame_locator("iframe")
        frame.locator("#embproj-view[data-ready='1']").wait_for(timeout=60_000)
        view = next(f for f in page.frames if f != page.main_frame)
        drawn = view.evaluate("document.getElementById('plot-0')._fullData[0].x.length")
        box = page.locator("iframe").bounding_box()
        page.close()
    assert drawn == 45 and problems == []
    assert box is not None and box["height"] == 820 and box["width"] > 1000
    with pytest.raises(FileNotFoundError, match="show: no view.html in"):
        make_run(tmp_path / "bare", n=30)
        show(tmp_path / "bare")
