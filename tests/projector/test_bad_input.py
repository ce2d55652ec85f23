"""Bad input on real fits: a clear error naming the key or option, or a warning and the rest logged.

Errors that a user's code causes (a missing key, a wrong shape or dtype) stop the run at the
first collected validation batch with a message that names the key, what was expected and what
was given. Data the projector can work around (NaN rows, too few points for t-SNE, one point,
no variance, huge dims, long texts) is handled with at most one warning per topic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from digits import DigitsModel, loaders, trainer
from torch import nn

from lightning_embproj import EmbeddingProjector, read_metrics, read_projections
from lightning_embproj.runtime.warn import ProjectorWarning

Tweak = Callable[[dict[str, Any], int], None]


class Tweaked(DigitsModel):
    """DigitsModel whose validation outputs are changed by ``tweak(outputs, batch_idx)``."""

    def __init__(self, tweak: Tweak, **kw: Any) -> None:
        super().__init__(**kw)
        self.tweak = tweak
        self.val_batches = 0

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        if not self.trainer.sanity_checking:
            self.val_batches += 1
        self.tweak(out, batch_idx)
        return out


def _fit(tmp_path, projector, model=None, epochs=1, n_val=64, batch_size=16, **kw):
    train, val = loaders(n_train=64, n_val=n_val, batch_size=batch_size)
    t = trainer(tmp_path, [projector], max_epochs=epochs, limit_train_batches=2, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model or DigitsModel(), train, val)
    projector.flush()
    return t, [w for w in caught if issubclass(w.category, ProjectorWarning)]


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught]


# -- data the projector works around -------------------------------------------------------
def test_nonfinite_rows_dropped_with_one_counted_warning(tmp_path):
    def poison(out, batch_idx):
        z = out["embeddings"]
        if batch_idx == 1:
            z[0, 3] = float("nan")
            z[1, 0] = float("inf")
        if batch_idx == 2:
            z[5, :] = float("-inf")

    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=64,
                                   background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(poison), epochs=2)
    df = read_projections(t.log_dir)
    # 64 validation points, 3 non-finite each epoch: the other 61 are logged
    assert df.groupby("epoch").size().to_dict() == {0: 61, 1: 61}
    assert np.isfinite(df[["pca_x", "pca_y"]].to_numpy()).all()
    assert set(range(64)) - set(df[df.epoch == 0].sample_id) == {16, 17, 37}
    nonfinite = [m for m in _messages(caught) if "NaN or Inf" in m]
    assert len(nonfinite) == 2  # one per epoch
    assert all(m.startswith("lightning-embproj: 3 tracked rows") for m in nonfinite)
    assert read_metrics(t.log_dir)["silhouette"].notna().all()


@pytest.mark.parametrize("path", ["host-scheduled", "host-streaming", "device"])
def test_float16_storage_leaves_out_rows_beyond_its_range_with_one_warning_per_run(
    tmp_path, monkeypatch, path
):
    """Issue 16: values above 65,504 passed the finiteness check as float32 and became Inf in
    the float16 buffer, and then every output of every run was empty."""
    def overflow(out, batch_idx):
        z = out["embeddings"]
        out["id"] = torch.arange(16 * batch_idx, 16 * batch_idx + len(z))
        if batch_idx == 1:
            z[0, 3] = 70_000.0
            z[1, 0] = -1e6
            z[2, 1] = 65_504.0  # float16's largest value: kept
        if batch_idx == 2:
            z[5, :] = 1e5

    monkeypatch.setenv("EMBPROJ_DEVICE_PATH", "1" if path == "device" else "0")
    projector = EmbeddingProjector(
        label_key="labels", reducers=["pca", "tsne"], max_samples=64, storage_dtype="float16",
        id_key="id" if path == "host-streaming" else None, background=False,
    )
    t, caught = _fit(tmp_path, projector, Tweaked(overflow), epochs=2)
    df = read_projections(t.log_dir)
    # 64 validation points, 3 beyond float16's range each run: the other 61 are logged
    assert df.groupby("epoch").size().to_dict() == {0: 61, 1: 61}
    assert set(range(64)) - set(df[df.epoch == 0].sample_id) == {16, 17, 37}
    assert np.isfinite(df[["pca_x", "pca_y", "tsne_x", "tsne_y"]].to_numpy()).all()
    assert df["cluster"].notna().all()
    metrics = read_metrics(t.log_dir)
    assert metrics["silhouette"].notna().all() and metrics["pca/trustworthiness"].notna().all()
    kept = projector.previous["embeddings"].sample
    assert kept.embeddings.dtype == np.float16 and np.isfinite(kept.embeddings).all()
    assert kept.embeddings.max() == 65_504.0
    warned = [m for m in _messages(caught) if "float16" in m]
    assert len(warned) == 2, _messages(caught)  # one per validation run
    assert all(m.startswith("lightning-embproj: 3 tracked rows had embedding values beyond "
                            "float16's range") for m in warned)
    assert all("storage_dtype='float32'" in m for m in warned)
    assert not [m for m in _messages(caught) if "NaN or Inf" in m]


def test_all_rows_nonfinite_logs_nothing_and_warns(tmp_path):
    def poison(out, batch_idx):
        out["embeddings"] = torch.full_like(out["embeddings"], float("nan"))

    projector = EmbeddingProjector(reducers="pca", max_samples=32, background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(poison))
    assert t.current_epoch == 1  # training finished
    assert any("64 tracked rows had NaN or Inf" in m for m in _messages(caught))


@pytest.mark.parametrize("max_samples", [4, 8, 40])
def test_few_points_for_tsne_perplexity(tmp_path, max_samples):
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"],
                                   max_samples=max_samples, perplexity=30.0, background=False)
    t, caught = _fit(tmp_path, projector, epochs=2)
    df = read_projections(t.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: max_samples, 1: max_samples}
    assert np.isfinite(df[["pca_x", "pca_y", "tsne_x", "tsne_y"]].to_numpy()).all()
    assert not caught, _messages(caught)


def test_fewer_dimensions_than_components(tmp_path):
    def one_dim(out, batch_idx):
        out["embeddings"] = out["embeddings"][:, :2]

    projector = EmbeddingProjector(reducers=["pca", "tsne"], n_components=3, max_samples=30,
                                   background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(one_dim))
    df = read_projections(t.log_dir)
    assert len(df) == 30
    assert (df["pca_z"] == 0).all() and df["pca_x"].std() > 0  # no third direction: zeros
    assert np.isfinite(df[["tsne_x", "tsne_y", "tsne_z"]].to_numpy()).all()
    assert not caught, _messages(caught)


def test_single_point(tmp_path):
    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=1,
                                   background=False)
    t, caught = _fit(tmp_path, projector, epochs=2)
    df = read_projections(t.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 1, 1: 1}
    assert (df[["pca_x", "pca_y", "tsne_x", "tsne_y"]].to_numpy() == 0).all()
    assert not caught, _messages(caught)


def test_all_points_identical(tmp_path):
    def constant(out, batch_idx):
        out["embeddings"] = torch.ones_like(out["embeddings"])

    projector = EmbeddingProjector(label_key="labels", reducers=["pca", "tsne"], max_samples=40,
                                   background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(constant), epochs=2)
    df = read_projections(t.log_dir)
    assert df.groupby("epoch").size().to_dict() == {0: 40, 1: 40}
    assert (df[["pca_x", "pca_y", "tsne_x", "tsne_y"]].to_numpy() == 0).all()
    metrics = read_metrics(t.log_dir)
    assert metrics["epoch"].tolist() == [0, 1]
    assert not caught, _messages(caught)


def test_very_high_dimensions(tmp_path):
    def wide(out, batch_idx):
        z = out["embeddings"]
        out["embeddings"] = torch.cat([z] * 256, dim=1) + 0.01 * torch.randn(len(z), 4096)

    projector = EmbeddingProjector(label_key="labels", reducers="pca", max_samples=32,
                                   background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(wide))
    df = read_projections(t.log_dir)
    assert len(df) == 32 and df["pca_x"].std() > 0 and df["pca_y"].std() > 0
    assert not caught, _messages(caught)


def test_very_long_texts_are_truncated_and_keep_their_id(tmp_path):
    def texts(out, batch_idx):
        n = len(out["labels"])
        out["text"] = [f"start-{batch_idx}-{i}-" + "x" * 100_000 for i in range(n)]
        out["id"] = [f"id-{batch_idx}-{i}" for i in range(n)]

    projector = EmbeddingProjector(id_key="id", metadata_keys=["text"], reducers="pca",
                                   max_samples=20, max_text_length=300, background=False)
    t, _ = _fit(tmp_path, projector, Tweaked(texts))
    df = read_projections(t.log_dir)
    assert len(df) == 20
    assert df["text"].str.len().max() == 300 and df["text"].str.endswith("\u2026").all()
    for sample_id, text in zip(df["sample_id"], df["text"], strict=True):
        assert text.startswith("start-" + sample_id[3:] + "-")


# -- errors that name the key or option ----------------------------------------------------
def test_missing_embedding_key_lists_the_keys_that_exist(tmp_path):
    model = DigitsModel()
    projector = EmbeddingProjector(embedding_key="features", reducers="pca")
    with pytest.raises(KeyError, match=r"embedding_key='features' was not found: validation_step "
                       r"outputs have keys \['embeddings', 'labels', 'loss', 'score'\]; the "
                       r"batch is a list of length 2"):
        _fit(tmp_path, projector, model)


def test_missing_key_fails_at_the_first_collected_batch(tmp_path):
    model = Tweaked(lambda out, i: None)
    projector = EmbeddingProjector(label_key="target", reducers="pca")
    with pytest.raises(KeyError, match=r"label_key='target' was not found.*'labels'"):
        _fit(tmp_path, projector, model, num_sanity_val_steps=0)
    assert model.val_batches == 1


def test_missing_key_fails_in_the_sanity_check_before_training(tmp_path):
    model = Tweaked(lambda out, i: None)
    projector = EmbeddingProjector(label_key="target", reducers="pca")
    with pytest.raises(KeyError, match=r"label_key='target' was not found.*'labels'"):
        _fit(tmp_path, projector, model, num_sanity_val_steps=2)
    assert model.global_step == 0 and model.val_batches == 0


@pytest.mark.parametrize(
    ("tweak", "match"),
    [
        (lambda out, i: out.update(meta=out["labels"][:-1]),
         r"metadata_keys='meta': expected one value per embedding row \(16\), got 15 rows"),
        (lambda out, i: out.update(meta="one text"),
         r"metadata_keys='meta': expected one value per embedding row \(16\), got a single str"),
        (lambda out, i: out.update(embeddings=out["embeddings"][:, : 16 - 8 * (i == 2)]),
         r"embeddings 'embeddings' changed dimension at validation batch 2: earlier batches "
         r"had 16 values per row, this one has 8"),
        (lambda out, i: out.update(embeddings=out["labels"]),
         r"embeddings 'embeddings': expected shape \(B, D\) or \(B, \.\.\.\), got shape \(16,\)"),
        (lambda out, i: out.update(embeddings=(out["embeddings"] > 0).long()),
         r"embeddings 'embeddings': expected floating point values, got dtype torch.int64"),
        (lambda out, i: out.update(embeddings=out["embeddings"] > 0),
         r"embeddings 'embeddings': expected floating point values, got dtype torch.bool"),
        (lambda out, i: out.update(embeddings=out["embeddings"].tolist()),
         r"embeddings 'embeddings': expected a torch.Tensor or numpy array of shape \(B, D\), "
         r"got list"),
    ],
    ids=["metadata-length", "metadata-scalar", "dim-changes", "1d", "int", "bool", "list"],
)
def test_bad_embeddings_or_metadata_raise_a_clear_error(tmp_path, tweak, match):
    projector = EmbeddingProjector(metadata_keys=["meta"], reducers="pca", max_samples=8)
    def both(out, i):
        out["meta"] = out["labels"]
        tweak(out, i)

    model = Tweaked(both)
    with pytest.raises((ValueError, TypeError), match=match):
        _fit(tmp_path, projector, model, num_sanity_val_steps=0)


class _Pair(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> Any:
        z = self.linear(x)
        return (z, z.norm(dim=1)) if self.kind == "tuple" else {"z": z, "norm": z.norm(dim=1)}


class LayerModel(DigitsModel):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.encoder = _Pair(kind)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        z = self.encoder(batch[0])
        z = z[0] if isinstance(z, tuple) else z["z"]
        return nn.functional.cross_entropy(self.head(z), batch[1])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        self.encoder(batch[0])
        return {}


def test_layer_returning_a_tuple_projects_its_first_element(tmp_path):
    projector = EmbeddingProjector(layers=["encoder"], label_key=1, reducers="pca",
                                   max_samples=20, background=False)
    t, caught = _fit(tmp_path, projector, LayerModel("tuple"))
    df = read_projections(t.log_dir)
    assert len(df) == 20 and df["pca_x"].std() > 0
    assert not caught, _messages(caught)


def test_layer_returning_a_dict_raises_naming_the_layer(tmp_path):
    projector = EmbeddingProjector(layers=["encoder"], reducers="pca")
    with pytest.raises(TypeError, match=r"layers: 'encoder' returns a dict with keys "
                       r"\['norm', 'z'\]; name the tensor to project: "
                       r"layers=\{'encoder': '(z|norm)'\}"):
        _fit(tmp_path, projector, LayerModel("dict"))


# -- nonsense settings -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_samples": 0}, "max_samples must be a positive integer, got 0"),
        ({"max_samples": -5}, "max_samples must be a positive integer, got -5"),
        ({"max_samples": 2.5}, "max_samples must be a positive integer, got 2.5"),
        ({"max_samples": True}, "max_samples must be a positive integer, got True"),
        ({"reducers": ["pca", "tnse"]},
         r"reducers must be .*\['pca', 'tsne', 'umap'\], got \['pca', 'tnse'\]"),
        ({"reducers": []}, r"reducers must be a non-empty list"),
        ({"n_components": 1}, "n_components must be 2 or 3, got 1"),
        ({"n_components": 4}, "n_components must be 2 or 3, got 4"),
        ({"n_components": True}, "n_components must be 2 or 3, got True"),
        ({"every_n_epochs": 0}, "every_n_epochs must be a positive integer, got 0"),
        ({"layers": ["encoder", "head", "encoder"]}, r"layers lists \['encoder'\] more than once"),
        ({"perplexity": 0}, "perplexity must be a positive number, got 0"),
        ({"max_queued_epochs": 0}, "max_queued_epochs must be a positive integer, got 0"),
        ({"max_text_length": 0}, "max_text_length must be a positive integer, got 0"),
        ({"embedding_key": "../outside"}, r"embedding_key='../outside' names a folder"),
        ({"layers": ["."]}, r"layers='\.' names a folder"),
        ({"vectors": 151}, r"vectors must be False, True \(vectors of up to 150 dims, PCA "
                           r"above\) or an int in 1\.\.150 .*, got 151"),
        ({"vectors": 0}, r"vectors must be .*, got 0"),
        ({"vectors": "yes"}, r"vectors must be .*, got 'yes'"),
        ({"vectors": True, "metadata_keys": ["embedding"]},
         r"vectors: the W&B table's vector column is named 'embedding', and metadata_keys "
         r"has a column of that name; rename it .*\{'my_embedding': 'embedding'\}"),
    ],
)
def test_constructor_refuses_nonsense(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EmbeddingProjector(**kwargs)


@pytest.mark.parametrize(
    ("column", "what"),
    [
        ("pca_x", "a layout column"), ("tsne_y", "a layout column"),
        ("umap_z", "a layout column"),  # every known reducer, chosen or not, 2-D or 3-D
        ("kind", "a column of the movers table"), ("overlap", "a column of the movers table"),
        ("foreign_fraction", "a column of the movers table"),
        ("knn_kept", "a motion column"), ("umap_moved", "a motion column"),
        ("sample_id", "an identity column"), ("val_index", "an identity column"),
        ("dataloader_idx", "an identity column"), ("cluster", "the cluster column"),
        ("label", "the label column"), ("__embeddings", "the projector's internal columns"),
    ],
)
@pytest.mark.parametrize("form", ["list", "dict"])
def test_a_metadata_column_named_like_a_generated_column_is_refused(column, what, form):
    """Issue 16: such a column was silently replaced by the layout, or overwrote the movers
    table's own kind / overlap."""
    metadata = [column] if form == "list" else {column: "score"}
    key = column if form == "list" else "score"
    with pytest.raises(ValueError) as info:
        EmbeddingProjector(metadata_keys=metadata, reducers="pca")
    message = str(info.value)
    assert message.startswith(f"metadata_keys: column {column!r} clashes with {what}")
    assert f"pass a dict such as {{'my_{column.lstrip('_')}': {key!r}}} to rename it" in message


def test_metadata_columns_renamed_from_generated_names_keep_their_values(tmp_path):
    """The dict form renames a clashing key; and a column named ``embeddings`` is one more
    column: it used to replace the collected vectors (the buffer's own column had that name)."""
    def extra(out, batch_idx):
        out["kind"] = [f"kind {batch_idx}-{i}" for i in range(len(out["labels"]))]

    projector = EmbeddingProjector(
        label_key="labels", metadata_keys={"embeddings": "score", "my_kind": "kind"},
        reducers="pca", max_samples=64, background=False,
    )
    t, caught = _fit(tmp_path, projector, Tweaked(extra), epochs=2)
    assert not _messages(caught), _messages(caught)
    s = projector.previous["embeddings"].sample
    assert s.embeddings.shape == (64, 16)
    np.testing.assert_allclose(s.metadata["embeddings"], np.linalg.norm(s.embeddings, axis=1),
                               rtol=1e-5)
    df = read_projections(t.log_dir)
    assert len(df) == 128 and df["pca_x"].std() > 0
    np.testing.assert_allclose(df[df.epoch == 1]["embeddings"], s.metadata["embeddings"],
                               rtol=1e-5)
    for sid, kind in zip(df["sample_id"], df["my_kind"], strict=True):
        assert kind == f"kind {sid // 16}-{sid % 16}"


def test_unknown_layer_fails_at_setup_with_close_matches(tmp_path):
    model = Tweaked(lambda out, i: None)
    projector = EmbeddingProjector(layers=["encodr"], reducers="pca")
    with pytest.raises(ValueError, match=r"no submodule 'encodr'; did you mean \['encoder'"):
        _fit(tmp_path, projector, model)
    assert model.val_batches == 0 and model.global_step == 0


# -- shapes and dtypes that the projector refuses on a real fit (issue 9) --------------------
def _tokens(out: dict, batch_idx: int) -> None:
    z = out["embeddings"]
    out["tokens"] = z.view(len(z), 4, 4)  # (B, T, D) token features


@pytest.mark.parametrize(
    ("options", "tweak", "match"),
    [
        ({"metadata_keys": ["tokens"]}, _tokens,
         r"metadata_keys='tokens': got shape \(16, 4, 4\), which is neither one value per row "
         r"\(B,\), a short vector per row \(B, K\), nor an image \(B, C, H, W\) with C in "
         r"\(1, 3, 4\)\. If it is an image, add 'tokens' to image_keys"),
        ({"metadata_keys": ["tokens"], "image_keys": ["tokens"]},
         lambda out, i: out.update(tokens=out["embeddings"]),
         r"image_keys: 'tokens' \(metadata_keys='tokens'\) must hold images \(B, H, W\), "
         r"\(B, C, H, W\) or \(B, H, W, C\) with C in \(1, 3, 4\), got shape \(16, 16\)"),
        ({"pooling": "flatten"},
         lambda out, i: out.update(embeddings=out["embeddings"].view(-1, 4, 4)[:, : 4 - (i == 2)]),
         r"embeddings 'embeddings' changed dimension at validation batch 2: pooling='flatten' "
         r"turns shape \(B, 4, 4\) of earlier batches into 16 values per row, this batch's "
         r"\(B, 3, 4\) into 12\. A sequence length or image size that varies needs pooling: "
         r"use pooling='mean'"),
        ({"pooling": "first"},
         lambda out, i: out.update(embeddings=out["embeddings"].view(-1, 1, 4, 4)),
         r"embeddings 'embeddings': pooling='first' takes one token of a \(B, T, D\) sequence, "
         r"but this output has shape \(16, 1, 4, 4\)"),
        ({"mask_key": "mask"},
         lambda out, i: out.update(embeddings=out["embeddings"].view(-1, 4, 4),
                                   mask=torch.zeros(16, 4).masked_fill(torch.rand(16, 4) > .5,
                                                                       float("-inf"))),
         r"mask_key='mask': expected bools or 0/1 values \(1 = real token\), got values from "
         r"-inf to 0\.0; an additive attention mask"),
        ({"mask_key": "mask"},
         lambda out, i: out.update(embeddings=out["embeddings"].view(-1, 4, 4),
                                   mask=torch.arange(64).view(16, 4) + 100),
         r"mask_key='mask': expected bools or 0/1 values \(1 = real token\), got integer "
         r"values from 100 to 163; is it the token ids or lengths instead of the attention "
         r"mask\?"),
        ({"mask_key": "mask"},
         lambda out, i: out.update(embeddings=out["embeddings"].view(-1, 4, 4),
                                   mask=torch.ones(16, 5, dtype=torch.bool)),
         r"mask_key='mask': expected shape \(B, T\) = \(16, 4\) to match embeddings "
         r"'embeddings' of shape \(16, 4, 4\), got shape \(16, 5\)"),
        ({"id_key": "id"}, lambda out, i: out.update(id=out["embeddings"][:, 0]),
         r"id_key='id': float ids must be whole numbers below 16777216"),
        ({"label_key": "onehot"},
         lambda out, i: out.update(onehot=nn.functional.one_hot(out["labels"], 10)),
         r"label_key='onehot': expected one label per row, shape \(B,\), got shape \(16, 10\)"),
    ],
    ids=["token-metadata", "declared-image-2d", "flatten-varying-T", "first-of-fmap",
         "additive-mask", "token-ids-mask", "mask-shape", "fractional-ids", "onehot-labels"],
)
def test_bad_shapes_and_dtypes_raise_naming_the_option(tmp_path, options, tweak, match):
    projector = EmbeddingProjector(reducers="pca", max_samples=8, **options)
    model = Tweaked(tweak)
    with pytest.raises((ValueError, TypeError), match=match):
        _fit(tmp_path, projector, model, num_sanity_val_steps=0)


def test_bf16_string_and_vector_metadata_on_one_fit(tmp_path):
    """Under bf16-mixed, (B, K) bf16 metadata becomes one list per row, ints stay ints."""
    def extra(out, batch_idx):
        z = out["embeddings"]
        out["pair"] = z[:, :2]
        out["name"] = np.array([f"n{batch_idx}_{i}" * (1 + batch_idx) for i in range(len(z))])

    projector = EmbeddingProjector(label_key="labels", metadata_keys=["pair", "name"],
                                   reducers="pca", max_samples=64, background=False)
    t, caught = _fit(tmp_path, projector, Tweaked(extra), precision="bf16-mixed")
    # every output (the HTML view included) takes list cells without a warning
    assert not _messages(caught), _messages(caught)
    s = projector.previous["embeddings"].sample
    assert s.metadata["pair"].shape == (64, 2) and s.metadata["pair"].dtype == np.float32
    np.testing.assert_array_equal(s.metadata["pair"], s.embeddings[:, :2])
    for sid, name in zip(s.sample_ids, s.metadata["name"], strict=True):
        b, i = divmod(sid, 16)
        assert name == f"n{b}_{i}" * (1 + b)  # not cut to the first batch's width
    df = read_projections(t.log_dir)
    assert all(isinstance(v, list) and len(v) == 2 for v in df["pair"])
