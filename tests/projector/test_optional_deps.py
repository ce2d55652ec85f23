"""Optional extras missing on a real fit: one warning that names the extra, the rest is logged.

Runs whether or not the extra is installed: the import is blocked (``sys.modules[name] = None``
makes ``import name`` raise ImportError), so this is what a user without the extra sees.
"""

from __future__ import annotations

import sys
import warnings

from digits import DigitsModel, loaders, trainer, wandb_tables
from lightning.pytorch.loggers import WandbLogger

from lightning_embproj import EmbeddingProjector, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning


def test_missing_umap_extra_is_named_once_and_the_other_reducers_still_log(
    tmp_path, wandb_offline, monkeypatch
):
    import wandb

    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "umap"], max_samples=50)
    train, val = loaders(n_train=200, n_val=100)
    logger = WandbLogger(project="embproj-test", save_dir=str(wandb_offline))
    t = trainer(tmp_path, [projector], max_epochs=2, logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DigitsModel(), train, val)
    wandb.finish()

    ours = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    about_umap = [m for m in ours if "umap" in m]
    assert len(about_umap) == 1, ours  # once, not once per epoch
    assert 'pip install "lightning-embproj[umap]"' in about_umap[0]
    # PCA is still computed and written for both epochs, locally and to W&B
    df = read_projections(projector.root)
    assert df.groupby("epoch").size().to_dict() == {0: 50, 1: 50}
    assert df[["pca_x", "pca_y"]].notna().all().all() and df["pca_x"].std() > 0
    assert not [c for c in df.columns if c.startswith("umap")]
    tables = wandb_tables(wandb_offline, "embproj/embeddings")
    assert len(tables) == 2
    for table in tables:
        cols = table["columns"]
        pca = cols.index("pca_x")
        assert all(isinstance(row[pca], float) for row in table["data"])
        # a set keeps one set of columns across runs: umap's, if there, are empty
        for col in (c for c in cols if c.startswith("umap")):
            assert {row[cols.index(col)] for row in table["data"]} == {None}
