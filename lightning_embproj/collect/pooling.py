"""Pooling: ``(B, T, D)`` sequences and ``(B, C, H, W)`` feature maps to ``(B, D)``, on their
device, with an optional token mask.

A sequence is averaged over T and a feature map over its spatial dims by default
(``pooling="auto"``); half tensors pool in float32. A float or integer mask must hold 0 / 1 only:
checked at once, or (on an accelerator, where reading it back would wait for the device) left for
:func:`check_masks` at the end of the run.

Example:
    >>> import torch
    >>> pool(torch.ones(4, 2, 3), "embeddings", "auto").shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embproj.collect.extract import Key, is_array, is_half, is_tensor


def pool(value: Any, name: str, pooling: str, mask: Any = None) -> Any:
    """Reduce ``(B, ...)`` embeddings to ``(B, D)`` on their device, as ``pooling`` says.

    ``(B, D)`` is returned as is. ``"flatten"`` reshapes to ``(B, prod(...))``. ``"auto"`` and
    ``"mean"`` average a sequence ``(B, T, D)`` over T and a feature map ``(B, C, H, W, ...)``
    over every dim after C (global average pooling); ``"max"`` takes the maximum instead;
    ``"first"`` / ``"last"`` take one token of a sequence (the CLS token, the last token) and
    refuse feature maps. ``mask``: a ``(B, T)`` bool tensor (True = real token) that leaves
    padding out of ``"auto"``, ``"mean"``, ``"max"`` and ``"last"`` of a sequence; a row without
    any real token becomes NaN (then left out as non-finite). Half tensors pool in float32.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1.0], [2.0], [9.0]]])
        >>> pool(x, "z", "mean").tolist(), pool(x, "z", "last").tolist()
        ([[4.0]], [[9.0]])
        >>> pool(x, "z", "mean", mask=torch.tensor([[True, True, False]])).tolist()
        [[1.5]]
    """
    batch = int(value.shape[0])
    if value.ndim == 2:
        return value
    if pooling == "flatten":
        return value.reshape(batch, -1)
    mode = "mean" if pooling == "auto" else pooling
    if value.ndim >= 4 and mode in ("first", "last"):
        raise ValueError(
            f"embeddings {name!r}: pooling={pooling!r} takes one token of a (B, T, D) sequence, "
            f"but this output has shape {tuple(value.shape)} (a (B, C, H, W) feature map has no "
            f"first or last token); use pooling='auto' or 'mean' (global average pooling), "
            f"'max', or 'flatten'"
        )
    import torch

    x = value if is_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
    if is_half(x):
        x = x.float()
    if value.ndim >= 4:
        dims = tuple(range(2, x.ndim))
        return x.mean(dim=dims) if mode == "mean" else x.amax(dim=dims)
    if mode == "first":
        return x[:, 0]
    if mask is None:
        if mode == "last":
            return x[:, -1]
        return x.mean(dim=1) if mode == "mean" else x.amax(dim=1)
    real = mask[:, :, None]
    if mode == "mean":
        count = mask.sum(dim=1, keepdim=True).to(x.dtype)
        return torch.where(real, x, 0).sum(dim=1) / count  # 0 / 0 = NaN: no real token
    if mode == "max":
        return torch.where(real, x, float("-inf")).amax(dim=1).nan_to_num(neginf=float("nan"))
    positions = torch.arange(x.shape[1], device=x.device)
    last = torch.where(mask, positions, -1).amax(dim=1)
    out = x[torch.arange(batch, device=x.device), last.clamp(min=0)]
    return torch.where((last >= 0)[:, None], out, float("nan"))


def as_mask(
    value: Any, key: Key, name: str, shape: tuple[int, ...], device: Any,
    later: list[Any] | None = None,
) -> Any:
    """A ``(B, T)`` bool tensor on ``device`` from a bool / 0-1 mask (1 = real token).

    A float or integer mask must hold only 0 and 1 (token ids passed by mistake must not pass as
    "every token is real"). Checking that reads a value back from the mask's device; with
    ``later`` (a list) it is not read: ``((count of other values, min, max) as a tensor on the
    mask's device, is_integer)`` is appended instead, for :func:`check_masks` at the end.

    Example:
        >>> import torch
        >>> as_mask(torch.tensor([[1, 0]]), "m", "z", (1, 2, 4), "cpu").tolist()
        [[True, False]]
        >>> as_mask(torch.tensor([[101, 2023]]), "m", "z", (1, 2, 4), "cpu")
        Traceback (most recent call last):
        ...
        ValueError: mask_key='m': expected bools or 0/1 ... got integer values from 101 to 2023; ...
    """
    import torch

    if not is_array(value):
        raise TypeError(
            f"mask_key={key!r}: expected a (B, T) tensor or array of bools or 0/1 (1 = real "
            f"token), got {type(value).__name__}"
        )
    if tuple(value.shape) != tuple(shape[:2]):
        raise ValueError(
            f"mask_key={key!r}: expected shape (B, T) = {tuple(shape[:2])} to match embeddings "
            f"{name!r} of shape {tuple(shape)}, got shape {tuple(value.shape)}"
        )
    mask = value.detach() if is_tensor(value) else torch.from_numpy(np.asarray(value))
    if mask.dtype == torch.bool:
        return mask.to(device)
    if mask.is_complex():
        raise TypeError(f"mask_key={key!r}: expected bools or 0/1 values, got dtype {mask.dtype}")
    integer = not mask.is_floating_point()
    other = ~((mask == 0) | (mask == 1))
    if later is not None:
        if mask.numel():
            stats = torch.stack([other.sum().float(), mask.min().float(), mask.max().float()])
            later.append((stats, integer))
    elif bool(other.any()):
        _bad_mask(key, float(mask.min()), float(mask.max()), integer)
    return (mask != 0).to(device)


def check_masks(key: Key, later: list[Any]) -> None:
    """Raise the error :func:`as_mask` would have raised for any of the masks it left for later
    (one read from the device for all of them).

    Example:
        >>> import torch
        >>> check_masks("m", [(torch.tensor([0.0, 0.0, 1.0]), True)])  # only 0 / 1: no error
    """
    if not later:
        return
    import torch

    stats = torch.stack([s for s, _ in later]).cpu()
    if float(stats[:, 0].sum()) > 0:
        integer = all(i for _, i in later)
        _bad_mask(key, float(stats[:, 1].min()), float(stats[:, 2].max()), integer)


def _bad_mask(key: Key, low: float, high: float, integer: bool = False) -> None:
    if integer:
        raise ValueError(
            f"mask_key={key!r}: expected bools or 0/1 values (1 = real token), got integer "
            f"values from {low:.0f} to {high:.0f}; is it the token ids or lengths instead of the "
            f"attention mask? Pass the (B, T) attention mask (e.g. `input_ids != pad_id`)"
        )
    raise ValueError(
        f"mask_key={key!r}: expected bools or 0/1 values (1 = real token), got values from "
        f"{low} to {high}; an additive attention mask (0 = keep, -inf = pad) must be turned "
        f"into one, e.g. `mask == 0`"
    )
