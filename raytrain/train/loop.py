"""Data-parallel training of one experiment on Ray Train.

``fit`` builds Ray Train's trainer (TensorflowTrainer's, see backend.py); ``train_loop`` is what
each of its workers runs. Read the loop top to bottom: the numbered comments are the distributed
pitfalls it steps around.

    trainer workers: N Ray actors, one tf.distribute replica each
    per epoch:       fit one epoch -> every worker saves -> every worker reports (a barrier)
    after the last:  with data.test, the best epoch's weights on the test rows, reported once
    on failure:      Ray restarts the group after a lost worker (failures.py); the loop resumes
                     from the last committed checkpoint
    per commit:      the controller sends the epoch to MLflow and the driver (_CommittedEpochs)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import ray
import ray.train
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)

from raytrain import storage
from raytrain.cluster.connection import WORKER_ENV, on_private_instance
from raytrain.cluster.resources import worker_nodes
from raytrain.config.schema import Experiment
from raytrain.shims import ray_train
from raytrain.tracking import credentials, names
from raytrain.tracking.credentials import Credentials
from raytrain.tracking.runs import CLIENT_ENV, EpochLogger, TrackedRun, tag_run
from raytrain.tracking.system import watch_node
from raytrain.train import checkpoint, failures
from raytrain.train.backend import WORKER_NODES_ENV, KerasBackendConfig
from raytrain.train.evaluation import (
    TEST_EPOCH,
    TEST_PREFIX,
    selection,
    write_test_metrics,
)
from raytrain.train.session import RayTrainSession, Session, Trained, TrialSession

if TYPE_CHECKING:
    pass

__all__ = [
    "EpochSink",
    "KerasTrainer",
    "fit",
    "loop_config",
    "ray_train_settings",
    "train",
    "train_in_trial",
    "train_loop",
]


class KerasTrainer(ray_train.LeanTrainer):
    """Ray's DataParallelTrainer without the helper processes a run does not need.

    Ray 2.60's trainer starts a Ray Data ``DatasetManager`` actor for every run, with no
    datasets too (its ``DatasetsCallback``): one more Python process per run and per sweep
    trial, ~1.4 s of CPU (measured on 2 cores) on the path to the first epoch, for nothing.
    Workers then get no dataset shard provider, which Ray Train's worker context allows (its
    default is None). On a private instance (``on_private_instance``) its detached
    ``PlacementGroupCleaner`` actor, which releases a run's workers' placement group once the
    run's controller is gone, has nothing to do either: the instance ends with the driver."""

    def unneeded_callbacks(self) -> tuple[type, ...]:
        unneeded: list[type] = [] if self.datasets else [ray_train.DatasetsCallback]
        if on_private_instance():
            unneeded.append(ray_train.PlacementGroupCleanerCallback)
        return tuple(unneeded)


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
) -> Trained:
    """Run the experiment's training as a Ray Train run on the connected Ray cluster.

    ``datasets``: the Ray Data train/val datasets of a streamed source (``data.streaming``),
    which Ray Train splits across the workers."""
    # Ray Train's controller collects each report when it polls the workers, every 2 s by
    # default, and a worker's next report waits for that: with sub-second epochs, most of the
    # run would be spent waiting. Polling at 0.1 s cut a 0.02 s epoch's wall time from 2 s to
    # 0.2 s (benchmarks/README.md). The variable propagates from this driver to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    config = loop_config(
        spec,
        data_ref=data_ref,
        run_folder=storage.join(storage_path, run_name),
        base_dir=base_dir,
        tracking=tracking,
        progress=progress,
    )
    signed_in = config["signed_in"]
    path, filesystem = storage.ray_storage(storage_path)
    failures.install()
    if tracking is not None or progress is not None:
        callbacks = [
            *(callbacks or []),
            _CommittedEpochs(EpochSink(tracking, progress, spec.train.epochs, signed_in)),
        ]
    if progress is not None:
        callbacks = [*(callbacks or []), failures.LossNotice(progress, spec.failure.max_failures)]
    # Ray's TensorflowTrainer, with a backend config whose module does not import TensorFlow.
    trainer = KerasTrainer(
        train_loop,
        train_loop_config=config,
        backend_config=KerasBackendConfig(),
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
    result = trainer.fit()
    latest, kept = result.checkpoint, result.best_checkpoints or []
    return Trained(
        folder=storage.to_uri(result.path, result.filesystem),
        metrics=dict(result.metrics or {}),
        latest=storage.to_uri(latest.path, latest.filesystem) if latest else None,
        kept=[(storage.to_uri(c.path, c.filesystem), dict(m)) for c, m in kept],
    )


def loop_config(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    run_folder: str,
    base_dir: str,
    tracking: TrackedRun | None = None,
    progress: Any | None = None,
) -> dict[str, Any]:
    """What ``train`` reads, wherever it runs: the run's MLflow run (a single run; a sweep's
    trials log through the driver) signed in as this driver is, and the driver's progress queue."""
    return {
        "spec": spec.model_dump(mode="json"),
        "data": data_ref,
        "tracking": tracking,
        # Shown (Ray Train's run details) as its repr, password hidden.
        "signed_in": credentials.current() if tracking else None,
        "progress": progress,
        "base_dir": base_dir,
        "run_folder": run_folder,
    }


def train_in_trial(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    folder: str,
    base_dir: str,
    datasets: dict[str, Any] | None = None,
) -> None:
    """A 1-worker sweep trial, trained in this (Tune trial) process: no Ray Train run, no worker
    process, no TensorFlow import after the process's first trial. Checkpoints go to ``folder``
    in Ray Train's layout, each epoch to Tune (``session.TrialSession``)."""
    config = loop_config(spec, data_ref=data_ref, run_folder=folder, base_dir=base_dir)
    train(config, TrialSession(spec, folder, datasets))


def ray_train_settings() -> dict[str, str]:
    """This process's Ray Train settings (``RAY_TRAIN_*`` variables the user set), for the
    processes that start Train runs on its behalf: Ray passes them from a run's driver to its
    controller, and a sweep trial, the driver of its run, does not have the user's shell."""
    return ray_train.propagated_settings()


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker's share of the run."""
    train(config, RayTrainSession())


def train(config: dict[str, Any], session: Session) -> None:
    """The training loop: one worker's share of a Ray Train run, or a whole 1-worker sweep trial
    in its Tune trial's process (``session`` says which)."""
    import tensorflow as tf  # here, not at the top: only workers need it (worker.py says why)

    from raytrain.data.inputs import worker_input
    from raytrain.models import build_model
    from raytrain.train.worker import (
        Reporter,
        all_reduce_gradients_as,
        allreduce_dtype,
        build_optimizer,
        distributed,
        strategy_for,
    )

    spec = Experiment.model_validate(config["spec"])
    rank, world = session.rank, session.world

    # 1. Threads: Ray gives each worker OMP_NUM_THREADS = its CPUs; both of TF's pools follow the
    #    same budget. Two inter-op threads on a 1-CPU worker run the backward matmuls side by side
    #    on a second core: N such workers on N cores fight over them (benchmarks/README.md).
    cpus = max(1, int(spec.scaling.resources_per_worker.get("CPU", 1)))
    _set_threads(tf, cpus, spec.scaling.inter_op_threads or cpus)
    #    A clean slate: a sweep's trial process trains one trial after another (Tune reuses it),
    #    so nothing of the last trial's graph, policy or random state may reach this one.
    tf.keras.backend.clear_session()
    policy = spec.train.mixed_precision if spec.train.mixed_precision != "none" else "float32"
    tf.keras.mixed_precision.set_global_policy(policy)
    tf.keras.utils.set_random_seed(spec.train.seed)

    # 2. Strategy: MultiWorkerMirroredStrategy only when there is a peer. With one worker it adds
    #    ~40 ms per step for nothing (measured: 0.49x plain Keras at batch 512); TF's default
    #    strategy runs at plain-Keras speed.
    strategy = strategy_for(spec, world)

    # 3. Data: each worker trains on its own equal-length shard, at its share of the global
    #    batch. Equal shards mean equal steps, which the all-reduce needs on every worker.
    data = (
        config["data"] if not isinstance(config["data"], ray.ObjectRef) else ray.get(config["data"])
    )
    batch = spec.per_worker_batch_size
    where: dict[str, Any] = {"rank": rank, "world": world, "shard_of": session.dataset_shard}
    val_ds, val_steps = worker_input(spec, data, "val", **where)
    if world > 1:
        val_ds = distributed(strategy, val_ds)

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
    dtype = allreduce_dtype(spec)
    if world > 1 and (dtype != "float32" or spec.scaling.bytes_per_pack):
        all_reduce_gradients_as(dtype, spec.scaling.bytes_per_pack, model.optimizer)

    # 5. Resume: after a worker failure Ray restarts the whole group and hands every worker the
    #    last reported checkpoint; so does a run resumed from its storage folder (`raytrain
    #    resume`: the same RunConfig name and storage). Weights, optimizer state, the epoch
    #    counter and the metrics so far come back from it; without it the loop would silently
    #    start over from epoch 0.
    with session.resume_from() as folder:
        history = checkpoint.restore(model, folder)
    start_epoch = int(history[-1]["epoch"]) if history else 0
    tracked = config["tracking"] if rank == 0 else None
    if tracked and config["signed_in"]:  # rank 0 tags the run, signed in as the driver is
        config["signed_in"].use()
    if tracked and start_epoch:
        tag_run(tracked, names.RESUMED_FROM_TAG, str(start_epoch))
    if start_epoch >= spec.train.epochs:
        # Killed after its last checkpoint but before it was marked done: nothing is left to
        # train, but a sweep must still hear the final metrics (Tune rejects a metric-less end).
        session.report(history[-1], None)
        return
    # The training input, for exactly the epochs left (a streamed split waits for every
    # worker at each pass: a pass opened past the last epoch would wait for good).
    train_ds, steps = worker_input(
        spec, data, "train", **where, epochs=spec.train.epochs - start_epoch
    )
    if world > 1:
        train_ds = distributed(strategy, train_ds)
    if tracked:  # where the workers run: what data.locality promises, checked after the fact
        nodes = os.environ[WORKER_NODES_ENV].split(",")
        tag_run(tracked, names.NODES_TAG, ", ".join(worker_nodes(nodes)))

    reporter = Reporter(
        session=session,
        samples_per_epoch=min(steps * batch, data.info.num_train // world) * world,
        history=history,
        keep_best=selection(spec) if data.info.num_test else None,
    )
    if start_epoch:  # the restored weights are the best this attempt knows of
        reporter.set_model(model)
        reporter.on_best_candidate(start_epoch, history[-1])
    stop_watching = watch_node(  # system metrics, one series per node
        config["tracking"], config["signed_in"], first_on_node=session.local_rank == 0
    )
    try:
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
    finally:
        stop_watching()

    # 7. Test: once, with the best epoch's weights, each worker on its share of the test rows;
    #    evaluate's metrics are all-reduced, so every worker holds those of all rows. Reported
    #    after the last epoch with no checkpoint: no selection (checkpoints, ASHA) ever sees it,
    #    and with the last epoch's metrics, so that Tune's searcher reads the same values.
    if data.info.num_test and reporter.best_weights is not None:
        test_ds, test_steps = worker_input(spec, data, "test", **where)
        if world > 1:
            test_ds = distributed(strategy, test_ds)
        model.set_weights(reporter.best_weights)
        scores = model.evaluate(test_ds, steps=test_steps, return_dict=True, verbose=0)
        tested = {f"{TEST_PREFIX}{k}": float(v) for k, v in scores.items()}
        tested[TEST_EPOCH] = cast(int, reporter.best_epoch)  # set with best_weights
        if rank == 0:
            write_test_metrics(config["run_folder"], tested)
        session.report({**reporter.last, **tested}, None)


class EpochSink:
    """Each committed epoch (its checkpoint stored) to MLflow and to the driver's progress
    queue. MLflow gets it in the background (``EpochLogger``); the last epoch's event says which
    epochs MLflow did not get. Runs where the epochs are committed: Ray Train's controller, or
    the actor of a 1-worker run."""

    def __init__(
        self,
        tracking: TrackedRun | None,
        progress: Any,
        total_epochs: int,
        signed_in: Credentials | None = None,
    ) -> None:
        self.tracking = tracking
        self.logger: EpochLogger | None = None  # the logger's thread starts where it runs
        self.signed_in = signed_in
        self.progress, self.total_epochs = progress, total_epochs

    def __call__(self, epoch: dict[str, float]) -> None:
        event: dict[str, Any] = {**epoch, "total_epochs": self.total_epochs}
        if self.tracking:
            if self.logger is None:
                if self.signed_in:  # signs in as the driver did
                    self.signed_in.use()
                self.logger = EpochLogger(self.tracking)
            self.logger.log(epoch, step=int(epoch["epoch"]))
            if epoch["epoch"] >= self.total_epochs:  # the driver logs the rest after fit
                self.logger.flush()
                event["unlogged_epochs"] = list(self.logger.unlogged)
        if self.progress is not None:
            try:
                self.progress.put_nowait(event)
            except Exception:  # the driver is gone: the epoch is in MLflow, training goes on
                self.progress = None


class _CommittedEpochs(UserCallback):
    """On Ray Train's controller: each epoch, once all workers reported it and its checkpoint is
    committed, to the ``EpochSink``. An epoch that a worker reported but the controller never
    committed (a worker died first) is trained again after the restart; sent from here, it is
    logged once, not once per attempt."""

    def __init__(self, sink: EpochSink) -> None:
        self.sink = sink

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if checkpoint is not None:  # else not an epoch: the final metrics of a finished run
            self.sink(dict(metrics[0]))  # rank 0's


def _set_threads(tf: Any, intra: int, inter: int) -> None:
    """Size TensorFlow's thread pools, once per process: TensorFlow refuses a change after its
    runtime started, which a reused trial process's next trial would ask for (same sizes then,
    or the first trial's: a sweep does not sweep scaling)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        pass  # already initialized in this process: the pools keep their sizes
