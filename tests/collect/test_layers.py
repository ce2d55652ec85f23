"""Any model's layers: ``layers={module: key}`` for dict, ``ModelOutput``, tuple and dataclass
outputs, with ``mask_key`` for padded sequences, on real fits."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from digits import trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_embproj import EmbeddingProjector
from lightning_embproj.options import ProjectorOptions

transformers = pytest.importorskip("transformers")

VOCAB, T, N = 40, 8, 96


class Tokens(Dataset):
    """Padded token sequences of 3..8 tokens, an attention mask, a label and an id."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(3, T + 1, (N,), generator=g)
        self.labels = torch.randint(0, 4, (N,), generator=g)
        self.ids = torch.randint(1, VOCAB, (N, T), generator=g)
        self.ids[:, 0] = self.labels + 1  # a label token first: something to learn
        self.mask = (torch.arange(T)[None] < self.lengths[:, None]).long()
        self.ids = self.ids * self.mask  # padding token 0

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i],
                "label": self.labels[i], "id": i}


class TinyBert(L.LightningModule):
    """A random-init BERT from a config (no download), classified from its [CLS] token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=T)
        self.bert = transformers.BertModel(config)
        self.head = nn.Linear(32, 4)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        cls = self(batch).last_hidden_state[:, 0]
        return nn.functional.cross_entropy(self.head(cls), batch["label"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_hugging_face_encoder_by_key_with_a_padding_mask(tmp_path):
    data = Tokens()
    loader = DataLoader(data, batch_size=32)
    projector = EmbeddingProjector(layers={"bert.encoder": "last_hidden_state"},
                                   mask_key="attention_mask", label_key="label", id_key="id",
                                   reducers="pca", max_samples=N, background=False)
    model = TinyBert()
    trainer(tmp_path, [projector], max_epochs=1).fit(model, loader, loader)

    sample = projector.previous["bert.encoder"].sample
    model.eval()
    with torch.no_grad():
        hidden = model({"input_ids": data.ids, "attention_mask": data.mask})
    mask = data.mask[..., None].float()
    # the mean over the real tokens only: padding left out by mask_key
    expected = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1)
    order = np.asarray(sample.sample_ids, dtype=np.int64)
    np.testing.assert_allclose(sample.embeddings, expected.numpy()[order], rtol=1e-4, atol=1e-5)
    padded_mean = hidden.last_hidden_state.mean(1).numpy()[order]
    assert not np.allclose(sample.embeddings, padded_mean, atol=1e-3)  # the mask mattered


def test_a_dict_output_without_a_key_is_refused_naming_the_fix(tmp_path):
    loader = DataLoader(Tokens(), batch_size=32)
    projector = EmbeddingProjector(layers=["bert.encoder"], reducers="pca")
    with pytest.raises(TypeError, match=r"layers=\{'bert.encoder': 'last_hidden_state'\}"):
        trainer(tmp_path, [projector], max_epochs=1).fit(TinyBert(), loader, loader)


@dataclasses.dataclass
class Out:
    pooled: torch.Tensor
    extra: int = 0


class Heads(nn.Module):
    """Three output kinds: a tuple, a dataclass and a plain dict."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(64, 6)

    def forward(self, x: torch.Tensor) -> Any:
        z = self.lin(x)
        if self.kind == "tuple":
            return (z * 0, z)  # the second element is the embedding
        if self.kind == "dataclass":
            return Out(pooled=z)
        return {"logits": z * 0, "emb": z}


class HeadModel(L.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.enc = Heads(kind)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.enc(batch[0])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.enc(batch[0])
        z = out[1] if isinstance(out, tuple) else out.pooled if isinstance(out, Out) else out["emb"]
        return z.pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: outputs are reproducible


@pytest.mark.parametrize(("kind", "key"), [("tuple", 1), ("dataclass", "pooled"),
                                           ("dict", "emb")])
def test_tuple_index_dataclass_attribute_and_dict_key(tmp_path, kind, key):
    from digits import digits_tensors

    x, y = digits_tensors(120)
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)
    projector = EmbeddingProjector(layers={"enc": key}, reducers="pca", max_samples=120,
                                   background=False)
    model = HeadModel(kind)
    trainer(tmp_path, [projector], max_epochs=1).fit(model, loader, loader)
    sample = projector.previous["enc"].sample
    with torch.no_grad():
        expected = model.enc.lin(x).numpy()[np.asarray(sample.sample_ids)]
    np.testing.assert_allclose(sample.embeddings, expected, rtol=1e-5, atol=1e-6)


def test_a_key_with_no_tensor_names_what_the_output_holds(tmp_path):
    from digits import digits_tensors

    x, y = digits_tensors(40)
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)
    projector = EmbeddingProjector(layers={"enc": "missing"}, reducers="pca")
    with pytest.raises(TypeError, match=r"'enc' output has no tensor at 'missing'.*pooled"):
        trainer(tmp_path, [projector], max_epochs=1).fit(HeadModel("dataclass"), loader, loader)


@pytest.mark.parametrize("bad", [1.5, True, "", ["a"]])
def test_layer_keys_are_checked_when_built(bad):
    with pytest.raises(TypeError, match=r"layers\['enc'\] must name what to take"):
        ProjectorOptions(layers={"enc": bad})


def test_layer_dicts_from_config_files():
    from omegaconf import OmegaConf

    opts = ProjectorOptions(layers=OmegaConf.create({"bert.encoder": "last_hidden_state"}))
    assert opts.layers == ["bert.encoder"]
    assert opts.layer_keys == {"bert.encoder": "last_hidden_state"}
    assert opts.set_names == ["bert.encoder"]
