"""Size and load time of the HTML view at 2,000 points x 10 runs and 20,000 x 50.

Each case builds a ``read_projections``-shaped table (two reducers, a label, a per-run
cluster, a caption text and a numeric column per point) and its metrics, renders the page
(``render_view``: time in Python), writes it, and opens it in headless Chromium
(``--headless --no-sandbox --disable-gpu --disable-background-networking``, every non-file
request blocked). Reported: page size, Python render time, load time (navigation to the
view's ``data-ready`` flag: plotly.js parsed, data decoded, first WebGL frame drawn), the
time of one slider step, and the page's JS heap. Load times are the best of ``--repeat``
loads: the machine may be shared, so read them next to the plotly.js-only baseline printed
first (a blank page with the same inlined plotly.js).

Usage:
    .venv/bin/python benchmarks/bench_view.py                   # 2k x 10 and 20k x 50
    .venv/bin/python benchmarks/bench_view.py --cases 2000x10
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_embproj.sinks.view import render_view
from lightning_embproj.sinks.view.page import plotly_js

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def table(n: int, runs: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points drifting from noise into 10 clusters over ``runs`` runs, and their metrics."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 10
    centres = rng.normal(size=(10, 2)) * 8
    start = rng.normal(size=(n, 2)) * 6
    rows = []
    for r in range(runs):
        t = r / max(runs - 1, 1)
        pos = (1 - t) * start + t * (centres[label] + rng.normal(size=(n, 2)))
        cluster = np.where(rng.random(n) < 0.9, label, rng.integers(0, 10, n))
        rows.append(pd.DataFrame({
            "sample_id": np.arange(n), "epoch": r, "step": 100 * (r + 1), "val_index": r,
            "caption": [f"a caption of sample {i} with a few words" for i in range(n)],
            "weight": np.round(rng.random(n), 3), "label": label, "cluster": cluster,
            "pca_x": pos[:, 0], "pca_y": pos[:, 1],
            "tsne_x": 3 * pos[:, 1], "tsne_y": -3 * pos[:, 0],
        }))
    metrics = pd.DataFrame({
        "val_index": range(runs), "epoch": range(runs),
        "step": [100 * (r + 1) for r in range(runs)],
        "silhouette": np.linspace(0.0, 0.6, runs), "knn_accuracy": np.linspace(0.3, 0.95, runs),
        "drift/knn_overlap": np.linspace(0.4, 0.9, runs),
        "tsne/displacement": np.linspace(1.0, 0.1, runs),
    })
    return pd.concat(rows, ignore_index=True), metrics


def load(browser: Any, path: Path, repeat: int, step: bool) -> dict[str, float]:
    """Best load time (s), one slider step (s) and the JS heap (MB) of the page at ``path``."""
    best, step_s, heap = float("inf"), float("nan"), float("nan")
    for _ in range(repeat):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                   else r.abort())
        start = time.perf_counter()
        page.goto(path.as_uri(), wait_until="commit")
        page.wait_for_selector("#embproj-view[data-ready='1']", state="attached",
                               timeout=120_000)
        best = min(best, time.perf_counter() - start)
        if step:
            step_s = page.evaluate("""async () => {
                const t = performance.now();
                await window.embproj.setFrame(0);
                return (performance.now() - t) / 1000; }""")
            heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : NaN")
            heap /= 2**20
        page.close()
    return {"load_s": best, "step_s": step_s, "heap_mb": heap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["2000x10", "20000x50"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(tempfile.mkdtemp(prefix="bench_view_"))
    blank = out / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body><main id='embproj-view'>x</main><script>"
                     + plotly_js() + "</script><script>document.getElementById('embproj-view')"
                     ".dataset.ready = '1';</script></body></html>", encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        base = load(browser, blank, args.repeat, step=False)["load_s"]
        print(f"plotly.js alone: {blank.stat().st_size / 1e6:.1f} MB, loads in {base:.2f} s")
        print("| points x runs | page MB | render s (Python) | load s | slider step s | "
              "JS heap MB |")
        print("|---|---|---|---|---|---|")
        for case in args.cases:
            n, runs = (int(v) for v in case.split("x"))
            points, metrics = table(n, runs)
            start = time.perf_counter()
            html = render_view(points, metrics, title=f"bench {case}", max_runs=runs)
            render_s = time.perf_counter() - start
            path = out / f"view_{case}.html"
            path.write_text(html, encoding="utf-8")
            got = load(browser, path, args.repeat, step=True)
            print(f"| {n:,} x {runs} | {path.stat().st_size / 1e6:.1f} | {render_s:.2f} | "
                  f"{got['load_s']:.2f} | {got['step_s']:.3f} | {got['heap_mb']:.0f} |")
        browser.close()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
