"""Ray Train V2's private names: the failure policy factory, the controller and worker-group
callbacks, the default callbacks a trainer starts, and the backend's helpers.

Written for Ray 2.60 (Train V2, on by default). Ray Train has no public setting for the failure
policy or for leaving out its default callbacks, and no public callback interface on the
controller: raytrain/train/failures.py and raytrain/train/loop.py say why each is needed.
"""

from __future__ import annotations

from typing import Any

from ray._common import network_utils
from ray.train._internal import utils as train_utils
from ray.train.v2._internal import constants, exceptions, util
from ray.train.v2._internal.callbacks import datasets, placement_group_callback
from ray.train.v2._internal.execution import callback
from ray.train.v2._internal.execution.controller import state
from ray.train.v2._internal.execution.failure_handling import default
from ray.train.v2.api import data_parallel_trainer

from raytrain.shims.check import calls, require

__all__ = [
    "WRITTEN_FOR",
    "ControllerCallback",
    "DatasetsCallback",
    "DefaultFailurePolicy",
    "FailureDecision",
    "LeanTrainer",
    "PlacementGroupCleanerCallback",
    "RayTrainError",
    "RestartingState",
    "TrainingFramework",
    "UserExceptionWithTraceback",
    "WorkerGroupCallback",
    "install_failure_policy",
    "installed_failure_policy",
    "is_preemption_failure",
    "propagated_settings",
    "worker_address",
]

WRITTEN_FOR = "ray 2.60"
_SHIM = "raytrain.shims.ray_train"


def _need(owner: Any, name: str) -> Any:
    return require(owner, name, shim=_SHIM, written_for=WRITTEN_FOR)


RayTrainError: type[Exception] = _need(exceptions, "RayTrainError")
UserExceptionWithTraceback: type[Exception] = _need(exceptions, "UserExceptionWithTraceback")
ControllerCallback: type = _need(callback, "ControllerCallback")
WorkerGroupCallback: type = _need(callback, "WorkerGroupCallback")
RestartingState: type = _need(state, "RestartingState")
DefaultFailurePolicy: type = _need(default, "DefaultFailurePolicy")
FailureDecision: Any = _need(default, "FailureDecision")
DatasetsCallback: type = _need(datasets, "DatasetsCallback")
PlacementGroupCleanerCallback: type = _need(
    placement_group_callback, "PlacementGroupCleanerCallback"
)
TrainingFramework: Any = _need(util, "TrainingFramework")
_is_preemption_failure = _need(default, "_is_preemption_failure")
_get_address_and_port = _need(train_utils, "get_address_and_port")
_build_address = _need(network_utils, "build_address")
_get_env_vars_to_propagate = _need(constants, "get_env_vars_to_propagate")

# The trainer builds its controller with the module's ``create_failure_policy`` and the
# callbacks of its ``_create_default_callbacks``: patching or overriding either is dead unless
# the trainer still calls it.
_need(data_parallel_trainer, "create_failure_policy")
calls(data_parallel_trainer, "create_failure_policy", shim=_SHIM, written_for=WRITTEN_FOR)
_need(data_parallel_trainer.DataParallelTrainer, "_create_default_callbacks")
calls(
    data_parallel_trainer.DataParallelTrainer,
    "_create_default_callbacks",
    shim=_SHIM,
    written_for=WRITTEN_FOR,
)


def install_failure_policy(policy: type) -> None:
    """Make every Ray Train run this process starts decide its failures with ``policy`` (built
    from the run's ``FailureConfig``, as Ray's own default policy is)."""
    data_parallel_trainer.create_failure_policy = policy


def installed_failure_policy() -> Any:
    """The factory the trainer calls now (what ``install_failure_policy`` set)."""
    return data_parallel_trainer.create_failure_policy


class LeanTrainer(data_parallel_trainer.DataParallelTrainer):
    """Ray's ``DataParallelTrainer`` that leaves out the default callbacks (each a helper
    process or actor) that ``unneeded_callbacks`` names."""

    def unneeded_callbacks(self) -> tuple[type, ...]:
        return ()

    def _create_default_callbacks(self) -> list[Any]:
        unneeded = self.unneeded_callbacks()
        return [c for c in super()._create_default_callbacks() if not isinstance(c, unneeded)]


def is_preemption_failure(error: Exception) -> bool:
    """Whether Ray Train counts ``error`` as a node preemption (not against max_failures)."""
    return bool(_is_preemption_failure(error))


def worker_address() -> str:
    """``host:port`` on which this worker can serve MultiWorkerMirroredStrategy's gRPC."""
    return str(_build_address(*_get_address_and_port()))


def propagated_settings() -> dict[str, str]:
    """The ``RAY_TRAIN_*`` variables Ray passes from a run's driver to its controller."""
    return dict(_get_env_vars_to_propagate())
