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

from typing import TYPE_CHECKING, Any


def _callback_bases() -> tuple[type, ...]:
    bases: list[type] = []
    try:
        from lightning.pytorch import Callback as LightningCallback

        bases.append(LightningCallback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as PLCallback

        bases.append(PLCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError(
            "lightning-embproj needs PyTorch Lightning: pip install pytorch-lightning "
            "(or lightning)"
        )
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
