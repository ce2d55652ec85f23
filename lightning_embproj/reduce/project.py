"""The reduce stage of one run of one embedding set: reduce, then align with the previous run.

Pure apart from the ``warn`` callback: the same inputs give the same layouts. Scoring them is
the next stage (:func:`lightning_embproj.pipeline.process_run` runs the stages in order). The
run's sample is checked once where it enters the pipeline (:func:`lightning_embproj.checks.sample`,
in ``process_run``, or here with ``check_input=True``); the reducers take its arrays as they are.

Example:
    >>> import numpy as np
    >>> from lightning_embproj.results import EpochSample
    >>> rng = np.random.default_rng(0)
    >>> s = EpochSample("emb", np.arange(50, dtype=np.int64), list(range(50)),
    ...                 rng.normal(size=(50, 8)).astype(np.float32))
    >>> layouts = reduce_layouts(s, previous=None, settings=ReduceSettings(["pca"]))
    >>> layouts["pca"].shape
    (50, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lightning_embproj import checks
from lightning_embproj.reduce.align import procrustes_align
from lightning_embproj.reduce.dispatch import Prepared, Threads, prepare, reduce, warm_init
from lightning_embproj.reduce.tsne_online import tsne_next
from lightning_embproj.results import EpochSample, Projection
from lightning_embproj.runtime.trace import stage

WARM_STARTED = ("tsne", "umap")
# The trace's name of each reducer's stage (lightning_embproj.runtime.trace).
STAGE_NAMES = {"pca": "PCA layout", "tsne": "t-SNE", "umap": "UMAP"}


@dataclass
class ReduceSettings:
    """How to reduce: reducer names, output dims, t-SNE perplexity and the random seed."""

    reducers: list[str]
    n_components: int = 2
    perplexity: float = 30.0
    seed: int = 0


def _no_warn(topic: str, message: str) -> None:
    """Default for ``warn``: stay silent."""


def reduce_layouts(
    sample: EpochSample,
    previous: Projection | None,
    settings: ReduceSettings,
    warn: Callable[[str, str], None] = _no_warn,
    n_jobs: Threads = 1,
    *,
    epoch: int = 0,
    check_input: bool = True,
) -> dict[str, np.ndarray]:
    """Reduce ``sample`` with every reducer and align each layout with ``previous``; returns
    reducer name -> ``(N, n_components)`` float64 layout.

    A reducer that fails is left out of this run (one warning naming ``epoch``); the others are
    still computed. t-SNE and UMAP start from the previous run's layout when there is one. One
    PCA serves the PCA reducer and t-SNE's PCA-to-50. ``n_jobs``: t-SNE threads, or a function
    giving them (read again during a run: 1 while training, every core after it).
    ``check_input``: check ``sample`` here (False: the caller has, as ``process_run`` does).
    """
    if check_input:
        sample = checks.sample(sample)
    # A continued t-SNE (tsne_next) runs its own PCA over both runs: then the shared one need
    # not reserve t-SNE's 50 components, only what the other reducers ask for.
    continued = previous is not None and "tsne" in previous.layouts
    shared = [r for r in settings.reducers if not (continued and r == "tsne")]
    with stage("PCA"):
        X = prepare(np.asarray(sample.embeddings, dtype=np.float32), shared, check_input=False)
    layouts: dict[str, np.ndarray] = {}
    for name in settings.reducers:
        with stage(STAGE_NAMES.get(name, name)):
            _reduce_one(name, sample, previous, settings, X, layouts, warn, n_jobs, epoch)
    return layouts


def _reduce_one(
    name: str, sample: EpochSample, previous: Projection | None, settings: ReduceSettings,
    X: Prepared, layouts: dict[str, np.ndarray], warn: Callable[[str, str], None],
    n_jobs: Threads, epoch: int,
) -> None:
    """One reducer's layout into ``layouts`` (left out, with a warning, when it fails)."""
    prev_layout = previous.layouts.get(name) if previous is not None else None
    try:
        if name == "tsne" and prev_layout is not None and previous is not None:
            # Continues the previous layout in its own frame: no warm_init, no Procrustes.
            layout = tsne_next(
                X.X, sample.keys,
                (previous.sample.keys, previous.sample.embeddings, prev_layout),
                settings.n_components, perplexity=settings.perplexity,
                random_state=settings.seed, n_jobs=n_jobs, check_input=False,
            )
            layouts[name] = np.asarray(layout, dtype=np.float64)
            return
        init = None
        if name in WARM_STARTED and prev_layout is not None and previous is not None:
            init = warm_init(previous.sample.keys, prev_layout, sample.keys, X)
        layout = reduce(
            name, X, settings.n_components, init=init, random_state=settings.seed,
            perplexity=settings.perplexity, n_jobs=n_jobs,
        )
        if prev_layout is not None and previous is not None:
            layout = procrustes_align(layout, sample.keys, prev_layout, previous.sample.keys,
                                      check_input=False)
        layouts[name] = np.asarray(layout, dtype=np.float64)
    except ImportError as err:
        warn(f"reduce:{name}:import", f"reducer {name!r} is unavailable and skipped: {err}")
    except Exception as err:  # noqa: BLE001 - a failed reducer must not stop the others
        warn(
            f"reduce:{name}:{type(err).__name__}",
            f"reducer {name!r} failed at epoch {epoch} for {sample.name!r} and is left out "
            f"of that epoch ({type(err).__name__}: {err})",
        )

