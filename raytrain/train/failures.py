"""Which failures Ray Train retries: a lost worker or node, never a bug in the training code.

Ray Train retries every worker-group failure up to ``failure.max_failures``: an exception the
training code raised (a model builder's, unreadable data, a diverging loss) as much as a worker
that died. A deterministic error would fail the same way on every retry, each after a restart and
a checkpoint restore, and the user would wait for all of them to read its message. This policy
raises such an error at once and leaves the rest to Ray's default policy: a worker whose process
or node was lost (its health check failed or timed out), and the errors its peers see when it
goes (a collective that lost a member). Ray counts announced node preemptions on a budget of
their own (``FailureConfig.max_preemption_failures``, unlimited by default).

Ray Train 2.60 has no public setting for the policy: ``install`` replaces the factory its
trainer calls on the driver (``create_failure_policy``, replaced through
``raytrain.shims.ray_train``) when ``fit`` builds the controller. Ray
logs a retry only to the controller's log file; ``LossNotice``, a controller callback that knows
where each worker runs, tells the user in one line on the driver's progress queue (a str there,
where epochs are dicts) which workers were lost, on which node, and that training goes on.

After a lost node the new group may not fit on the nodes left (``scaling`` asks for a fixed
number of workers): Ray then waits for room, 60 s at a time (``WorkerGroupStartupTimeoutError``,
retried without limit as a controller error, never counted against ``max_failures``), until the
node is back (the on-prem config's autoscaler restarts Ray on a machine that stopped answering)
or another joins. Those waits are not losses: the one line already said the run goes on.
"""

from __future__ import annotations

import re
from typing import Any

from ray.exceptions import RayActorError
from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError

from raytrain.shims import ray_train
from raytrain.shims.ray_train import (
    ControllerCallback,
    DefaultFailurePolicy,
    FailureDecision,
    RayTrainError,
    RestartingState,
    UserExceptionWithTraceback,
    WorkerGroupCallback,
    is_preemption_failure,
)

__all__ = ["LossNotice", "RetryLostWorkersOnly", "install", "is_code_error", "restart_notice"]

# What TensorFlow raises in a worker whose peer is gone, mid all-reduce: a loss, not a bug.
PEER_LOSS = ("UnavailableError", "CancelledError", "AbortedError", "DeadlineExceededError")


def is_code_error(error: Exception) -> bool:
    """Every failed worker raised from the training code (the controller holds the code's own
    exception), and none of them for a lost worker or peer: a failed or timed-out health check
    is Ray Train's own error, a dead actor Ray's, a broken collective TensorFlow's."""
    if not isinstance(error, WorkerGroupError) or not error.worker_failures:
        return False
    return all(
        not isinstance(failure, RayTrainError | RayActorError | UserExceptionWithTraceback)
        and type(failure).__name__ not in PEER_LOSS
        for failure in error.worker_failures.values()
    )


def _is_loss(failure: Exception) -> bool:
    """The worker itself is gone (its process or node), not a peer that saw it go."""
    return isinstance(failure, RayTrainError | RayActorError)


def _lost_ranks(failures: dict[int, Exception]) -> dict[int, str]:
    """The ranks that were lost, each with why: those whose process or node is gone; else the
    peers TensorFlow names in its collective errors (``remote target /job:worker/replica:0/
    task:N``: Ray's TF backend numbers the tasks by world rank), as seen by the survivors; else
    every rank that failed."""
    gone = {
        rank: type(getattr(f, "health_check_failure", f)).__name__
        for rank, f in failures.items()
        if _is_loss(f)
    }
    if gone:
        return gone
    named = {
        int(rank): f"its peers saw {type(f).__name__}"
        for f in failures.values()
        for rank in re.findall(r"remote target /job:worker/replica:\d+/task:(\d+)", str(f))
    }
    return named or {rank: type(f).__name__ for rank, f in failures.items()}


def restart_notice(error: Exception, retry: int, limit: int, nodes: dict[int, str]) -> str:
    """One line: which workers were lost, on which node (``nodes``: rank -> address) and why,
    and that the run goes on."""
    lost = _lost_ranks(getattr(error, "worker_failures", None) or {})
    named = ", ".join(
        f"worker {rank}{f' on {nodes[rank]}' if rank in nodes else ''} ({why})"
        for rank, why in sorted(lost.items())
    )
    budget = (
        "a preemption, not counted in failure.max_failures"
        if is_preemption_failure(error)
        else f"retry {retry} of {limit}, failure.max_failures"
    )
    return (
        f"lost {named or type(error).__name__}: restarting the workers from the last "
        f"checkpoint once the cluster has room for them ({budget})"
    )


class RetryLostWorkersOnly(DefaultFailurePolicy):
    """Ray's default policy, except that an error of the training code is raised at once."""

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        if is_code_error(training_failed_error):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class LossNotice(ControllerCallback, WorkerGroupCallback):
    """On Ray Train's controller: the node of each worker of the group that runs, and, when
    the group restarts after a loss, the line that says so on ``notify`` (a queue the driver
    reads). The failure policy cannot say where: it gets the error, not the group."""

    def __init__(self, notify: Any, limit: int) -> None:
        self.notify, self.limit = notify, limit
        self.nodes: dict[int, str] = {}
        self.retries = 0

    def after_worker_group_start(self, worker_group: Any) -> None:
        self.nodes = {
            w.distributed_context.world_rank: w.metadata.node_ip for w in worker_group.get_workers()
        }

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        error = getattr(current_state, "training_failed_error", None)
        restarting = isinstance(current_state, RestartingState)
        if not restarting or not isinstance(error, WorkerGroupError | PreemptionError):
            return  # a group that could not be placed yet is retried without a word
        if not is_preemption_failure(error):
            self.retries += 1
        if self.notify is None:
            return
        try:
            self.notify.put_nowait(restart_notice(error, self.retries, self.limit, self.nodes))
        except Exception:  # the driver is gone: training goes on without it
            self.notify = None


def install() -> None:
    """Make every Ray Train run started by this process use ``RetryLostWorkersOnly``."""
    ray_train.install_failure_policy(RetryLostWorkersOnly)
