"""Where projections go: local files (always), W&B, TensorBoard, the HTML view.

:func:`build` picks the sinks for a trainer: W&B when a ``WandbLogger`` is attached,
TensorBoard's projector files when a ``TensorBoardLogger`` is, the HTML view when plotly is
installed. Each sink is a ``write(projection)`` callable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from lightning_embproj.compat import find_logger
from lightning_embproj.types import Projection
from lightning_embproj.warn import WarnOnce

Sink = tuple[str, Callable[[Projection], None]]
LOCAL_SINKS = frozenset({"local files", "html view"})


def build(trainer: Any, root: str, warn: WarnOnce) -> list[Sink]:
    """The sinks for this trainer, local files first (they must survive any other failure)."""
    from lightning_embproj.sinks.local import write_projection

    out: list[Sink] = [("local files", lambda p: _ignore(write_projection(root, p)))]
    makers: list[tuple[str, Callable[[], Callable[[Projection], None] | None]]] = [
        ("html view", lambda: _html_view(root)),
        ("W&B", lambda: _wandb(trainer, warn)),
        ("TensorBoard", lambda: _tensorboard(trainer)),
    ]
    for name, make in makers:
        try:
            write = make()
        except Exception as err:  # noqa: BLE001 - a broken sink must not stop the others
            warn(f"sink:{name}:setup", f"{name} output disabled: {type(err).__name__}: {err}")
            continue
        if write is not None:
            out.append((name, write))
    return out


def _html_view(root: str) -> Callable[[Projection], None] | None:
    if importlib.util.find_spec("plotly") is None:
        return None
    from lightning_embproj.sinks.html_view import write_view

    return lambda p: _ignore(write_view(root, p.name))


def _wandb(trainer: Any, warn: WarnOnce) -> Callable[[Projection], None] | None:
    logger = find_logger(trainer, "WandbLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.wandb_sink import WandbSink

    return WandbSink(logger.experiment, warn).write


def _tensorboard(trainer: Any) -> Callable[[Projection], None] | None:
    logger = find_logger(trainer, "TensorBoardLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.tensorboard import write_tensorboard_projector

    log_dir = logger.log_dir
    return lambda p: _ignore(write_tensorboard_projector(log_dir, p))


def _ignore(_: Any) -> None:
    """Sinks return paths for direct callers; the callback does not need them."""
