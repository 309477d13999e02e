"""Ray Train's TensorFlow backend, reachable without importing TensorFlow.

What ``ray.train.tensorflow.TensorflowConfig`` does: before training, give every worker the
``TF_CONFIG`` that MultiWorkerMirroredStrategy reads (the workers' addresses and its own index).
Ray's class lives in the ``ray.train.tensorflow`` package, whose ``__init__`` imports TensorFlow;
Ray Train's controller unpickles the backend config, so with Ray's class the controller (which
never trains) imported TensorFlow before starting the workers: seconds of CPU on the path to
the first epoch of every run and every sweep trial (benchmarks/README.md, small_run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

from raytrain.shims.ray_train import TrainingFramework, worker_address

__all__ = ["WORKER_NODES_ENV", "KerasBackendConfig", "place_worker", "set_tf_config"]

# Each worker's environment: the Ray node IDs of all workers, by rank (comma-separated). Ray
# Train tells a worker nothing about where its peers run; the backend knows when it starts them.
WORKER_NODES_ENV = "RAYTRAIN_WORKER_NODES"


@dataclass
class KerasBackendConfig(BackendConfig):
    """``TensorflowConfig`` under another name (same framework tag for Ray's state export)."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _KerasBackend

    @property
    def framework(self) -> Any:  # Ray's TrainingFramework
        return TrainingFramework.TENSORFLOW


class _KerasBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        places = worker_group.execute(place_worker)
        urls = [url for url, _ in places]
        nodes = ",".join(node for _, node in places)
        ray.get(
            [
                worker_group.execute_single_async(i, set_tf_config, urls, i, nodes)
                for i in range(len(worker_group))
            ]
        )


def place_worker() -> tuple[str, str]:
    """This worker's address for MultiWorkerMirroredStrategy, and its Ray node."""
    return worker_address(), ray.get_runtime_context().get_node_id()


def set_tf_config(urls: list[str], index: int, nodes: str) -> None:
    """As Ray's backend: this worker's place in the cluster, and tf_keras as tf.keras; and where
    every worker runs (WORKER_NODES_ENV)."""
    cluster = {"cluster": {"worker": urls}, "task": {"type": "worker", "index": index}}
    os.environ["TF_CONFIG"] = json.dumps(cluster)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ[WORKER_NODES_ENV] = nodes
