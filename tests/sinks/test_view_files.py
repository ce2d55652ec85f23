"""The page as files: ``static/view.html``, ``view.css``, ``view.js`` are package data, checked
here (the script by ``node --check``; a wheel ships all three) and filled into one
self-contained page without joining any text from the data into its HTML.

``node`` missing skips the script check, saying so; ``EMBPROJ_REQUIRE_NODE=1`` (set by
``.ci/run``) makes it a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from lightning_embproj.sinks.view import render_view

REPO = Path(__file__).resolve().parents[2]
STATIC = ("view.html", "view.css", "view.js")
REQUIRE_NODE = "EMBPROJ_REQUIRE_NODE"
HOSTILE = '</title><script>window.__pwned = 1</script>{{script}}"'


def shipped(name: str) -> str:
    return resources.files("lightning_embproj.sinks.view").joinpath("static", name).read_text(
        encoding="utf-8")


def synthetic_points() -> object:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(20)] * 2,
                         "val_index": [0] * 20 + [1] * 20, "epoch": [0] * 20 + [1] * 20,
                         "step": [5] * 20 + [9] * 20, "label": [HOSTILE, "b"] * 20,
                         "pca_x": rng.normal(size=40), "pca_y": rng.normal(size=40)})


def test_the_shipped_script_passes_node_check(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get(REQUIRE_NODE) == "1":
            pytest.fail(f"node not found on PATH and {REQUIRE_NODE}=1 says the script check "
                        "must run here (apt-get install nodejs)", pytrace=False)
        pytest.skip("node not found on PATH: the view's script is not syntax-checked "
                    "(apt-get install nodejs; the browser tests still run it)")
    with resources.as_file(resources.files("lightning_embproj.sinks.view").joinpath(
            "static", "view.js")) as path:
        out = subprocess.run([node, "--check", str(path)], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_page_is_the_shipped_files_filled_safely() -> None:
    page = render_view(synthetic_points(), None, title=HOSTILE)
    css, js, template = (shipped(n) for n in ("view.css", "view.js", "view.html"))
    # One self-contained file: the shipped stylesheet and script inlined as they are.
    assert f"<style>{css}</style>" in page and f"<script>{js}</script>" in page
    assert page.startswith(template[: template.index("{{")].replace("{{csp}}", ""))
    assert page.count("<script") == 3  # data, plotly.js, the view's script: none from data
    # The title is text: the template's one title, escaped; the slot marker it holds is not
    # filled (one pass).
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    assert title is not None
    assert title[1] == ("&lt;/title&gt;&lt;script&gt;window.__pwned = 1&lt;/script&gt;"
                        "{{script}}&quot;")
    data = page.split('id="embproj-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and json.loads(data)["title"] == HOSTILE


def test_the_script_repeats_no_python_constant_or_colour() -> None:
    """Coordinate codes, the image pattern and every colour come from the data block."""
    js = shipped("view.js")
    # No palette of its own: no list of colours (its few fixed colours draw chrome: the chain
    # marks, trails), the data's colours are the data block's.
    assert not re.search(r"\[\s*'#[0-9a-fA-F]{3,6}'\s*,", js)
    assert "D.colours.sequential" in js and "c.colours" in js
    assert "65535" not in js and "65534" not in js and "base64" not in js
    page = render_view(synthetic_points(), None, title="t")
    data = page.split('id="embproj-data">', 1)[1].split("</script>", 1)[0]
    assert '"constants":{"missing":65535,"levels":65534,"image":' in data
    assert '"colours":{"noise":"#9a9a9a"' in data


def test_fill_refuses_unknown_slots_and_assets_that_close_their_element() -> None:
    from lightning_embproj.sinks.view.page import fill, json_block

    with pytest.raises(ValueError, match="slots"):
        fill("<p>{{a}}{{b}}</p>", text={"a": "x"}, data={}, assets={})
    with pytest.raises(ValueError, match="would close its element"):
        fill("<script>{{script}}</script>", text={}, data={},
             assets={"script": "x = '</SCRIPT>'"})
    assert fill("<i>{{a}}</i>{{data}}", text={"a": "{{data}}"}, data={"data": {"k": "<"}},
                assets={}) == "<i>{{data}}</i>" + json_block({"k": "<"})


def test_a_wheel_ships_the_page_files(tmp_path: Path) -> None:
    """Built from a copy of the sources (no build folder left in the checkout)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "lightning_embproj", src / "lightning_embproj",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in STATIC:
        assert f"lightning_embproj/sinks/view/static/{name}" in names
