"""Data types on real fits: half precision, sequence and feature-map layers, string ids.

Each test runs a real ``Trainer.fit`` and checks what the projector kept against values
recomputed from the trained model, so a wrong pooling, a cut id or a lost dtype fails.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from digits import DigitsModel, digits_tensors, loaders, trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_embproj import EmbeddingProjector, read_projections
from lightning_embproj.collect.hashing import hash_ids
from lightning_embproj.runtime.warn import ProjectorWarning

N_VAL, BATCH = 64, 16


def _fit(tmp_path: Path, projector: EmbeddingProjector, model: L.LightningModule,
         **kw: Any) -> L.Trainer:
    train, val = loaders(n_train=64, n_val=N_VAL, batch_size=BATCH)
    t = trainer(tmp_path, [projector], max_epochs=1, limit_train_batches=2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and precision
        t.fit(model, train, val)
    projector.flush()
    return t


def _val_x() -> torch.Tensor:
    x, _ = digits_tensors()
    return x[64 : 64 + N_VAL]


def _val_y() -> torch.Tensor:
    _, y = digits_tensors()
    return y[64 : 64 + N_VAL]


# -- half precision ------------------------------------------------------------------------
class HalfModel(DigitsModel):
    """Returns ids, labels and a score in the dtype of the embeddings (bf16 / fp16)."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().validation_step(batch, batch_idx)
        z = out["embeddings"]
        self.seen_dtype = z.dtype
        ids = torch.arange(len(z)) + batch_idx * BATCH
        out.update(id=ids.to(z.dtype), labels=out["labels"].to(z.dtype),
                   score=out["score"].to(z.dtype), vec=z[:, :2])
        return out


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true", "16-true"])
def test_half_precision_fit(tmp_path, precision):
    projector = EmbeddingProjector(label_key="labels", id_key="id", metadata_keys=["score", "vec"],
                                   reducers="pca", max_samples=40, background=False)
    model = HalfModel()
    t = _fit(tmp_path, projector, model, precision=precision)
    # On CPU, Lightning runs "16-mixed" as "bf16-mixed" (fp16 autocast is GPU-only there).
    assert model.seen_dtype == (torch.float16 if precision == "16-true" else torch.bfloat16)
    s = projector.previous["embeddings"].sample
    ids = np.array(s.sample_ids)
    assert all(type(v) is int for v in s.sample_ids)
    assert sorted(ids.tolist()) == sorted(np.arange(N_VAL)[np.argsort(hash_ids(
        np.arange(N_VAL), 0))[:40]].tolist())
    assert s.embeddings.dtype == np.float32 and np.isfinite(s.embeddings).all()
    with torch.no_grad():
        if precision.endswith("-mixed"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                want = model.encoder(_val_x()[ids]).float()
        else:
            want = model.encoder(_val_x()[ids].to(model.seen_dtype)).float()
    np.testing.assert_array_equal(s.embeddings, want.numpy())
    np.testing.assert_array_equal(s.labels, _val_y()[ids].float().numpy())
    np.testing.assert_array_equal(s.metadata["vec"], want[:, :2].numpy())
    assert sorted(read_projections(t.log_dir)["sample_id"].tolist()) == sorted(ids.tolist())


# -- sequence layers -----------------------------------------------------------------------
class SeqModel(DigitsModel):
    """The 8x8 digit as 8 tokens of 8 pixels; ``tokens`` outputs (B, T=8, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Linear(8, 16)

    def _seq(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.view(-1, 8, 8))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self._seq(x).mean(dim=1)), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        x, _ = batch
        self._seq(x)
        ids = torch.arange(len(x)) + batch_idx * BATCH
        # Row i has 1 + i % 8 real tokens: a padded batch of variable-length sequences.
        return {"mask": torch.arange(8)[None, :] <= (ids % 8)[:, None]}


def _tokens(model: SeqModel, ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model._seq(_val_x()[ids])


SEQ_POOL = {
    "auto": lambda h: h.mean(dim=1), "mean": lambda h: h.mean(dim=1),
    "first": lambda h: h[:, 0], "last": lambda h: h[:, -1], "max": lambda h: h.amax(dim=1),
    "flatten": lambda h: h.reshape(len(h), -1),
}


@pytest.mark.parametrize("pooling", list(SEQ_POOL))
def test_sequence_layer_with_each_pooling(tmp_path, pooling):
    projector = EmbeddingProjector(layers=["tokens"], label_key=1, pooling=pooling,
                                   reducers="pca", max_samples=N_VAL, background=False)
    model = SeqModel()
    t = _fit(tmp_path, projector, model)
    s = projector.previous["tokens"].sample
    ids = np.array(s.sample_ids)
    want = SEQ_POOL[pooling](_tokens(model, ids))
    assert s.embeddings.shape == (N_VAL, 128 if pooling == "flatten" else 16)
    np.testing.assert_allclose(s.embeddings, want.numpy(), rtol=1e-5, atol=1e-6)
    assert len(read_projections(t.log_dir, "tokens")) == N_VAL


@pytest.mark.parametrize("pooling", ["auto", "mean", "max", "last"])
def test_sequence_layer_with_a_padding_mask(tmp_path, pooling):
    projector = EmbeddingProjector(layers=["tokens"], mask_key="mask", pooling=pooling,
                                   reducers="pca", max_samples=N_VAL, background=False)
    model = SeqModel()
    _fit(tmp_path, projector, model)
    s = projector.previous["tokens"].sample
    ids = np.array(s.sample_ids)
    h = _tokens(model, ids)
    lengths = 1 + ids % 8
    want = torch.stack([
        h[i, :n].mean(0) if pooling in ("auto", "mean") else
        h[i, :n].amax(0) if pooling == "max" else h[i, n - 1]
        for i, n in enumerate(lengths.tolist())
    ])
    np.testing.assert_allclose(s.embeddings, want.numpy(), rtol=1e-5, atol=1e-6)
    unmasked = SEQ_POOL[pooling](h)
    assert not np.allclose(s.embeddings, unmasked.numpy())  # the mask did change the result


# -- feature maps --------------------------------------------------------------------------
class ConvModel(DigitsModel):
    """A small conv net; ``features`` outputs (B, C=6, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6, 10)

    def _fmap(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.view(-1, 1, 8, 8))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self._fmap(x).mean(dim=(2, 3))), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        self._fmap(batch[0])
        return {}


FMAP_POOL = {
    "auto": lambda h: h.mean(dim=(2, 3)), "mean": lambda h: h.mean(dim=(2, 3)),
    "max": lambda h: h.amax(dim=(2, 3)), "flatten": lambda h: h.reshape(len(h), -1),
}


@pytest.mark.parametrize("pooling", list(FMAP_POOL))
def test_feature_map_layer_with_each_pooling(tmp_path, pooling):
    projector = EmbeddingProjector(layers=["features"], label_key=1, pooling=pooling,
                                   reducers="pca", max_samples=N_VAL, background=False)
    model = ConvModel()
    _fit(tmp_path, projector, model)
    s = projector.previous["features"].sample
    ids = np.array(s.sample_ids)
    with torch.no_grad():
        want = FMAP_POOL[pooling](model._fmap(_val_x()[ids]))
    assert s.embeddings.shape == (N_VAL, 384 if pooling == "flatten" else 6)
    np.testing.assert_allclose(s.embeddings, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["first", "last"])
def test_feature_map_layer_refuses_first_and_last(tmp_path, pooling):
    projector = EmbeddingProjector(layers=["features"], pooling=pooling, reducers="pca")
    with pytest.raises(ValueError, match=rf"embeddings 'features': pooling='{pooling}' takes one "
                       r"token of a \(B, T, D\) sequence, but this output has shape "
                       r"\(\d+, 6, 8, 8\)"):
        _fit(tmp_path, projector, ConvModel())


# -- string ids of mixed widths, vectors and images ------------------------------------------
def _string_id(i: int) -> str:
    """Narrow ids first (the first batch), then wide ones, uuids and zero-padded numbers."""
    if i < BATCH:
        return f"img_{i}"
    if i < 2 * BATCH:
        return f"img_{10_000 + i}"
    if i < 3 * BATCH:
        return str(uuid.UUID(int=1_000_003 * i))
    return f"{i:06d}"


class StringIdDigits(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self.x[i]
        return {"x": x, "y": self.y[i], "id": _string_id(i), "pair": x[:2],
                "image": x.view(8, 8), "name": f"digit {int(self.y[i])}"}


def test_string_ids_of_mixed_widths_through_the_callback(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    projector = EmbeddingProjector(
        label_key="y", id_key="id", metadata_keys=["pair", "name", "image"],
        image_keys=["image"], reducers="pca", max_samples=40, background=False,
    )
    x, y = digits_tensors(64)
    train = DataLoader(StringIdDigits(x, y), batch_size=BATCH)
    val = DataLoader(StringIdDigits(_val_x(), _val_y()), batch_size=BATCH)
    t = trainer(tmp_path, [projector], max_epochs=1, limit_train_batches=2,
                logger=TensorBoardLogger(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(DigitsModel(dict_batches=True), train, val)
    all_ids = [_string_id(i) for i in range(N_VAL)]
    want = sorted(np.array(all_ids)[np.argsort(hash_ids(all_ids, 0))[:40]].tolist())
    s = projector.previous["embeddings"].sample
    assert sorted(s.sample_ids) == want
    assert any(len(v) == 36 for v in s.sample_ids) and any(v.startswith("00") for v in want)
    row = {sid: i for i, sid in enumerate(s.sample_ids)}
    for sid in want:
        i = all_ids.index(sid)
        assert s.metadata["name"][row[sid]] == f"digit {int(_val_y()[i])}"
        np.testing.assert_array_equal(s.metadata["pair"][row[sid]], _val_x()[i, :2].numpy())
    assert s.image_columns() == ["image"] and s.metadata["image"].shape == (40, 8, 8, 1)

    # The local CSV via read_projections (expectations on the lead's reader): string ids come
    # back as the same strings ("000048" stays text), a (B, K) column as one list per row.
    df = read_projections(t.log_dir)
    assert sorted(df["sample_id"].tolist()) == want
    by_id = dict(zip(df["sample_id"], df["pair"], strict=True))
    for sid in want:
        np.testing.assert_allclose(by_id[sid], _val_x()[all_ids.index(sid), :2].numpy(),
                                   rtol=1e-6)

    # TensorBoard: the sprite is made of the declared 8x8 images, not the 2-value vectors.
    from PIL import Image

    sprites = list(Path(t.log_dir).rglob("sprite.png"))
    assert len(sprites) == 1
    with Image.open(sprites[0]) as img:
        assert img.size == (8 * 7, 8 * 6)  # 40 thumbnails of 8x8 in a 7 x 6 grid
    header = next(Path(t.log_dir).rglob("metadata.tsv")).read_text().splitlines()[0]
    assert header.split("\t")[:5] == ["sample_id", "epoch", "step", "val_index", "pair"]
    assert "image" not in header.split("\t")


def test_a_flattened_wide_layer_warns_once_per_set_across_epochs(tmp_path):
    projector = EmbeddingProjector(layers=["features"], pooling="flatten", reducers="pca",
                                   max_samples=200_000, background=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = loaders(n_train=64, n_val=N_VAL, batch_size=BATCH)
        t = trainer(tmp_path, [projector], max_epochs=2, limit_train_batches=2)
        t.fit(ConvModel(), train, val)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ProjectorWarning)]
    size = [m for m in msgs if "sample buffer may reach" in m]
    # 200,000 x 384 x 4 bytes = 307 MB: one warning over the sanity check and two epochs.
    assert len(size) == 1 and "307 MB" in size[0] and "pooling='flatten'" in size[0], size
