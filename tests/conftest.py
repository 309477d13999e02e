"""Shared fixtures: one real local Ray instance for the whole session, real MLflow stores."""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported
# pytest-xdist's workers inherit COLUMNS=80: a rich Console made at import (the CLI's) would keep
# that width for good, where the CLI tests set their own for each command.
os.environ.pop("COLUMNS", None)

import pytest
import ray
import requests

from benchmarks.common import free_ports
from raytrain.cluster.connection import PREEMPTION_WATCHER_ENV, WORKER_ENV, ClusterInfo
from raytrain.shims.check import STRICT_ENV

# Nobody preempts this machine: Ray Train's preemption watcher, a process per run and per sweep
# trial, only takes CPU from the tests (~1.6 s each, ~90 s of a `make test`). Set before the
# session's Ray starts, its jobs' drivers, in-process runs and the CLI's subprocesses have it,
# and sweeps pass it on to their trials (raytrain.train.loop.ray_train_settings).
os.environ[PREEMPTION_WATCHER_ENV] = "0"
# Housekeeping through a private Ray call raises under test instead of logging: a shim gone dead
# must fail the suite, not pass for "nothing to clean up".
os.environ[STRICT_ENV] = "1"
# MLflow 3's GenAI job runner (a runner and three huey consumer processes per `mlflow server`)
# serves nothing raytrain uses: the test servers start without it, as start_mlflow.sh's does.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Every Ray instance the tests start (the sessions', the CLI subprocesses' private ones) without
# Ray's own metrics (each Ray process reports them every few seconds; nothing here reads them)
# and without the idle workers Ray starts ahead for a first driver, which raytrain's actors, with
# a runtime environment of their own, never take: test_train.py alone took 3.4 % less CPU,
# 200.6 CPU-s against 207.6 (two runs each, alternating, 2026-12-07). Machines of `ray up` keep
# Ray's defaults.
os.environ.setdefault("RAY_enable_metrics_collection", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")

REPO = Path(__file__).resolve().parent.parent
BUCKET = "raytrain-test"  # created by the gcs_emulator fixture


# The modules that take longest, longest first (seconds under `make test`, 2026-12-07: 546, 249,
# 228, 175, 151, 128, 113, 111, 102, 100, 79, 71, 64, 59; test_trials and test_streaming then
# gained the reused-group tests, ~95 s and ~35 s more run alone): `make test` hands modules to
# its two pytest-xdist workers in this order, so that no long one starts last (the other
# modules take under 35 s each).
LONGEST_FIRST = (
    "test_onprem_cluster",
    "test_sweep",
    "test_train",
    "test_serving",
    "test_trials",
    "test_jobs",
    "test_streaming",
    "test_tracking_server",
    "test_survival",
    "test_held_out",
    "test_tutorial",
    "test_storage",
    "test_cluster_configs",
    "test_cli",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the session's Ray instance is slow (``make test-fast`` leaves them out);
    tests that start Ray in a subprocess carry ``@pytest.mark.slow`` themselves."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)

    def weight(item: pytest.Item) -> int:
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=weight)  # stable: each module keeps its own order


@pytest.fixture(autouse=True)
def _no_ray_in_the_fast_lane(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test not marked slow that would start Ray (ray.init, or a Ray API's implicit one)
    fails at once instead of making the fast lane slow."""
    if request.node.get_closest_marker("slow"):
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"{request.node.nodeid} starts Ray but is not marked slow: use the ray_cluster "
            "fixture or @pytest.mark.slow"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", refuse)
        yield


@pytest.fixture(scope="session")
def ray_context() -> Iterator[Any]:
    """A real local Ray instance with 2 CPUs (tests count on exactly 2 concurrent workers or
    trials) and the dashboard on (Train V2 needs its State API), shared by every test.

    Train V2's placement-group cleaner calls the State API without an address: Ray then looks
    for the machine's clusters and fails with "Found multiple active Ray instances" where
    several run (a shared CI runner), and the cleaner's thread dies. RAY_API_SERVER_ADDRESS in
    the workers' environment names this instance's dashboard."""
    port = free_port()
    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={
            "env_vars": {**WORKER_ENV, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
        },
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    dashboard = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    assert dashboard == f"http://127.0.0.1:{port}", f"the dashboard took another port: {dashboard}"
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(ray_context: Any) -> ClusterInfo:
    """The session's Ray instance as raytrain addresses it."""
    return ClusterInfo(
        ray_context.address_info["gcs_address"], f"http://{ray_context.dashboard_url}"
    )


@pytest.fixture(scope="session")
def ray_session_dir(ray_context: Any) -> Path:
    """The session folder of the session's Ray instance: where Tune's driver writes a sweep's
    files (result.json among them) before it copies them to the storage path."""
    return Path(ray_context.address_info["session_dir"])


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A real GCS JSON API (the gcp-storage-emulator package) on loopback, in memory, with the
    bucket ``BUCKET``; yields the value for STORAGE_EMULATOR_HOST."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", *args, "--default-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the GCS emulator exited"
            assert time.monotonic() < deadline, "the GCS emulator did not start in 30 s"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, so ./mlflow.db and ./raytrain_results land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


SERVED = "digits-serve"  # the model the serving tests register


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, ray_cluster: ClusterInfo) -> str:
    """Two versions of a small digits MLP, trained by raytrain and registered in MLflow: one
    training for every serving test module."""
    import mlflow

    from raytrain.config.loader import load_experiment
    from raytrain.orchestration.run import run_experiment

    folder = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    path = write_yaml(
        folder,
        f"""
        name: {SERVED}
        data: {{source: "builtin:digits"}}
        model: {{builder: mlp, params: {{hidden_units: [32]}}}}
        train: {{epochs: 2, batch_size: 64}}
        scaling: {{num_workers: 1}}
        storage: {folder / "results"}
        tracking: {{uri: "{uri}", register_as: {SERVED}}}
        """,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's artifacts go to ./mlruns
        run_experiment(load_experiment(path))
    # Version 2: the same files registered again (what a promotion of a retrained model looks
    # like to the server), cheaper than a second training run.
    # Its files' location, not its models:/ source: MLflow resolves that through the
    # process-wide tracking URI, which this process (whose run was logged by its actor) never set.
    client = mlflow.MlflowClient(tracking_uri=uri)
    first = client.get_model_version(SERVED, "1")
    files = client.get_model_version_download_uri(SERVED, "1")
    client.create_model_version(SERVED, files, run_id=first.run_id)
    return uri


@pytest.fixture(scope="session")
def versions(registry: str) -> dict[str, Any]:
    """The two registered versions as the server describes them."""
    from raytrain.serve import describe

    return {v: describe(f"{SERVED}/{v}", tracking_uri=registry) for v in ("1", "2")}


def group_workers() -> set[str]:
    """The actor ids of every sweep trial's worker-group worker this Ray instance ever started
    (alive or not): a reused group adds none."""
    from ray.util.state import list_actors

    from raytrain.cluster.connection import state_address

    found = list_actors(
        address=state_address(), filters=[("class_name", "=", "_GroupWorker")], limit=10_000
    )
    return {actor["actor_id"] for actor in found}


def free_port() -> int:
    return free_ports(1)[0]


def wait_for_mlflow(url: str, server: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Until the ``mlflow server`` at ``url`` answers /health: about 15 s alone, minutes on a
    loaded machine (it imports a lot)."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        assert server.poll() is None, "mlflow server exited"
        assert time.monotonic() < deadline, f"mlflow server did not start in {timeout:.0f} s"
        time.sleep(0.3)


def write_yaml(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def write_tfrecord(path: Path, frame: Any, *, vectors: dict[str, list[str]] | None = None) -> None:
    """``frame``'s rows as tf.train.Example records, written by TensorFlow itself (the files
    users have); ``vectors`` packs columns into one multi-valued key, e.g. an image's pixels."""
    import tensorflow as tf

    vectors = vectors or {}
    packed = {c for columns in vectors.values() for c in columns}

    def feature(values: list[Any]) -> Any:
        if isinstance(values[0], str):
            return tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[v.encode() for v in values])
            )
        if isinstance(values[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    options = "GZIP" if path.suffix == ".gz" else None
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for row in frame.to_dict("records"):
            keys = {k: [v] for k, v in row.items() if k not in packed}
            keys |= {k: [row[c] for c in columns] for k, columns in vectors.items()}
            features = {
                k: feature([v.item() if hasattr(v, "item") else v for v in values])
                for k, values in keys.items()
            }
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writer.write(example.SerializeToString())


@dataclass(frozen=True)
class MlflowServer:
    """An MLflow server that cluster_configs/start_mlflow.sh started with HOME ``home``, and the
    two users it made (passwords read from the files it wrote)."""

    uri: str
    home: Path

    @property
    def admin(self) -> tuple[str, str]:
        return "admin", (self.home / "mlflow" / "admin_password").read_text().strip()

    @property
    def jobs(self) -> tuple[str, str]:
        ini = configparser.ConfigParser()
        ini.read(self.home / ".mlflow" / "credentials")
        found = ini["mlflow"]
        return found["mlflow_tracking_username"], found["mlflow_tracking_password"]

    def create_experiment(self, auth: tuple[str, str] | None = None) -> int:
        """The HTTP status of a write: creating an experiment."""
        name = f"probe-{time.monotonic_ns()}"
        url = f"{self.uri}/api/2.0/mlflow/experiments/create"
        return requests.post(url, json={"name": name}, auth=auth, timeout=120).status_code


@contextmanager
def signed_in_as(user: tuple[str, str]) -> Iterator[None]:
    """MLflow clients of this process sign in as ``user``, through MLflow's own variables."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
        yield


def stop_mlflow(home: Path) -> None:
    """End the server start_mlflow.sh started, by the pid it wrote (setsid made it the leader of
    its own process group, with its workers)."""
    pid_file = home / "mlflow" / "server.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        if not Path(f"/proc/{pid}").exists():
            return
