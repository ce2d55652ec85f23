"""The ``EmbeddingProjector`` callback: thin wiring of the pipeline stages into Lightning hooks.

Per validation batch it collects (cheap, bounded); at validation epoch end it gathers across
ranks and hands the run to a background worker, whose job runs the stages
(:func:`lightning_embproj.pipeline.process_run`: one frozen ``RunResult``), gives that result
to every sink and records it with the chain owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning_embproj.chain.checkpoint import read_checkpoint
from lightning_embproj.chain.owner import ChainState, Run
from lightning_embproj.chain.selection import warn_if_never_projected
from lightning_embproj.collect.gather import gather_samples
from lightning_embproj.collect.ranks import check_position_ids
from lightning_embproj.collect.validation import ValidationCollection
from lightning_embproj.evolve.set_chain import EvolveSettings
from lightning_embproj.options import Key, Monitored, ProjectorOptions, Reducer, check_unique_sets
from lightning_embproj.pipeline import Runs, Stages
from lightning_embproj.reduce.project import ReduceSettings
from lightning_embproj.results import RunResult
from lightning_embproj.runtime.compat import CallbackBase, run_root
from lightning_embproj.runtime.progress import finish_with_progress, print_where, show_progress
from lightning_embproj.runtime.steer import RunMonitor, log_monitored
from lightning_embproj.runtime.trace import Trace
from lightning_embproj.runtime.warn import WarnOnce

EXCEPTION_DRAIN_S = 30.0
"""After an exception, seconds to finish the runs already queued (see ``on_exception``)."""
CANCEL_WAIT_S = 10.0
"""Then, seconds for the running job to reach its next stopping point (t-SNE: 50 iterations)."""


class EmbeddingProjector(CallbackBase):
    """Project validation embeddings every epoch, aligned across epochs, into W&B and files.

    Args:
        embedding_key: key of the embeddings in the dict ``validation_step`` returns (or in a
            dict batch). Ignored when ``layers`` is given.
        layers: names of submodules (as in ``model.named_modules()``) whose outputs are
            captured during validation batches; each layer is its own embedding set. A dict
            ``{module: key}`` also names the tensor in a layer's output: a key of a dict or
            ``ModelOutput`` (``{"bert.encoder": "last_hidden_state"}``), an index of a tuple,
            an attribute of a dataclass (``None``: the output itself).
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
        cluster_smoothing: clusters that stay put when the data does: k-means starts from
            the previous run's clusters (kept unless a fresh start is clearly better), HDBSCAN
            uses a size rule that follows the sample size and leaf selection. ``False``:
            each run is clustered afresh.
        name: names the embedding set(s): folder ``embproj/<name>/`` and W&B keys
            ``embproj/<name>/...``; with ``layers`` each layer's set is ``<name>_<layer>``.
            Default: the ``embedding_key``, or each layer name. Two projectors in one Trainer
            need different set names: on one key (say with other reducers) give each a
            ``name``. A clash is refused at ``setup``; two identical projectors already when
            the Trainer is built, by Lightning (one ``state_key``).
        vectors: with a ``WandbLogger``, add each point's vector to the per-run W&B table
            (column ``embedding``), so W&B's own 2D projection panel works: ``True`` keeps
            up to 150 dims (above: the run's first 150 principal components), an int sets
            that most (1..150). Not in the local files. Default ``False``.
        monitor: metrics (``"knn_accuracy"``, ``"silhouette"``, ``"rankme"``,
            ``"uniformity"``) also computed on the training thread at the end of each
            projected validation run and logged with ``pl_module.log`` as
            ``embproj/NAME/<metric>`` (in ``trainer.callback_metrics``, not sent to the
            loggers), for ``ModelCheckpoint`` / ``EarlyStopping``. A run that is not
            projected logs the last value again. Label metrics need ``label_key``.
        priority: the background work's share of the CPU while training runs:
            ``"training"`` (default) nices its thread (+10) and keeps it on ``n_jobs`` threads,
            so training keeps the cores; ``"fair"`` leaves it at the trainer's priority on
            ``max(n_jobs, cores // 2)`` threads, so a CPU-only fit shares the cores and less
            work is left for the end of ``fit``. Once training is over both use every core.

    Example:
        >>> projector = EmbeddingProjector(label_key="labels")
        >>> trainer = L.Trainer(callbacks=[projector])  # doctest: +SKIP
    """

    def __init__(
        self,
        embedding_key: str = "embeddings",
        layers: Sequence[str] | Mapping[str, str | int | None] | None = None,
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
        cluster_smoothing: bool = True,
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
        vectors: bool | int = False,
        monitor: Sequence[Monitored] | Monitored | None = None,
        priority: Literal["training", "fair"] = "training",
    ) -> None:
        # every argument is an option, under its own name
        self.options = ProjectorOptions(**{k: v for k, v in locals().items() if k != "self"})
        o = self.options
        self.settings = ReduceSettings(list(o.reducers), n_components, float(perplexity), seed)
        self.evolve_settings = EvolveSettings(o.clusters, o.n_clusters, float(survive_threshold),
                                              float(split_threshold), seed, o.cluster_smoothing)
        self.warn = WarnOnce()
        self.chain = ChainState()
        self.runs = Runs(self.chain, self.options, Stages(self.settings, self.evolve_settings),
                         self.warn)
        self.worker = self.runs.worker
        self._run: Run | None = None
        self._fn = "fit"  # the Trainer entry point running: fit, validate, test or predict
        self._label: tuple[int, int] | None = None  # (epoch, step) of a checkpoint loaded
        self._settled = False
        self.collection = ValidationCollection(self.options, self.warn)

    @property
    def root(self) -> str:
        """The folder whose ``embproj/NAME/`` holds the local files (known after ``setup``):
        ``output_dir``, else the trainer's log dir, else with a ``WandbLogger`` as first logger
        ``<save_dir>/<project>/<run id>``."""
        return self.runs.root

    @property
    def traces(self) -> list[Trace]:
        """Stage timings of the last background jobs, oldest first: one
        :class:`~lightning_embproj.runtime.trace.Trace` per processed run (queue wait, PCA,
        t-SNE and its chunks, kNN + metrics, clusters, each sink and its W&B parts), plus one
        per ``fit`` / ``validate`` end (the sinks' ``finish``). ``print(t.format())``."""
        return list(self.runs.traces)

    @property
    def previous(self) -> dict[str, RunResult]:
        """The last written run of each set in the current chain (frozen results)."""
        return self.chain.previous

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
        runs = self.runs
        runs.is_zero = trainer.is_global_zero
        self._fn = stage = str(getattr(stage, "value", stage))  # a TrainerFn str enum
        self._label = None
        if stage in ("fit", "validate"):
            # Each fit / validate is its own chain: no alignment, warm start or drift against an
            # earlier call. A resumed fit restores its checkpoint's chain (load_state_dict).
            self._settled = False
            runs.start_chain(stage, getattr(pl_module, "device", None))
            if runs.is_zero:
                warn_if_never_projected(trainer, stage, self.options, self.warn)
                runs.preload()
        runs.root = self.options.output_dir or run_root(trainer, log_dir, runs.is_zero)
        self.collection.attach(pl_module)
        if runs.is_zero:
            runs.build_sinks(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning restores callback state (load_state_dict) after `setup` and before
        # `on_fit_start`: only now is it known whether this fit continues a checkpoint.
        self._settle()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        ckpt_path = getattr(trainer, "ckpt_path", None)
        if self._fn != "fit" and self._label is None and ckpt_path:
            # Lightning < 2.5 restores callback state only in fit: read what it skipped.
            self._restore_outside_fit(trainer, pl_module, str(ckpt_path))

    def _restore_outside_fit(self, trainer: Any, pl_module: Any, ckpt_path: str) -> None:
        try:
            checkpoint = read_checkpoint(ckpt_path)
        except Exception as error:  # noqa: BLE001 - a label is not worth failing a validate
            self.warn("ckpt:label", f"could not read the epoch and step of ckpt_path="
                      f"{ckpt_path!r} ({type(error).__name__}: {error}); this {self._fn}'s runs "
                      f"are labelled with the trainer's epoch and step")
            return
        self.on_load_checkpoint(trainer, pl_module, checkpoint)
        states = checkpoint.get("callbacks", {})
        state = states.get(self.state_key, states.get(self._legacy_state_key))
        if state is not None:
            self.load_state_dict(state)

    def _settle(self) -> None:
        """Settle the chain with the folder's files once it is known whether it resumes (the
        sinks' histories too); then process the runs a resumed checkpoint held as pending."""
        if self._settled:
            return
        self._settled = True
        if self.runs.is_zero:
            self.runs.settle()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Training is over: the queued runs may use every core; show what the wait is for.
        finish_with_progress(self.worker, enabled=self.runs.is_zero and show_progress(trainer))
        self._close()
        stage = str(getattr(stage, "value", stage))
        if self.runs.is_zero and stage in ("fit", "validate"):
            # Once, after every queued run is written: where to look (nothing written: silent).
            print_where(self.runs.root, self.runs.written, stage)
            self.runs.written = {}

    def _close(self) -> None:
        self.runs.finish_call(self._fn)
        self.collection.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Runs already collected are worth a short wait (on every core: training has stopped);
        # a stuck job is not worth a hang. Lightning exits right after a Ctrl+C (sys.exit),
        # which would kill the worker mid-run: the running job is stopped first.
        self.runs.shutdown(exception, EXCEPTION_DRAIN_S, CANCEL_WAIT_S)
        # Even past the deadline: the W&B evolution table is sent complete only by finish (a
        # job still running writes under the sink's lock; its run keeps its per-run table).
        self._close()

    # -- collection ---------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # The sanity check collects too (and logs nothing): a missing key or a bad shape then
        # fails before the first training epoch instead of after it.
        self._run = None
        if self.options.id_key is None:  # ids are positions: a shuffled loader fails here
            note = check_position_ids(trainer.val_dataloaders)
            if note is not None and self.runs.is_zero:
                self.warn("sampler", note)
        if trainer.sanity_checking:
            self.collection.start(collecting=True)
            return
        self._settle()  # a validate has no on_fit_start
        run = self._run = self.chain.next_run(trainer.current_epoch, trainer.global_step,
                                              self.options)
        self.collection.start(collecting=run.selected)
        if not run.selected and self.runs.is_zero:
            self.chain.not_selected(self.options.set_names, run.identity)
            self.runs.append_ledgers(run.identity.val_index)

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.collection.before_batch()

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.collection.add(trainer, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        collector = self.collection.finish()
        if trainer.sanity_checking or self._run is None:
            return
        if collector is None:  # not projected: the monitored values stay what they were
            self._log_monitored(pl_module, {})
            return
        identity = self._run.identity
        if self.runs.is_zero:
            collector.warn_left_out(identity)
        samples = collector.samples()
        monitor = RunMonitor(self.options.monitor or [], self.warn, identity.val_index,
                             getattr(pl_module, "device", None))
        for name in self.options.set_names:
            sample = gather_samples(
                samples.get(name), self.options.max_samples, strategy=trainer.strategy
            )
            if not self.runs.is_zero:
                continue
            if sample is not None and len(sample) > 0:
                monitor.measure(name, sample)  # on the training thread, before the queue
                self.runs.submit(sample, identity)
            else:
                self.chain.empty(name, identity, collector.empty_note())
        if self.runs.is_zero:
            self.runs.append_ledgers(identity.val_index)
        self._log_monitored(pl_module, monitor.shared(trainer.strategy))

    def _log_monitored(self, pl_module: Any, values: Mapping[str, Mapping[str, float]]) -> None:
        if self.options.monitor:
            log_monitored(pl_module, self.options.set_names, self.options.monitor, values,
                          self.chain.monitored)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the background work queued so far (True when all of it is done)."""
        return self.worker.flush(timeout)

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.chain.state_dict()

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Called before load_state_dict: outside fit, the runs of this call are labelled with
        # the checkpoint's epoch and step (a new process would say epoch 0, step 0).
        self._label = (int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.chain.restore(state_dict, fn=self._fn, label=self._label, warn=self.warn)

