"""Pull embeddings, ids and per-point metadata out of a validation batch.

Keys are looked up first in the dict returned by ``validation_step``, then in the batch when it
is a dict (or any mapping). An ``int`` key indexes a tuple/list batch: ``label_key=1`` takes ``y``
from ``(x, y)``.

Embeddings of more than two dims are then pooled to ``(B, D)`` by
:mod:`~lightning_embproj.collect.pooling`. bfloat16 / float16 tensors (``precision="bf16-mixed"``)
become float32 on the host: numpy has no bfloat16.

Example:
    >>> import torch
    >>> outputs = {"embeddings": torch.ones(4, 2, 3)}
    >>> as_embeddings(lookup("embeddings", outputs, None, "embedding_key"), "embeddings").shape
    torch.Size([4, 2, 3])
    >>> lookup(1, None, (torch.zeros(2), torch.tensor([3, 4])), "label_key").tolist()
    [3, 4]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Key = str | int
ImageLayout = Literal["HW", "CHW", "HWC"]
IMAGE_CHANNELS = (1, 3, 4)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"keys {sorted(map(str, obj))}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return f"a {type(obj).__name__}"


def lookup(key: Key, outputs: Any, batch: Any, option: str) -> Any:
    """Find ``key`` in the step outputs, then in the batch; clear error naming what exists."""
    if isinstance(key, int) and not isinstance(key, bool):
        if isinstance(batch, (tuple, list)) and -len(batch) <= key < len(batch):
            return batch[key]
        raise KeyError(
            f"{option}={key} indexes a tuple/list batch, but the batch is {_describe(batch)}"
        )
    if isinstance(outputs, Mapping) and key in outputs:
        return outputs[key]
    if isinstance(batch, Mapping) and key in batch:
        return batch[key]
    found = []
    if isinstance(outputs, Mapping):
        found.append(f"validation_step outputs have {_describe(outputs)}")
    else:
        found.append(f"validation_step returned {_describe(outputs)}")
    found.append(f"the batch is {_describe(batch)}")
    raise KeyError(
        f"{option}={key!r} was not found: {'; '.join(found)}. Return it from validation_step "
        f"in a dict, put it in a dict batch, or use an int to index a tuple batch."
    )


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (duck-typed: torch is not imported here).

    Example:
        >>> is_tensor(np.zeros(2)), is_array(np.zeros(2))
        (False, True)
    """
    return hasattr(value, "detach") and hasattr(value, "is_floating_point")


def is_array(value: Any) -> bool:
    """Whether ``value`` is a numpy array or a torch tensor."""
    return isinstance(value, np.ndarray) or is_tensor(value)


def is_half(value: Any) -> bool:
    """Whether ``value`` is a bfloat16 / float16 tensor (numpy has no bfloat16)."""
    return is_tensor(value) and str(value.dtype) in ("torch.bfloat16", "torch.float16")


def host_numpy(value: Any) -> np.ndarray:
    """A tensor or array as a host numpy array; bfloat16 / float16 tensors become float32.

    Example:
        >>> import torch
        >>> host_numpy(torch.tensor([1.5], dtype=torch.bfloat16)).dtype.name
        'float32'
    """
    if not is_tensor(value):
        return np.asarray(value)
    value = value.detach()
    if is_half(value):
        value = value.float()
    return value.cpu().numpy()


def as_embeddings(value: Any, name: str) -> Any:
    """Check a ``(B, ...)`` floating tensor or array and detach it (:func:`pool` reshapes it)."""
    if not is_array(value):
        raise TypeError(
            f"embeddings {name!r}: expected a torch.Tensor or numpy array of shape (B, D), "
            f"got {type(value).__name__}"
        )
    if value.ndim < 2:
        raise ValueError(
            f"embeddings {name!r}: expected shape (B, D) or (B, ...), got shape "
            f"{tuple(value.shape)}; reshape a 1-D vector with .unsqueeze(1) if it is one value "
            f"per sample"
        )
    is_float = value.is_floating_point() if is_tensor(value) else value.dtype.kind == "f"
    if not is_float:
        raise TypeError(
            f"embeddings {name!r}: expected floating point values, got dtype {value.dtype} "
            f"(token ids or class indices are not embeddings; cast with .float() if you mean it)"
        )
    return value.detach() if is_tensor(value) else value


def layer_output(output: Any, layer: str, key: Key | None = None) -> Any:
    """The tensor of a layer's forward output. Without ``key``: the output itself, or the first
    element of a tuple/list. With ``key``: ``output[key]`` of a dict or ``ModelOutput`` (a str),
    ``output[key]`` of a tuple or ``ModelOutput`` (an int), or the attribute of a dataclass.

    Example:
        >>> import torch
        >>> layer_output({"last_hidden_state": torch.ones(2, 3)}, "enc", "last_hidden_state").shape
        torch.Size([2, 3])
    """
    if key is not None:
        return _select(output, layer, key)
    if isinstance(output, (tuple, list)) and output and is_array(output[0]):
        return output[0]
    if is_array(output):
        return output
    if isinstance(output, Mapping):
        first = next(iter(output), "last_hidden_state")
        raise TypeError(
            f"layers: {layer!r} returns a dict with {_describe(output)}; name the tensor to "
            f"project: layers={{{layer!r}: {first!r}}}"
        )
    raise TypeError(
        f"layers: {layer!r} returns {_describe(output)}; expected a tensor or a tuple whose "
        f"first element is a tensor, or name what to take: layers={{{layer!r}: <key or index>}}"
    )


def _select(output: Any, layer: str, key: Key) -> Any:
    """``output[key]`` (dict, ModelOutput, tuple) or ``output.key`` (dataclass), checked."""
    found: Any = None
    if isinstance(key, int) and not isinstance(output, Mapping):
        if isinstance(output, (tuple, list)) and -len(output) <= key < len(output):
            found = output[key]
    elif isinstance(key, int) and hasattr(output, "to_tuple"):  # ModelOutput: index its values
        values = output.to_tuple()
        found = values[key] if -len(values) <= key < len(values) else None
    elif isinstance(output, Mapping):
        found = output.get(key)
    elif isinstance(key, str) and dataclasses.is_dataclass(output):
        found = getattr(output, key, None)
    if not is_array(found):
        what = (_describe(output) if not dataclasses.is_dataclass(output) or
                isinstance(output, Mapping) else
                f"fields {[f.name for f in dataclasses.fields(output)]}")
        raise TypeError(
            f"layers: {layer!r} output has no tensor at {key!r}: it returns {what}"
            + ("" if found is None else f" and {key!r} holds {_describe(found)}")
        )
    return found


def batch_len(value: Any) -> int:
    """Number of rows of a metadata value (tensor, array or sequence)."""
    if is_array(value):
        return int(value.shape[0]) if value.ndim else 0
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return len(value)
    return -1


def check_length(value: Any, key: Key, option: str, n: int) -> None:
    """Raise when a metadata value does not have one entry per embedding row."""
    got = batch_len(value)
    if got != n:
        what = f"{got} rows" if got >= 0 else f"a single {type(value).__name__}"
        raise ValueError(
            f"{option}={key!r}: expected one value per embedding row ({n}), got {what}"
        )


def image_layout(value: Any, declared: bool) -> ImageLayout | None:
    """How a metadata value holds images, or None when it is not an image column.

    Undeclared, only ``(B, C, H, W)`` with C in 1, 3, 4 is an image. A column in ``image_keys``
    may also be ``(B, H, W)`` grayscale or channels-last ``(B, H, W, C)`` (channels-first wins
    when both fit, as in ``(B, 3, H, 3)``).

    Example:
        >>> image_layout(np.zeros((2, 3, 8, 8)), declared=False)
        'CHW'
        >>> image_layout(np.zeros((2, 8, 8)), declared=False) is None
        True
        >>> image_layout(np.zeros((2, 8, 8, 3)), declared=True)
        'HWC'
    """
    if not is_array(value):
        return None
    shape = tuple(value.shape)
    if len(shape) == 4 and shape[1] in IMAGE_CHANNELS:
        return "CHW"
    if declared and len(shape) == 4 and shape[3] in IMAGE_CHANNELS:
        return "HWC"
    if declared and len(shape) == 3:
        return "HW"
    return None


def check_metadata(value: Any, key: Key, column: str, option: str, declared: bool) -> Any:
    """The image layout of a metadata value (None for cells); raise when it is neither.

    ``(B,)`` values and sequences become one cell per row, ``(B, K)`` one list cell per row;
    images see :func:`image_layout`. Anything else of 3 or more dims is refused, so that token
    features are never shown as pictures.
    """
    layout = image_layout(value, declared)
    if layout is not None or not is_array(value):
        if declared and layout is None:
            raise TypeError(
                f"image_keys: {column!r} ({option}={key!r}) must be a tensor or array of images "
                f"(B, H, W), (B, C, H, W) or (B, H, W, C) with C in {IMAGE_CHANNELS}, got "
                f"{_describe(value)}"
            )
        return layout
    shape = tuple(value.shape)
    if declared:
        raise ValueError(
            f"image_keys: {column!r} ({option}={key!r}) must hold images (B, H, W), "
            f"(B, C, H, W) or (B, H, W, C) with C in {IMAGE_CHANNELS}, got shape {shape}"
        )
    if len(shape) >= 3:
        raise ValueError(
            f"{option}={key!r}: got shape {shape}, which is neither one value per row (B,), "
            f"a short vector per row (B, K), nor an image (B, C, H, W) with C in "
            f"{IMAGE_CHANNELS}. If it is an image, add {column!r} to image_keys "
            f"((B, H, W) and (B, H, W, C) are accepted there); otherwise reduce it to one "
            f"value per row (e.g. .mean(dim=1))"
        )
    return None


def take(value: Any, idx: np.ndarray, max_text_length: int) -> np.ndarray:
    """Copy rows ``idx`` of a column to the host as numpy: only the selected rows move.

    Half tensors arrive as float32; texts (lists, numpy strings) as an object array of ``str``
    cut to ``max_text_length`` characters.
    """
    if is_tensor(value):
        import torch

        value = value.detach()
        if value.device.type == "cpu" and not is_half(value):
            # A host tensor is viewed as numpy without a copy; numpy's row gather skips
            # torch's per-call dispatch (measured 0.55 ms -> a few us per batch).
            return value.numpy()[idx]
        value = value.index_select(0, torch.as_tensor(idx, device=value.device))
        return host_numpy(value)
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OUS":
        return value[idx]
    out = np.empty(idx.size, dtype=object)
    out[:] = [_cell(value[i], max_text_length) for i in idx.tolist()]
    return out


def _cell(value: Any, max_text_length: int) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a numpy str_ becomes str here, a 0-d tensor a number
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) > max_text_length:
        return value[: max_text_length - 1] + "…"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)[:max_text_length]


def to_uint8_images(rows: np.ndarray, layout: ImageLayout = "CHW") -> np.ndarray:
    """Images in ``layout`` -> ``(N, H, W, C)`` uint8: uint8 kept, numbers min-max scaled.

    Example:
        >>> to_uint8_images(np.array([[[0.0, 2.0]]]), "HW").ravel().tolist()
        [0, 255]
    """
    if layout == "HW":
        rows = rows[..., None]
    elif layout == "CHW":
        rows = np.moveaxis(rows, 1, -1)
    if rows.dtype == np.uint8:
        return np.ascontiguousarray(rows)
    rows = rows.astype(np.float32)
    flat = rows.reshape(rows.shape[0], -1)
    lo = flat.min(axis=1)[:, None, None, None]
    span = np.ptp(flat, axis=1)[:, None, None, None]
    scaled = np.where(span > 0, (rows - lo) / np.where(span > 0, span, 1), 0.0)
    return (scaled * 255).round().astype(np.uint8)
