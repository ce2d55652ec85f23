"""Forward hooks that capture named submodules' outputs during validation batches only.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> cap = LayerCapture(model, ["0"])
    >>> cap.active = True
    >>> _ = model(torch.ones(4, 3))
    >>> cap.outputs["0"].shape
    torch.Size([4, 2])
    >>> cap.remove()
"""

from __future__ import annotations

import difflib
from typing import Any

from lightning_embproj.collect.extract import layer_output


def resolve_layers(model: Any, names: list[str]) -> dict[str, Any]:
    """Map layer names to submodules; unknown names raise listing close matches."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [m for m in modules if m], n=5, cutoff=0.5)
            hint = f"; did you mean {close}?" if close else ""
            some = [m for m in modules if m and "." not in m][:10]
            raise ValueError(
                f"layers: {type(model).__name__} has no submodule {name!r}{hint} "
                f"(top-level submodules: {some})"
            )
        found[name] = modules[name]
    return found


class LayerCapture:
    """Keep the last output of each named layer while ``active`` is set; ``names`` may map a
    layer to the key (or index) of the tensor in its output (see :func:`layer_output`)."""

    def __init__(self, model: Any, names: list[str] | dict[str, Any]) -> None:
        self.active = False
        self.outputs: dict[str, Any] = {}
        keys = names if isinstance(names, dict) else dict.fromkeys(names)
        self._handles = [
            module.register_forward_hook(self._hook(name, keys[name]))
            for name, module in resolve_layers(model, list(keys)).items()
        ]

    def _hook(self, name: str, key: Any) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if self.active:
                # A layer called twice in one step keeps its last call.
                self.outputs[name] = layer_output(output, name, key).detach()

        return hook

    def take(self, sets: dict[str, str], batch_idx: int) -> dict[str, Any]:
        """Stop capturing; the outputs of this batch by set name (``sets``: set -> layer).
        A layer that did not run fails: only layers called in ``validation_step`` count."""
        self.active = False
        missing = [layer for layer in sets.values() if layer not in self.outputs]
        if missing:
            raise RuntimeError(
                f"layers: {missing} did not run during validation batch {batch_idx}; "
                f"only layers called in validation_step can be captured"
            )
        return {name: self.outputs[layer] for name, layer in sets.items()}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}
