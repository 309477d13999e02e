"""Data-parallel training of one experiment on Ray Train.

``fit`` builds a ``TensorflowTrainer``; ``train_loop`` is what each of its workers runs. Read the
loop top to bottom: the numbered comments are the distributed pitfalls it steps around.

    trainer workers: N Ray actors, one tf.distribute replica each
    per epoch:       fit one epoch -> every worker saves -> every worker reports (a barrier)
    after the last:  with data.test, the best epoch's weights on the test rows, reported once
    on failure:      Ray restarts the group after a lost worker (failures.py); the loop resumes
                     from the last committed checkpoint
    per commit:      the controller sends the epoch to MLflow and the driver (_CommittedEpochs)
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import types
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import tensorflow as tf
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.tensorflow import TensorflowTrainer

from raytrain import storage
from raytrain.cluster.connection import WORKER_ENV
from raytrain.cluster.resources import worker_nodes
from raytrain.config.schema import Experiment
from raytrain.errors import DataError, TrainingError
from raytrain.tracking import names
from raytrain.tracking.runs import CLIENT_ENV, EpochLogger, TrackedRun, tag_run
from raytrain.train import checkpoint, failures
from raytrain.train.evaluation import (
    TEST_EPOCH,
    TEST_PREFIX,
    selection,
    test_input,
    write_test_metrics,
)

if TYPE_CHECKING:
    from raytrain.data.dataset import Dataset

__all__ = ["build_optimizer", "fit", "train_loop"]


def fit(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    run_name: str,
    storage_path: str,
    tracking: TrackedRun | None,
    progress: Any | None,
    base_dir: str,
    callbacks: list[Any] | None = None,
    datasets: dict[str, Any] | None = None,
) -> ray.train.Result:
    """Run the experiment's training on the connected Ray cluster and return Ray's result.

    ``datasets``: the Ray Data train/val datasets of a streamed source (``data.streaming``),
    which Ray Train splits across the workers."""
    # Ray Train's controller collects each report when it polls the workers, every 2 s by
    # default, and a worker's next report waits for that: with sub-second epochs, most of the
    # run would be spent waiting. Polling at 0.1 s cut a 0.02 s epoch's wall time from 2 s to
    # 0.2 s (benchmarks/README.md). The variable propagates from this driver to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    config = {
        "spec": spec.model_dump(mode="json"),
        "data": data_ref,
        "tracking": tracking,
        "progress": progress,
        "base_dir": base_dir,
        "run_folder": storage.join(storage_path, run_name),
    }
    path, filesystem = storage.ray_storage(storage_path)
    failures.install()
    if tracking is not None or progress is not None:
        callbacks = [*(callbacks or []), _CommittedEpochs(tracking, progress, spec.train.epochs)]
    if progress is not None:
        callbacks = [*(callbacks or []), failures.LossNotice(progress, spec.failure.max_failures)]
    trainer = TensorflowTrainer(
        train_loop,
        train_loop_config=config,
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=spec.worker_resources(),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.checkpoint.keep,
                checkpoint_score_attribute=spec.checkpoint.score,
                checkpoint_score_order=spec.checkpoint.mode,
            ),
            failure_config=FailureConfig(max_failures=spec.failure.max_failures),
            worker_runtime_env={
                "env_vars": {**WORKER_ENV, **CLIENT_ENV, **storage.forwarded_env()}
            },
            callbacks=callbacks,
        ),
    )
    return trainer.fit()


def train_loop(config: dict[str, Any]) -> None:
    """One worker's share of the run."""
    from raytrain.data.dataset import make_tf_dataset, shard
    from raytrain.models import build_model

    spec = Experiment.model_validate(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    # 1. Threads: Ray gives each worker OMP_NUM_THREADS = its CPUs; both of TF's pools follow the
    #    same budget. Two inter-op threads on a 1-CPU worker run the backward matmuls side by side
    #    on a second core: N such workers on N cores fight over them (benchmarks/README.md).
    cpus = max(1, int(spec.scaling.resources_per_worker.get("CPU", 1)))
    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(spec.scaling.inter_op_threads or cpus)
    if spec.train.mixed_precision != "none":
        tf.keras.mixed_precision.set_global_policy(spec.train.mixed_precision)
    tf.keras.utils.set_random_seed(spec.train.seed)

    # 2. Strategy: MultiWorkerMirroredStrategy only when there is a peer. With one worker it adds
    #    ~40 ms per step for nothing (measured: 0.49x plain Keras at batch 512); TF's default
    #    strategy runs at plain-Keras speed.
    strategy = _strategy(spec, world)

    # 3. Data: each worker trains on its own equal-length shard, at its share of the global
    #    batch. Equal shards mean equal steps, which the all-reduce needs on every worker.
    data = (
        config["data"] if not isinstance(config["data"], ray.ObjectRef) else ray.get(config["data"])
    )
    batch = spec.per_worker_batch_size
    if data.streams is not None:
        train_ds, val_ds, steps, val_steps = _streamed_input(spec, data, rank=rank, world=world)
    else:
        x, y = shard(data.x_train, data.y_train, index=rank, count=world)
        xv, yv = shard(data.x_val, data.y_val, index=rank, count=world)
        steps, val_steps = math.ceil(len(x) / batch), math.ceil(len(xv) / batch)
        seed = spec.train.seed + rank
        train_ds = make_tf_dataset(x, y, batch_size=batch, shuffle=True, seed=seed).repeat()
        val_ds = make_tf_dataset(xv, yv, batch_size=batch, shuffle=False, seed=0).repeat()
    if world > 1:
        train_ds = strategy.distribute_datasets_from_function(lambda _: train_ds)
        val_ds = strategy.distribute_datasets_from_function(lambda _: val_ds)

    # 4. Model: built and compiled inside the strategy's scope, so its variables are mirrored.
    with strategy.scope():
        model = build_model(
            spec.model, data.info, loss=spec.train.loss, base_dir=config["base_dir"]
        )
        model.compile(
            optimizer=build_optimizer(spec),
            loss=spec.train.loss,
            metrics=list(spec.train.metrics),
            steps_per_execution=spec.train.steps_per_execution,
        )
    allreduce_dtype = _allreduce_dtype(spec)
    if world > 1 and (allreduce_dtype != "float32" or spec.scaling.bytes_per_pack):
        _all_reduce_gradients_as(allreduce_dtype, spec.scaling.bytes_per_pack, model.optimizer)

    # 5. Resume: after a worker failure Ray restarts the whole group and hands every worker the
    #    last reported checkpoint; so does a run resumed from its storage folder (`raytrain
    #    resume`: the same RunConfig name and storage). Weights, optimizer state, the epoch
    #    counter and the metrics so far come back from it; without it the loop would silently
    #    start over from epoch 0.
    history = checkpoint.restore(model)
    start_epoch = int(history[-1]["epoch"]) if history else 0
    tracked = config["tracking"] if rank == 0 else None
    if tracked and start_epoch:
        tag_run(tracked, names.RESUMED_FROM_TAG, str(start_epoch))
    if start_epoch >= spec.train.epochs:
        # Killed after its last checkpoint but before it was marked done: nothing is left to
        # train, but a sweep must still hear the final metrics (Tune rejects a metric-less end).
        ray.train.report(history[-1])
        return
    if tracked:  # where the workers run: what data.locality promises, checked after the fact
        tag_run(tracked, names.NODES_TAG, ", ".join(worker_nodes(world)))

    reporter = _Reporter(
        rank=rank,
        samples_per_epoch=min(steps * batch, data.info.num_train // world) * world,
        history=history,
        keep_best=selection(spec) if data.info.num_test else None,
    )
    if start_epoch:  # the restored weights are the best this attempt knows of
        reporter.set_model(model)
        reporter.on_best_candidate(start_epoch, history[-1])
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=spec.train.epochs,
        initial_epoch=start_epoch,
        steps_per_epoch=steps,
        validation_steps=val_steps,
        callbacks=[reporter],
        verbose=0,
    )

    # 7. Test: once, with the best epoch's weights, each worker on its share of the test rows;
    #    evaluate's metrics are all-reduced, so every worker holds those of all rows. Reported
    #    after the last epoch with no checkpoint: no selection (checkpoints, ASHA) ever sees it,
    #    and with the last epoch's metrics, so that Tune's searcher reads the same values.
    if data.info.num_test and reporter.best_weights is not None:
        test_ds, test_steps = test_input(spec, data, rank=rank, world=world)
        if world > 1:
            test_ds = strategy.distribute_datasets_from_function(lambda _: test_ds)
        model.set_weights(reporter.best_weights)
        scores = model.evaluate(test_ds, steps=test_steps, return_dict=True, verbose=0)
        tested = {f"{TEST_PREFIX}{k}": float(v) for k, v in scores.items()}
        tested[TEST_EPOCH] = reporter.best_epoch
        if rank == 0:
            write_test_metrics(config["run_folder"], tested)
        ray.train.report({**reporter.last, **tested})


class _Reporter(tf.keras.callbacks.Callback):
    """Per-epoch metrics, timing and a checkpoint, reported by every worker; with ``keep_best``
    (metric, mode), the weights of the best epoch so far, kept in memory for the test set."""

    def __init__(
        self,
        *,
        rank: int,
        samples_per_epoch: int,
        history: list[dict[str, float]],
        keep_best: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.rank, self.samples, self.history = rank, samples_per_epoch, list(history)
        self._t0 = self._train_s = 0.0
        self.keep_best = keep_best
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self._best_score: float | None = None
        self.last: dict[str, float] = {}

    def on_best_candidate(self, epoch: int, metrics: dict[str, float]) -> None:
        """Keep this epoch's weights if its score beats the best so far (ties: the earlier
        epoch, as the run's choice of its best checkpoint)."""
        self.last = metrics
        if self.keep_best is None or self.keep_best[0] not in metrics:
            return
        score, mode = metrics[self.keep_best[0]], self.keep_best[1]
        best = self._best_score
        if best is None or (score > best if mode == "max" else score < best):
            # Reads each worker's local copy of the mirrored variables: no collective op.
            self._best_score, self.best_epoch = score, epoch
            self.best_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._train_s = time.perf_counter() - self._t0  # validation is not training throughput

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise TrainingError(
                f"the loss became {metrics['loss']} at epoch {done}; lower "
                "train.optimizer.learning_rate or set train.optimizer.clipnorm"
            )
        metrics["epoch"] = done
        # Model size, so that a sweep can trade it against accuracy (a multi-objective metric).
        metrics["param_count"] = self.model.count_params()
        metrics["model_bytes"] = sum(int(w.nbytes) for w in self.model.get_weights())
        metrics["epoch_time_s"] = time.perf_counter() - self._t0
        metrics["samples_per_s"] = self.samples / max(self._train_s, 1e-9)
        self.history.append(metrics)
        self.on_best_candidate(done, metrics)
        # 6. Every worker saves: under MWMS, saving reads mirrored variables through collective
        #    ops, and a save on rank 0 alone deadlocks. Only rank 0's copy becomes the checkpoint,
        #    but every worker calls report the same number of times: it is a barrier.
        with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-") as folder:
            checkpoint.write(self.model, folder, history=self.history)
            saved = Checkpoint.from_directory(folder) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=saved)


class _CommittedEpochs(UserCallback):
    """On Ray Train's controller: each epoch, once all workers reported it and its checkpoint is
    committed, to MLflow and to the driver's progress queue. An epoch that a worker reported but
    the controller never committed (a worker died first) is trained again after the restart;
    sent from here, it is logged once, not once per attempt. MLflow gets it in the background
    (``EpochLogger``); the last epoch's event says which epochs MLflow did not get."""

    def __init__(self, tracking: TrackedRun | None, progress: Any, total_epochs: int) -> None:
        self.tracking, self.logger = tracking, None  # the logger's thread starts on the controller
        self.progress, self.total_epochs = progress, total_epochs

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        if checkpoint is None:  # not an epoch: the final metrics of a run resumed when done
            return
        epoch = dict(metrics[0])  # rank 0's
        event = {**epoch, "total_epochs": self.total_epochs}
        if self.tracking:
            self.logger = self.logger or EpochLogger(self.tracking)
            self.logger.log(epoch, step=int(epoch["epoch"]))
            if epoch["epoch"] >= self.total_epochs:  # the driver logs the rest after fit
                self.logger.flush()
                event["unlogged_epochs"] = list(self.logger.unlogged)
        if self.progress is not None:
            try:
                self.progress.put_nowait(event)
            except Exception:  # the driver is gone: the epoch is in MLflow, training goes on
                self.progress = None


def _streamed_input(
    spec: Experiment, data: Dataset, *, rank: int, world: int
) -> tuple[Any, Any, int, int]:
    """This worker's share of the streamed rows: Ray Train splits each dataset into equal
    shards (``streaming_split(equal=True)``), so every worker runs the same number of steps."""
    from raytrain.data.streaming import worker_dataset

    assert data.streams is not None
    batch = spec.per_worker_batch_size
    steps = data.info.num_train // world // batch
    val_rows = data.info.num_val // world
    if steps < 1 or val_rows < 1:
        raise DataError(
            f"{data.info.num_train} training and {data.info.num_val} validation rows are too few "
            f"for {world} worker(s) at {batch} rows per worker and step"
        )
    val_batch = min(batch, val_rows)
    train_ds = worker_dataset(
        data.streams,
        ray.train.get_dataset_shard("train"),
        batch_size=batch,
        steps=steps,
        shuffle=True,
        seed=spec.train.seed + rank,
        repeat=True,
    )
    val_ds = worker_dataset(
        data.streams,
        ray.train.get_dataset_shard("val"),
        batch_size=val_batch,
        steps=val_rows // val_batch,
        shuffle=False,
        seed=0,
        repeat=False,
    )
    return train_ds, val_ds, steps, val_rows // val_batch


def _strategy(spec: Experiment, world: int) -> Any:
    if spec.scaling.accelerator == "tpu":
        # This worker holds the whole TPU VM host; its chips are local to it.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if world == 1:
        return tf.distribute.get_strategy()
    impl = tf.distribute.experimental.CommunicationImplementation
    chosen = {"auto": impl.AUTO, "ring": impl.RING, "nccl": impl.NCCL}[spec.scaling.communication]
    options = tf.distribute.experimental.CommunicationOptions(implementation=chosen)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _allreduce_dtype(spec: Experiment) -> str:
    if spec.scaling.allreduce_dtype != "auto":
        return spec.scaling.allreduce_dtype
    # mixed_float16's LossScaleOptimizer sums the (scaled) gradients itself.
    return "float32" if spec.train.mixed_precision == "mixed_float16" else "bfloat16"


def _all_reduce_gradients_as(dtype_name: str, bytes_per_pack: int, optimizer: Any) -> None:
    """Sum gradients across workers in ``dtype_name``, in packs of ``bytes_per_pack``.

    tf_keras documents ``aggregate_gradients`` as the method to override for custom aggregation;
    it is replaced on this instance only, so saved models keep the plain optimizer class.
    """
    dtype = tf.as_dtype(dtype_name)
    options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=bytes_per_pack)

    def aggregate_gradients(self: Any, grads_and_vars: list) -> list:
        present = [(g, v) for g, v in grads_and_vars if g is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.cast(g, dtype) for g, _ in present], options=options
        )
        return [(tf.cast(g, v.dtype), v) for g, (_, v) in zip(summed, present, strict=True)]

    optimizer.aggregate_gradients = types.MethodType(aggregate_gradients, optimizer)


def build_optimizer(spec: Experiment) -> Any:
    """The optimizer the experiment names (also used by the benchmarks' plain-Keras baseline)."""
    opt = spec.train.optimizer
    common: dict[str, Any] = {"learning_rate": opt.learning_rate}
    if opt.clipnorm:
        common["clipnorm"] = opt.clipnorm
    if opt.name == "adam":
        return tf.keras.optimizers.Adam(**common)
    if opt.name == "adamw":
        return tf.keras.optimizers.AdamW(weight_decay=opt.weight_decay or 0.004, **common)
    if opt.name == "sgd":
        return tf.keras.optimizers.SGD(
            momentum=opt.momentum, weight_decay=opt.weight_decay or None, **common
        )
    if opt.name == "rmsprop":
        return tf.keras.optimizers.RMSprop(momentum=opt.momentum, **common)
    return tf.keras.optimizers.Adagrad(**common)
