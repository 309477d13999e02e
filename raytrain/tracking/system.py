"""System metrics per node: CPU, memory, disk, network (and GPUs, with pynvml) into a run.

MLflow samples them with psutil every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) into
``system/<node>/...`` metrics, one series per node: the first worker of each node of a run
samples its machine, so a 2-node run shows both machines side by side in the MLflow UI.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from raytrain.tracking.credentials import Credentials
from raytrain.tracking.runs import TrackedRun

__all__ = ["node_label", "start_monitor", "watch_node"]

log = logging.getLogger(__name__)


def node_label(address: str) -> str:
    """A node's name as an MLflow key allows it (alphanumerics, ``_ - . / space``)."""
    return re.sub(r"[^\w\-. /]", "_", address)


def watch_node(run: TrackedRun | None, signed_in: Credentials | None) -> Callable[[], None]:
    """Start sampling this node into ``run`` when this process is the first Ray Train worker on
    its node; return what stops it (and sends the last samples). Never fails the training: a
    missing psutil or an unreachable server is a warning."""
    if run is None:
        return lambda: None
    try:
        import ray
        import ray.train

        if ray.train.get_context().get_local_rank() != 0:
            return lambda: None
        if signed_in is not None:  # a server with sign-in: as the driver is
            signed_in.use()
        return start_monitor(run, node=ray.util.get_node_ip_address())
    except Exception as exc:  # psutil missing, server down: the run goes on without them
        log.warning("no system metrics for this node: %s", exc)
        return lambda: None


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
    return monitor.finish
