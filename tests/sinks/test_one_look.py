"""One look: every picture of a run draws a label, a cluster id, noise, a number the same way.

One real fit on the digits model (W&B offline, the local files, the view, ``compare``) is read
back from what each output really holds: the PNG the W&B offline run wrote, the marker colours
Chromium renders, the PNG ``compare`` wrote. Synthetic layouts check the cases a real fit does
not reach on demand (HDBSCAN noise, 26 cluster ids, a 4:1 layout).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import launch_chromium
from digits import DigitsModel, loaders, trainer
from pixels import blobs, frame_lines, hex_to_rgb, ink_box, read_rgb

from lightning_embproj import EmbeddingProjector, read_projections
from lightning_embproj.report.compare import compare
from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.runtime.warn import WarnOnce
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.local import write_projection
from lightning_embproj.sinks.view import write_view
from lightning_embproj.sinks.wandb_sink import WandbSink

VIEW = "#embproj-view[data-ready='1']"
GD = "document.getElementById('plot-0')"
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


@pytest.fixture(scope="module")
def browser() -> Any:
    with launch_chromium() as b:
        yield b


def offline_wandb(mp: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline with every folder under ``root`` (as conftest's ``wandb_offline``)."""
    for var, sub in [("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(root / sub))
    for var, value in WANDB_ENV.items():
        mp.setenv(var, value)
    mp.delenv("WANDB_API_KEY", raising=False)


def wandb_pictures(root: Path, name: str, reducer: str) -> list[str]:
    media = os.path.join(str(root), "**", "offline-run-*", "files", "media", "images")
    return sorted(glob.glob(os.path.join(media, "embproj", name, f"{reducer}_plot_*.png"),
                            recursive=True), key=os.path.getmtime)


def finish_wandb() -> None:
    import wandb

    wandb.finish()
    wandb.teardown()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fit of the digits model: labels 0-9, a ``digit`` int metadata column (the same
    digit), numeric ids, PCA; logged to W&B offline, local files, the view, then ``compare``."""
    from lightning.pytorch.loggers import WandbLogger

    tmp = tmp_path_factory.mktemp("one_look")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb(mp, tmp / "wandb")
        projector = EmbeddingProjector(
            label_key="labels", id_key="id", reducers="pca", max_samples=300,
            metadata_keys={"digit": "y", "text": "text"}, output_dir=str(tmp / "out"))
        train, val = loaders(n_train=600, n_val=300, dict_batches=True)
        logger = WandbLogger(project="embproj-test", save_dir=str(tmp / "wandb"))
        fit = trainer(tmp, [projector], max_epochs=2, logger=logger, limit_train_batches=5)
        fit.fit(DigitsModel(dict_batches=True), train, val)
        projector.flush(timeout=120)
        finish_wandb()
        pictures = wandb_pictures(tmp / "wandb", "embeddings", "pca")
    report = compare(tmp / "out", tmp / "report")
    return {"out": tmp / "out", "pictures": pictures,
            "view": tmp / "out" / "embproj" / "embeddings" / "view.html",
            "compare_png": next(p for p in report if p.name == "compare_pca.png"),
            "points": read_projections(tmp / "out", "embeddings")}


def open_view(browser: Any, path: Path, width: int = 1400) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error {e}"))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
               else (problems.append(r.request.url), r.abort()))
    page.goto(path.as_uri())
    page.wait_for_selector(VIEW, timeout=60_000)
    return page, problems


def view_colours(page: Any, column: str, values: dict[str, Any]) -> dict[Any, set[tuple]]:
    """value -> the marker colours the page draws for points with that ``column`` value
    (``values``: point key -> value)."""
    page.select_option("#colour", column)
    page.wait_for_function("window.embproj.state.colour === " + repr(column))
    page.evaluate("window.embproj.render()")
    keys = page.evaluate("window.embproj.keys")
    colours = page.evaluate(f"{GD}._fullData[0].marker.color")
    out: dict[Any, set[tuple]] = {}
    for key, colour in zip(keys, colours, strict=True):
        out.setdefault(values[key], set()).add(hex_to_rgb(colour))
    return out


def legend_beside(img: np.ndarray) -> list[tuple[int, int, int]]:
    """The W&B picture's legend markers, top to bottom: the coloured marks right of the plot
    frame."""
    right = frame_lines(img, axis=0, share=0.6).max()
    marks = blobs(img[:, right + 3:])
    return [m["rgb"] for m in sorted(marks, key=lambda m: m["y"])]


def legend_below(img: np.ndarray) -> list[tuple[int, int, int]]:
    """compare's legend markers, left to right: the coloured marks under the panels."""
    bottom = frame_lines(img, axis=1, share=0.5).max()
    marks = blobs(img[bottom + 3:])
    return [m["rgb"] for m in sorted(marks, key=lambda m: m["x"])]


def last_labels(points: Any) -> dict[str, int]:
    last = points[points["val_index"] == points["val_index"].max()]
    return dict(zip(last["sample_id"].astype(str), last["label"].astype(int), strict=True))


def test_one_real_run_draws_each_label_in_one_colour_everywhere(
        real_run: dict[str, Any], browser: Any) -> None:
    labels = last_labels(real_run["points"])
    assert sorted(set(labels.values())) == list(range(10))
    page, problems = open_view(browser, real_run["view"])
    try:
        in_view = view_colours(page, "label", labels)
        assert problems == []
    finally:
        page.close()
    assert all(len(c) == 1 for c in in_view.values()), in_view
    view = [next(iter(in_view[k])) for k in range(10)]
    in_wandb = legend_beside(read_rgb(real_run["pictures"][-1]))
    in_compare = legend_below(read_rgb(real_run["compare_png"]))
    assert in_wandb == view, (in_wandb, view)
    assert in_compare == view, (in_compare, view)
    assert len(set(view)) == 10


def test_integer_metadata_is_coloured_as_categories(real_run: dict[str, Any],
                                                     browser: Any) -> None:
    """``digit`` (ints 0-9) gets a legend of ten categories, each in its label's colour, not
    a number scale."""
    last = real_run["points"][real_run["points"]["val_index"] == 1]
    digits = dict(zip(last["sample_id"].astype(str), last["digit"].astype(int), strict=True))
    page, problems = open_view(browser, real_run["view"])
    try:
        by_digit = view_colours(page, "digit", digits)
        assert page.query_selector("#legend .grad") is None
        items = page.eval_on_selector_all("#legend .item", "els => els.map(e => e.textContent)")
        assert items == [str(k) for k in range(10)]
        by_label = view_colours(page, "label", last_labels(real_run["points"]))
        assert by_digit == by_label
        assert problems == []
    finally:
        page.close()


def test_wandb_picture_uses_its_area(real_run: dict[str, Any]) -> None:
    """No blank quarter: the legend sits beside the plot, the plot takes the rest."""
    img = read_rgb(real_run["pictures"][-1])
    white = img.min(axis=2) >= 250
    assert white.all(axis=0).mean() < 0.06  # blank columns
    assert white.all(axis=1).mean() < 0.06  # blank rows
    right = frame_lines(img, axis=0, share=0.6).max()
    assert right > 0.8 * img.shape[1]  # the plot spans more than 80% of the width


@pytest.mark.parametrize("width", [1400, 900])
def test_metric_legends_are_never_under_the_toolbar(real_run: dict[str, Any], browser: Any,
                                                    width: int) -> None:
    page, problems = open_view(browser, real_run["view"], width=width)
    try:
        found = page.evaluate("""() => [...document.querySelectorAll('.metric-panel')].map(p => {
            const box = (e) => { const r = e.getBoundingClientRect();
                                 return [r.left, r.top, r.right, r.bottom]; };
            const plot = p.querySelector('.mplot');
            plot.dispatchEvent(new MouseEvent('mousemove', {bubbles: true}));
            const entries = [...p.querySelectorAll('.legend .traces, [data-series]')];
            return {n: plot._fullData.length, toolbar: box(p.querySelector('.modebar')),
                    entries: entries.map(box),
                    names: entries.map(e => e.textContent)}; })""")
        assert found and problems == []
    finally:
        page.close()
    for panel in found:
        assert len(panel["entries"]) == panel["n"]  # every curve has its legend entry
        tx0, ty0, tx1, ty1 = panel["toolbar"]
        for (x0, y0, x1, y1), name in zip(panel["entries"], panel["names"], strict=True):
            covered = min(x1, tx1) - max(x0, tx0) > 0 and min(y1, ty1) - max(y0, ty0) > 0
            assert not covered, f"legend entry {name!r} is under the toolbar at width {width}"


# ----------------------------------------------------------------------------- synthetic

CLUSTERS = [-1, *range(21), 32, 35, 64, 100]  # 32, 64 share 0's home colour, 35 3's, 100 4's


def cluster_run(root: Path, name: str = "emb") -> RunResult:
    """26 cluster ids (noise included) along a line, each id's 5 points on one spot; no
    labels, so every picture colours by cluster."""
    ids = np.repeat(CLUSTERS, 5)
    n = len(ids)
    layout = np.column_stack([np.repeat(np.arange(len(CLUSTERS)) * 10.0, 5), np.zeros(n)])
    sample = EpochSample(name=name, keys=np.arange(n, dtype=np.int64),
                         sample_ids=list(range(n)), embeddings=np.zeros((n, 4), np.float32),
                         labels=None, metadata={"cluster": ids.tolist()})
    projection = run_result(sample, RunIdentity(0, epoch=0, step=1), {"pca": layout})
    write_projection(root, projection)
    write_view(root, name)
    return projection


def sink_picture(tmp_path: Path, projection: RunResult) -> np.ndarray:
    """The picture W&B's sink logs for ``projection``, read from the offline run's files."""
    import wandb

    with pytest.MonkeyPatch.context() as mp:
        offline_wandb(mp, tmp_path / "wandb")
        run = wandb.init(project="embproj-test", dir=str(tmp_path / "wandb"), mode="offline")
        WandbSink(run, WarnOnce(), reducers=["pca"]).write(projection)
        finish_wandb()
        return read_rgb(wandb_pictures(tmp_path / "wandb", projection.name, "pca")[-1])


def inside_frame(img: np.ndarray) -> np.ndarray:
    """The plot's inside: within its frame lines (tick marks and labels are outside)."""
    cols, rows = frame_lines(img, axis=0, share=0.6), frame_lines(img, axis=1, share=0.6)
    return img[rows.min() + 2:rows.max() - 1, cols.min() + 2:cols.max() - 1]


def nearest(colour: tuple[int, ...], choices: list[tuple[int, ...]]) -> int:
    return int(np.argmin([sum((a - b) ** 2 for a, b in zip(colour, c, strict=True))
                          for c in choices]))


def test_noise_is_grey_and_cluster_ids_stay_apart(tmp_path: Path, browser: Any) -> None:
    projection = cluster_run(tmp_path)
    page, problems = open_view(browser, tmp_path / "embproj" / "emb" / "view.html")
    try:
        keys = page.evaluate("window.embproj.keys")
        ids = dict(zip([str(i) for i in range(len(projection.sample))],
                       projection.sample.metadata["cluster"], strict=True))
        by_id = view_colours(page, "cluster", {k: ids[k] for k in keys})
        assert problems == []
    finally:
        page.close()
    # The view: noise grey, every other id its own colour.
    assert all(len(by_id[c]) == 1 for c in CLUSTERS)
    view = [next(iter(by_id[c])) for c in CLUSTERS]
    assert max(view[0]) - min(view[0]) == 0
    assert all(max(c) - min(c) > 30 for c in view[1:]) and len(set(view)) == len(CLUSTERS)
    # W&B: the spots left to right are the ids in order, each in the view's colour for it.
    spots = sorted(blobs(inside_frame(sink_picture(tmp_path, projection)), chromatic=False,
                         min_area=2), key=lambda b: b["x"])
    colours = [s["rgb"] for s in spots]
    assert len(colours) == len(CLUSTERS)
    assert max(colours[0]) - min(colours[0]) < 10  # -1: grey
    assert [nearest(c, view) for c in colours] == list(range(len(CLUSTERS)))


def anisotropic_points(n: int = 400) -> np.ndarray:
    """A 4:1 rectangle of points, corners included."""
    rng = np.random.default_rng(0)
    xy = rng.uniform([-100, -25], [100, 25], size=(n, 2))
    xy[:4] = [[-100, -25], [100, -25], [-100, 25], [100, 25]]
    return xy


def test_layouts_are_drawn_at_equal_scale(tmp_path: Path, browser: Any) -> None:
    """A 4:1 layout is drawn 4:1 in the W&B picture, compare's PNG and the view."""
    xy = anisotropic_points()
    n = len(xy)
    for v in range(2):
        sample = EpochSample(name="emb", keys=np.arange(n, dtype=np.int64),
                             sample_ids=list(range(n)), embeddings=np.zeros((n, 4), np.float32),
                             labels=np.arange(n) % 3)
        projection = run_result(sample, RunIdentity(v, epoch=v, step=v + 1), {"pca": xy})
        write_projection(tmp_path, projection)
    write_view(tmp_path, "emb")
    img = sink_picture(tmp_path, projection)
    right = frame_lines(img, axis=0, share=0.6).max()
    x0, y0, x1, y1 = ink_box(img[:, :right - 1])
    assert (x1 - x0) / (y1 - y0) == pytest.approx(4.0, rel=0.1)
    png = read_rgb(next(p for p in compare(tmp_path, tmp_path / "report")
                        if p.suffix == ".png"))
    frames = frame_lines(png, axis=0, share=0.5)  # the panels' left and right edges
    panel = png[:, frames.min() + 2:frames.min() + (png.shape[1] // 2) - 10]
    bottom = frame_lines(png, axis=1, share=0.5).max()
    x0, y0, x1, y1 = ink_box(panel[:bottom - 1])
    assert (x1 - x0) / (y1 - y0) == pytest.approx(4.0, rel=0.1)
    page, problems = open_view(browser, tmp_path / "embproj" / "emb" / "view.html")
    try:
        scale = page.evaluate(f"""() => {{ const L = {GD}._fullLayout;
            const per = (a) => (a.range[1] - a.range[0]) / a._length;
            return [per(L.xaxis), per(L.yaxis)]; }}""")
        assert problems == []
    finally:
        page.close()
    assert scale[0] == pytest.approx(scale[1], rel=0.01)
