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
trainer calls on the driver (``create_failure_policy``) when ``fit`` builds the controller. Ray
logs a retry only to the controller's log file; the policy also tells the user, in one line on
the driver's progress queue (a str there, where epochs are dicts), which workers were lost, on
which node, and that training goes on.

After a lost node the new group may not fit on the nodes left (``scaling`` asks for a fixed
number of workers): Ray then waits for room, 60 s at a time (``WorkerGroupStartupTimeoutError``,
retried without limit as a controller error, never counted against ``max_failures``), until the
node is back (the on-prem config's autoscaler restarts Ray on a machine that stopped answering)
or another joins. Those waits are not losses: the one line already said the run goes on.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ray.exceptions import RayActorError
from ray.train import FailureConfig
from ray.train.v2._internal.exceptions import (
    RayTrainError,
    UserExceptionWithTraceback,
    WorkerHealthCheckFailedError,
)
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailureDecision,
)
from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure
from ray.train.v2.api import data_parallel_trainer
from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError

__all__ = ["RetryLostWorkersOnly", "install", "is_code_error", "restart_notice"]

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


def _described(rank: int, failure: Exception) -> str:
    """``worker 1 on 10.0.0.2 (ActorDiedError)``: the node from Ray's message, when it says."""
    if isinstance(failure, WorkerHealthCheckFailedError):
        cause = failure.health_check_failure
    else:
        cause = failure
    node = re.search(r"node_ip='([^']+)'|\bip: (\S+)", str(failure))
    where = f" on {node.group(1) or node.group(2)}" if node else ""
    return f"worker {rank}{where} ({type(cause).__name__})"


def restart_notice(error: Exception, retry: int, limit: int) -> str:
    """One line: which workers were lost, where and why, and that the run goes on."""
    failures = getattr(error, "worker_failures", None) or {}
    lost = {rank: f for rank, f in failures.items() if _is_loss(f)} or failures
    named = ", ".join(_described(rank, failure) for rank, failure in sorted(lost.items()))
    budget = (
        "a preemption, not counted in failure.max_failures"
        if _is_preemption_failure(error)
        else f"retry {retry} of {limit}, failure.max_failures"
    )
    return (
        f"lost {named or type(error).__name__}: restarting the workers from the last "
        f"checkpoint once the cluster has room for them ({budget})"
    )


class RetryLostWorkersOnly(DefaultFailurePolicy):
    """Ray's default policy, except that an error of the training code is raised at once; a
    retry is announced on ``notify`` (a queue the driver reads), when given."""

    def __init__(self, failure_config: FailureConfig, notify: Any = None) -> None:
        super().__init__(failure_config)
        self.notify = notify
        self.retries = 0

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        if is_code_error(training_failed_error):
            return FailureDecision.RAISE
        decision = super().make_decision(training_failed_error)
        lost = isinstance(training_failed_error, WorkerGroupError | PreemptionError)
        if decision == FailureDecision.RETRY and lost and self.notify is not None:
            if not _is_preemption_failure(training_failed_error):
                self.retries += 1
            line = restart_notice(
                training_failed_error, self.retries, self.failure_config.max_failures
            )
            try:
                self.notify.put_nowait(line)
            except Exception:  # the driver is gone: training goes on without it
                self.notify = None
        return decision


def install(notify: Any = None) -> None:
    """Make every Ray Train run started by this process use ``RetryLostWorkersOnly``."""
    create = functools.partial(RetryLostWorkersOnly, notify=notify)
    data_parallel_trainer.create_failure_policy = create  # type: ignore[attr-defined]
