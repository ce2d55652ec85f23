"""The HTML view: its data encoding, escaping, and the page in a real browser.

The browser tests drive Debian's chromium (found on PATH, see tests/browser.py) through playwright
with every non-file:// request blocked. They skip where chromium is missing (fail instead with
EMBPROJ_REQUIRE_BROWSER=1, as in CI). EMBPROJ_RENDER_SCREENSHOT=1 (or a .png path) re-renders
docs/images/view.png from a real run of examples/digits.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from browser import launch_chromium
from digits import DigitsModel, load_example, loaders, trainer

from lightning_embproj import EmbeddingProjector, readers
from lightning_embproj.readers import read_metrics, read_projections
from lightning_embproj.results import EpochSample, RunIdentity
from lightning_embproj.runtime.warn import ProjectorWarning
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.local import write_projection
from lightning_embproj.sinks.view import build_payload, render_view, write_view
from lightning_embproj.sinks.view.encode import (
    LEVELS,
    MISSING,
    encode_points,
    reducers_in,
    thin_runs,
)
from lightning_embproj.sinks.view.images import IMAGES_FILE, read_images
from lightning_embproj.sinks.view.lineage import encode_lineage
from lightning_embproj.sinks.view.metric_panels import encode_metrics
from lightning_embproj.sinks.view.page import json_block

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "view.png"
SCRIPT_TEXT = "<script>window.__pwned = 1</script>"
IMG_LABEL = '<img src=x onerror="window.__pwned2=1">'
IMG_ID = "<img src=y onerror=window.__pwned3=1>"
IMG_METRIC = "other/<img src=z onerror=window.__pwned4=1>"
IMG_DIR = "<img src=w onerror=window.__pwned5=1>"
PWNED = "[1, 2, 3, 4, 5, 6].map(k => window['__pwned' + (k > 1 ? k : '')])"


def make_run(root: Path, *, runs: int = 5, n: int = 45, dims: int = 2, labels: bool = True,
             images: bool = True) -> None:
    """Local files of set ``emb``: three label clusters that tighten run by run.

    Two validation runs per epoch (val_index 0, 1 in epoch 0, ...). Sample 0 has the id IMG_ID,
    label IMG_LABEL and text SCRIPT_TEXT; sample 1 is only in run 0. ``cluster`` is the label
    index, except that sample 2 moves to cluster 1 from run 2 on. Images (8x8 noise) go to
    ``images.json`` through ``write_view(projection=...)``, as the callback's view sink does.
    """
    rng = np.random.default_rng(0)
    names = np.array([IMG_LABEL, "cat", "dog"])[np.arange(n) % 3]
    ids = [IMG_ID] + [f"s{i}" for i in range(1, n)]
    texts = [SCRIPT_TEXT] + [f"caption {i}: " + "word " * (i % 30) for i in range(1, n)]
    centers = rng.normal(size=(3, dims)) * 6
    start = rng.normal(size=(n, dims)) * 4
    weight = rng.random(n).round(3)
    pixels = (rng.random((n, 8, 8, 1)) * 255).astype(np.uint8)
    for v in range(runs):
        t = v / max(runs - 1, 1)
        pos = (1 - t) * start + t * (centers[np.arange(n) % 3] + 0.4 * rng.normal(size=(n, dims)))
        keep = np.arange(n) if v == 0 else np.delete(np.arange(n), 1)
        cluster = np.arange(n) % 3
        if v >= 2:
            cluster[2] = 1
        meta: dict[str, Any] = {"text": [texts[i] for i in keep], "weight": weight[keep],
                                "cluster": cluster[keep].tolist()}
        if images:
            meta["image"] = pixels[keep]
        sample = EpochSample(
            name="emb", keys=keep.astype(np.int64), sample_ids=[ids[i] for i in keep],
            embeddings=np.zeros((len(keep), 8), np.float32),
            labels=names[keep] if labels else None, metadata=meta,
        )
        projection = run_result(
            sample, RunIdentity(v, epoch=v // 2, step=25 * (v + 1)),
            {"pca": pos[keep], "tsne": 3 * pos[keep][:, ::-1] + 1},
            metrics={"silhouette": 0.1 + 0.5 * t, "knn_accuracy": 0.4 + 0.5 * t,
                     "tsne/trustworthiness": 0.8 + 0.1 * t, "pca/displacement": 2.0 - t,
                     "drift/knn_overlap": 0.5 + 0.4 * t, "clusters/count": 3.0,
                     "clusters/ari_previous": 0.9, "rankme": 7.0 - t, "uniformity": -2.0 - t,
                     IMG_METRIC: t},
        )
        write_projection(root, projection)
        write_view(root, "emb", projection=projection)


def lineage_table(runs: int = 5) -> pd.DataFrame:
    """Lineage rows as the clusters engineer's reader returns them (MONIC events)."""
    rows = []
    for v in range(runs):
        for c in range(3):
            event = "emerge" if v == 0 else "survive"
            rows.append({"val_index": v, "epoch": v // 2, "step": 25 * (v + 1), "cluster": c,
                         "event": event, "from_clusters": "" if v == 0 else str(c),
                         "size": 15, "overlap": 1.0})
    rows.append({"val_index": 2, "epoch": 1, "step": 75, "cluster": 9, "event": "vanish",
                 "from_clusters": "", "size": 1, "overlap": 0.0})
    return pd.DataFrame(rows)


def decode(data: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype=dtype)


def synthetic_points(n: int, runs: int, *, seed: int = 0) -> pd.DataFrame:
    """A read_projections-shaped table built directly (fast for long runs)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "sample_id": np.tile(np.arange(n), runs),
        "epoch": np.repeat(np.arange(runs), n), "val_index": np.repeat(np.arange(runs), n),
        "step": np.repeat(np.arange(runs) * 10, n),
        "text": np.tile([f"a caption of sample {i}" for i in range(n)], runs),
        "label": np.tile(np.arange(n) % 10, runs),
        "pca_x": rng.normal(size=n * runs), "pca_y": rng.normal(size=n * runs),
        "tsne_x": rng.normal(size=n * runs), "tsne_y": rng.normal(size=n * runs),
    })


# Runs of very different scales (spread x centre), then a run with one outlier row that
# uint16 codes over its range cannot resolve (float32 can), then one float32 cannot either.
SCALES = ((1.0, 0.0), (1e-2, 0.0), (1e-3, 0.0), (1e-5, 0.0), (1e-3, 1e3))
OUTLIERS = (1e4, 1e12)


def scaled_layouts(n: int = 400, seed: int = 0) -> list[np.ndarray]:
    """One (n, 2) pca layout per run: SCALES, then a unit run per OUTLIERS with row 0 out there."""
    rng = np.random.default_rng(seed)
    layouts = [rng.normal(size=(n, 2)) * s + c for s, c in SCALES]
    for far in OUTLIERS:
        xy = rng.normal(size=(n, 2))
        xy[0] = [far, -far]
        layouts.append(xy)
    return layouts


def spread_of(xy: np.ndarray) -> np.ndarray:
    """A run's spread per axis: the range of its central 98% of points."""
    p1, p99 = np.percentile(xy, [1, 99], axis=0)
    return np.asarray(p99 - p1)


def page_decode(run: dict[str, Any], dims: int) -> np.ndarray:
    """A run's coordinates as the page's script computes them (float64, ``decode`` in JS)."""
    kind = {"u2": "<u2", "f4": "<f4", "f8": "<f8"}[run["enc"]]
    q = decode(run["data"], kind).reshape(-1, dims).astype(np.float64)
    if run["enc"] != "u2":
        return np.asarray(run["off"], dtype=np.float64) + q
    lo = np.array([np.nan if v is None else v for v in run["lo"]])
    hi = np.array([np.nan if v is None else v for v in run["hi"]])
    return np.where(q == MISSING, np.nan, lo + q * (hi - lo) / LEVELS)


def write_scaled_runs(root: Path, layouts: list[np.ndarray]) -> Path:
    """The layouts as set ``emb``'s local files and view (ids s0, s1, ...); returns the view."""
    n = len(layouts[0])
    for v, xy in enumerate(layouts):
        sample = EpochSample(name="emb", keys=np.arange(n, dtype=np.int64),
                             sample_ids=[f"s{i}" for i in range(n)],
                             embeddings=np.zeros((n, 4), np.float32),
                             labels=np.arange(n) % 3, metadata={})
        write_projection(root, run_result(sample, RunIdentity(v, epoch=v, step=10 * (v + 1)),
                                          {"pca": xy}))
    return write_view(root, "emb")


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only: its mode bits, and as root (which ignores them) the immutable flag."""
    def writable() -> bool:
        try:
            with tempfile.TemporaryFile(dir=folder):
                return True
        except OSError:
            return False

    folder.chmod(0o555)
    immutable = False
    try:
        if writable() and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)],
                                       capture_output=True).returncode == 0
        if writable():
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("n", "max_runs", "expected"), [
    (5, 50, [0, 1, 2, 3, 4]), (10, 4, [0, 3, 6, 9]), (120, 50, None)])
def test_thin_runs_keeps_first_last_evenly(n: int, max_runs: int, expected: Any) -> None:
    kept = thin_runs(range(n), max_runs)
    assert len(kept) == min(n, max_runs) and kept[0] == 0 and kept[-1] == n - 1
    if expected is not None:
        assert kept == expected
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 1
    with pytest.raises(ValueError, match="max_runs: expected an int >= 2, got 1"):
        thin_runs(range(5), 1)


def test_reducers_in_known_order_first() -> None:
    cols = ["sample_id", "epoch", "umap_x", "umap_y", "tsne_x", "tsne_y", "tsne_z", "pca_x",
            "pca_y", "text_x"]
    assert reducers_in(pd.DataFrame(columns=cols)) == {"pca": 2, "tsne": 3, "umap": 2}


def test_points_keyed_by_validation_run(tmp_path: Path) -> None:
    make_run(tmp_path)
    points = read_projections(tmp_path, "emb")
    data = encode_points(points)
    # Two runs share epoch 0: frames are validation runs, labelled by epoch and step.
    assert [r["val_index"] for r in data["runs"]] == [0, 1, 2, 3, 4]
    assert [r["label"] for r in data["runs"]][:3] == [
        "epoch 0 \u00b7 step 25", "epoch 0 \u00b7 step 50", "epoch 1 \u00b7 step 75"]
    assert data["n"] == 45 and data["ids"][0] == IMG_ID and data["keys"][1] == "s1"
    # Coordinates: uint16 codes over each run's own range, within one quantisation step of
    # the CSV values.
    pca = data["reducers"]["pca"]
    assert [r["enc"] for r in pca["runs"]] == ["u2"] * 5
    codes = np.stack([decode(r["data"], "<u2").reshape(45, 2) for r in pca["runs"]])
    assert (codes[1:, 1] == MISSING).all() and codes[0, 1, 0] != MISSING  # s1: run 0 only
    lo, hi = np.array(pca["runs"][3]["lo"]), np.array(pca["runs"][3]["hi"])
    got = lo + codes[3] * (hi - lo) / LEVELS
    want = points[points["val_index"] == 3].set_index("sample_id").loc[
        [k for i, k in enumerate(data["keys"]) if i != 1], ["pca_x", "pca_y"]].to_numpy()
    assert np.abs(np.delete(got, 1, axis=0) - want).max() <= (hi - lo).max() / LEVELS
    assert np.allclose(lo, want.min(axis=0)) and np.allclose(hi, want.max(axis=0))
    # Metadata once when it never changes; the cluster column changes, so it is per run.
    cols = {c["name"]: c for c in data["columns"]}
    assert [c["name"] for c in data["columns"]][:2] == ["label", "cluster"]
    assert not cols["text"]["per_run"] and not cols["label"]["per_run"]
    assert cols["cluster"]["per_run"] and cols["cluster"]["values"] == ["0", "1", "2"]
    cluster = decode(cols["cluster"]["data"], "<i1").reshape(5, 45)
    assert cluster[0, 2] == 2 and cluster[4, 2] == 1 and cluster[4, 1] == -1
    assert cols["weight"]["kind"] == "num" and cols["weight"]["colour"]
    assert not cols["text"]["colour"] or len(cols["text"]["values"]) <= 50
    assert cols["label"]["values"] == [IMG_LABEL, "cat", "dog"]  # raw: the page never parses


def test_each_run_decodes_within_its_own_spread() -> None:
    """Runs 100x, 1000x and 100,000x smaller than the largest, and runs with an outlier row,
    decode (as the page does) within 0.1% of each run's own spread; only the outlier runs
    pay for floats."""
    layouts = scaled_layouts()
    n = len(layouts[0])
    points = pd.concat([pd.DataFrame({
        "sample_id": np.arange(n), "val_index": v, "epoch": v, "step": v,
        "pca_x": xy[:, 0], "pca_y": xy[:, 1]}) for v, xy in enumerate(layouts)])
    pca = encode_points(points)["reducers"]["pca"]
    errors = [float((np.abs(page_decode(run, 2) - xy) / spread_of(xy)).max())
              for run, xy in zip(pca["runs"], layouts, strict=True)]
    assert max(errors) <= 1e-3, errors
    assert [r["enc"] for r in pca["runs"]] == ["u2"] * len(SCALES) + ["f4", "f8"]
    # A run whose reducer failed (all NaN) stays missing and does not disturb the others.
    gone = points.assign(pca_x=np.where(points["val_index"] == 1, np.nan, points["pca_x"]),
                         pca_y=np.where(points["val_index"] == 1, np.nan, points["pca_y"]))
    runs = encode_points(gone)["reducers"]["pca"]["runs"]
    assert runs[1]["lo"] == [None, None] and np.isnan(page_decode(runs[1], 2)).all()
    assert runs[2] == pca["runs"][2]


@pytest.mark.parametrize(
    ("labels", "values"),
    [([300, 1000, 300, 301, 1000, 301], ["300", "301", "1000"]),  # ImageNet-style class ids
     ([1.5, 2.5, 1.5, 7.25, 2.5, 1.5], ["1.5", "2.5", "7.25"])],
)
def test_label_values_above_256_and_floats_encode(labels: list[Any], values: list[str]) -> None:
    """Labels are categories whatever their type: large ints and floats get their own codes,
    in numeric order (they once failed: the codes were looked up by object identity)."""
    n = len(labels)
    points = pd.DataFrame({
        "sample_id": list(range(n)) * 2, "val_index": [0] * n + [1] * n,
        "epoch": [0] * n + [1] * n, "step": [5] * n + [10] * n,
        "pca_x": np.arange(2.0 * n), "pca_y": np.arange(2.0 * n), "label": labels * 2,
    })
    label = {c["name"]: c for c in encode_points(points)["columns"]}["label"]
    assert label["kind"] == "cat" and label["values"] == values
    codes = decode(label["data"], "<i1")
    assert [values[c] for c in codes[:n]] == [str(v) for v in labels]


def test_metric_panels_by_kind_with_units(tmp_path: Path) -> None:
    make_run(tmp_path, runs=3)
    panels = encode_metrics(read_metrics(tmp_path, "emb"))["panels"]
    by = {p["kind"]: {a["side"]: a for a in p["axes"]} for p in panels}
    assert list(by) == ["scores", "drift", "clusters", "health", "other"]

    def names(kind: str, side: str) -> list[str]:
        return [s["name"] for s in by[kind][side]["series"]]

    assert names("scores", "left") == ["silhouette", "knn_accuracy", "tsne/trustworthiness"]
    assert names("drift", "left") == ["drift/knn_overlap"]
    assert names("drift", "right") == ["pca/displacement"]
    assert "RMS radius" in by["drift"]["right"]["title"]
    assert names("clusters", "left") == ["clusters/ari_previous"]
    assert names("clusters", "right") == ["clusters/count"]
    assert names("health", "left") == ["rankme"] and names("health", "right") == ["uniformity"]
    assert names("other", "left") == [IMG_METRIC]
    assert by["drift"]["left"]["series"][0]["y"] == pytest.approx([0.5, 0.7, 0.9])


def test_lineage_flows_are_shared_members(tmp_path: Path) -> None:
    make_run(tmp_path)
    points = read_projections(tmp_path, "emb")
    runs = encode_points(points)["runs"]
    lineage = encode_lineage(lineage_table(), points, runs)
    assert lineage is not None
    nodes, links = lineage["nodes"], lineage["links"]
    assert len(nodes["label"]) == 5 * 3  # the vanish row names no node of its run
    flows = {(nodes["label"][s], nodes["label"][t], nodes["x"][s] < nodes["x"][t]): v
             for s, t, v in zip(links["source"], links["target"], links["value"], strict=True)
             if nodes["x"][s] == 0.001 + 0.998 / 4}  # from run 1 to run 2
    # Run 1 -> 2: sample 2 moves from cluster 2 to cluster 1; sample 1 is gone since run 1.
    assert flows == {("0", "0", True): 15, ("1", "1", True): 14, ("2", "2", True): 14,
                     ("2", "1", True): 1}
    assert any("top labels:" in line for h in nodes["hover"] for line in h)
    assert encode_lineage(None, points, runs) is None
    assert encode_lineage(lineage_table().iloc[0:0], points, runs) is None


def test_page_is_offline_and_json_cannot_close_its_block() -> None:
    assert json_block({"t": "</script><b>&"}) == (
        '{"t":"\\u003c/script\\u003e\\u003cb\\u003e\\u0026"}')
    page = render_view(synthetic_points(20, 3), None, title=SCRIPT_TEXT)
    assert SCRIPT_TEXT not in page and "<title>&lt;script&gt;window.__pwned" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "plotly.js v" in page  # inlined, not fetched
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    data = page.split('id="embproj-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and json.loads(data)["title"] == SCRIPT_TEXT


def test_long_run_is_thinned_and_says_so() -> None:
    payload = build_payload(synthetic_points(30, 120), None, title="long", max_runs=50)
    runs = [r["val_index"] for r in payload["points"]["runs"]]
    assert len(runs) == 50 and runs[0] == 0 and runs[-1] == 119
    assert "showing 50 of 120 validation runs" in payload["note"]


def test_bad_points_and_missing_plotly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="at least one reducer's R_x/R_y columns"):
        render_view(pd.DataFrame({"sample_id": [1], "epoch": [0]}), None, title="t")
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-embproj\[view\]"'):
        render_view(synthetic_points(5, 2), None, title="t")


def test_write_view_next_to_the_csv_files_with_thumbnails(tmp_path: Path) -> None:
    make_run(tmp_path, runs=2)
    folder = tmp_path / "embproj" / "emb"
    assert {p.name for p in folder.iterdir()} >= {"view.html", IMAGES_FILE, "metrics.jsonl"}
    images = read_images(folder)
    assert len(images) == 45 and IMG_ID in images and "s1" in images
    assert all(v.startswith("data:image/png;base64,") for v in images.values())
    # Unreadable thumbnails never stop the view.
    (folder / IMAGES_FILE).write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        assert write_view(tmp_path, "emb") == folder / "view.html"


# ----------------------------------------------------------------------------- browser

VIEW = "#embproj-view[data-ready='1']"
GD = "document.getElementById('plot-0')"


@pytest.fixture(scope="module")
def browser() -> Any:
    with launch_chromium() as b:
        yield b


def open_view(browser: Any, path: Path, width: int = 1400) -> tuple[Any, list[str]]:
    """Load the page offline; returns it and the problems seen (errors, any network use)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.text}") if m.type == "error"
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error {e}"))

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            problems.append(f"network {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    page.wait_for_selector(VIEW, timeout=60_000)
    return page, problems


def overlaps(page: Any) -> list[str]:
    """Pairs of visible controls and panels whose boxes intersect."""
    return list(page.evaluate("""() => {
        const els = [...document.querySelectorAll(
            '[data-control], .panel, .metric-panel, #lineage-panel, #table-panel')]
            .filter(e => e.offsetParent !== null && !e.closest('[hidden]'));
        const out = [];
        for (let a = 0; a < els.length; a++) for (let b = a + 1; b < els.length; b++) {
            const p = els[a].getBoundingClientRect(), q = els[b].getBoundingClientRect();
            if (els[a].contains(els[b]) || els[b].contains(els[a])) continue;
            const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
            const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
            if (w > 0.5 && h > 0.5) out.push((els[a].id || els[a].className) + ' / '
                                             + (els[b].id || els[b].className));
        }
        return out; }"""))


def screen_xy(page: Any, index: int, plot: int = 0) -> tuple[float, float]:
    """Screen position of point ``index`` in scatter panel ``plot`` (2-D)."""
    x, y = page.evaluate("""([i, k]) => {
        const gd = document.getElementById('plot-' + k), L = gd._fullLayout;
        const r = gd.getBoundingClientRect(), t = gd._fullData[0];
        return [r.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]),
                r.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])]; }""", [index, plot])
    return float(x), float(y)


def side_ids(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#selected li strong",
                                          "els => els.map(e => e.textContent)"))


def test_view_in_browser(tmp_path: Path, browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / IMG_DIR
    monkeypatch.setattr(readers, "read_lineage", lambda path, name: lineage_table())
    make_run(root)
    page, problems = open_view(browser, root / "embproj" / "emb" / "view.html")
    try:
        assert page.evaluate("window.embproj.webgl") is True
        assert page.evaluate(f"{GD}._fullData[0].type") == "scattergl"
        assert page.text_content("h1") == f"emb \u2014 {IMG_DIR}"
        assert page.text_content("#run-label").startswith("epoch 2 \u00b7 step 125")
        assert overlaps(page) == []
        # Colour by label (legend shows the raw label text), then by a number, then by movement.
        colours = page.evaluate(f"{GD}._fullData[0].marker.color")
        assert len(set(colours)) == 3
        assert IMG_LABEL in str(page.text_content("#legend"))
        page.select_option("#colour", "weight")
        page.wait_for_function(
            f"{GD}._fullData[0].marker.color.join() !== {json.dumps(','.join(colours))}")
        assert len(set(page.evaluate(f"{GD}._fullData[0].marker.color"))) > 10
        assert page.query_selector("#legend .grad") is not None
        page.select_option("#colour", "__moved__")
        page.wait_for_function("document.getElementById('legend').textContent.includes('moved')")
        page.select_option("#colour", "cluster")
        # Hover: the card shows the raw texts as text, and the point's thumbnail.
        assert page.query_selector("#tooltip img") is None
        page.mouse.move(*screen_xy(page, 0))
        page.wait_for_selector("#tooltip:not([hidden]) img", timeout=10_000)
        tip = str(page.text_content("#tooltip"))
        assert IMG_ID in tip and SCRIPT_TEXT in tip and IMG_LABEL in tip
        assert page.get_attribute("#tooltip img", "src").startswith("data:image/png;base64,")
        # Click follows the point: listed with its texts and thumbnail, and its trail is drawn.
        page.mouse.click(*screen_xy(page, 0))
        page.wait_for_function("window.embproj.state.sel.length === 1")
        assert side_ids(page) == [IMG_ID]
        assert SCRIPT_TEXT in str(page.text_content("#selected"))
        assert page.query_selector("#selected li img.thumb") is not None
        trail = page.evaluate(f"{GD}._fullData[1].x.filter(v => v !== null).length")
        assert trail == 5  # runs 0..4, the default trail of 6 runs covers them all
        before = page.locator("#plot-0").screenshot()
        # The selection stays across runs: run 0 shows a one-point trail, still listed.
        page.fill("#slider", "0")
        page.wait_for_function("document.getElementById('run-label').textContent"
                               ".startsWith('epoch 0 \u00b7 step 25')")
        assert page.evaluate(f"{GD}._fullData[2].x.length") == 1 and side_ids(page) == [IMG_ID]
        assert page.locator("#plot-0").screenshot() != before
        page.fill("#slider", "4")
        # Search by exact id, then by text.
        page.fill("#search", "s7")
        page.press("#search", "Enter")
        page.wait_for_function("window.embproj.state.sel.length === 2")
        assert side_ids(page) == [IMG_ID, "s7"] and page.text_content("#search-msg") == "1 found"
        page.fill("#search", "CAPTION 12:")
        page.click("#find")
        page.wait_for_function("window.embproj.state.sel.length === 3")
        assert side_ids(page)[-1] == "s12"
        # Lasso from the plot's toolbar adds every point inside it.
        page.click("#clear")
        page.hover("#plot-0")
        page.click("#plot-0 .modebar-btn[data-title='Lasso Select']")
        box = page.locator("#plot-0 .nsewdrag").bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + 2)
        page.mouse.down()
        for fx, fy in ((0.98, 0.02), (0.98, 0.98), (0.02, 0.98), (0.02, 0.03)):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=4)
        page.mouse.up()
        page.wait_for_function("window.embproj.state.sel.length === 44")  # all but s1
        # Lineage under the slider, escaped metric names in the legends, nothing ran.
        assert page.is_visible("#lineage-panel") and page.evaluate(
            "document.getElementById('lineage')._fullData[0].type") == "sankey"
        lineage_box = page.locator("#lineage-panel").bounding_box()
        assert lineage_box["y"] > page.locator("#player").bounding_box()["y"]
        titles = page.eval_on_selector_all(".metric-panel h3", "els => els.map(e => e.textContent)")
        assert titles[:2] == ["Scores (0..1, higher is better)",
                              "Drift & displacement since the previous run"]
        assert IMG_METRIC in str(page.text_content("#metrics"))
        assert page.evaluate(PWNED) == [None] * 6
        assert page.eval_on_selector_all(
            "img", "els => els.every(e => e.src.startsWith('data:image/png;base64,'))")
        # Narrow window: the side panel goes under the plot, still no overlap.
        page.set_viewport_size({"width": 760, "height": 900})
        page.wait_for_timeout(300)
        assert overlaps(page) == []
        assert problems == []
    finally:
        page.close()


def test_view_3d_and_no_labels_in_browser(tmp_path: Path, browser: Any) -> None:
    make_run(tmp_path, dims=3, runs=2, n=30, labels=False, images=False)
    page, problems = open_view(browser, write_view(tmp_path, "emb"))
    try:
        assert page.evaluate(f"{GD}._fullData[0].type") == "scatter3d"
        assert page.input_value("#colour") == "cluster"  # no label: colour by cluster
        assert page.is_hidden("#lineage-panel")  # no lineage reader output: no panel
        page.evaluate("window.embproj.select([0])")
        page.wait_for_function(f"{GD}._fullData[1].z.filter(v => v !== null).length === 2")
        assert page.evaluate(PWNED) == [None] * 6
        assert problems == []
    finally:
        page.close()


def test_tiny_runs_keep_their_positions_in_browser(tmp_path: Path, browser: Any) -> None:
    """The positions the page plots, read back from plotly, are each run's own values within
    0.1% of its spread, the 100,000x smaller run and the outlier runs included."""
    layouts = scaled_layouts(n=300)
    page, problems = open_view(browser, write_scaled_runs(tmp_path, layouts))
    try:
        keys = page.evaluate("window.embproj.keys")
        assert keys == [f"s{i}" for i in range(300)]
        errors = []
        for f, xy in enumerate(layouts):
            got = np.array(page.evaluate(f"""async () => {{
                await window.embproj.setFrame({f});
                const t = {GD}._fullData[0];
                return [Array.from(t.x), Array.from(t.y)]; }}""")).T
            errors.append(float((np.abs(got - xy) / spread_of(xy)).max()))
        assert max(errors) <= 1e-3, errors
        assert problems == []
    finally:
        page.close()


def _fit_then_validate(root: Path, out: Path) -> None:
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=60,
                                   output_dir=str(out))
    train, val = loaders(n_train=120, n_val=60, batch_size=30)
    t = trainer(root, [projector], max_epochs=3, limit_train_batches=2)
    model = DigitsModel()
    t.fit(model, train, val)
    projector.flush(timeout=60)
    t.validate(model, val)
    projector.flush(timeout=60)


def test_fit_then_validate_marks_a_new_chain_in_browser(tmp_path: Path, browser: Any) -> None:
    """validate() after fit() is a new chain: marked on the slider, the label and the metric
    panels; no trail, 'moved' value, curve or lineage flow crosses it; its axes are its own."""
    out = tmp_path / "out"
    _fit_then_validate(tmp_path, out)
    metrics = read_metrics(out, "embeddings")
    assert metrics["chain"].tolist() == [0, 0, 0, 1]
    assert metrics["stage"].tolist() == ["fit"] * 3 + ["validate"]
    points = read_projections(out, "embeddings")
    page, problems = open_view(browser, out / "embproj" / "embeddings" / "view.html")
    try:
        assert page.evaluate("window.embproj.state.frame") == 3
        assert "validate \u00b7 chain 1" in str(page.text_content("#run-label"))
        assert page.is_visible("#chain-note")
        assert "new chain" in str(page.text_content("#chain-note"))
        marks = page.eval_on_selector_all(
            ".chain-mark", "els => els.map(e => [e.textContent, e.dataset.frame])")
        assert marks == [["chain 0 \u00b7 fit", "0"], ["chain 1 \u00b7 validate", "3"]]
        boxes = [page.locator(".chain-mark").nth(k).bounding_box() for k in range(2)]
        assert boxes[0]["x"] < boxes[1]["x"]
        assert overlaps(page) == []
        # The axes are the validate run's own range; chain 0's cover its three runs (at
        # equal scale, one axis is the runs' padded range, the other wider about its centre).
        def axis_ranges(frame: int) -> list[list[float]]:
            return list(page.evaluate(f"""async () => {{
                await window.embproj.setFrame({frame});
                const L = {GD}._fullLayout;
                return [L.xaxis.range, L.yaxis.range]; }}"""))

        def padded(runs: list[int], axis: str) -> list[float]:
            x = points.loc[points["val_index"].isin(runs), f"pca_{axis}"]
            pad = 0.04 * (x.max() - x.min())
            return [x.min() - pad, x.max() + pad]

        for frame, runs in ((3, [3]), (2, [0, 1, 2])):
            shown = axis_ranges(frame)
            fits = [padded(runs, a) for a in "xy"]
            exact = [shown[j] == pytest.approx(fits[j]) for j in range(2)]
            assert any(exact), (shown, fits)
            for (lo, hi), (flo, fhi) in zip(shown, fits, strict=True):
                assert lo <= flo + 1e-9 and hi >= fhi - 1e-9
                assert (lo + hi) / 2 == pytest.approx((flo + fhi) / 2)
        assert not page.is_visible("#chain-note")
        # A followed point's trail: three runs in chain 0, one at the validate run.
        page.evaluate("window.embproj.select([0])")
        trail = f"{GD}._fullData[1].x.filter(v => v !== null).length"
        page.wait_for_function(f"{trail} === 3")
        page.evaluate("window.embproj.setFrame(3)")
        page.wait_for_function(f"{trail} === 1")
        # 'moved since previous run': nothing at the validate run (no previous run there).
        page.select_option("#colour", "__moved__")
        page.wait_for_function("document.getElementById('legend').textContent"
                               ".includes('a new chain starts here')")
        assert page.evaluate("Array.from(window.embproj.state.info.values)"
                             ".every(v => Number.isNaN(v))")
        page.evaluate("window.embproj.setFrame(2)")
        page.wait_for_function("Array.from(window.embproj.state.info.values)"
                               ".every(v => Number.isFinite(v))")
        # Metric panels: a dashed line and a note at the chain start, no curve across it.
        layout = page.evaluate("document.querySelector('.mplot')._fullLayout.shapes"
                               ".map(s => [s.x0, s.line.dash])")
        assert [2.5, "dash"] in layout
        notes = page.evaluate("document.querySelector('.mplot')._fullLayout.annotations"
                              ".map(a => a.text)")
        assert notes == ["chain 1 \u00b7 validate"]
        series = page.evaluate("document.querySelector('.mplot')._fullData[0]")
        assert series["x"] == [0, 1, 2, 2.5, 3] and series["y"][3] is None
        # Lineage: no flow from the last fit run's clusters into the validate run's.
        # Lineage: chain 0's runs with their flows; the validate run, alone in its chain, has
        # none (before, its clusters were joined to the last fit run's).
        assert page.is_visible("#lineage-panel")
        sankey = "document.getElementById('lineage')._fullData[0]"
        hover = page.evaluate(f"{sankey}.node.customdata")
        assert any("chain 0" in h for h in hover) and not any("validate" in h for h in hover)
        assert page.evaluate(f"{sankey}.link.value.length") > 0
        note = str(page.text_content("#lineage-note"))
        assert re.search(r"alone in their chain \(no flows\): epoch 3 \u00b7 step \d+ \u00b7 "
                         r"validate \u00b7 chain 1\.$", note), note
        assert problems == []
    finally:
        page.close()


@pytest.mark.parametrize("fault", ["read-only folder", "a file in the way"])
def test_unwritable_folder_warning_names_the_cause(tmp_path: Path, fault: str) -> None:
    """The view's warning names the folder's own I/O error, as the CSV files' does, not the
    missing CSV files that follow from it."""
    out = tmp_path / "out"
    if fault == "read-only folder":
        out.mkdir()
        guard: Any = read_only(out)
    else:
        out.write_text("a regular file where a folder should be")
        guard = contextmanager(lambda: iter([None]))()
    projector = EmbeddingProjector(reducers="pca", max_samples=20, output_dir=str(out))
    train, val = loaders(n_train=64, n_val=40, batch_size=20)
    t = trainer(tmp_path, [projector], max_epochs=2, limit_train_batches=2)
    with guard, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DigitsModel(), train, val)
        projector.flush(timeout=60)
    warned = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    local_files = [w for w in warned if "writing to local files failed" in w]
    view = [w for w in warned if "writing to html view failed" in w]
    assert len(local_files) == 1 and len(view) == 1, warned
    cause = re.search(r"failed \((\w+Error: \[Errno \d+\] [^:]+):", local_files[0])
    assert cause is not None, local_files[0]
    assert f"failed ({cause[1]}: '{out}" in view[0], (local_files[0], view[0])
    assert not any("read_projections" in w or "val_*.csv" in w for w in warned), warned


# ----------------------------------------------------------------------------- screenshot


@pytest.mark.slow
def test_readme_screenshot_of_a_real_run(tmp_path: Path, browser: Any) -> None:
    target = os.environ.get("EMBPROJ_RENDER_SCREENSHOT")
    if not target:
        pytest.skip("set EMBPROJ_RENDER_SCREENSHOT=1 (or a .png path) to re-render "
                    "docs/images/view.png from a real examples/digits.py run")
    out = Path(target) if target.endswith(".png") else SCREENSHOT
    root = load_example().run(tmp_path / "digits", epochs=8, max_samples=600, use_wandb=False)
    page, problems = open_view(browser, root / "embproj" / "embeddings" / "view.html")
    try:
        page.select_option("#reducer", "tsne")
        ids = page.evaluate("window.embproj.keys")
        follow = [ids.index(k) for k in ids[:3]]
        page.evaluate(f"window.embproj.select({json.dumps(follow)})")
        page.mouse.move(*screen_xy(page, follow[0]))
        page.wait_for_selector("#tooltip:not([hidden]) img", timeout=10_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        assert problems == []
    finally:
        page.close()
