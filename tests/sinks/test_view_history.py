"""The view's own history of runs: the page it renders is the one the set's local files give,
seeding it from those files gives it back, and it stays bounded over many runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.chain.settle import seed_view
from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.local import write_projection
from lightning_embproj.sinks.view import write_view
from lightning_embproj.sinks.view.history import SetView, ViewHistory
from lightning_embproj.sinks.view.sink import ViewSink


def payload(page: str) -> dict[str, Any]:
    found = re.search(r'id="embproj-data">(.*?)</script>', page, re.S)
    assert found is not None
    return dict(json.loads(found[1]))


def results(runs: int, n: int = 30, seed: int = 0) -> list[RunResult]:
    """Runs of set ``emb``: string ids, labels, a text and an image column, clusters with
    lineage rows, two reducers, metrics; point 1 only in the first run."""
    rng = np.random.default_rng(seed)
    out = []
    for v in range(runs):
        keep = np.arange(n) if v == 0 else np.delete(np.arange(n), 1)
        sample = EpochSample(
            "emb", keep.astype(np.int64), [f"s{i}" for i in keep],
            rng.normal(size=(keep.size, 4)).astype(np.float32),
            labels=np.array(["cat", "dog", "=1+2"])[keep % 3],
            metadata={"text": [f"caption {i}" for i in keep],
                      "image": (rng.random((keep.size, 6, 6, 1)) * 255).astype(np.uint8)},
        )
        clusters = (keep % 3).astype(np.int64)
        lineage = [{"cluster": c, "event": "emerge" if v == 0 else "survive",
                    "from_clusters": "" if v == 0 else str(c), "size": 10, "overlap": 1.0}
                   for c in range(3)]
        xy = rng.normal(size=(keep.size, 2))
        out.append(run_result(
            sample, RunIdentity(v, epoch=v // 2, step=5 * (v + 1)),
            {"pca": xy, "tsne": 2 * xy[:, ::-1]}, clusters=clusters, lineage=lineage,
            metrics={"silhouette": v / runs, "pca/displacement": float(v)},
        ))
    return out


def test_the_page_is_the_one_the_local_files_give(tmp_path: Path) -> None:
    """60 runs (more than the 50 on the slider): the view's page from its history and the page
    rendered from the local files hold the same data, byte for byte."""
    history = ViewHistory(str(tmp_path))
    kept = history.of("emb")
    for result in results(60):
        kept.add(result)
        write_projection(tmp_path, result)
    from_files = write_view(tmp_path, "emb", projection=results(1)[0])
    assert json.dumps(payload(kept.page(history.title("emb")))) == json.dumps(
        payload(from_files.read_text(encoding="utf-8")))


def test_seeded_from_the_files_it_gives_the_same_page(tmp_path: Path) -> None:
    runs = results(8)
    live = ViewHistory(str(tmp_path))
    sink = ViewSink(live)  # writes view.html and images.json
    for result in runs[:7]:
        sink.write(result)
        write_projection(tmp_path, result)
    seeded = ViewHistory(str(tmp_path))  # a new process: all it has is the folder
    seed_view(seeded.of("emb"), str(tmp_path), "emb", warn=lambda topic, message: None)
    for history in (live, seeded):
        history.of("emb").add(runs[7])
    pages = [payload(h.of("emb").page(h.title("emb"))) for h in (live, seeded)]
    assert [r["val_index"] for r in pages[0]["points"]["runs"]] == list(range(8))
    assert len(pages[0]["images"]) == 30
    assert json.dumps(pages[0]) == json.dumps(pages[1])


def test_many_runs_stay_bounded_and_evenly_spaced() -> None:
    kept = SetView()
    sizes = []
    for result in results(130, n=8):
        kept.add(result)
        sizes.append(len(kept.frames))
    assert max(sizes) == kept.keep == 100
    assert sorted(kept.frames) == [*range(0, 130, 2), 129]  # every 2nd run, plus the newest
    data = payload(kept.page("emb"))
    shown = [r["val_index"] for r in data["points"]["runs"]]
    assert len(shown) == 50 and shown[0] == 0 and shown[-1] == 129
    assert set(np.diff(shown[:-1])) <= {2, 4}  # evenly spaced on the kept runs
    assert "showing 50 of 130 validation runs" in data["note"]
    assert data["metrics"]["x"] == list(range(130))  # the curves keep every run
    assert len(kept.images) == 8  # one thumbnail per point ever seen


def test_a_resume_forgets_the_runs_performed_again() -> None:
    kept = SetView()
    for result in results(5):
        kept.add(result)
    kept.forget({3, 4})
    assert kept.runs == [0, 1, 2] and sorted(kept.frames) == [0, 1, 2]
    assert sorted(kept.metrics) == [0, 1, 2] and sorted(kept.lineage) == [0, 1, 2]


def test_a_deferred_page_is_rendered_by_the_next_run_or_at_finish(tmp_path: Path) -> None:
    """While a later run of the set waits, a run joins the history without rendering; the page
    it would have replaced is never written, and the page in the end is the same."""
    runs = results(3)
    waiting = {"emb": 0}
    deferred = ViewSink(ViewHistory(str(tmp_path / "deferred")),
                        deferred=lambda name: waiting[name] > 0)
    eager = ViewSink(ViewHistory(str(tmp_path / "eager")))
    file = tmp_path / "deferred" / "embproj" / "emb" / "view.html"
    waiting["emb"] = 2
    deferred.write(runs[0])
    assert not file.exists()  # run 1 was already queued
    waiting["emb"] = 0
    deferred.write(runs[1])  # nothing waits: rendered with both runs
    first = payload(file.read_text(encoding="utf-8"))
    assert [r["val_index"] for r in first["points"]["runs"]] == [0, 1]
    waiting["emb"] = 1
    deferred.write(runs[2])
    assert payload(file.read_text(encoding="utf-8")) == first  # run 2 not on the page yet
    deferred.finish()
    for result in runs:
        eager.write(result)
    eager_page = payload((tmp_path / "eager" / "embproj" / "emb" / "view.html").read_text(
        encoding="utf-8"))

    def untitled(data: dict[str, Any]) -> dict[str, Any]:  # the title names the folder
        return {k: v for k, v in data.items() if k != "title"}

    assert untitled(payload(file.read_text(encoding="utf-8"))) == untitled(eager_page)
    assert untitled(payload(deferred.page("emb") or "")) == untitled(eager_page)
