"""A 1-worker run in one Ray actor, without Ray Train.

A Ray Train run starts a controller, a placement group, a synchronization actor and its worker
group before the first step, ~10 s on 2 cores for one worker (benchmarks/README.md, small_run).
With one worker none of it is needed: one actor holding the worker's resources (its GPU, the
``data.locality`` resource) trains with the same loop (``loop.train``), keeps its checkpoints in
the run's folder in Ray Train's layout (``session.CheckpointFolder``) and sends each committed
epoch to MLflow and the driver (``loop.EpochSink``), as Ray Train's controller does.

What Ray Train did for a run, done here: a lost actor (its process killed, its node gone) is
started again, from the latest checkpoint, up to ``failure.max_failures`` times (-1: without
limit), and the driver hears one line saying so; where the cluster has no room for it, Ray holds
the new actor until there is (a node back, or another one). An error of the training code or
data is raised at once, never retried. ``raytrain resume`` finds the checkpoints in the run's
folder again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, cast

import ray

from raytrain import storage
from raytrain.cluster.connection import WORKER_ENV
from raytrain.config.schema import Experiment
from raytrain.tracking.runs import CLIENT_ENV, TrackedRun
from raytrain.train.backend import WORKER_NODES_ENV
from raytrain.train.loop import loop_config
from raytrain.train.session import CheckpointFolder, ProcessSession, Trained

__all__ = ["fit_in_process", "loss_notice", "release"]

log = logging.getLogger(__name__)


def fit_in_process(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    run_name: str,
    storage_path: str,
    tracking: TrackedRun | None,
    progress: Any | None,
    base_dir: str,
    datasets: dict[str, Any] | None = None,
) -> Trained:
    """Train the 1-worker experiment in one actor on the connected cluster; start it again
    after a loss (``failure.max_failures``)."""
    folder = storage.join(storage_path, run_name)
    config = loop_config(
        spec,
        data_ref=data_ref,
        run_folder=folder,
        base_dir=base_dir,
        tracking=tracking,
        progress=progress,
    )
    resources = dict(spec.worker_resources())
    options = {
        "num_cpus": resources.pop("CPU", 1.0),
        "num_gpus": resources.pop("GPU", 0.0),
        "resources": resources,
        "runtime_env": {"env_vars": {**WORKER_ENV, **CLIENT_ENV, **storage.forwarded_env()}},
    }
    limit, lost = spec.failure.max_failures, 0
    while True:
        # @ray.remote made _Trainer an actor class, which mypy does not see.
        trainer = _Trainer.options(**options).remote()  # type: ignore[attr-defined]
        node = "a node"
        try:
            node = ray.get(trainer.node.remote())
            metrics = ray.get(trainer.train.remote(config, folder, datasets))
            # Kept up, TensorFlow imported, to log the model (``release`` ends it).
            return replace(CheckpointFolder(spec, folder).trained(metrics), trainer=trainer)
        except ray.exceptions.RayActorError as exc:  # its process or node is gone
            ray.kill(trainer)
            lost += 1
            if 0 <= limit < lost:
                raise
            notice = loss_notice(node, type(exc).__name__, lost, limit)
            if progress is None:
                log.warning(notice)
            else:
                progress.put(notice)
        except BaseException:
            ray.kill(trainer)
            raise


def release(trained: Trained) -> None:
    """End the process that trained ``trained``, if it is still up: its resources go back."""
    if trained.trainer is not None:
        ray.kill(trained.trainer)


def loss_notice(node: str, why: str, retry: int, limit: int) -> str:
    """One line: the worker was lost, where and why, and the run goes on."""
    budget = f"retry {retry} of {limit}" if limit >= 0 else f"retry {retry}"
    return (
        f"lost worker 0 on {node} ({why}): restarting the worker from the last checkpoint "
        f"once the cluster has room for it ({budget}, failure.max_failures)"
    )


@ray.remote
class _Trainer:
    """The run's one training process."""

    def node(self) -> str:
        return cast(str, ray.util.get_node_ip_address())

    def train(
        self, config: dict[str, Any], folder: str, datasets: dict[str, Any] | None
    ) -> dict[str, float]:
        from raytrain.train.loop import EpochSink, train

        spec = Experiment.model_validate(config["spec"])
        os.environ[WORKER_NODES_ENV] = ray.get_runtime_context().get_node_id()
        sink = EpochSink(config["tracking"], config["progress"], spec.train.epochs)
        if config["signed_in"]:
            config["signed_in"].use()
        session = ProcessSession(spec, folder, datasets, on_epoch=sink)
        train(config, session)
        if sink.logger is not None:
            sink.logger.flush()
        return session.final

    def log_model(self, run: TrackedRun, location: str, **args: Any) -> str | None:
        """The driver's model logging, here where TensorFlow is imported already."""
        from raytrain.train.checkpoint import log_model

        return log_model(run, location, **args)
