"""The ``monitor`` metrics of a run, logged through Lightning so callbacks can steer by them.

Rank zero computes them on the training thread (:func:`lightning_embproj.metrics.monitor`, in
torch on the module's device); every rank logs the same values (rank zero's, broadcast), so
``ModelCheckpoint`` / ``EarlyStopping`` agree across ranks. The value logged last per key is
kept by the chain owner (``ChainState.monitored``): a run that is not projected, has no rows, or
fails logs it again.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.results import EpochSample
    >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> s = EpochSample("z", np.arange(40), list(range(40)), X)
    >>> values = compute_monitored(s, ["rankme"], device=None)
    >>> sorted(values)
    ['rankme']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from lightning_embproj.collect.ranks import strategy_world
from lightning_embproj.metrics.monitor import monitor_metrics
from lightning_embproj.results import EpochSample
from lightning_embproj.runtime.warn import WarnOnce, guarded
from lightning_embproj.sinks.wandb_sink import metric_key


def compute_monitored(sample: EpochSample, metrics: Sequence[str], device: Any) -> dict[str, float]:
    """``metrics`` of ``sample`` in torch on ``device`` (None: CPU)."""
    import numpy as np
    import torch

    X = torch.tensor(np.asarray(sample.embeddings), device=device or torch.device("cpu"))
    return monitor_metrics(X, list(metrics), sample.labels)


def guarded_monitored(warn: WarnOnce, sample: EpochSample, metrics: Sequence[str], device: Any,
                      val_index: int) -> dict[str, float] | None:
    """:func:`compute_monitored`; None (one warning) when it fails."""
    return guarded(warn, "monitor", f"computing the monitor metrics {metrics} of "
                   f"{sample.name!r} at validation run {val_index} (their last values are "
                   f"logged instead)", lambda: compute_monitored(sample, metrics, device))


class RunMonitor:
    """The ``monitor`` values of one validation run: measured per set on rank zero
    (:meth:`measure`; nothing when ``metrics`` is empty), then rank zero's on every rank
    (:meth:`shared`).

    Example:
        >>> m = RunMonitor([], WarnOnce(), val_index=0, device=None)
        >>> m.measure("z", None), m.values
        (None, {})
    """

    def __init__(self, metrics: Sequence[str], warn: WarnOnce, val_index: int, device: Any):
        self.metrics, self.warn = list(metrics), warn
        self.val_index, self.device = val_index, device
        self.values: dict[str, dict[str, float]] = {}

    def measure(self, name: str, sample: EpochSample | None) -> None:
        """Compute the metrics of set ``name``'s ``sample`` (one warning and no value when
        that fails)."""
        if self.metrics and sample is not None:
            got = guarded_monitored(self.warn, sample, self.metrics, self.device, self.val_index)
            if got is not None:
                self.values[name] = got

    def shared(self, strategy: Any) -> dict[str, dict[str, float]]:
        """Rank zero's values, broadcast to every rank when there are several."""
        if self.metrics and strategy_world(strategy)[1] > 1:
            return dict(strategy.broadcast(self.values, src=0))
        return self.values


def log_monitored(pl_module: Any, set_names: Sequence[str], metrics: Sequence[str],
                  values: Mapping[str, Mapping[str, float]],
                  last: MutableMapping[str, float]) -> None:
    """Log each set's ``metrics`` as ``embproj/NAME/<metric>``: this run's value, else (not
    projected, no rows, or failed) the one in ``last``, else NaN; ``last`` is updated."""
    for name in set_names:
        for metric in metrics:
            key = metric_key(name, metric)
            value = values.get(name, {}).get(metric)
            if value is None:
                value = last.get(key)
            last[key] = math.nan if value is None else float(value)
            # Every rank logs the same value (rank zero's, broadcast): nothing to reduce.
            # Not to the loggers: the W&B / TensorBoard sinks log these keys already.
            pl_module.log(key, last[key], on_step=False, on_epoch=True, prog_bar=False,
                          logger=False, sync_dist=False, batch_size=1)
