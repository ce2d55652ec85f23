"""The ``EmbeddingProjector`` callback: thin wiring of the pipeline stages into Lightning hooks.

Per validation batch it collects (cheap, bounded); at validation epoch end it gathers across
ranks and hands the epoch to a background worker that reduces, aligns, scores and writes sinks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

from lightning_embproj import sinks as sink_factory
from lightning_embproj.capture import LayerCapture
from lightning_embproj.collect import Collector, Placement
from lightning_embproj.compat import CallbackBase
from lightning_embproj.evolve import EvolveSettings, SetChain, evolve
from lightning_embproj.extract import lookup
from lightning_embproj.gather import gather_samples
from lightning_embproj.options import ProjectorOptions, check_unique_sets
from lightning_embproj.pipeline import ReduceSettings, project_epoch
from lightning_embproj.progress import finish_with_progress, job_label, show_progress
from lightning_embproj.ranks import check_position_ids, placement
from lightning_embproj.runs import RunCounter, warn_if_never_projected
from lightning_embproj.sample import HASH_VERSION
from lightning_embproj.score import movers
from lightning_embproj.sinks.local import list_validations, set_dir
from lightning_embproj.state import (
    projection_from_state,
    projection_to_state,
    rehash,
    sample_from_state,
    sample_to_state,
)
from lightning_embproj.types import EpochSample, Projection
from lightning_embproj.warn import WarnOnce
from lightning_embproj.worker import Worker

Key = str | int
EXCEPTION_DRAIN_S = 30.0
"""After an exception, seconds to finish the epochs already queued before dropping the rest."""
# Literal types: LightningCLI (jsonargparse) lists the choices in --help and rejects others.
Reducer = Literal["pca", "tsne", "umap"]


class EmbeddingProjector(CallbackBase):
    """Project validation embeddings every epoch, aligned across epochs, into W&B and files.

    Args:
        embedding_key: key of the embeddings in the dict ``validation_step`` returns (or in a
            dict batch). Ignored when ``layers`` is given.
        layers: names of submodules (as in ``model.named_modules()``) whose outputs are
            captured during validation batches; each layer is its own embedding set.
        label_key: key (or tuple-batch index) of a label per point: colour and metrics.
        id_key: key (or tuple-batch index) of a stable sample id. Without it, ids are the
            position in the validation dataset, which assumes a non-shuffled loader.
        metadata_keys: more columns: a list of keys, or a dict ``{column: key}``. Image tensors
            ``(B, C, H, W)`` (C in 1, 3, 4) or columns in ``image_keys`` become thumbnails;
            texts and numbers plain cells; ``(B, K)`` one list per row.
        max_samples: points tracked per set, the same ids every epoch (bottom-k of an id hash).
        reducers: any of ``"pca"``, ``"tsne"``, ``"umap"``.
        n_components: 2 or 3.
        every_n_epochs: project every n-th epoch that validates (the first always).
        perplexity: t-SNE perplexity (lowered automatically for few points).
        storage_dtype: ``"float32"`` or ``"float16"`` for the buffered vectors.
        background: reduce and log in a background thread (``False``: synchronously, to debug).
        max_queued_epochs: epochs of a set that may wait for the background thread; beyond
            that the oldest waiting epoch is skipped with a warning. Every queued epoch is
            finished before ``fit`` returns.
        output_dir: root of the local files (default: the trainer's ``log_dir``).
        max_text_length: longer text cells are truncated.
        seed: random seed of the reducers and of k-means.
        n_jobs: t-SNE threads while training runs (1 leaves the cores to training); once
            training is over, queued runs use every core, the one in progress too.
        every_n_validations: project every n-th validation run of a ``fit`` / ``validate``.
        pooling: how ``(B, T, D)`` / ``(B, C, H, W)`` embeddings become ``(B, D)``: ``"auto"``
            (mean over T; global average pooling of feature maps), ``"mean"``, ``"max"``,
            ``"first"``, ``"last"``, ``"flatten"``.
        mask_key: key of a ``(B, T)`` mask (1 = real token) for pooling sequences.
        image_keys: metadata columns that hold images.
        clusters: ``"kmeans"``, ``"hdbscan"`` or None: a stable cluster id per point and
            cluster lineage per run.
        n_clusters: k for k-means without labels.
        survive_threshold: fraction of a cluster that must stay together to ``survive``.
        split_threshold: fraction each part must get for a ``split``.
        name: names the embedding set(s): folder ``embproj/<name>/`` and W&B keys
            ``embproj/<name>/...``; with ``layers`` each layer's set is ``<name>_<layer>``.
            Default: the ``embedding_key``, or each layer name. Two projectors in one Trainer
            need different set names: on one key (say with other reducers) give each a
            ``name``. A clash is refused at ``setup``; two identical projectors already when
            the Trainer is built, by Lightning (one ``state_key``).

    Example:
        >>> projector = EmbeddingProjector(label_key="labels")
        >>> trainer = L.Trainer(callbacks=[projector])  # doctest: +SKIP
    """

    def __init__(
        self,
        embedding_key: str = "embeddings",
        layers: Sequence[str] | None = None,
        label_key: Key | None = None,
        id_key: Key | None = None,
        metadata_keys: Sequence[Key] | Mapping[str, Key] | None = None,
        max_samples: int = 2000,
        reducers: Sequence[Reducer] | Reducer = ("pca", "tsne"),
        n_components: Literal[2, 3] = 2,
        every_n_epochs: int = 1,
        every_n_validations: int = 1,
        clusters: Literal["kmeans", "hdbscan"] | None = "kmeans",
        n_clusters: int | None = None,
        survive_threshold: float = 0.7,
        split_threshold: float = 0.3,
        pooling: Literal["auto", "flatten", "mean", "first", "last", "max"] = "auto",
        mask_key: Key | None = None,
        image_keys: Sequence[Key] | None = None,
        perplexity: float = 30.0,
        storage_dtype: Literal["float32", "float16"] = "float32",
        background: bool = True,
        max_queued_epochs: int = 8,
        output_dir: str | None = None,
        max_text_length: int = 1000,
        seed: int = 0,
        n_jobs: int = 1,
        name: str | None = None,
    ) -> None:
        self.options = ProjectorOptions(
            embedding_key=embedding_key, layers=layers,  # type: ignore[arg-type]
            label_key=label_key, id_key=id_key, metadata_keys=metadata_keys,
            max_samples=max_samples, reducers=reducers, n_components=n_components,
            every_n_epochs=every_n_epochs, every_n_validations=every_n_validations,
            clusters=clusters, n_clusters=n_clusters, survive_threshold=survive_threshold,
            split_threshold=split_threshold,
            pooling=pooling, mask_key=mask_key, image_keys=image_keys,
            perplexity=perplexity, storage_dtype=storage_dtype,
            background=background, max_queued_epochs=max_queued_epochs, output_dir=output_dir,
            max_text_length=max_text_length, seed=seed, n_jobs=n_jobs, name=name,
        )
        self.settings = ReduceSettings(
            list(self.options.reducers), n_components, float(perplexity), seed
        )
        self.evolve_settings = EvolveSettings(
            self.options.clusters, self.options.n_clusters, float(survive_threshold),
            float(split_threshold), seed,
        )
        self.warn = WarnOnce()
        self.worker = Worker(
            background, max_pending=self.options.max_queued_epochs, warn=self.warn
        )
        self.previous: dict[str, Projection] = {}
        self.chains: dict[str, SetChain] = {}
        self.pending: dict[tuple[str, int], tuple[EpochSample, int, int]] = {}
        self.runs = RunCounter()
        self._run: tuple[int, int, int] | None = None
        self._stage = "fit"
        self._restored_pending: list[dict[str, Any]] = []
        self._checked_folders = False
        self._metrics_device: str | None = None
        self._lock = threading.Lock()
        self._collector: Collector | None = None
        self._placements: dict[int, Placement] = {}  # per loader, for one validation run
        self._capture: LayerCapture | None = None
        self._sinks = sink_factory.Sinks()
        self._is_zero = True
        self._root = output_dir or "."

    @property
    def root(self) -> str:
        """The folder whose ``embproj/NAME/`` holds the local files (known after ``setup``):
        ``output_dir``, else the trainer's log dir, else with a ``WandbLogger`` as first logger
        ``<save_dir>/<project>/<run id>``."""
        return self._root

    @property
    def state_key(self) -> str:
        key: dict[str, Any] = dict(
            sets=self.options.set_names, reducers=self.settings.reducers,
            n_components=self.settings.n_components,
        )
        if self.options.name is not None:  # without one, the key of earlier checkpoints
            key["name"] = self.options.name
        return self._generate_state_key(**key)

    # -- setup / teardown ---------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        check_unique_sets(self.options, [c.options for c in trainer.callbacks
                                         if isinstance(c, EmbeddingProjector) and c is not self])
        log_dir = trainer.log_dir  # a collective under DDP: every rank calls it
        self._is_zero = trainer.is_global_zero
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn str enum
        if stage in ("fit", "validate"):
            self._stage = stage
            # Each fit / validate is its own chain: no alignment, warm start or drift against an
            # earlier call. A resume restores the chain afterwards (load_state_dict).
            self._start_chain()
            self.worker.start_training()
            device = getattr(pl_module, "device", None)
            self._metrics_device = str(device) if getattr(device, "type", "") == "cuda" else None
            if self._is_zero:
                warn_if_never_projected(trainer, stage, self.options, self.warn)
        self._root = self.options.output_dir or _run_root(trainer, log_dir, self._is_zero)
        if self.options.layers and self._capture is None:
            self._capture = LayerCapture(pl_module, list(self.options.layers))
        if self._is_zero:
            self._sinks = sink_factory.build(
                trainer, self._root, self.warn, self.options.max_text_length,
                settings=self.settings,
            )

    def _start_chain(self) -> None:
        with self._lock:
            self.previous = {}
            self.chains = {}
            self.pending = {}
            self._restored_pending = []
        self.runs.start_chain()
        self.warn.reset()
        self._checked_folders = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning restores callback state (load_state_dict) after `setup` and before
        # `on_fit_start`: only now are the epochs that were pending at the checkpoint known.
        if self._is_zero:
            self._resume_pending()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Training is over: the queued runs may use every core; show what the wait is for.
        finish_with_progress(self.worker, enabled=self._is_zero and show_progress(trainer))
        self._finish_sinks()
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Runs already collected are worth a short wait (on every core: training has stopped);
        # a stuck job is not worth a hang.
        self.worker.end_training()
        self.worker.drain(timeout=EXCEPTION_DRAIN_S)  # one deadline for all of it
        # Even past the deadline: the W&B evolution table is sent complete only by finish (a
        # job still running writes under the sink's lock; its run keeps its per-run table).
        self._finish_sinks()
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    # -- collection ---------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # The sanity check collects too (and logs nothing): a missing key or a bad shape then
        # fails before the first training epoch instead of after it.
        self._run = None
        self._placements = {}
        if self.options.id_key is None:  # ids are positions: a shuffled loader fails here
            note = check_position_ids(trainer.val_dataloaders)
            if note is not None and self._is_zero:
                self.warn("sampler", note)
        if trainer.sanity_checking:
            self._collector = Collector(self.options, warn=self.warn)
            return
        run = self.runs.next(trainer.current_epoch, self.options)
        self._run = (run.val_index, trainer.current_epoch, trainer.global_step)
        self._collector = Collector(self.options, warn=self.warn) if run.selected else None

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._capture is not None:
            self._capture.active = self._collector is not None
            self._capture.outputs = {}

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collector is None:
            return
        if self._capture is not None:
            self._capture.active = False
            captured = self._capture.outputs
            missing = [layer for layer in self.options.sets.values() if layer not in captured]
            if missing:
                raise RuntimeError(
                    f"layers: {missing} did not run during validation batch {batch_idx}; "
                    f"only layers called in validation_step can be captured"
                )
            raw = {name: captured[layer] for name, layer in self.options.sets.items()}
        else:
            ((name, key),) = self.options.sets.items()
            raw = {name: lookup(key, outputs, batch, "embedding_key")}
        where = self._placements.get(dataloader_idx)
        if where is None:  # the same for every batch of a loader in one validation run
            where = self._placements[dataloader_idx] = placement(
                trainer, dataloader_idx, ids_derived=self.options.id_key is None
            )
        self._collector.add_batch(raw, outputs, batch, dataloader_idx, where)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.check()  # in the sanity check too: a bad mask fails before training
        if collector is None or trainer.sanity_checking or self._run is None:
            return
        val_index, epoch, step = self._run
        if collector.nonfinite and self._is_zero:
            self.warn(
                f"nonfinite:{val_index}",
                f"{collector.nonfinite} tracked rows had NaN or Inf embeddings in validation run "
                f"{val_index} (epoch {epoch}, step {step}) and were left out of that run",
            )
        if collector.overflow and self._is_zero:
            self.warn(
                f"overflow:{val_index}",
                f"{collector.overflow} tracked rows had embedding values beyond float16's range "
                f"(|value| >= 65,520 would be stored as Inf with storage_dtype='float16') in "
                f"validation run {val_index} (epoch {epoch}, step {step}) and were left out of "
                f"that run; use storage_dtype='float32' to keep them",
            )
        samples = collector.samples()
        for name in self.options.set_names:
            sample = gather_samples(
                samples.get(name), self.options.max_samples, strategy=trainer.strategy
            )
            if sample is not None and len(sample) > 0:
                if not self._checked_folders:
                    self._check_folders(val_index)
                self._submit(sample, val_index, epoch, step)

    def _check_folders(self, val_index: int) -> None:
        """Warn when the output folder holds runs this callback did not write: files of two runs
        would mix (and ours would overwrite theirs)."""
        self._checked_folders = True
        for name in self.options.set_names:
            folder = set_dir(self._root, name)
            if not folder.is_dir():
                continue
            theirs = [v for v, _, _ in list_validations(folder) if v >= val_index]
            if theirs:
                self.warn(
                    f"folder:{name}",
                    f"{str(folder)!r} already holds projections of another run (validation runs "
                    f"{theirs[:5]}); this run's files will replace and mix with them. Give each "
                    f"run its own output_dir (or logger version / W&B run)",
                )

    # -- processing (rank zero) ---------------------------------------------------------
    def _submit(
        self, sample: EpochSample, val_index: int, epoch: int, step: int, log: bool = True
    ) -> None:
        with self._lock:
            self.pending[(sample.name, val_index)] = (sample, epoch, step)
        chain, stage = self.runs.chain, self._stage
        self.worker.submit(
            sample.name,
            lambda: self._process(sample, val_index, epoch, step, log, chain, stage),
            label=job_label(sample.name, len(sample), self.settings.reducers, val_index),
        )

    def _process(
        self, sample: EpochSample, val_index: int, epoch: int, step: int, log: bool,
        chain_index: int = 0, stage: str = "fit",
    ) -> None:
        try:
            previous = self.previous.get(sample.name)
            projection = project_epoch(
                sample, epoch, step, previous, self.settings, self.warn,
                n_jobs=self._threads,
                device=self._metrics_device,
            )
            projection.val_index = val_index
            projection.chain, projection.stage = chain_index, stage
            projection.movers = self._guarded(
                "movers", "the movers table",
                lambda: movers(projection, previous, device=self._metrics_device),
            )
            chain = evolve(
                projection, previous, self.chains.get(sample.name, SetChain()),
                self.evolve_settings, self.warn,
            )
        except BaseException:
            with self._lock:
                self.pending.pop((sample.name, val_index), None)
            raise
        with self._lock:
            # One critical section: a checkpoint taken in between would hold this run both
            # as `previous` and as pending, and a resume would align it to itself.
            self.previous[sample.name] = projection
            self.chains[sample.name] = chain
            self.pending.pop((sample.name, val_index), None)
        for sink_name, write in self._sinks.writers:
            if log or sink_name in sink_factory.LOCAL_SINKS:
                self._guarded(
                    f"sink:{sink_name}", f"writing to {sink_name}", partial(write, projection)
                )

    def _threads(self) -> int:
        """Threads a job may use now: the ``n_jobs`` option while training runs, every core
        once it is over (read again during a run, so a queued t-SNE speeds up at the end)."""
        return self.worker.job_threads() if self.worker.training_over else self.options.n_jobs

    def _finish_sinks(self) -> None:
        for sink_name, finish in self._sinks.finishers:
            self._guarded(f"sink:{sink_name}:finish", f"finishing {sink_name}", finish)

    def _guarded(self, topic: str, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a failure becomes one warning per topic and kind, and None."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - an output failing must not stop training
            self.warn(
                f"{topic}:{type(err).__name__}",
                f"{what} failed ({type(err).__name__}: {err}); the other outputs are still "
                f"written and training continues",
            )
            return None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the background work queued so far (True when all of it is done)."""
        return self.worker.flush(timeout)

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "previous": {n: projection_to_state(p) for n, p in self.previous.items()},
                "chains": {n: c.state_dict() for n, c in self.chains.items()},
                "pending": [
                    {"val_index": v, "epoch": e, "step": step, "sample": sample_to_state(s)}
                    for (_, v), (s, e, step) in sorted(self.pending.items(), key=_by_run)
                ],
                "runs": self.runs.state_dict(),
                "hash_version": HASH_VERSION,
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = int(state_dict.get("hash_version", 1))  # 0.1.0 checkpoints had no version
        previous = {n: projection_from_state(p) for n, p in state_dict.get("previous", {}).items()}
        pending = list(state_dict.get("pending", []))
        if version != HASH_VERSION:
            # Keys are a hash of the ids the samples carry: recompute them, so the resumed run
            # aligns on the points both samples share (the tracked subset itself may change).
            self.warn(
                "resume:hash",
                f"the checkpoint's projector state used id hash version {version} (this "
                f"version uses {HASH_VERSION}); its keys were recomputed, and the tracked points "
                f"may differ from the ones before the checkpoint",
            )
            for projection in previous.values():
                rehash(projection.sample)
            for entry in pending:
                entry["sample"] = sample_to_state(rehash(sample_from_state(entry["sample"])))
        chains = {n: SetChain.from_state_dict(c) for n, c in state_dict.get("chains", {}).items()}
        if version != HASH_VERSION:
            chains = {}  # cluster ids were matched on the old keys: start the lineage afresh
        with self._lock:
            self.previous = previous
            self.chains = chains
            self._restored_pending = pending
        self.runs.load_state_dict(state_dict.get("runs", {}))

    def _resume_pending(self) -> None:
        """Runs still waiting when the checkpoint was taken: redo them for the alignment
        chain and the local files, without logging them to the experiment a second time."""
        for entry in self._restored_pending:
            val_index = int(entry.get("val_index", entry["epoch"]))
            self._submit(
                sample_from_state(entry["sample"]), val_index, entry["epoch"], entry["step"], False
            )
        self._restored_pending = []


def _by_run(item: tuple[tuple[str, int], Any]) -> int:
    return item[0][1]


def _run_root(trainer: Any, log_dir: str | None, is_zero: bool) -> str:
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
