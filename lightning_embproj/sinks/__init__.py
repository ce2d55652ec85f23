"""Where runs go: local files (always), the HTML view, W&B, TensorBoard.

:func:`build` picks the sinks for a trainer: W&B when a ``WandbLogger`` is attached,
TensorBoard's projector files when a ``TensorBoardLogger`` is, the HTML view when plotly is
installed. Each sink is a ``write(result)`` callable that gets the same frozen
:class:`~lightning_embproj.results.RunResult` and reads no other sink's files, so their order
does not matter and one failing leaves the others whole. Some also have a ``finish()`` run once
at the end of ``fit`` / ``validate`` (W&B logs the view sink's last page as ``wandb.Html``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lightning_embproj.results import RunResult
from lightning_embproj.runtime.trace import stage
from lightning_embproj.runtime.warn import WarnOnce, guarded

Writer = Callable[[RunResult], Any]
Warn = Callable[[str, str], None]


@dataclass
class Sinks:
    """Named ``write(result)`` callables, and ``finish()`` callables for the run's end;
    ``wandb_run``: the id of the W&B run written to ("" without W&B)."""

    writers: list[tuple[str, Writer]] = field(default_factory=list)
    finishers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    wandb_run: str = ""
    remember: Writer | None = None  # W&B: add a run to the history without logging it

    def write(self, result: RunResult, warn: Warn, log_wandb: bool = True) -> str:
        """Give ``result`` to every sink (each failure one warning); returns the W&B run id
        when W&B has the run ("" otherwise). ``log_wandb=False``: the W&B run already got it
        (logged before a kill), so it only joins the W&B history."""
        logged = ""
        for name, write in self.writers:
            if name == "W&B" and not log_wandb:
                if self.remember is not None:
                    guarded(warn, "sink:W&B:history", "the W&B history",
                            partial(self.remember, result))
                logged = self.wandb_run
                continue
            with stage(f"sink: {name}"):
                ok = guarded(warn, f"sink:{name}", f"writing to {name}",
                             partial(_written, write, result))
            if name == "W&B" and ok:
                logged = self.wandb_run
        return logged

    def finish(self, warn: Warn) -> None:
        for name, finish in self.finishers:
            with stage(f"finish: {name}"):
                guarded(warn, f"sink:{name}:finish", f"finishing {name}", finish)


def _written(write: Writer, result: RunResult) -> bool:
    write(result)
    return True


def build(
    trainer: Any, root: str, warn: WarnOnce, max_text_length: int = 1000,
    settings: Any = None, wandb_history: Callable[[str], Any] | None = None,
    view_history: Any = None, vectors: int = 0,
    view_deferred: Callable[[str], bool] | None = None,
) -> Sinks:
    """The sinks for this trainer, local files first.

    ``settings`` (a :class:`~lightning_embproj.reduce.project.ReduceSettings`) tells W&B the
    configured reducers and ``n_components``, so its tables keep the same columns when a
    reducer fails in one run. ``wandb_history(run_id)`` gives the W&B sink the history it
    carries on (see :class:`~lightning_embproj.sinks.wandb_history.WandbHistory`);
    ``view_history`` the view's (a :class:`~lightning_embproj.sinks.view.history.ViewHistory`
    of ``root``; a new one when None). ``vectors``: the most dims of the W&B table's vector
    column (0: none). ``view_deferred(name)``: whether a later run of the set already waits
    (its page is then rendered by that run: see ``ViewSink``).
    """
    from lightning_embproj.sinks.local import write_projection

    sinks = Sinks([("local files", partial(write_projection, root))])
    view = None
    if importlib.util.find_spec("plotly") is not None:
        view = _made(warn, "html view", lambda: _view(root, view_history, view_deferred))
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("html view", lambda: view),
        ("W&B", lambda: _wandb(trainer, warn, view.page if view is not None else None,
                               settings, wandb_history, vectors)),
        ("TensorBoard", lambda: _tensorboard(trainer, max_text_length)),
    ]
    for name, make in makers:
        sink = _made(warn, name, make)
        if sink is None:
            continue
        sinks.writers.append((name, getattr(sink, "write", sink)))
        if name == "W&B":
            sinks.wandb_run, sinks.remember = sink.run_id, sink.remember
        if hasattr(sink, "finish"):
            sinks.finishers.append((name, sink.finish))
    return sinks


def _made(warn: WarnOnce, name: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as err:  # noqa: BLE001 - a broken sink must not stop the others
        warn(f"sink:{name}:setup", f"{name} output disabled: {type(err).__name__}: {err}")
        return None


def _view(root: str, history: Any, deferred: Callable[[str], bool] | None = None) -> Any:
    from lightning_embproj.sinks.view.history import ViewHistory
    from lightning_embproj.sinks.view.sink import ViewSink

    return ViewSink(history if history is not None else ViewHistory(root), deferred)


def _wandb(
    trainer: Any, warn: WarnOnce, view: Callable[[str], str | None] | None, settings: Any = None,
    wandb_history: Callable[[str], Any] | None = None, vectors: int = 0,
) -> Any:
    from lightning_embproj.runtime.compat import find_logger

    logger = find_logger(trainer, "WandbLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.wandb_sink import WandbSink

    run = logger.experiment
    history = wandb_history(str(getattr(run, "id", ""))) if wandb_history is not None else None
    return WandbSink(
        run, warn, view=view,
        reducers=list(getattr(settings, "reducers", ())),
        n_components=int(getattr(settings, "n_components", 2)), history=history,
        vectors=vectors,
    )


def _tensorboard(trainer: Any, max_text_length: int) -> Writer | None:
    from lightning_embproj.runtime.compat import find_logger

    logger = find_logger(trainer, "TensorBoardLogger")
    if logger is None:
        return None
    from lightning_embproj.sinks.tensorboard import write_tensorboard_projector

    return partial(write_tensorboard_projector, logger.log_dir, max_text_length=max_text_length)
