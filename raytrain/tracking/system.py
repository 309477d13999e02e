"""System metrics per node: CPU, memory, disk, network (and GPUs, with pynvml) into a run.

MLflow samples them with psutil every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) into
``system/<node>/...`` metrics, one series per node: the first worker of each node of a run
samples its machine, so a 2-node run shows both machines side by side in the MLflow UI; a
1-worker sweep trial samples its own process's machine into its child run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import cast

from raytrain.tracking.credentials import Credentials
from raytrain.tracking.runs import TrackedRun, child_runs

__all__ = ["node_label", "start_monitor", "watch_node", "watch_trial"]

log = logging.getLogger(__name__)


def node_label(address: str) -> str:
    """A node's name as an MLflow key allows it (alphanumerics, ``_ - . / space``)."""
    return re.sub(r"[^\w\-. /]", "_", address)


def watch_node(
    run: TrackedRun | None, signed_in: Credentials | None, *, first_on_node: bool
) -> Callable[[], None]:
    """Start sampling this node into ``run`` when this process is the first training process on
    its node; return what stops it (and sends the last samples). Never fails the training: a
    missing psutil or an unreachable server is a warning."""
    if run is None or not first_on_node:
        return lambda: None
    try:
        import ray

        if signed_in is not None:  # a server with sign-in: as the driver is
            signed_in.use()
        return start_monitor(run, node=ray.util.get_node_ip_address())
    except Exception as exc:  # psutil missing, server down: the run goes on without them
        log.warning("no system metrics for this node: %s", exc)
        return lambda: None


def watch_trial(
    parent: TrackedRun | None,
    trial_id: str,
    signed_in: Credentials | None,
    *,
    wait_s: float = 60.0,
) -> Callable[[], None]:
    """Sample this node into the sweep trial's child run, once the driver has made it (its
    Tune callback does when the trial starts, while this process already trains); return what
    stops it. Never fails the trial."""
    if parent is None:
        return lambda: None
    stopped = threading.Event()
    stops: list[Callable[[], None]] = []

    def find_and_watch() -> None:
        import mlflow

        if signed_in is not None:
            signed_in.use()
        client = mlflow.MlflowClient(tracking_uri=parent.uri)
        deadline = time.monotonic() + wait_s
        while not stopped.is_set() and time.monotonic() < deadline:
            try:
                found = child_runs(client, parent.experiment_id, parent.run_id, trial_id=trial_id)
            except Exception as exc:  # the server is away: no samples for this trial
                log.warning("no system metrics for trial %s: %s", trial_id, exc)
                return
            if found:
                child = TrackedRun(parent.uri, parent.experiment_name, parent.experiment_id,
                                   found[0].info.run_id)  # fmt: skip
                stops.append(watch_node(child, None, first_on_node=True))
                return
            stopped.wait(0.5)

    finder = threading.Thread(target=find_and_watch, name="raytrain-system-metrics", daemon=True)
    finder.start()

    def stop() -> None:
        stopped.set()
        finder.join(timeout=5)
        for each in stops:
            each()

    return stop


def start_monitor(run: TrackedRun, *, node: str, interval_s: float = 10.0) -> Callable[[], None]:
    """Sample this machine into ``run`` as ``system/<node>/...`` every ``interval_s`` (the
    environment's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins); return the stop function."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run.run_id,
        sampling_interval=interval_s,
        tracking_uri=run.uri,
        node_id=node_label(node),
        resume_logging=True,  # a resumed run continues its series
    )
    monitor.start()
    return cast(Callable[[], None], monitor.finish)
