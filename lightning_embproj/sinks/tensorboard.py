"""TensorBoard Projector files for each validation run, shown in TensorBoard's Projector tab.

Layout under the ``TensorBoardLogger``'s ``log_dir`` (one folder per set and validation run;
``RUN`` is ``val_0003_epoch_0001``: validation run 3, at epoch 1)::

    projector_config.pbtxt            every run written so far, plus others' entries
    embproj/<NAME>/RUN/tensors.tsv    N rows x D floats, the original-space embeddings
    embproj/<NAME>/RUN/metadata.tsv   a header row + N rows: the contract's columns
    embproj/<NAME>/RUN/sprite.png     grid of thumbnails (only with an image column; a hard link
                                      when equal to another run's)
    embproj/<NAME>/RUN/sprite.digest  hash of the images the sprite was made from
    embproj/<NAME>/RUN/embedding.pbtxt  this run's config entry (the pbtxt is rebuilt from these,
                                      so no run is ever lost)

The tensor shows in TensorBoard as ``<NAME>/val_0003_epoch_0001``. Every file is written to a
temporary name and renamed. Metadata cells are plain text: tabs, newlines and other control
characters are escaped or replaced and cells are cut to ``max_text_length``; nothing in them is
used as a path.

Example:
    >>> write_tensorboard_projector(logger.log_dir, projection)   # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/val_0003_epoch_0001')
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.results import RunResult
from lightning_embproj.sinks.local import atomic_write

SUBDIR = "embproj"
CONFIG_FILE = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for
ENTRY_FILE = "embedding.pbtxt"
SPRITE_DIGEST = "sprite.digest"
RUN_DIR = "val_{val_index:04d}_epoch_{epoch:04d}"
MAX_SPRITE_PX = 8192  # TensorBoard's frontend refuses larger sprite images
_RUN_RE = re.compile(r"val_(\d+)_epoch_\d+")
_CONFIG_LOCK = threading.Lock()  # two sets written from two threads must not drop each other

# Tab, newline and carriage return would split a TSV cell or row: make them visible escapes.
# Other control characters and Unicode line separators become spaces (Python's splitlines and
# some editors break lines on them).
_ESCAPES: dict[int, str] = {
    **{c: " " for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]},
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}


def tsv_cell(value: Any, max_text_length: int = 200) -> str:
    """One metadata cell as safe TSV text, at most ``max_text_length`` characters.

    Example:
        >>> tsv_cell("a\\tb\\nc")
        'a\\\\tb\\\\nc'
        >>> tsv_cell("x" * 10, max_text_length=4)
        'xxx…'
    """
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    text = str(value).translate(_ESCAPES)
    if len(text) > max_text_length:
        text = text[: max_text_length - 1] + "…"
    return text


def metadata_tsv(projection: RunResult, max_text_length: int = 200) -> str:
    """The contract's columns (images left out, layouts included) as TSV with a header row."""
    cols = projection.table(images=False)
    header = [tsv_cell(name, max_text_length) for name in cols]
    rows = zip(*cols.values(), strict=True)
    lines = ["\t".join(header)]
    lines += ["\t".join(tsv_cell(v, max_text_length) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def tensors_tsv(embeddings: np.ndarray) -> str:
    """``(N, D)`` floats as TSV; 9 significant digits round-trip float32 exactly."""
    buf = io.StringIO()
    np.savetxt(buf, np.asarray(embeddings, dtype=np.float32), fmt="%.9g", delimiter="\t")
    return buf.getvalue()


def sprite_grid(
    n: int, height: int, width: int, max_px: int = MAX_SPRITE_PX
) -> tuple[int, int, int, int]:
    """``(cols, rows, thumb_h, thumb_w)`` of a roughly square sprite of at most ``max_px``.

    Example:
        >>> sprite_grid(100, 8, 8)
        (10, 10, 8, 8)
        >>> sprite_grid(10_000, 224, 224)
        (100, 100, 81, 81)
    """
    cols = max(1, min(n, math.ceil(math.sqrt(n * height / width))))
    rows = math.ceil(n / cols)
    if cols > max_px or rows > max_px:
        raise ValueError(
            f"write_tensorboard_projector: {n} images do not fit a {max_px}x{max_px} px sprite "
            "even at 1 px each; track fewer samples (max_samples)"
        )
    scale = min(1.0, max_px / (cols * width), max_px / (rows * height))
    return cols, rows, max(1, int(height * scale)), max(1, int(width * scale))


def sprite_png(images: np.ndarray, column: str = "image") -> tuple[bytes, list[int]]:
    """A PNG grid of uint8 ``(N, H, W, C)`` images, row by row; returns it and ``[w, h]``."""
    from PIL import Image

    n, height, width, channels = images.shape
    if channels not in (1, 3, 4) or height == 0 or width == 0:
        raise ValueError(
            f"write_tensorboard_projector: image column {column!r} must be uint8 (N, H, W, C) "
            f"with C in (1, 3, 4) and H, W > 0; got shape {images.shape}"
        )
    cols, rows, th, tw = sprite_grid(n, height, width)
    grid = np.zeros((rows * th, cols * tw, channels), dtype=np.uint8)
    for i, img in enumerate(images):
        if (th, tw) != (height, width):
            # fromarray infers L / RGB / RGBA from the shape (its `mode` argument is deprecated)
            pil = Image.fromarray(img[..., 0] if channels == 1 else img)
            small = pil.resize((tw, th), Image.Resampling.LANCZOS)
            img = np.asarray(small).reshape(th, tw, channels)
        r, c = divmod(i, cols)
        grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = img
    buf = io.BytesIO()
    out = grid[..., 0] if channels == 1 else grid
    # Level 1: 4x faster than the default 6 on photo thumbnails, files ~10% larger.
    Image.fromarray(out).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), [tw, th]


def write_tensorboard_projector(
    log_dir: str | os.PathLike[str], projection: RunResult, *, max_text_length: int = 200
) -> Path:
    """Write one epoch of one set for TensorBoard's Projector tab; returns the epoch folder.

    Args:
        log_dir: the ``TensorBoardLogger``'s ``log_dir`` (the run folder TensorBoard lists).
        projection: the epoch to write; its embeddings (not the layouts) are the tensor, the
            layouts are extra metadata columns (``pca_x``, ...). The first image column
            (uint8 ``(N, H, W, C)``, C in 1, 3, 4), if any, becomes the sprite (needs Pillow).
        max_text_length: longest metadata cell, in characters, after escaping.

    Returns:
        ``<log_dir>/embproj/<NAME>/val_XXXX_epoch_YYYY``. ``<log_dir>/projector_config.pbtxt`` then
        lists every epoch of every set written so far, plus entries written by others.
    """
    pb = _projector_pb2()
    from google.protobuf import text_format

    if not isinstance(max_text_length, int) or max_text_length < 1:
        raise ValueError(
            f"write_tensorboard_projector: max_text_length must be an int >= 1; "
            f"got {max_text_length!r}"
        )
    sample = projection.sample
    _check_name(sample.name)
    emb = np.asarray(sample.embeddings)
    if emb.ndim != 2 or emb.shape[0] != len(sample) or emb.shape[0] == 0 or emb.shape[1] == 0:
        # TensorBoard's plugin fails for the whole run on an empty tensor file.
        raise ValueError(
            f"write_tensorboard_projector: embeddings of set {sample.name!r} must be a "
            f"non-empty (N, D) array with N = {len(sample)} rows; got shape {emb.shape}"
        )
    log_dir = Path(log_dir)
    folder = log_dir / SUBDIR / sample.name / RUN_DIR.format(
        val_index=projection.val_index, epoch=projection.epoch
    )
    folder.mkdir(parents=True, exist_ok=True)

    entry = pb.EmbeddingInfo(
        tensor_name=f"{sample.name}/{folder.name}",
        tensor_path="tensors.tsv",
        metadata_path="metadata.tsv",
    )
    entry.tensor_shape.extend(emb.shape)
    atomic_write(folder / "tensors.tsv", tensors_tsv(emb).encode())
    atomic_write(folder / "metadata.tsv", metadata_tsv(projection, max_text_length).encode())
    # Only a real picture makes a sprite: uint8 (N, H, W, C) with C in 1, 3, 4. The collector
    # turns nothing else into an image column (token features are refused, not pictured).
    images = [c for c in sample.image_columns() if np.shape(sample.metadata[c])[-1] in (1, 3, 4)]
    if images:
        dim = _write_sprite(folder, np.asarray(sample.metadata[images[0]]), images[0])
        entry.sprite.image_path = "sprite.png"
        entry.sprite.single_image_dim.extend(dim)
    else:  # files left from an earlier run of this epoch
        (folder / "sprite.png").unlink(missing_ok=True)
        (folder / SPRITE_DIGEST).unlink(missing_ok=True)
    atomic_write(folder / ENTRY_FILE, text_format.MessageToString(entry).encode())
    write_projector_config(log_dir)
    return folder


def _write_sprite(folder: Path, images: np.ndarray, column: str) -> list[int]:
    """Write ``sprite.png``; returns ``[w, h]`` of one thumbnail.

    The tracked samples, hence their images, are usually the same every epoch: a sprite equal
    to another epoch's is hard-linked to it instead of encoded again (seconds and megabytes per
    epoch with photos). ``sprite.digest`` records what each sprite was made of.
    """
    images = np.ascontiguousarray(images)
    digest = hashlib.blake2b(images.data, digest_size=16)
    digest.update(repr((images.shape, MAX_SPRITE_PX)).encode())
    key = digest.hexdigest()
    for other in sorted(folder.parent.glob(f"val_*/{SPRITE_DIGEST}"), reverse=True):
        line = other.read_text(encoding="utf-8").split()
        source = other.parent / "sprite.png"
        if other.parent == folder or len(line) != 3 or line[0] != key or not source.is_file():
            continue
        tmp = folder / f".sprite.png.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, folder / "sprite.png")
        except OSError:  # no hard links on this file system: encode it again
            tmp.unlink(missing_ok=True)
            break
        atomic_write(folder / SPRITE_DIGEST, " ".join(line).encode())
        return [int(line[1]), int(line[2])]
    png, dim = sprite_png(images, column)
    atomic_write(folder / "sprite.png", png)
    atomic_write(folder / SPRITE_DIGEST, f"{key} {dim[0]} {dim[1]}".encode())
    return dim


def write_projector_config(log_dir: str | os.PathLike[str]) -> Path:
    """Rebuild ``<log_dir>/projector_config.pbtxt`` from every epoch folder under ``embproj/``.

    Entries of the existing file that are not ours (``add_embedding``'s, say) are kept first.
    """
    pb = _projector_pb2()
    from google.protobuf import text_format

    log_dir = Path(log_dir)
    path = log_dir / CONFIG_FILE
    with _CONFIG_LOCK:
        config = pb.ProjectorConfig()
        if path.exists():
            try:
                text_format.Parse(path.read_text(encoding="utf-8"), config)
            except (text_format.ParseError, UnicodeDecodeError) as err:
                backup = path.with_name(CONFIG_FILE + ".invalid")
                os.replace(path, backup)
                warnings.warn(
                    f"write_tensorboard_projector: {str(path)!r} could not be parsed ({err}); "
                    f"moved to {backup.name!r} and rebuilt",
                    stacklevel=2,
                )
                config = pb.ProjectorConfig()
        foreign = [e for e in config.embeddings if not _is_ours(e.tensor_path)]
        del config.embeddings[:]
        config.embeddings.extend(foreign)
        config.embeddings.extend(_scan_entries(log_dir, pb, text_format))
        atomic_write(path, text_format.MessageToString(config).encode())
    return path


def _scan_entries(log_dir: Path, pb: Any, text_format: Any) -> list[Any]:
    """Our entries, from ``embproj/*/val_*/embedding.pbtxt``, sorted by set and run."""
    found: list[tuple[str, int, Path]] = []
    for entry_file in (log_dir / SUBDIR).glob(f"*/val_*/{ENTRY_FILE}"):
        match = _RUN_RE.fullmatch(entry_file.parent.name)
        if match:
            found.append((entry_file.parent.parent.name, int(match.group(1)), entry_file))
    entries = []
    for name, _, entry_file in sorted(found):
        entry = pb.EmbeddingInfo()
        try:
            text_format.Parse(entry_file.read_text(encoding="utf-8"), entry)
        except (text_format.ParseError, UnicodeDecodeError):
            warnings.warn(f"write_tensorboard_projector: skipping unreadable {entry_file}",
                          stacklevel=3)
            continue
        # Paths are rebuilt from our own folder names: only the file names come from the entry.
        prefix = f"{SUBDIR}/{name}/{entry_file.parent.name}/"
        entry.tensor_path = prefix + Path(entry.tensor_path).name
        if entry.metadata_path:
            entry.metadata_path = prefix + Path(entry.metadata_path).name
        if entry.sprite.image_path:
            entry.sprite.image_path = prefix + Path(entry.sprite.image_path).name
        entries.append(entry)
    return entries


def _is_ours(tensor_path: str) -> bool:
    return tensor_path.replace("\\", "/").lstrip("./").startswith(f"{SUBDIR}/")


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            "write_tensorboard_projector: the embedding set name must be a plain folder name "
            f"(not empty, '.' or '..', no '/', '\\\\' or NUL); got {name!r}"
        )


def _projector_pb2() -> Any:
    try:
        from tensorboard.plugins.projector import projector_config_pb2
    except ImportError as err:
        raise ImportError(
            "write_tensorboard_projector needs the `tensorboard` package for TensorBoard's "
            "ProjectorConfig; install it with: pip install 'lightning-embproj[tensorboard]'"
        ) from err
    return projector_config_pb2
