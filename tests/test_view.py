"""The epoch-slider HTML view: figure structure, escaping, and the page in a real browser.

The browser tests drive Debian's chromium (found on PATH, see tests/browser.py) through playwright
with every non-file:// request blocked. They skip where chromium is missing (fail instead with
EMBPROJ_REQUIRE_BROWSER=1, as in CI). Set EMBPROJ_SCREENSHOT=1 (or a .png path) to render the
README screenshot of a digits run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from browser import launch_chromium

from lightning_embproj.sinks.html_view import (
    figure_dict,
    reducers_in,
    render_view,
    thin_epochs,
    write_view,
)
from lightning_embproj.sinks.local import read_metrics, read_projections, write_projection
from lightning_embproj.types import EpochSample, Projection

SCRIPT_TEXT = "<script>window.__pwned = 1</script>"
IMG_LABEL = '<img src=x onerror="window.__pwned2=1">'
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "view.png"


def make_run(root: Path, *, epochs: int = 4, n: int = 45, dims: int = 2,
             labels: bool = True, seed: int = 0) -> None:
    """Local files of set ``emb``: three label clusters that tighten epoch by epoch.

    Sample 0 (label IMG_LABEL, text SCRIPT_TEXT) is in every epoch; sample 1 only in epoch 0.
    """
    rng = np.random.default_rng(seed)
    names = np.array([IMG_LABEL, "cat", "dog"])[np.arange(n) % 3]
    texts = [SCRIPT_TEXT] + [f"caption {i}: " + "word " * (i % 30) for i in range(1, n)]
    centers = rng.normal(size=(3, dims)) * 6
    start = rng.normal(size=(n, dims)) * 4
    weight = rng.random(n).round(3)
    for e in range(epochs):
        t = e / max(epochs - 1, 1)
        pos = (1 - t) * start + t * (centers[np.arange(n) % 3] + 0.4 * rng.normal(size=(n, dims)))
        keep = np.arange(n) if e == 0 else np.delete(np.arange(n), 1)
        sample = EpochSample(
            name="emb", keys=keep.astype(np.int64), sample_ids=[int(i) for i in keep],
            embeddings=np.zeros((len(keep), 8), np.float32),
            labels=names[keep] if labels else None,
            metadata={"text": [texts[i] for i in keep], "weight": weight[keep]},
        )
        write_projection(root, Projection(
            sample=sample, epoch=e, step=25 * (e + 1),
            layouts={"pca": pos[keep], "tsne": 3 * pos[keep][:, ::-1] + 1},
            metrics={"silhouette": 0.1 + 0.5 * t, "knn_accuracy": 0.4 + 0.5 * t,
                     "tsne/trustworthiness": 0.8 + 0.1 * t, "pca/displacement": 2.0 - t},
        ))


def synthetic_points(n: int, epochs: int, *, seed: int = 0) -> pd.DataFrame:
    """A read_projections-shaped table built directly (fast for long runs)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "sample_id": np.tile(np.arange(n), epochs),
        "epoch": np.repeat(np.arange(epochs), n),
        "step": np.repeat(np.arange(epochs) * 10, n),
        "text": np.tile([f"a caption of sample {i} with a few words" for i in range(n)], epochs),
        "label": np.tile(np.arange(n) % 10, epochs),
        "pca_x": rng.normal(size=n * epochs), "pca_y": rng.normal(size=n * epochs),
        "tsne_x": rng.normal(size=n * epochs), "tsne_y": rng.normal(size=n * epochs),
    })


def decode(arr: dict[str, str]) -> np.ndarray:
    import base64

    assert arr["dtype"] == "f4"
    return np.frombuffer(base64.b64decode(arr["bdata"]), dtype="<f4")


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("n", "max_epochs", "expected"), [
    (5, 50, [0, 1, 2, 3, 4]),
    (10, 4, [0, 3, 6, 9]),
    (120, 50, None),
])
def test_thin_epochs_keeps_first_last_evenly(n: int, max_epochs: int, expected: Any) -> None:
    kept = thin_epochs(range(n), max_epochs)
    assert len(kept) == min(n, max_epochs)
    assert kept[0] == 0 and kept[-1] == n - 1 and kept == sorted(set(kept))
    if expected is not None:
        assert kept == expected
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 1


def test_thin_epochs_rejects_small_max() -> None:
    with pytest.raises(ValueError, match="max_epochs: expected an int >= 2, got 1"):
        thin_epochs(range(5), 1)


def test_reducers_in_known_order_first() -> None:
    cols = ["sample_id", "epoch", "umap_x", "umap_y", "tsne_x", "tsne_y", "tsne_z", "pca_x",
            "pca_y", "text_x"]
    assert reducers_in(pd.DataFrame(columns=cols)) == {"pca": 2, "tsne": 3, "umap": 2}


def test_figure_tracks_points_by_id_and_escapes(tmp_path: Path) -> None:
    make_run(tmp_path)
    fig = figure_dict(read_projections(tmp_path, "emb"), read_metrics(tmp_path, "emb"))
    scatter = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert len(scatter) == 2 * 3  # (pca, tsne) x three labels
    assert [t["visible"] for t in scatter] == [True] * 3 + [False] * 3
    names = [t["name"] for t in scatter[:3]]
    assert names[1:] == ["cat", "dog"] and names[0].startswith("&lt;img src=x onerror=")
    assert [s["label"] for s in fig["layout"]["sliders"][0]["steps"]] == ["0", "1", "2", "3"]
    assert [f["name"] for f in fig["frames"]] == ["0", "1", "2", "3"]
    # Every frame has the same slots; sample 1 (label cat) is NaN after epoch 0.
    cat = scatter[1]
    slot = next(i for i, t in enumerate(cat["text"]) if t.startswith("sample_id: 1<br>"))
    x0 = decode(fig["frames"][0]["data"][1]["x"])
    x3 = decode(fig["frames"][3]["data"][1]["x"])
    assert len(x0) == len(x3) == len(cat["ids"])
    assert np.isfinite(x0[slot]) and np.isnan(x3[slot])
    assert not np.allclose(np.nan_to_num(x0), np.nan_to_num(x3))
    text = scatter[0]["text"][0]
    assert "text: &lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    assert "label: &lt;img src=x onerror=" in text
    dumped = json.dumps(fig)
    assert SCRIPT_TEXT not in dumped and "<img" not in dumped
    # Long texts are cut before escaping: no hover value is longer than the limit.
    assert all(len(v) < 100 for t in scatter for line in t["text"]
               for v in line.split("<br>"))
    metric_names = {t["name"] for t in fig["data"] if t.get("mode") == "lines+markers"}
    assert metric_names == {"silhouette", "knn_accuracy", "tsne/trustworthiness",
                            "pca/displacement"}
    assert [s["x0"] for s in fig["frames"][1]["layout"]["shapes"]] == [1, 1]


def test_figure_is_strict_json_with_odd_metrics() -> None:
    points = synthetic_points(10, 3)
    points.loc[points["sample_id"] == 3, "tsne_x"] = np.nan  # a point with a missing layout
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "step": [0, 10, 20],
                            "silhouette": [np.nan, 0.2, 0.3], "empty": [np.nan] * 3,
                            "note": ["a", "b", "c"], "tsne/displacement": [np.nan, 4.0, 2.0]})
    fig = figure_dict(points, metrics)
    json.dumps(fig, allow_nan=False)  # NaN is not JSON: plotly.js would fail to parse it
    curves = {t["name"]: t["y"] for t in fig["data"] if t.get("mode") == "lines+markers"}
    assert curves == {"silhouette": [None, 0.2, 0.3], "tsne/displacement": [None, 4.0, 2.0]}
    assert fig["layout"]["yaxis3"]["title"]["text"] == "drift"


def test_long_run_is_thinned_and_says_so() -> None:
    points = synthetic_points(30, 120)
    page = render_view(points, None, title="long", max_epochs=50)
    fig = figure_dict(points, None, max_epochs=50)
    steps = [int(s["label"]) for s in fig["layout"]["sliders"][0]["steps"]]
    assert len(fig["frames"]) == len(steps) == 50 and steps[0] == 0 and steps[-1] == 119
    assert "showing 50 of 120 epochs" in page and "evenly spaced" in page


def test_view_size_for_2000_points_50_epochs() -> None:
    import time

    points = synthetic_points(2000, 50)
    start = time.perf_counter()
    page = render_view(points, None, title="size")
    seconds = time.perf_counter() - start
    size_mb = len(page.encode()) / 1e6
    print(f"2000 points x 50 epochs x 2 reducers: {size_mb:.2f} MB in {seconds:.2f} s")
    assert size_mb < 10  # 4.8 MB is plotly.js itself


def test_page_is_offline_and_escapes_title() -> None:
    points = synthetic_points(20, 3)
    page = render_view(points, None, title=SCRIPT_TEXT)
    assert SCRIPT_TEXT not in page and "&lt;script&gt;window.__pwned" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "plotly.js v" in page  # inlined, not fetched
    # No external script or stylesheet (plotly.js mentions its CDN only for geo maps).
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)


def test_no_label_single_colour_and_3d(tmp_path: Path) -> None:
    make_run(tmp_path, dims=3, labels=False, epochs=2)
    fig = figure_dict(read_projections(tmp_path, "emb"), None)
    assert [t["name"] for t in fig["data"]] == ["points", "points"]
    assert {t["type"] for t in fig["data"]} == {"scatter3d"}
    assert fig["layout"]["scene"]["zaxis"]["range"][0] < fig["layout"]["scene"]["zaxis"]["range"][1]
    assert "sliders" in fig["layout"] and "legend2" not in fig["layout"]


def test_varying_metadata_goes_into_frames() -> None:
    points = synthetic_points(6, 3)
    points["text"] = [f"epoch {e}" for e in points["epoch"]]
    fig = figure_dict(points, None)
    assert all("text" in d for f in fig["frames"] for d in f["data"])
    assert any("epoch 0" in t for d in fig["frames"][0]["data"] for t in d["text"])
    static = figure_dict(synthetic_points(6, 3), None)
    assert not any("text" in d for f in static["frames"] for d in f["data"])


def test_bad_points_and_missing_plotly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="at least one reducer's R_x/R_y columns"):
        render_view(pd.DataFrame({"sample_id": [1], "epoch": [0]}), None, title="t")
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.io", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-embproj\[view\]"'):
        render_view(synthetic_points(5, 2), None, title="t")


def test_write_view_next_to_the_csv_files(tmp_path: Path) -> None:
    make_run(tmp_path, epochs=2)
    path = write_view(tmp_path, "emb", max_epochs=5)
    assert path == tmp_path / "embproj" / "emb" / "view.html"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "epoch_0000.csv", "epoch_0001.csv", "metrics.jsonl", "view.html"]


# ----------------------------------------------------------------------------- browser

GD = "document.getElementById('embproj-view')"


@pytest.fixture(scope="module")
def browser() -> Any:
    with launch_chromium() as b:
        yield b


def open_view(browser: Any, path: Path) -> tuple[Any, list[str]]:
    """Load the page offline; returns it and the problems seen (errors, any network use)."""
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.text}") if m.type == "error"
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed {r.url}")
            if not r.url.startswith("file://") else None)

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            problems.append(f"network {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    page.wait_for_selector("#embproj-view[data-ready='1']", timeout=60_000)
    return page, problems


def point_positions(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#embproj-view .scatterlayer .point", "els => els.map(e => e.getAttribute('transform'))")


def hover_sample(page: Any, needle: str) -> str:
    """Show the hover label of the visible point whose text contains ``needle``; its text."""
    page.evaluate(f"""needle => {{
        const gd = {GD};
        for (const t of gd._fullData) {{
            if (t.visible !== true || t.mode !== 'markers') continue;
            const k = t.text.findIndex(s => s.includes(needle));
            if (k >= 0) return Plotly.Fx.hover(gd, [{{curveNumber: t.index, pointNumber: k}}]);
        }}
        throw new Error('no point with ' + needle);
    }}""", needle)
    page.wait_for_selector("#embproj-view .hoverlayer .hovertext", timeout=10_000)
    return str(page.text_content("#embproj-view .hoverlayer .hovertext"))


def test_view_in_browser(tmp_path: Path, browser: Any) -> None:
    make_run(tmp_path, epochs=4)
    page, problems = open_view(browser, write_view(tmp_path, "emb"))
    try:
        # One slider step per epoch, drawn.
        assert page.eval_on_selector_all("#embproj-view .slider-label-group .slider-label",
                                         "els => els.map(e => e.textContent)") == ["0", "1", "2",
                                                                                    "3"]
        assert len(page.query_selector_all("#embproj-view .slider-tick-rect")) == 4
        # Data shown as text, never run: hover and legend carry the raw strings literally.
        hover = hover_sample(page, "__pwned = 1")
        assert SCRIPT_TEXT in hover and IMG_LABEL in hover and "sample_id: 0" in hover
        legend = page.text_content("#embproj-view .legend")
        assert '<img src=x onerror="win' in str(legend)
        assert page.evaluate("[window.__pwned, window.__pwned2]") == [None, None]
        assert page.query_selector_all("img") == []
        tools = page.eval_on_selector_all("#embproj-view .modebar-btn",
                                          "els => els.map(e => e.getAttribute('data-title'))")
        assert "Zoom" in tools and not any("Share" in t or "Cloud" in t for t in tools)
        # Dragging to epoch 0 moves the points and the epoch marker on the metric panels.
        before = point_positions(page)
        rail = page.query_selector("#embproj-view .slider-rail-rect").bounding_box()
        first = page.query_selector(
            "#embproj-view .slider-label-group .slider-label").bounding_box()
        page.mouse.click(first["x"] + first["width"] / 2, rail["y"] + rail["height"] / 2)
        page.wait_for_function(f"{GD}.layout.shapes[0].x0 === 0", timeout=10_000)
        page.wait_for_timeout(500)  # let the transition finish
        after = point_positions(page)
        assert len(after) == len(before) + 1  # sample 1 exists only in epoch 0
        assert len(set(after) - set(before)) > len(after) // 2
        assert page.evaluate(f"{GD}._fullLayout.sliders[0].active") == 0
        # Play runs through the epochs to the last one.
        page.click("#embproj-view .updatemenu-button >> nth=0")
        page.wait_for_function(f"{GD}._fullLayout.sliders[0].active === 3", timeout=30_000)
        # Reducer buttons switch the layout.
        buttons = page.eval_on_selector_all("#embproj-view .updatemenu-button",
                                            "els => els.map(e => e.textContent)")
        assert {"pca", "tsne"} <= set(buttons)
        page.click("#embproj-view .updatemenu-button:has-text('tsne')")
        page.wait_for_function(f"{GD}._fullLayout.xaxis.title.text === 'tsne_x'")
        visible = page.evaluate(f"{GD}._fullData.filter(t => t.visible === true && "
                                "t.mode === 'markers').map(t => t.index)")
        assert visible == [3, 4, 5]
        assert SCRIPT_TEXT in hover_sample(page, "__pwned = 1")
        assert "silhouette" in str(page.text_content("#embproj-view .legend2"))
        assert problems == []
    finally:
        page.close()


def test_view_3d_in_browser(tmp_path: Path, browser: Any) -> None:
    make_run(tmp_path, dims=3, epochs=2, n=30)
    page, problems = open_view(browser, write_view(tmp_path, "emb"))
    try:
        assert page.evaluate(f"{GD}._fullData[0].type") == "scatter3d"
        assert len(page.query_selector_all("#embproj-view .slider-tick-rect")) == 2
        assert page.evaluate("[window.__pwned, window.__pwned2]") == [None, None]
        assert problems == []
    finally:
        page.close()


# ----------------------------------------------------------------------------- screenshot


def digits_run(root: Path, epochs: int = 6) -> None:
    """Hidden-layer features of a small MLP learning the digits, one snapshot per epoch."""
    import warnings

    from openTSNE import TSNE
    from scipy.linalg import orthogonal_procrustes
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    ids = np.arange(0, len(x), 3)  # "validation" third; the MLP trains on the rest
    train = np.setdiff1d(np.arange(len(x)), ids)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=3e-3, random_state=0)
    prev: dict[str, np.ndarray] = {}
    for e in range(epochs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            part = train[:64] if e == 0 else train  # epoch 0: barely trained features
            clf.partial_fit(x[part], y[part], classes=np.arange(10))
        z = np.maximum(x[ids] @ clf.coefs_[0] + clf.intercepts_[0], 0.0)
        pca = PCA(2, random_state=0).fit_transform(z)
        # Warm start from the previous layout without exaggeration, as the pipeline does.
        tsne = np.asarray(TSNE(
            initialization=prev["tsne"] if prev else "pca", random_state=0, n_jobs=2,
            n_iter=250 if prev else 500, early_exaggeration_iter=0 if prev else 250,
        ).fit(z))
        layouts = {"pca": pca, "tsne": tsne}
        for r, lay in layouts.items():
            if r in prev:  # rotate onto the previous epoch so the slider shows real change
                rot, _ = orthogonal_procrustes(lay - lay.mean(0), prev[r] - prev[r].mean(0))
                layouts[r] = (lay - lay.mean(0)) @ rot + prev[r].mean(0)
        metrics = {
            "silhouette": float(silhouette_score(z, y[ids])),
            "knn_accuracy": float(cross_val_score(KNeighborsClassifier(10), z, y[ids],
                                                  cv=3).mean()),
            "tsne/trustworthiness": float(trustworthiness(z, layouts["tsne"], n_neighbors=10)),
        }
        if prev:
            metrics["tsne/displacement"] = float(
                np.linalg.norm(layouts["tsne"] - prev["tsne"], axis=1).mean())
        prev = layouts
        sample = EpochSample(
            name="digits", keys=ids.astype(np.int64), sample_ids=[int(i) for i in ids],
            embeddings=z.astype(np.float32), labels=y[ids],
            metadata={"ink": x[ids].mean(1).round(3), "caption": [
                f"handwritten {d}, image #{i}" for d, i in zip(y[ids], ids, strict=True)]},
        )
        write_projection(root, Projection(sample=sample, epoch=e, step=450 * (e + 1),
                                          layouts=layouts, metrics=metrics))


@pytest.mark.slow
def test_screenshot(tmp_path: Path, browser: Any) -> None:
    target = os.environ.get("EMBPROJ_SCREENSHOT")
    if not target:
        pytest.skip("set EMBPROJ_SCREENSHOT=1 (or a .png path) to render docs/images/view.png")
    out = Path(target) if target.endswith(".png") else SCREENSHOT
    root = tmp_path / "lightning_logs" / "version_0"
    digits_run(root)
    page, problems = open_view(browser, write_view(root, "digits"))
    try:
        page.click("#embproj-view .updatemenu-button:has-text('tsne')")
        page.wait_for_function(f"{GD}._fullLayout.xaxis.title.text === 'tsne_x'")
        assert "caption: handwritten" in hover_sample(page, "image #201")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        assert problems == []
    finally:
        page.close()
