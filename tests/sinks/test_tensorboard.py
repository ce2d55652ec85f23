"""The TensorBoard Projector sink, read back with TensorBoard's own proto and projector plugin."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from sklearn.datasets import load_digits
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from lightning_embproj.results import EpochSample, RunIdentity, RunResult
from lightning_embproj.sinks.columns import run_result
from lightning_embproj.sinks.tensorboard import (
    MAX_SPRITE_PX,
    sprite_grid,
    sprite_png,
    tsv_cell,
    write_projector_config,
    write_tensorboard_projector,
)

N = 150
NASTY = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "<script>alert('x')</script>",
    "crlf\r\nend\t",
    "/etc/passwd",
    "x" * 1000,
    "",
]


def make_projection(epoch: int, name: str = "digits", images: bool = True) -> RunResult:
    digits = load_digits()
    emb = digits.data[:N].astype(np.float32) + np.float32(0.1 * epoch)
    meta: dict = {"text": [NASTY[i % len(NASTY)] for i in range(N)]}
    if images:
        meta["image"] = (digits.images[:N] * 15).astype(np.uint8)[..., None]
    sample = EpochSample(
        name=name,
        keys=np.arange(N, dtype=np.int64),
        sample_ids=[f"id\t{i}" if i == 3 else i for i in range(N)],
        embeddings=emb,
        labels=digits.target[:N],
        metadata=meta,
    )
    layouts = {"pca": emb[:, :2].astype(np.float64) * (epoch + 1)}
    return run_result(sample, RunIdentity(epoch, epoch=epoch, step=10 * epoch), layouts)


def read_config(log_dir: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), config)
    return config


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[RunResult]]:
    projections = [make_projection(0), make_projection(1)]
    for p in projections:
        write_tensorboard_projector(tmp_path, p, max_text_length=50)
    return tmp_path, projections


def test_config_lists_every_epoch_with_existing_files(written):
    log_dir, projections = written
    config = read_config(log_dir)
    assert [e.tensor_name for e in config.embeddings] == [
        "digits/val_0000_epoch_0000", "digits/val_0001_epoch_0001"
    ]
    for e, p in zip(config.embeddings, projections, strict=True):
        folder = f"embproj/digits/val_{p.val_index:04d}_epoch_{p.epoch:04d}"
        assert e.tensor_path == f"{folder}/tensors.tsv"
        assert e.metadata_path == f"{folder}/metadata.tsv"
        assert e.sprite.image_path == f"{folder}/sprite.png"
        assert list(e.sprite.single_image_dim) == [8, 8]
        assert list(e.tensor_shape) == [N, 64]
        for rel in (e.tensor_path, e.metadata_path, e.sprite.image_path):
            assert (log_dir / rel).is_file()
    assert not list(log_dir.rglob("*.tmp"))


def test_tensors_tsv_round_trips_the_embeddings(written):
    log_dir, projections = written
    for p in projections:
        run = f"val_{p.val_index:04d}_epoch_{p.epoch:04d}"
        lines = (log_dir / "embproj/digits" / run / "tensors.tsv").read_text()
        rows = [line.split("\t") for line in lines.splitlines()]
        assert len(rows) == N and {len(r) for r in rows} == {64}
        back = np.array(rows, dtype=np.float32)
        np.testing.assert_array_equal(back, p.sample.embeddings)


def test_metadata_tsv_is_rectangular_escaped_and_truncated(written):
    log_dir, projections = written
    text = (log_dir / "embproj/digits/val_0001_epoch_0001/metadata.tsv").read_text(encoding="utf-8")
    # splitlines also breaks on \r, \x0b, \u2028...: a stray one would show up here
    lines = text.splitlines()
    assert len(lines) == N + 1 == len(text.split("\n")) - 1
    header = lines[0].split("\t")
    assert header == ["sample_id", "epoch", "step", "val_index", "text", "label", "pca_x", "pca_y",
                      "knn_kept", "pca_moved"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == len(header) for r in rows)
    col = {h: [r[j] for r in rows] for j, h in enumerate(header)}
    assert col["sample_id"][3] == "id\\t3" and col["sample_id"][4] == "4"
    assert set(col["epoch"]) == {"1"} and set(col["step"]) == {"10"}
    assert col["label"] == [str(v) for v in projections[1].sample.labels]
    np.testing.assert_allclose(np.array(col["pca_y"], float), projections[1].layouts["pca"][:, 1])
    assert col["text"][:6] == [
        "tab\\there",
        "new\\nline",
        "carriage\\rreturn",
        "<script>alert('x')</script>",
        "crlf\\r\\nend\\t",
        "/etc/passwd",
    ]
    assert col["text"][6] == "x" * 49 + "…"
    assert col["text"][7] == ""
    assert max(len(c) for r in rows for c in r) <= 50


def test_sprite_is_a_grid_of_the_images(written):
    log_dir, projections = written
    images = projections[0].sample.metadata["image"][..., 0]
    cols, rows, th, tw = sprite_grid(N, 8, 8)
    with Image.open(log_dir / "embproj/digits/val_0000_epoch_0000/sprite.png") as im:
        assert im.size == (cols * tw, rows * th) == (13 * 8, 12 * 8)
        grid = np.asarray(im)
    for i in (0, 1, 12, 13, N - 1):
        r, c = divmod(i, cols)
        np.testing.assert_array_equal(grid[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8], images[i])


@pytest.mark.parametrize(
    ("shape", "expected_w", "expected_h"),
    [((2, 1, 9000, 1), 8192, 2), ((2, 9000, 1, 3), 2, 8192), ((3, 20, 30, 4), 60, 40)],
)
def test_sprite_scaled_down_to_fit_8192(shape, expected_w, expected_h):
    rng = np.random.default_rng(0)
    png, dim = sprite_png(rng.integers(0, 255, size=shape, dtype=np.uint8))
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[0] <= MAX_SPRITE_PX and im.size[1] <= MAX_SPRITE_PX
        assert abs(im.size[0] - expected_w) <= 1 and abs(im.size[1] - expected_h) <= 1
        assert im.mode == {1: "L", 3: "RGB", 4: "RGBA"}[shape[3]]
        cols, rows = im.size[0] // dim[0], im.size[1] // dim[1]
        assert cols * dim[0] == im.size[0] and rows * dim[1] == im.size[1]
        assert cols * rows >= shape[0]


@pytest.mark.parametrize(("n", "side"), [(10_000, 224), (100_000, 32), (7, 500), (1, 9000)])
def test_sprite_grid_fits_and_keeps_aspect(n, side):
    cols, rows, th, tw = sprite_grid(n, side, side)
    assert cols * rows >= n and cols * tw <= 8192 and rows * th <= 8192
    assert th == tw and th <= side


def test_other_sets_and_foreign_entries_are_kept(tmp_path):
    foreign = 'embeddings {\n  tensor_name: "default:00000"\n  tensor_path: "00000/t.tsv"\n}\n'
    (tmp_path / "projector_config.pbtxt").write_text(foreign)
    write_tensorboard_projector(tmp_path, make_projection(0, "a", images=False))
    write_tensorboard_projector(tmp_path, make_projection(0, "bé 2"))
    write_tensorboard_projector(tmp_path, make_projection(1, "a", images=False))
    config = read_config(tmp_path)
    names = [e.tensor_name for e in config.embeddings]
    assert names == [
        "default:00000", "a/val_0000_epoch_0000", "a/val_0001_epoch_0001",
        "bé 2/val_0000_epoch_0000",
    ]
    assert config.embeddings[3].sprite.image_path == "embproj/bé 2/val_0000_epoch_0000/sprite.png"
    assert not config.embeddings[1].sprite.image_path
    assert not (tmp_path / "embproj/a/val_0000_epoch_0000/sprite.png").exists()


def test_unchanged_images_reuse_the_sprite_changed_ones_do_not(written):
    log_dir, projections = written
    folder = log_dir / "embproj/digits"
    assert os.path.samefile(
        folder / "val_0000_epoch_0000/sprite.png", folder / "val_0001_epoch_0001/sprite.png"
    )
    p = make_projection(2)
    inverted = {**p.sample.metadata, "image": 255 - p.sample.metadata["image"]}
    p = run_result(dataclasses.replace(p.sample, metadata=inverted), p.identity, p.layouts)
    write_tensorboard_projector(log_dir, p)
    sprite = folder / "val_0002_epoch_0002/sprite.png"
    assert not os.path.samefile(folder / "val_0001_epoch_0001/sprite.png", sprite)
    with Image.open(sprite) as im:
        np.testing.assert_array_equal(np.asarray(im)[:8, :8], p.sample.metadata["image"][0, ..., 0])
    dims = [list(e.sprite.single_image_dim) for e in read_config(log_dir).embeddings]
    assert dims == [[8, 8]] * 3


def test_rewriting_an_epoch_replaces_it(tmp_path):
    write_tensorboard_projector(tmp_path, make_projection(2))
    write_tensorboard_projector(tmp_path, make_projection(2, images=False))
    (entry,) = read_config(tmp_path).embeddings
    assert entry.tensor_name == "digits/val_0002_epoch_0002" and not entry.sprite.image_path
    assert not (tmp_path / "embproj/digits/val_0002_epoch_0002/sprite.png").exists()


def test_config_rebuilt_from_folders_after_being_clobbered(written):
    log_dir, _ = written
    (log_dir / "projector_config.pbtxt").write_text("this is { not a proto")
    with pytest.warns(UserWarning, match="could not be parsed"):
        write_projector_config(log_dir)
    assert len(read_config(log_dir).embeddings) == 2
    assert (log_dir / "projector_config.pbtxt.invalid").read_text() == "this is { not a proto"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (np.int64(3), "3"),
        ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
        ("nul\x00bell\x07ls\u2028ps\u2029nel\x85", "nul bell ls ps nel "),
        ("é🙂", "é🙂"),
        ("y" * 300, "y" * 199 + "…"),
    ],
)
def test_tsv_cell(value, expected):
    assert tsv_cell(value) == expected


def test_bad_input_raises_clear_errors(tmp_path):
    p = make_projection(0)
    with pytest.raises(ValueError, match="max_text_length must be an int >= 1; got 0"):
        write_tensorboard_projector(tmp_path, p, max_text_length=0)
    for bad in ("a/b", "..", "", "a\\b"):
        renamed = run_result(dataclasses.replace(p.sample, name=bad), p.identity, p.layouts)
        with pytest.raises(ValueError, match="plain folder name"):
            write_tensorboard_projector(tmp_path, renamed)
    empty = dataclasses.replace(p.sample, embeddings=p.sample.embeddings[:, :0])
    p = run_result(empty, p.identity, p.layouts)
    with pytest.raises(ValueError, match=r"non-empty \(N, D\) array .* got shape \(150, 0\)"):
        write_tensorboard_projector(tmp_path, p)
    with pytest.raises(ValueError, match="image column 'im' must be .* got shape"):
        sprite_png(np.zeros((2, 4, 4, 2), np.uint8), "im")
    assert not (tmp_path / "projector_config.pbtxt").exists()


def test_tensorboard_projector_plugin_serves_every_epoch(tmp_path):
    """TensorBoard's own projector plugin, run headless, finds and serves what we wrote."""
    from tb_plugin import serve
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    root = tmp_path / "lightning_logs"
    run_dir = root / "version_0"  # a TensorBoardLogger's log_dir: a run with an events file
    EventFileWriter(str(run_dir)).close()
    projections = [make_projection(0), make_projection(1)]
    for p in projections:
        write_tensorboard_projector(run_dir, p)

    get = serve(root)
    assert json.loads(get("/runs")) == ["version_0"]
    info = json.loads(get("/info", run="version_0"))
    assert [e["tensorName"] for e in info["embeddings"]] == [
        "digits/val_0000_epoch_0000",
        "digits/val_0001_epoch_0001",
    ]
    for p in projections:
        name = f"digits/val_{p.val_index:04d}_epoch_{p.epoch:04d}"
        tensor = np.frombuffer(get("/tensor", run="version_0", name=name), dtype=np.float32)
        np.testing.assert_array_equal(tensor.reshape(N, 64), p.sample.embeddings)
        meta = get("/metadata", run="version_0", name=name).decode().split("\n")
        assert len(meta) == N + 2 and meta[-1] == "" and meta[1].split("\t")[1] == str(p.epoch)
        sprite = get("/sprite_image", run="version_0", name=name)
        assert sprite.startswith(b"\x89PNG")
