"""One callback class for both Lightning namespaces.

``lightning.pytorch.Callback`` and ``pytorch_lightning.Callback`` are different classes, and
LightningCLI and the Trainer check ``isinstance`` against their own. The projector derives from
whichever of the two are installed, so the same class works with either Trainer and either
LightningCLI, and with only one package installed.

Example:
    >>> [b.__module__.split(".")[0] for b in CALLBACK_BASES]   # doctest: +SKIP
    ['lightning', 'pytorch_lightning']
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import TYPE_CHECKING, Any


def _import_callback(package: str) -> tuple[type | None, ImportError | None]:
    """``package``'s Callback class, or the error that says why it could not be imported.

    Only a ModuleNotFoundError for the top package itself means "not installed" (None, None);
    any other ImportError (a broken install, e.g. Lightning < 2.4 importing ``pkg_resources``,
    which setuptools >= 82 no longer ships) is returned so the caller can report the real cause.
    """
    module = "lightning.pytorch" if package == "lightning" else package
    try:
        return importlib.import_module(module).Callback, None
    except ModuleNotFoundError as err:
        if err.name == package:
            return None, None
        return None, err
    except ImportError as err:
        return None, err


def _broken(errors: list[tuple[str, ImportError]]) -> str:
    """What failed and why, with the fix for the known cause."""
    message = "; ".join(f"{package} is installed but failed to import: "
                        f"{type(err).__name__}: {err}" for package, err in errors)
    if any(err.name == "pkg_resources" for _, err in errors):
        message += (" (Lightning < 2.4 imports pkg_resources, which setuptools >= 82 no longer "
                    "ships: upgrade it, pip install -U 'lightning>=2.4' or "
                    "'pytorch-lightning>=2.4')")
    return message


def _callback_bases() -> tuple[type, ...]:
    bases: list[type] = []
    errors: list[tuple[str, ImportError]] = []
    for package in ("lightning", "pytorch_lightning"):
        base, err = _import_callback(package)
        if base is not None:
            bases.append(base)
        elif err is not None:
            errors.append((package, err))
    if not bases and errors:
        raise ImportError(
            f"lightning-embproj could not import PyTorch Lightning: {_broken(errors)}"
        ) from errors[0][1]
    if not bases:
        raise ImportError(
            "lightning-embproj needs PyTorch Lightning: pip install pytorch-lightning "
            "(or lightning)"
        )
    if errors:
        # The other namespace works; the broken one's Trainer would not accept the projector.
        warnings.warn(_broken(errors), stacklevel=2)
    return tuple(bases)


CALLBACK_BASES = _callback_bases()

if TYPE_CHECKING:
    from lightning.pytorch import Callback as CallbackBase
else:
    CallbackBase = type("CallbackBase", CALLBACK_BASES, {"__module__": __name__})


def find_logger(trainer: Any, class_name: str) -> Any | None:
    """The trainer's first logger whose class or a base is named ``class_name`` (any namespace)."""
    for logger in getattr(trainer, "loggers", []):
        if any(cls.__name__ == class_name for cls in type(logger).__mro__):
            return logger
    return None


def run_root(trainer: Any, log_dir: str | None, is_zero: bool) -> str:
    """Root of the local files: the trainer's log dir, or with a ``WandbLogger`` first,
    ``<save_dir>/<project>/<run id>`` (where Lightning puts that run's checkpoints), so two W&B
    runs sharing a ``save_dir`` never share a folder."""
    loggers = list(getattr(trainer, "loggers", []) or [])
    first = loggers[0] if loggers else None
    if first is not None and any(c.__name__ == "WandbLogger" for c in type(first).__mro__):
        if is_zero:
            first.experiment  # noqa: B018 - creates (or attaches to) the run: its id names the folder
        version = first.version
        if version:
            return os.path.join(first.save_dir or ".", str(first.name or "lightning_logs"),
                                str(version))
    return log_dir or trainer.default_root_dir
