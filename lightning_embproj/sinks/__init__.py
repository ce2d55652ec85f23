"""Where projections go: local files (always), W&B, TensorBoard, the HTML view.

:func:`build` picks the sinks for a trainer: W&B when a ``WandbLogger`` is attached,
TensorBoard's projector files when a ``TensorBoardLogger`` is, the HTML view when plotly is
installed. Each sink is a ``write(projection)`` callable; some also have a ``finish()`` run
once at the end of ``fit``/``validate`` (W&B logs the final slider view as ``wandb.Html``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_embproj.results import Projection
from lightning_embproj.runtime.warn import WarnOnce

Writer = Callable[[Projection], None]
LOCAL_SINKS = frozenset({"local files", "html view"})


@dataclass
class Sinks:
    """Named ``write(projection)`` callables, and ``finish()`` callables for the run's end;
    ``wandb_run``: the id of the W&B run written to ("" without W&B)."""

    writers: list[tuple[str, Writer]] = field(default_factory=list)
    finishers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    wandb_run: str = ""
    remember: Writer | None = None  # W&B: add a run to the history without logging it


def build(
    trainer: Any, root: str, warn: WarnOnce, max_text_length: int = 1000,
    settings: Any = None, wandb_history: Callable[[str], Any] | None = None,
) -> Sinks:
    """The sinks for this trainer, local files first (they must survive any other failure).

    ``settings`` (a :class:`~lightning_embproj.reduce.project.ReduceSettings`) tells W&B the
    configured reducers and ``n_components``, so its tables keep the same columns when a
    reducer fails in one run. ``wandb_history(run_id)`` gives the W&B sink the history it
    carries on (see :class:`~lightning_embproj.sinks.wandb_history.WandbHistory`).
    """
    from lightning_embproj.sinks.local import write_projection

    sinks = Sinks([("local files", lambda p: _ignore(write_projection(root, p)))])
    has_view = importlib.util.find_spec("plotly") is not None
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("html view", lambda: _html_view(root) if has_view else None),
        ("W&B", lambda: _wandb(trainer, warn, root if has_view else None, settings,
                               wandb_history)),
        ("TensorBoard", lambda: _tensorboard(trainer, max_text_length)),
    ]
    for name, make in makers:
        try:
            sink = make()
        except Exception as err:  # noqa: BLE001 - a broken sink must not stop the others
            warn(f"sink:{name}:setup", f"{name} output disabled: {type(err).__name__}: {err}")
            continue
        if sink is None:
            continue
        sinks.writers.append((name, getattr(sink, "write", sink)))
        if name == "W&B":
            sinks.wandb_run, sinks.remember = sink.run_id, sink.remember
        if hasattr(sink, "finish"):
            sinks.finishers.append((name, sink.finish))
    return sinks


def _html_view(root: str) -> Writer:
    from lightning_embproj.sinks.view import write_view

    return lambda p: _ignore(write_view(root, p.name, projection=p))


def _wandb(
    trainer: Any, warn: WarnOnce, view_root: str | None, settings: Any = None,
    wandb_history: Callable[[str], Any] | None = None,
) -> Any:
    from lightning_embproj.runtime.compat import find_logger

    logger = find_logger(trainer, "WandbLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.wandb_sink import WandbSink

    run = logger.experiment
    history = wandb_history(str(getattr(run, "id", ""))) if wandb_history is not None else None
    return WandbSink(
        run, warn, view_root=view_root,
        reducers=list(getattr(settings, "reducers", ())),
        n_components=int(getattr(settings, "n_components", 2)), history=history,
    )


def _tensorboard(trainer: Any, max_text_length: int) -> Writer | None:
    from lightning_embproj.runtime.compat import find_logger

    logger = find_logger(trainer, "TensorBoardLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.tensorboard import write_tensorboard_projector

    log_dir = logger.log_dir
    return lambda p: _ignore(
        write_tensorboard_projector(log_dir, p, max_text_length=max_text_length)
    )


def _ignore(_: Any) -> None:
    """Sinks return paths for direct callers; the callback does not need them."""
