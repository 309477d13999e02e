"""Tracking on a cluster, as the cluster configs run it: the MLflow server that
cluster_configs/start_mlflow.sh starts (MLflow's basic-auth app), on a real PostgreSQL (Debian's
postgresql 15, run here as an unprivileged user on loopback), with raytrain signed in from the
environment; and the script itself, offline, on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import requests

from raytrain.cluster.connection import ClusterInfo, state_address
from raytrain.config.loader import load_experiment
from raytrain.config.schema import ServeSpec
from raytrain.errors import TrackingError
from raytrain.tracking import check_reachable, names

from .conftest import REPO, MlflowServer, free_port, signed_in_as, stop_mlflow, write_yaml

SCRIPT = REPO / "cluster_configs" / "start_mlflow.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
needs_postgres = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 is not installed: make system-deps"
)
USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


@dataclass(frozen=True)
class Head(MlflowServer):
    """The server, and the environment `ray up` started it with (to start it again)."""

    env: dict[str, str] = field(default_factory=dict)


def _script_env(home: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of `ray up`'s shell on the head: this venv first on PATH, a HOME of its
    own, no MLflow credentials of this test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    venv = str(Path(sys.executable).parent)
    env |= {"HOME": str(home), "PATH": f"{venv}{os.pathsep}{env['PATH']}", "MLFLOW_PORT": str(port)}
    env["MLFLOW_WORKERS"] = "1"  # one server process: tests share 2 CPUs
    return env | settings


def _start(server_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=server_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_script_refuses_a_password_in_a_database_uri(tmp_path: Path) -> None:
    env = _script_env(
        tmp_path,
        free_port(),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:s3cret@db:5432/mlflow",
    )
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "~/.pgpass" in result.stderr
    assert not (tmp_path / "mlflow").exists()


# --- on PostgreSQL --------------------------------------------------------------------------


def _as_db_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI runs tests as root): run it as `nobody` then."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[int, str]]:
    """A PostgreSQL server on loopback with a password (scram), and the databases `mlflow` and
    `mlflow_auth`; yields its port and the password."""
    folder = Path(tempfile.mkdtemp(prefix="rt-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(folder, *_nobody())
    password, port = f"pg-{os.urandom(8).hex()}", free_port()
    (folder / "pw").write_text(password)
    if os.geteuid() == 0:
        os.chown(folder / "pw", *_nobody())
    data = folder / "data"
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256"]
    pwfile = ["--pwfile", str(folder / "pw")]
    subprocess.run(_as_db_owner([*initdb, *pwfile]), check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log")]
    subprocess.run(_as_db_owner([*start, "-w", "start"]), check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        client = {**os.environ, "PGPASSWORD": password}
        for database in ("mlflow", "mlflow_auth"):
            createdb = [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
            subprocess.run(
                [*createdb, "-U", "postgres", database], env=client, check=True, capture_output=True
            )
        yield port, password
    finally:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        shutil.rmtree(folder, ignore_errors=True)


def _nobody() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="module")
def server(postgres: tuple[int, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """The script's server on that PostgreSQL (runs, registry and users), artifacts in a folder:
    the password only in ~/.pgpass, as on a head node."""
    pg_port, password = postgres
    home = tmp_path_factory.mktemp("head")
    pgpass = home / ".pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_port}:*:postgres:{password}\n")
    pgpass.chmod(0o600)
    database = f"postgresql://postgres@127.0.0.1:{pg_port}"
    port = free_port()
    env = _script_env(
        home,
        port,
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_BACKEND_STORE_URI=f"{database}/mlflow",
        MLFLOW_AUTH_DATABASE_URI=f"{database}/mlflow_auth",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path_factory.mktemp("artifacts")),
    )
    _start(env)
    yield Head(f"http://127.0.0.1:{port}", home, env)
    stop_mlflow(home)


@pytest.fixture
def signed_in(server: Head, monkeypatch: pytest.MonkeyPatch) -> Head:
    """This process signed in as the cluster's job user, through MLflow's variables."""
    monkeypatch.setenv(USER_ENV, server.jobs[0])
    monkeypatch.setenv(PASSWORD_ENV, server.jobs[1])
    return server


@needs_postgres
@pytest.mark.slow  # starts PostgreSQL and an MLflow server
def test_unauthenticated_clients_cannot_write_or_register(
    server: Head, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials of this machine
    for k in (USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(k, raising=False)
    assert server.create_experiment() == 401
    api = f"{server.uri}/api/2.0/mlflow"
    for path, body in [
        ("registered-models/create", {"name": "intruder"}),
        ("registered-models/alias", {"name": "any", "alias": "champion", "version": "1"}),
    ]:
        assert requests.post(f"{api}/{path}", json=body).status_code == 401, path
    with pytest.raises(TrackingError, match=r"requires signing in: set MLFLOW_TRACKING_USERNAME"):
        check_reachable(server.uri)
    monkeypatch.setenv(USER_ENV, server.jobs[0])
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(TrackingError, match="refused the user 'raytrain-jobs'"):
        check_reachable(server.uri)
    # The file MLflow reads when the environment has none: accepted only when private.
    monkeypatch.delenv(USER_ENV)
    monkeypatch.delenv(PASSWORD_ENV)
    credentials = tmp_path / ".mlflow" / "credentials"
    credentials.parent.mkdir()
    credentials.write_text(
        f"[mlflow]\nmlflow_tracking_username = {server.jobs[0]}\n"
        f"mlflow_tracking_password = {server.jobs[1]}\n"
    )
    credentials.chmod(0o644)
    with pytest.raises(TrackingError, match="others can read it: chmod 600"):
        check_reachable(server.uri)
    credentials.chmod(0o600)
    check_reachable(server.uri)


@needs_postgres
@pytest.mark.slow  # starts PostgreSQL and an MLflow server
def test_signed_in_users_read_and_only_the_jobs_user_and_admins_write(server: Head) -> None:
    """Without a grant, a signed-in user cannot log a run, register a version or move an alias
    in others' experiments and models (serving and export load what the registry holds); the
    jobs user writes in every one, the admin's too."""
    api = f"{server.uri}/api/2.0/mlflow"
    bob = (f"bob-{time.monotonic_ns()}", f"pw-{os.urandom(8).hex()}")
    user = {"username": bob[0], "password": bob[1]}
    assert requests.post(f"{api}/users/create", json=user, auth=server.admin).status_code == 200

    def post(path: str, body: dict[str, str], auth: tuple[str, str]) -> int:
        return requests.post(f"{api}/{path}", json=body, auth=auth, timeout=120).status_code

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    with signed_in_as(server.admin):
        experiment = client.create_experiment(f"admins-{time.monotonic_ns()}")
        model = client.create_registered_model(f"admins-{time.monotonic_ns()}").name
    with signed_in_as(server.jobs):
        run = client.create_run(experiment)  # the jobs user writes in the admin's experiment
        client.log_metric(run.info.run_id, "loss", 0.5)
        version = client.create_model_version(model, f"{run.info.artifact_uri}/m", run.info.run_id)
        client.set_registered_model_alias(model, "champion", version.version)
    alias = {"name": model, "alias": "champion", "version": version.version}
    assert post("runs/create", {"experiment_id": experiment}, bob) == 403
    assert post("model-versions/create", {"name": model, "source": "x"}, bob) == 403
    assert post("registered-models/alias", alias, bob) == 403
    assert post("registered-models/alias", alias, server.jobs) == 200
    with signed_in_as(bob):
        assert client.get_model_version_by_alias(model, "champion").version == version.version
        own = client.create_experiment(f"bobs-{time.monotonic_ns()}")  # and writes his own
        client.log_metric(client.create_run(own).info.run_id, "loss", 0.5)


def _experiment(folder: Path, uri: str, **sections: str) -> Path:
    folder.mkdir(exist_ok=True)
    extra = "".join(f"{k}: {v}\n" for k, v in sections.items())
    return write_yaml(
        folder,
        f"""
        name: auth-digits
        data: {{source: "builtin:digits"}}
        model: {{builder: mlp, params: {{hidden_units: [16]}}}}
        train: {{epochs: 2, batch_size: 64}}
        scaling: {{num_workers: 1}}
        storage: {folder / "results"}
        tracking: {{uri: "{uri}", register_as: auth-digits}}
        """
        + extra,
    )


@needs_postgres
def test_run_sweep_serve_and_export_signed_in_from_the_environment(
    ray_cluster: ClusterInfo, signed_in: Head, tmp_path: Path
) -> None:
    """The session's Ray instance was started without credentials: Ray Train's controller and
    worker, the sweep's trial processes and the Serve replicas log and load only with what
    raytrain hands them."""
    from ray import serve
    from ray.util.state import list_actors, list_jobs

    from raytrain.export import export_model
    from raytrain.orchestration.run import run_experiment
    from raytrain.orchestration.sweep import run_sweep
    from raytrain.serve import deploy, describe, stop

    uri = signed_in.uri
    # As a Ray Train run (a 1-worker run trains in one actor by default): its controller logs.
    run = run_experiment(
        load_experiment(_experiment(tmp_path, uri), ["scaling.one_worker=ray_train"])
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run.tracking.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]  # epochs, logged by Ray Train's controller
    assert client.get_run(run.tracking.run_id).data.tags.get(names.NODES_TAG)  # by rank 0
    assert run.registered_version == "1"

    sweep = run_sweep(
        load_experiment(
            _experiment(
                tmp_path / "sweep",
                uri,
                tune="{metric: val_accuracy, mode: max, num_samples: 2, "
                "search: {algorithm: random, seed: 0}, scheduler: {name: none}, "
                "space: {train.optimizer.learning_rate: {choice: [0.001, 0.01]}}}",
            ),
            ["train.epochs=1"],
        )
    )
    assert sweep.registered_version == "2"
    assert len(client.search_runs([run.tracking.experiment_id])) == 4  # run, sweep, 2 trials

    port = free_port()
    deployment = deploy(describe("auth-digits/1", tracking_uri=uri), spec=ServeSpec(port=port))
    try:
        answer = requests.post(deployment.predict_url, json={"instances": [[0.0] * 64]})
        assert answer.status_code == 200, answer.text
        report = export_model(
            "auth-digits/1",
            tracking_uri=uri,
            options={"quantize": ["dynamic"], "out": str(tmp_path / "edge")},
        )
        assert [m.mode for m in report.modes] == ["none", "dynamic"]
        # Nothing Ray shows about jobs and actors holds the password.
        shown = json.dumps(
            [a.__dict__ for a in list_actors(address=state_address(), detail=True)]
            + [j.__dict__ for j in list_jobs(address=state_address(), detail=True)],
            default=str,
        )
        assert signed_in.jobs[1] not in shown
    finally:
        stop()
        serve.shutdown()


@needs_postgres
@pytest.mark.slow  # restarts the MLflow server
def test_a_restarted_server_keeps_every_run_version_and_alias(server: Head) -> None:
    client = mlflow.MlflowClient(tracking_uri=server.uri)

    def snapshot() -> dict[str, object]:
        with signed_in_as(server.admin):
            experiments = client.search_experiments()
            runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
            models = client.search_registered_models()
            return {
                "runs": sorted((r.info.run_id, r.info.status) for r in runs),
                "versions": sorted(
                    (v.name, v.version, v.run_id)
                    for m in models
                    for v in client.search_model_versions(f"name='{m.name}'")
                ),
                "aliases": sorted((m.name, a, v) for m in models for a, v in m.aliases.items()),
            }

    with signed_in_as(server.jobs):
        experiment = client.create_experiment(f"restart-{time.monotonic_ns()}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss", 0.5)
        client.create_registered_model("restart-model")
        source = f"{run.info.artifact_uri}/model"
        version = client.create_model_version("restart-model", source, run.info.run_id)
        client.set_registered_model_alias("restart-model", "champion", version.version)
    before = snapshot()
    assert before["runs"]
    assert before["versions"]
    assert before["aliases"]

    stop_mlflow(server.home)
    _start(server.env)
    after = snapshot()
    assert after == before
    with signed_in_as(server.jobs):
        assert client.get_model_version_by_alias("restart-model", "champion").version == "1"
