"""Set names (issue 16): ``name`` names the embedding sets (folder, W&B keys, checkpoint slot),
and two projectors of one Trainer may not write the same set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from digits import DigitsModel, loaders, trainer, wandb_tables

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections


def _fit(tmp_path: Any, callbacks: list, **kw: Any) -> tuple[Any, list[int]]:
    train, val = loaders(n_train=64, n_val=48, batch_size=16)
    model = DigitsModel()
    steps: list[int] = []
    original = model.training_step
    model.training_step = lambda batch, batch_idx: steps.append(batch_idx) or original(
        batch, batch_idx)
    t = trainer(tmp_path, callbacks, max_epochs=2, limit_train_batches=2, **kw)
    t.fit(model, train, val)
    for c in callbacks:
        if isinstance(c, EmbeddingProjector):
            c.flush()
    return t, steps


def test_two_projectors_on_one_key_with_names_write_apart(tmp_path, wandb_offline):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    pca = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=40,
                             background=False, name="emb_pca")
    tsne = EmbeddingProjector(label_key="labels", reducers="tsne", max_samples=30,
                              name="emb_tsne")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    logger = WandbLogger(project="names", save_dir=str(tmp_path))
    _fit(tmp_path, [pca, tsne, ckpt], logger=logger, enable_checkpointing=True)
    root = Path(pca.root)
    assert sorted(p.name for p in (root / "embproj").iterdir()) == ["emb_pca", "emb_tsne"]
    a, b = read_projections(root, "emb_pca"), read_projections(root, "emb_tsne")
    assert "pca_x" in a.columns and "tsne_x" not in a.columns and len(a) == 80
    assert "tsne_x" in b.columns and "pca_x" not in b.columns and len(b) == 60
    assert len(read_metrics(root, "emb_pca")) == len(read_metrics(root, "emb_tsne")) == 2
    import wandb

    wandb.finish()
    for name, column in [("emb_pca", "pca_x"), ("emb_tsne", "tsne_x")]:
        tables = wandb_tables(tmp_path, f"embproj/{name}")
        assert len(tables) == 2 and all(column in t["columns"] for t in tables), name
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert pca.state_key != tsne.state_key
    for p, name in [(pca, "emb_pca"), (tsne, "emb_tsne")]:
        state = saved[p.state_key]  # the last run is done or still waiting (background)
        entries = list(state["previous"].values()) + state["pending"]
        assert entries and {e["sample"]["name"] for e in entries} == {name}


def test_two_projectors_on_one_set_are_refused_at_setup_before_training(tmp_path):
    """Different reducers on one key used to write into the same folder embproj/embeddings/."""
    first = EmbeddingProjector(label_key="labels", reducers="pca")
    second = EmbeddingProjector(label_key="labels", reducers="umap")
    with pytest.raises(ValueError, match=r"name: two EmbeddingProjectors in this Trainer write "
                       r"the embedding set 'embeddings' \(folder embproj/embeddings/, W&B keys "
                       r"embproj/embeddings/\.\.\.\).*Give each its own `name`, e.g\. "
                       r"EmbeddingProjector\(\.\.\., name='embeddings_pca'\)"):
        _fit(tmp_path, [first, second])
    assert not (tmp_path / "embproj").exists()
    # a layer's set clashes with a named set of the same name too
    by_layer = EmbeddingProjector(layers=["encoder"], name="mlp", reducers="pca")
    by_key = EmbeddingProjector(name="mlp_encoder", reducers="tsne")
    with pytest.raises(ValueError, match=r"write the embedding set 'mlp_encoder'"):
        _fit(tmp_path / "layer", [by_layer, by_key])


def test_identical_projectors_with_names_fit_side_by_side(tmp_path):
    """Without names Lightning refuses them when the Trainer is built (one state_key)."""
    pair = [EmbeddingProjector(reducers="pca", max_samples=20, background=False, name=n)
            for n in ("first", "second")]
    _, steps = _fit(tmp_path, pair)
    assert steps  # trained
    for name in ("first", "second"):
        assert read_projections(tmp_path, name).groupby("epoch").size().to_dict() == {0: 20,
                                                                                       1: 20}


def test_name_with_layers_names_each_set_name_underscore_layer(tmp_path):
    named = EmbeddingProjector(layers=["encoder.0", "encoder.2"], name="mlp", reducers="pca",
                               max_samples=24, background=False)
    plain = EmbeddingProjector(layers=["encoder.0"], reducers="pca", max_samples=16,
                               background=False)
    assert named.options.set_names == ["mlp_encoder.0", "mlp_encoder.2"]
    _fit(tmp_path, [named, plain])
    assert sorted(p.name for p in (tmp_path / "embproj").iterdir()) == [
        "encoder.0", "mlp_encoder.0", "mlp_encoder.2"]
    sizes = {n: len(read_projections(tmp_path, n))
             for n in ("encoder.0", "mlp_encoder.0", "mlp_encoder.2")}
    assert sizes == {"encoder.0": 32, "mlp_encoder.0": 48, "mlp_encoder.2": 48}
    # the same layer, two sets: the same vectors
    a = named.previous["mlp_encoder.0"].sample
    b = plain.previous["encoder.0"].sample
    common = sorted(set(a.sample_ids) & set(b.sample_ids))
    assert common
    for sid in common:
        assert torch.equal(torch.from_numpy(a.embeddings[a.sample_ids.index(sid)]),
                           torch.from_numpy(b.embeddings[b.sample_ids.index(sid)]))


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("../up", ValueError, r"name='\.\./up' names a folder under embproj/"),
        ("a/b", ValueError, r"name='a/b' names a folder under embproj/"),
        (" padded", ValueError, r"name=' padded' names a folder"),
        ("", TypeError, r"name must be a non-empty string .* got ''"),
        (3, TypeError, r"name must be a non-empty string .* got 3"),
    ],
)
def test_a_name_that_is_no_folder_name_is_refused(name, error, match):
    with pytest.raises(error, match=match):
        EmbeddingProjector(name=name)


def test_without_a_name_the_state_key_is_that_of_earlier_checkpoints():
    assert EmbeddingProjector().state_key == (
        "EmbeddingProjector{'sets': ['embeddings'], 'reducers': ['pca', 'tsne'], "
        "'n_components': 2}")
    named = EmbeddingProjector(name="z")
    assert named.state_key == ("EmbeddingProjector{'sets': ['z'], 'reducers': ['pca', 'tsne'], "
                               "'n_components': 2, 'name': 'z'}")
