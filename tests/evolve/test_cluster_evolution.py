"""Clusters across validation runs on real fits: stable ids, lineage events, health metrics.

A synthetic model places each tracked point in a known blob per epoch, so the expected cluster
events are known exactly: one blob splits into two at epoch 2, two blobs merge at epoch 4.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import torch
from digits import DigitsModel, loaders, trainer, wandb_tables
from torch.utils.data import DataLoader, TensorDataset
from wandb_records import scalars

from lightning_embproj import EmbeddingProjector, read_lineage, read_metrics, read_projections

N_POINTS = 200
CENTRES = 12.0 * torch.eye(8)[:6]  # far apart: any sensible clustering finds the blobs


def group(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """Blob of each id: 4 blobs of 50; from epoch 2 blob 0 splits (ids 25-49 -> blob 4); from
    epoch 4 blobs 1 and 2 merge (ids 100-149 -> blob 1)."""
    g = ids // 50
    if epoch >= 2:
        g = torch.where((ids >= 25) & (ids < 50), torch.full_like(g, 4), g)
    if epoch >= 4:
        g = torch.where(g == 2, torch.ones_like(g), g)
    return g


class Blobs(L.LightningModule):
    """Embeddings = blob centre + a fixed per-id jitter; ``collapse_from`` squeezes them into a
    2-dimensional subspace from that epoch on."""

    def __init__(self, collapse_from: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.collapse_from = collapse_from
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("jitter", torch.randn(N_POINTS, 8, generator=gen))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.w ** 2).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        (ids,) = batch
        g = group(ids, self.current_epoch)
        z = CENTRES[g] + self.jitter[ids]
        if self.collapse_from is not None and self.current_epoch >= self.collapse_from:
            z = z[:, :2] @ torch.ones(2, 8)
        return {"embeddings": z, "labels": g, "ids": ids}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def blob_fit(tmp_path: Any, epochs: int = 6, model: Any = None, **kw: Any) -> EmbeddingProjector:
    kw.setdefault("reducers", "pca")
    projector = EmbeddingProjector(id_key="ids", **kw)
    ids = torch.arange(N_POINTS)
    loader = DataLoader(TensorDataset(ids), batch_size=50)
    t = trainer(tmp_path, [projector], max_epochs=epochs, limit_train_batches=1)
    t.fit(model or Blobs(), loader, loader)
    return projector


def events_by_run(root: Any) -> dict[int, list[tuple[str, str]]]:
    lineage = read_lineage(root)
    out: dict[int, list[tuple[str, str]]] = {}
    for row in lineage.itertuples():
        out.setdefault(int(row.val_index), []).append((row.event, row.from_clusters))
    return {v: sorted(rows) for v, rows in out.items()}


def cluster_of(points: Any, run: int, ids: range) -> set[int]:
    rows = points[(points["val_index"] == run) & points["sample_id"].isin(list(ids))]
    return set(rows["cluster"].tolist())


@pytest.mark.parametrize("method, kw", [
    ("kmeans", {"label_key": "labels"}),  # k = the number of blobs the labels name, per run
    ("hdbscan", {}),                      # finds the number of clusters itself, no labels
])
def test_split_then_merge_gives_exactly_those_events(tmp_path, method, kw):
    blob_fit(tmp_path, clusters=method, **kw)
    points = read_projections(tmp_path)
    events = events_by_run(tmp_path)
    a = cluster_of(points, 1, range(0, 50))
    b, c = cluster_of(points, 3, range(50, 100)), cluster_of(points, 3, range(100, 150))
    assert len(a) == len(b) == len(c) == 1 and b != c
    (a_id,), (b_id,), (c_id,) = a, b, c
    assert events[0] == [("emerge", "")] * 4
    assert events[1] == [("survive", str(i)) for i in sorted(cluster_of(points, 0, range(200)))]
    split = [e for e in events[2] if e[0] == "split"]
    assert split == [("split", str(a_id))] * 2
    assert sorted(e[0] for e in events[2]) == ["split", "split", "survive", "survive", "survive"]
    assert [e[0] for e in events[3]] == ["survive"] * 5
    merged = ",".join(map(str, sorted([b_id, c_id])))
    assert sorted(e[0] for e in events[4]) == ["merge", "survive", "survive", "survive"]
    assert ("merge", merged) in events[4]
    assert [e[0] for e in events[5]] == ["survive"] * 4
    # stable ids: a survivor keeps its id over the whole chain
    d = [cluster_of(points, run, range(150, 200)) for run in range(6)]
    assert all(ids == d[0] for ids in d) and len(d[0]) == 1
    metrics = read_metrics(tmp_path)
    assert metrics["clusters/count"].tolist() == [4, 4, 5, 5, 4, 4]
    assert metrics["clusters/ari_previous"].tolist()[3] == 1.0
    # the view's lineage panel gets these runs: a Sankey node per cluster per run
    from lightning_embproj.sinks.view import build_payload

    payload = build_payload(points, metrics, title="t", lineage=read_lineage(tmp_path))
    assert payload["lineage"] is not None
    assert len(payload["lineage"]["nodes"]["label"]) == sum([4, 4, 5, 5, 4, 4])
    # compare summarises the lineage per run
    from lightning_embproj.report.compare import compare

    written = compare(tmp_path, tmp_path / "report", on_skip=lambda message: None)
    summary = pd.read_csv(tmp_path / "report" / "embeddings" / "lineage_summary.csv")
    assert any(p.name == "lineage_summary.csv" for p in written)
    events = ["clusters", "survive", "merge", "split", "emerge", "vanish"]
    assert summary[events].values.tolist() == [
        [4, 0, 0, 0, 4, 0], [4, 4, 0, 0, 0, 0], [5, 3, 0, 1, 0, 0],
        [5, 5, 0, 0, 0, 0], [4, 3, 1, 0, 0, 0], [4, 4, 0, 0, 0, 0],
    ]


def test_frozen_model_only_survives(tmp_path, wandb_offline):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=150)
    train, val = loaders(n_train=64, n_val=150)
    logger = WandbLogger(project="frozen", save_dir=str(tmp_path))
    t = trainer(tmp_path, [projector], max_epochs=3, logger=logger)
    t.fit(DigitsModel(frozen=True), train, val)
    wandb.finish()
    root = projector.root
    events = events_by_run(root)
    assert {e for run in (1, 2) for e, _ in events[run]} == {"survive"}
    metrics = read_metrics(root)
    assert metrics["clusters/ari_previous"].tolist()[1:] == [1.0, 1.0]
    assert metrics["cka_previous"].tolist()[1:] == [1.0, 1.0]
    assert max(metrics["tsne/displacement"].tolist()[1:]) <= 0.01  # the layout stays put
    points = read_projections(root)
    same = points.groupby("sample_id")["cluster"].nunique()
    assert (same == 1).all()
    # W&B: the cluster column, the lineage and per-label tables, the health scalars
    tables = wandb_tables(tmp_path, "embproj/embeddings")
    assert all("cluster" in t["columns"] for t in tables) and len(tables) == 3
    lineage = wandb_tables(tmp_path, "embproj/embeddings/lineage")[-1]
    assert lineage["columns"] == ["val_index", "epoch", "step", "cluster", "event",
                                  "from_clusters", "size", "overlap"]
    assert len(lineage["data"]) == len(read_lineage(root))
    per_label = wandb_tables(tmp_path, "embproj/embeddings/per_label")[-1]
    assert per_label["columns"][:2] == ["label", "count"] and len(per_label["data"]) == 10
    assert len(scalars(tmp_path, "embproj/embeddings/rankme")) == 3
    assert len(scalars(tmp_path, "embproj/embeddings/tsne/stability")) == 2


def test_digits_clusters_agree_more_with_labels_as_training_goes_on(tmp_path):
    # The untrained model (validate) against 6 epochs of training: seeds 0, 1, 2 measured
    # 0.66 -> 0.82, 0.58 -> 0.84, 0.50 -> 0.76.
    L.seed_everything(0)
    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=300)
    train, val = loaders(n_train=900, n_val=300)
    t = trainer(tmp_path, [projector], max_epochs=6)
    model = DigitsModel(lr=0.3)
    t.validate(model, val)
    t.fit(model, train, val)
    nmi = read_metrics(tmp_path)["clusters/nmi_labels"].tolist()
    assert len(nmi) == 7 and nmi[-1] > nmi[0] + 0.1, nmi
    assert sum(nmi[-2:]) > sum(nmi[:2]) + 0.1, nmi


def test_without_labels_end_to_end(tmp_path):
    projector = blob_fit(tmp_path, epochs=2, clusters="kmeans", n_clusters=4)
    points = read_projections(tmp_path)
    assert "label" not in points and points["cluster"].nunique() == 4
    metrics = read_metrics(tmp_path)
    assert np.isnan(metrics["clusters/nmi_labels"]).all()
    assert metrics["clusters/ari_previous"].tolist()[1] == 1.0
    assert events_by_run(tmp_path)[1] == [("survive", str(i)) for i in range(4)]
    assert projector.previous["embeddings"].per_label is None


def test_rankme_falls_when_embeddings_collapse(tmp_path):
    blob_fit(tmp_path, epochs=3, model=Blobs(collapse_from=2), clusters=None)
    metrics = read_metrics(tmp_path)
    rankme = metrics["rankme"].tolist()
    assert rankme[2] < 0.5 * rankme[1], rankme
    assert "clusters/count" not in metrics
    assert "cluster" not in read_projections(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"survive_threshold": 0.5}, r"^survive_threshold must be in \(0\.5, 1\]: .*; got 0\.5$"),
    ({"survive_threshold": 1.2}, r"^survive_threshold must be in \(0\.5, 1\]: .*; got 1\.2$"),
    ({"split_threshold": 0.7}, r"^split_threshold must be in \(0, 0\.5\]: .*; got 0\.7$"),
    ({"survive_threshold": 0.8, "split_threshold": 0.9},
     r"^split_threshold must be in \(0, 0\.5\]: .*; got 0\.9$"),
    # below survive_threshold, but two parts of 60% each cannot fit in one cluster
    ({"split_threshold": 0.6}, r"^split_threshold must be in \(0, 0\.5\]: .*; got 0\.6$"),
    ({"split_threshold": 0.0}, r"^split_threshold must be in \(0, 0\.5\]: .*; got 0\.0$"),
    ({"survive_threshold": "0.7"},
     r"^survive_threshold must be a number in \(0\.5, 1\], got '0\.7'$"),
    ({"split_threshold": True}, r"^split_threshold must be a number in \(0, 0\.5\], got True$"),
])
def test_impossible_thresholds_are_refused_when_the_callback_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingProjector(**kwargs)


def test_thresholds_at_the_edges_are_accepted_and_used(tmp_path):
    """split_threshold 0.5 is the largest that still allows a split (50 / 50): blob 0 of
    Blobs splits exactly in half at epoch 2, and it is recorded as a split."""
    EmbeddingProjector(survive_threshold=1.0, split_threshold=0.5)
    blob_fit(tmp_path, epochs=3, clusters="kmeans", label_key="labels",
             survive_threshold=0.51, split_threshold=0.5)
    events = events_by_run(tmp_path)
    assert [e for e, _ in events[2]].count("split") == 2
