"""Connecting to a Ray cluster (or starting a private local instance), and failing in seconds on
an address nobody listens on instead of letting Ray retry for minutes."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import ray

from raytrain.errors import ClusterError
from raytrain.shims.ray_core import read_ray_address, unprinted_cluster_errors

__all__ = [
    "PREEMPTION_WATCHER_ENV",
    "PRIVATE_INSTANCE_ENV",
    "WORKER_ENV",
    "ClusterInfo",
    "connect",
    "on_private_instance",
    "probe_dashboard",
    "running_local_instance",
    "state_address",
]

log = logging.getLogger(__name__)

# The environment of every Ray worker process, set before TensorFlow is imported there:
# tf.keras must be tf_keras (Keras 2), because Keras 3 fails inside model.fit under
# MultiWorkerMirroredStrategy with 2+ workers ("Attempt to convert a value (PerReplica...)",
# ray-project/ray#47464, keras-team/keras#20585), and models saved by one Keras do not load in
# the other. Ray's TF backend sets the variable too, but too late once anything imported TF.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}

# In the job environment of a private instance (one ``connect`` started, which ends with this
# process): nothing there outlives the driver or is preempted, so each Train run leaves out Ray
# Train's preemption watcher and placement-group cleaner, two processes per run and per sweep
# trial: 4 runs of a 2-worker MLP on 2 cores took 122.5 s of CPU in all without them, 136.6
# with them (process accounting), and 8 s less wall time. A variable of the job's runtime
# environment, because sweep trials build their Train runs in Tune's processes, not here.
PRIVATE_INSTANCE_ENV = "RAYTRAIN_PRIVATE_INSTANCE"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by Train's controller


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None
    started: bool = False  # a private instance this call started: nothing else ran on it yet


def connect(
    address: str | None = None,
    *,
    verbose: bool = False,
    env_vars: dict[str, str] | None = None,
    metrics_port: int | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> ClusterInfo:
    """Join ``address`` (or ``$RAY_ADDRESS``); else the instance ``ray start --head`` runs on this
    machine, if one answers (saying so through ``on_notice``, else the log); else start a
    private local Ray instance (with Prometheus metrics on ``metrics_port``, if given).
    ``address="local"`` always starts a private one.

    A process that is already connected (a test session, a Ray job's driver) keeps its connection.
    """
    if ray.is_initialized():
        return ClusterInfo(ray.get_runtime_context().gcs_address, None)
    target = address or os.environ.get("RAY_ADDRESS") or None
    found = running_local_instance() if target is None else None
    if found:
        target = found
        (on_notice or log.warning)(
            f"using the Ray instance running on this machine at {found} (`ray start`); "
            "`--address local` starts a private one"
        )
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(env_vars or {})},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if target and target != "local":
        _probe(target)
    # Ray's driver prints every error the cluster publishes, whatever log_to_driver says: a
    # lost node is ~25 lines of its raylet's last log (seen). The run says what a loss means
    # in one line (raytrain/train/failures.py); --verbose shows Ray's own.
    try:
        with unprinted_cluster_errors(not verbose):
            ctx = _init(target, metrics_port, options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = target if target and target != "local" else "a local instance"
        if found:
            where += " (found running: `--address local` starts a private instance)"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot connect to Ray at {where}: {first_line}") from None
    dashboard = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    started = not target or target == "local"
    return ClusterInfo(ctx.address_info["gcs_address"], dashboard, started=started)


def _init(target: str | None, metrics_port: int | None, options: dict[str, Any]) -> Any:
    """``ray.init``: join ``target``, or start a private instance."""
    if target and target != "local":
        return ray.init(address=target, **options)
    # "local" starts a private instance even when `ray start --head` runs on this machine.
    # The dashboard stays on: Train V2's placement-group cleaner reads the State API,
    # and without it a sweep's second trial timed out starting its workers (seen).
    if metrics_port:
        options["_metrics_export_port"] = metrics_port
    private = {PRIVATE_INSTANCE_ENV: "1", PREEMPTION_WATCHER_ENV: "0"}
    options["runtime_env"]["env_vars"] = {**private, **options["runtime_env"]["env_vars"]}
    return ray.init(address="local", include_dashboard=True, **options)


def on_private_instance() -> bool:
    """Whether this process runs on a private instance ``connect`` started (a driver, or a
    process of its job: the job's runtime environment says so)."""
    if not ray.is_initialized():
        return False
    env = ray.get_runtime_context().runtime_env.get("env_vars") or {}
    return env.get(PRIVATE_INSTANCE_ENV) == "1"


def running_local_instance() -> str | None:
    """The GCS address of the instance ``ray start --head`` runs on this machine, if it answers.

    Joining it saves starting a private instance (``ray.init``: 4-7 s on 2 cores, see
    benchmarks/README.md). ``ray start`` writes its address to ``ray_current_cluster`` in Ray's
    temp dir (``$RAY_TMPDIR/ray``, else /tmp/ray); the file outlives an instance that was killed,
    hence the check that its port answers. Instances started by ``ray.init`` write no such file.
    """
    found = read_ray_address()
    host, _, port = (found or "").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return None
    return found


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an address nobody listens on (``ray.init`` retries for minutes)."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"cannot connect to Ray at {address}: expected HOST:PORT")
    _listening(host, int(port), address, "its GCS port, 6379 by default", timeout_s)


def probe_dashboard(url: str, *, timeout_s: float = 5.0) -> None:
    """Fail in seconds unless something listens at the Jobs API URL (HTTP clients wait for the
    operating system's connect timeout, minutes, on an address that drops packets)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ClusterError(
            f"cannot connect to Ray at {url}: expected the head node's dashboard URL, "
            "http://HEAD:8265"
        )
    _listening(parts.hostname, port, url, "its dashboard port, 8265 by default", timeout_s)


def _listening(host: str, port: int, address: str, port_hint: str, timeout_s: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot connect to Ray at {address}: {exc.strerror or exc} (is the head node up, "
            f"and is this {port_hint}?)"
        ) from None


def state_address() -> str:
    """The connected cluster's address for State API calls: given none, Ray looks for the
    machine's most recently started cluster, which is another one where several share a host."""
    return cast(str, ray.get_runtime_context().gcs_address)
