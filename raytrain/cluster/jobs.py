"""Experiments on a remote Ray cluster, through the Ray Jobs API (the head node's port 8265).

``submit`` uploads the experiment's folder (the YAML and the model code next to it) and runs
``python -m raytrain run FILE --set ...`` there, with the nodes' own raytrain; the other
functions follow, list, read and stop such jobs. Every call takes the dashboard URL
(``http://HEAD:8265``; default ``$RAY_ADDRESS``) and sends Ray's auth token, found where Ray
looks for it::

    from raytrain.cluster.jobs import follow, submit
    from raytrain.config.loader import load_experiment
    job = submit(load_experiment("experiments/quickstart.yaml"), address="http://127.0.0.1:8265")
    status = follow(job.job_id, address=job.address, write=print)
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from raytrain.cluster.connection import probe_dashboard
from raytrain.config.loader import LoadedExperiment
from raytrain.config.locality import Locality
from raytrain.config.references import REFERENCE, literal_secrets
from raytrain.errors import ClusterError, RaytrainError
from raytrain.secrets import MASK, mask_override, mask_text

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "EXCLUDES",
    "JobRecord",
    "Submitted",
    "cluster_nodes",
    "follow",
    "job_logs",
    "list_jobs",
    "quiet_client_logs",
    "resolve_address",
    "stop_job",
    "submit",
]

# Never uploaded with the experiment's folder: results, local tracking stores, environments.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "raytrain_results", "mlruns", "mlflow.db"]
LARGE_UPLOAD = 100 * 2**20  # bytes, worth a warning; Ray refuses packages over 512 MiB
EXPERIMENT_KEY = "raytrain.experiment"  # job metadata that `raytrain jobs` shows


@dataclass(frozen=True)
class Submitted:
    """A job that the cluster accepted, and what the user should know about it."""

    job_id: str
    address: str
    entrypoint: str
    upload_bytes: int
    warnings: list[str]


@dataclass(frozen=True)
class JobRecord:
    """One submitted job, as ``raytrain jobs`` shows it (times in seconds since the epoch)."""

    job_id: str
    status: str
    experiment: str | None
    entrypoint: str
    start_time: float | None
    end_time: float | None
    driver_node_id: str | None

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time


def resolve_address(address: str | None) -> str:
    """The dashboard URL to use: ``address``, else ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS``."""
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found:
        raise ClusterError(
            "no cluster to submit to: pass `address` http://HEAD:8265 or set RAY_ADDRESS "
            "(`ray dashboard CLUSTER.yaml` forwards the head node's port 8265 to this machine)",
            options=("address",),
        )
    return found.rstrip("/")


def submit(loaded: LoadedExperiment, *, address: str | None = None) -> Submitted:
    """Upload the experiment's folder and start ``raytrain run`` on the cluster; return at once.

    The entrypoint and metadata are shown to anyone who can see the cluster (Ray's dashboard,
    ``ray job list``) and the uploaded folder can be read by every job: a secret written as text
    in the experiment or an override is refused. It is written as a reference instead,
    ``${env:NAME}`` or ``${file:PATH}`` (``raytrain.config.references``), which the job resolves
    on its node: load the experiment under ``references.deferred()``.
    With ``data.locality``, the job's driver (which reads the data) runs on a node carrying that
    resource too, and the data must not sit in the uploaded folder.
    """
    spec, folder = loaded.spec, loaded.path.parent.resolve()
    _refuse_secret_overrides(loaded.overrides)
    _refuse_literal_secrets(loaded)
    url = resolve_address(address)
    client = _client(url)
    if spec.data.locality_rule.pinned:
        _check_locality_placement(spec.data.locality_rule, spec.data.source, folder, url)
    upload = _folder_bytes(folder, EXCLUDES)
    warnings = _warnings(loaded, upload)
    command = ["python", "-m", "raytrain", "run", loaded.path.name]
    for override in loaded.overrides:
        command += ["--set", override]
    entrypoint = shlex.join(command)
    with _errors(url):
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(folder), "excludes": EXCLUDES},
            metadata={
                EXPERIMENT_KEY: spec.name,
                "raytrain.file": mask_text(loaded.path.name),
                "raytrain.overrides": " ".join(mask_override(o) for o in loaded.overrides),
            },
            entrypoint_resources=spec.data.locality_rule.resources() or None,
        )
    return Submitted(job_id, url, entrypoint, upload, warnings)


def follow(job_id: str, *, address: str | None = None, write: Callable[[str], None]) -> str:
    """Stream the job's logs to ``write`` until it ends; return its final status.

    Ctrl-C (KeyboardInterrupt) only stops the streaming: the job keeps running on the cluster.
    """
    url = resolve_address(address)
    client = _client(url)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    with _errors(url, job_id):
        client.get_job_status(job_id)  # an unknown id fails here, with Ray's 404
        asyncio.run(tail())
        return _final_status(client, job_id)


def list_jobs(*, address: str | None = None) -> list[JobRecord]:
    """The cluster's submitted jobs, newest first."""
    from ray.job_submission import JobType

    url = resolve_address(address)
    client = _client(url)
    with _errors(url):
        details = client.list_jobs()
    records = [_record(d) for d in details if d.type == JobType.SUBMISSION and d.submission_id]
    return sorted(records, key=lambda r: r.start_time or 0.0, reverse=True)


def job_logs(job_id: str, *, address: str | None = None) -> str:
    """Everything the job printed so far."""
    url = resolve_address(address)
    with _errors(url, job_id):
        return cast(str, _client(url).get_job_logs(job_id))


def stop_job(job_id: str, *, address: str | None = None, timeout_s: float = 60.0) -> str:
    """Stop the job (Ray sends SIGTERM, then SIGKILL); return its status once it has ended."""
    url = resolve_address(address)
    client = _client(url)
    with _errors(url, job_id):
        client.stop_job(job_id)
        return _final_status(client, job_id, timeout_s=timeout_s)


def cluster_nodes(*, address: str | None = None) -> list[dict[str, Any]]:
    """The cluster's alive nodes: ``node_id``, ``ip`` and ``resources`` (totals) of each."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    url = resolve_address(address)
    probe_dashboard(url)
    with _errors(url), _explicit_address():
        state = StateApiClient(url, headers=_auth_headers())
        nodes = state.list(
            StateResource.NODES,
            options=ListApiOptions(detail=True, filters=[("state", "=", "ALIVE")]),
            raise_on_missing_output=False,
        )
    return [{"node_id": n.node_id, "ip": n.node_ip, "resources": n.resources_total} for n in nodes]


def quiet_client_logs() -> None:
    """Keep Ray's job client to warnings: it logs each upload and closed log stream at INFO, on
    loggers whose level it sets when imported, so this imports it first."""
    import logging

    import ray.job_submission  # noqa: F401

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from raytrain.shims import ray_core

    ray_core.quiet_logger("uploads", logging.WARNING)


def _client(url: str) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    probe_dashboard(url)
    with _errors(url), _explicit_address():
        return JobSubmissionClient(url, headers=_auth_headers())


@contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's clients let ``$RAY_ADDRESS`` override the address they are given; ours wins."""
    saved = {
        k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


def _auth_headers() -> dict[str, str]:
    """Ray's auth token as an HTTP header, from where Ray reads it: ``$RAY_AUTH_TOKEN``, else the
    file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.

    Ray's JobSubmissionClient sends it only when ``RAY_AUTH_MODE=token`` is set in this process,
    while clusters started by Ray 2.60 require it by default: send it whenever there is one,
    unless ``RAY_AUTH_MODE=disabled`` says not to.
    """
    from ray.exceptions import AuthenticationError

    from raytrain.shims import ray_core

    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    try:
        token = ray_core.auth_token()
        return {"Authorization": f"Bearer {token}"} if token else {}
    except AuthenticationError as exc:  # e.g. RAY_AUTH_TOKEN_PATH names a missing file
        raise ClusterError(f"Ray auth token: {str(exc).split('. Note:')[0]}") from None


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"


@contextmanager
def _errors(url: str, job_id: str | None = None) -> Iterator[None]:
    """Ray's exceptions (long, multi-line) as one line that says what to do."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError
    from ray.util.state.exception import ServerUnavailable

    try:
        yield
    except AuthenticationError as exc:  # a 403 says "failed"; no token at all reads otherwise
        if str(exc).startswith("Authentication failed"):
            raise ClusterError(
                f"the Ray cluster at {url} refused the auth token from {_token_source()}: it "
                "is not this cluster's token (`ray get-auth-token` on the head node prints it)"
            ) from None
        raise ClusterError(
            f"the Ray cluster at {url} requires an auth token and none was found: set "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or write ~/.ray/auth_token) to the "
            "token that `ray get-auth-token` prints on the head node"
        ) from None
    # ServerUnavailable: the dashboard answered, its State API not (yet): a head still starting.
    except (
        ConnectionError,
        requests.RequestException,
        aiohttp.ClientError,
        ServerUnavailable,
    ) as exc:
        raise ClusterError(f"cannot connect to Ray at {url}: {_first_line(exc)}") from None
    except RuntimeError as exc:
        if job_id and "status code 404" in str(exc):
            raise RaytrainError(
                f"no job '{job_id}' on the cluster at {url} (`raytrain jobs --address {url}` "
                "lists them)"
            ) from None
        raise ClusterError(f"Ray Jobs API at {url}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _final_status(client: JobSubmissionClient, job_id: str, *, timeout_s: float = 30.0) -> str:
    """The job's status once it is terminal (the log stream can close a moment before)."""
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return str(status.value)


def _record(details: Any) -> JobRecord:
    def seconds(ms: int | None) -> float | None:
        return ms / 1000 if ms else None

    return JobRecord(
        job_id=details.submission_id,
        status=str(details.status.value),
        experiment=(details.metadata or {}).get(EXPERIMENT_KEY),
        entrypoint=mask_text(details.entrypoint or ""),
        start_time=seconds(details.start_time),
        end_time=seconds(details.end_time),
        driver_node_id=details.driver_node_id or None,
    )


def _check_locality_placement(locality: Locality, source: str, folder: Path, url: str) -> None:
    """The job would wait forever for a node that may read the data; and data in the uploaded
    folder would leave the nodes it belongs on."""
    nodes = [n["resources"] for n in cluster_nodes(address=url)]
    problem = locality.problem(nodes) or locality.upload_problem(source, folder)
    if problem:
        raise ClusterError(problem)


def _folder_bytes(folder: Path, excludes: list[str]) -> int:
    """About what Ray will upload (it also skips what .gitignore files name)."""
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in excludes]
        total += sum(
            os.path.getsize(os.path.join(root, f))
            for f in files
            if f not in excludes and os.path.isfile(os.path.join(root, f))
        )
    return total


USE_A_REFERENCE = (
    "write ${env:NAME} or ${file:PATH} instead, which the job resolves on its node "
    "(docs/security.md)"
)


def _refuse_secret_overrides(overrides: tuple[str, ...]) -> None:
    """The entrypoint is how overrides reach the job: a secret there cannot be masked."""
    for item in overrides:
        referenced = REFERENCE.sub(MASK, item)
        if mask_override(referenced) != referenced:
            raise ClusterError(
                f"--set {mask_override(item)}: a secret in an override would be shown in plain "
                "text with the job (its entrypoint, in Ray's dashboard and `ray job list`): "
                + USE_A_REFERENCE
            )


def _refuse_literal_secrets(loaded: LoadedExperiment) -> None:
    """The uploaded folder is readable by every job on the cluster, whoever submitted it."""
    found = literal_secrets(loaded.spec.model_dump(mode="json"))
    if found:
        raise ClusterError(
            f"{loaded.path.name}: {', '.join(found)} holds a secret as text, which every user of "
            f"the cluster could read in the uploaded folder: {USE_A_REFERENCE}"
        )


def _warnings(loaded: LoadedExperiment, upload: int) -> list[str]:
    """Settings that work on a laptop but lose results on a cluster."""
    spec, found = loaded.spec, []
    if upload > LARGE_UPLOAD:
        found.append(
            f"uploading {upload / 2**20:.0f} MiB from {loaded.path.parent} with this job: keep "
            "data out of the experiment's folder (a path on the nodes, or gs://), or list it in "
            ".gitignore"
        )
    if "://" not in spec.storage and not Path(spec.storage).is_absolute():
        found.append(
            f"storage '{spec.storage}' is relative: results land in the job's temporary folder "
            "on the node that runs it; use gs://bucket/prefix (or a shared absolute path)"
        )
    uri = spec.tracking.uri
    if spec.tracking.enabled and urlsplit(uri).scheme not in ("http", "https", "databricks"):
        found.append(
            f"tracking.uri '{mask_text(uri)}' is a store on the disk of the node that runs the "
            "job; use the cluster's MLflow server (--set tracking.uri=http://HEAD:5000)"
        )
    return found
