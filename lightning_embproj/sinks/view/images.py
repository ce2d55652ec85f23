"""Thumbnails for the view: ``<set folder>/images.json``, one small PNG per tracked point.

The local CSV files keep no images, so the view's hover and side-panel thumbnails come from this
file: ``{"version": 1, "column": "<image column>", "images": {"<point key>": "data:image/png;
base64,..."}}`` where the point key is ``sample_id`` as text (``"<dataloader_idx>:<sample_id>"``
with several validation dataloaders). A point keeps the first thumbnail it got; at most
``MAX_IMAGES`` points and ``MAX_SIDE`` pixels a side, so the file stays small.

Example:
    >>> write_thumbnails("lightning_logs/version_0", projection)        # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/images.json')
"""

from __future__ import annotations

import base64
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embproj.sinks.view.encode import text

IMAGES_FILE = "images.json"
MAX_IMAGES = 5000
MAX_SIDE = 48


def thumbnail_uri(image: np.ndarray, max_side: int = MAX_SIDE) -> str:
    """A uint8 ``(H, W, C)`` image as a PNG data URI at most ``max_side`` pixels a side.

    >>> thumbnail_uri(np.zeros((8, 8, 1), np.uint8)).startswith("data:image/png;base64,")
    True
    """
    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    # Small images are scaled up (nearest) so an 8x8 digit is visible; large ones down.
    scale = max_side / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_images(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Point key -> data URI from ``<folder>/images.json``; ``{}`` when absent or unreadable."""
    path = Path(folder) / IMAGES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
    except (ValueError, KeyError, TypeError, OSError):
        warnings.warn(f"lightning-embproj: ignoring unreadable {path}", stacklevel=2)
        return {}
    return {str(k): v for k, v in images.items() if isinstance(v, str)} if isinstance(
        images, dict) else {}


def add_thumbnails(images: dict[str, str], sample: Any) -> str | None:
    """Add to ``images`` thumbnails of the sample's first image column for points not yet in it
    (at most ``MAX_IMAGES`` in all); returns that column's name when any was added, else None.
    """
    columns = sample.image_columns()
    if not columns:
        return None
    ids = [text(v, 200) for v in sample.sample_ids]
    if sample.dataloader_idx is not None:
        ids = [f"{int(d)}:{k}" for d, k in zip(sample.dataloader_idx, ids, strict=True)]
    pixels = sample.metadata[columns[0]]
    added = 0
    for i, key in enumerate(ids):
        if len(images) >= MAX_IMAGES:
            break
        if key not in images:
            images[key] = thumbnail_uri(pixels[i])
            added += 1
    return columns[0] if added else None


def images_json(images: dict[str, str], column: str) -> str:
    """The text of ``images.json``."""
    return json.dumps({"version": 1, "column": column, "images": images})


def write_thumbnails(folder: str | os.PathLike[str], projection: Any) -> Path | None:
    """Add thumbnails of the projection's first image column for points not yet in the file.

    Returns the file, or ``None`` when the projection has no image column or nothing is new.
    """
    from lightning_embproj.sinks.local import atomic_write_text

    images = read_images(folder)
    column = add_thumbnails(images, projection.sample)
    if column is None:
        return None
    path = Path(folder) / IMAGES_FILE
    atomic_write_text(path, images_json(images, column))
    return path
