"""`ray up` of the shipped cluster_configs/onprem.yaml on two machines, used as a user uses it.

The machines are Linux network namespaces with their own sshd, PID namespace and /tmp
(tests/machines.py); they have no route to a package index, so the nodes install from the
wheelhouse (`make wheelhouse`), as an air-gapped site does. The config is filled in only where its
header says, and every other step is the header's or docs/how-to/on-prem.md's: a key made for the
cluster, Ray's token, `ray up`, `ray dashboard`, `raytrain submit`, `ray down`. The machines share
one filesystem (their home folder, and the results folder the experiments use): a real cluster
needs shared storage or gs:// for that, which a test below checks raytrain says.

MLflow runs on the head as its own system user (cluster_configs/mlflow_user.sh) and serves HTTPS:
the SSH user gets passwordless sudo for `ray up` only, as the header says, and loses it before
any job runs. The machines share the host's /etc, /opt and /var/lib, so that user, its venv and
its sudoers rule are made on the host and removed at the end (needs sudo: `make system-deps`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import machines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # `ray up` installs TensorFlow

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cluster_configs" / "onprem.yaml"
BIN = Path(sys.executable).parent
DASHBOARD = "http://127.0.0.1:8265"  # `ray dashboard`'s tunnel on the laptop
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "dashboard", "mlflow", "log_monitor", "ray/")
# What cluster_configs/mlflow_user.sh makes on the head (here on the host: the machines share it).
MLFLOW_USER = "raytrain-mlflow"
MLFLOW_HOME = Path("/var/lib/raytrain-mlflow")
MLFLOW_VENV = Path("/opt/raytrain-mlflow")
MLFLOW_SUDOERS = Path("/etc/sudoers.d/raytrain-mlflow")
WRAPPER = f"sudo -n {MLFLOW_VENV}/bin/raytrain-mlflow"
# A stand-in database password in the SSH user's ~/.pgpass (TRACKING in the header): the first
# `ray up` moves it into MLflow's user's home, where no job can read it.
DB_PASSWORD = "test-db-password-7f3a9c"


@dataclass
class OnPrem:
    lan: machines.Lan
    head: machines.Machine
    worker: machines.Machine
    config: Path  # the filled-in copy of onprem.yaml
    key: Path
    env: dict[str, str]  # the laptop's shell: its HOME (key, Ray's token) and the repo's venv
    tracking_uri: str
    docs_uri: str  # what the docs' MLFLOW_URI=$(ray exec ...) line gives
    admin_password: str  # read on the head as root, as the header says (`sudo cat ...`)
    shared: Path  # a folder both machines see: the experiments' storage
    experiments: Path
    up_s: float
    ca: Path = Path()  # the cluster's CA certificate, fetched to the laptop as the header says

    def laptop(
        self, *args: str, timeout: float = 600, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.lan.on_laptop(
            list(args), env=self.env, cwd=REPO, timeout=timeout, check=check, stdin=stdin
        )

    def raytrain(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.laptop(str(BIN / "raytrain"), *args, timeout=timeout, check=False)

    def python(self, code: str) -> object:
        """``code``'s printed JSON, run on the laptop (only it reaches the LAN's addresses),
        signed in to the head's MLflow as its admin (the UI's user, docs/how-to/tracking-server.md).
        """
        signed_in = {"MLFLOW_TRACKING_USERNAME": "admin"}
        signed_in["MLFLOW_TRACKING_PASSWORD"] = self.admin_password
        signed_in["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(self.ca)
        done = self.lan.on_laptop(
            [str(BIN / "python"), "-c", textwrap.dedent(code)],
            env={**self.env, **signed_in},
            cwd=REPO,
            timeout=120,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


# The MLflow command's database and artifact settings: TRACKING in the header says to drop them
# to try the cluster without PostgreSQL (sqlite and artifacts in ~/mlflow on the head). The
# machines here have no PostgreSQL server; tests/test_tracking_server.py runs the same script on
# a real one.
POSTGRES_SETTINGS = re.compile(
    r"^ +MLFLOW_(BACKEND_STORE_URI|AUTH_DATABASE_URI|ARTIFACTS_DESTINATION)=\S+\n", re.MULTILINE
)


def _filled_in(text: str, head: str, worker: str, user: str, key: Path) -> str:
    """The header's FILL IN, done as a user does it."""
    for placeholder, value in [
        ("head_ip: HEAD_IP", f"head_ip: {head}"),
        ("worker_ips: [WORKER_IP_1, WORKER_IP_2]", f"worker_ips: [{worker}]"),
        ("ssh_user: YOUR_SSH_USER", f"ssh_user: {user}"),
        ("ssh_private_key: ~/.ssh/raytrain_cluster", f"ssh_private_key: {key}"),
    ]:
        assert placeholder in text, f"onprem.yaml no longer has '{placeholder}'"
        text = text.replace(placeholder, value)
    text, dropped = POSTGRES_SETTINGS.subn("", text)
    assert dropped == 3, "onprem.yaml's MLflow command no longer has the three settings to drop"
    return text


def _remove_mlflow_user() -> None:
    """What mlflow_user.sh made on the host (the machines share its /etc, /opt and /var/lib)."""
    MLFLOW_SUDOERS.unlink(missing_ok=True)
    subprocess.run(["userdel", MLFLOW_USER], capture_output=True)
    subprocess.run(["groupdel", MLFLOW_USER], capture_output=True)
    shutil.rmtree(MLFLOW_VENV, ignore_errors=True)
    shutil.rmtree(MLFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def onprem() -> Iterator[OnPrem]:
    why = machines.available()
    if why:
        pytest.skip(why)
    if not shutil.which("sudo") or not shutil.which("openssl"):
        pytest.skip("needs sudo and openssl (MLflow's own user, TLS): make system-deps")
    for made in (MLFLOW_VENV, MLFLOW_HOME, MLFLOW_SUDOERS):
        if made.exists():
            pytest.skip(f"{made} exists: another cluster's MLflow user is set up on this machine")
    # Namespaces have no route to a package index: the nodes install from the wheelhouse.
    subprocess.run(["make", "wheelhouse"], cwd=REPO, check=True, capture_output=True)
    root = Path(tempfile.mkdtemp(prefix="raytrain-lan-", dir="/var/tmp"))  # not /tmp: private
    root.chmod(0o755)
    home = root / "laptop"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (root / "laptop-tmp").mkdir()  # `ray up` keeps the cluster's state under $TMPDIR/ray
    env = {
        "HOME": str(home),
        "TMPDIR": str(root / "laptop-tmp"),
        "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "RAY_AUTH_MODE": "token",
        "LANG": "C.UTF-8",
    }
    dashboard = None
    setup_sudo = None
    try:
        with machines.Lan(root) as lan:
            key = home / ".ssh" / "raytrain_cluster"
            lan.on_laptop(["ssh-keygen", "-t", "ed25519", "-N", "", "-f", str(key)], env=env)
            public = key.with_suffix(".pub").read_text()
            head, worker = lan.add_machine(public), lan.add_machine(public)
            for machine in (head, worker):  # the header's SSH check
                check = lan.on_laptop(
                    [
                        "ssh",
                        "-i",
                        str(key),
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "StrictHostKeyChecking=accept-new",
                        f"{lan.user}@{machine.address}",
                        "python3.11 --version",
                    ],
                    env=env,
                )
                assert check.stdout.startswith("Python 3.11"), check.stdout + check.stderr
            lan.on_laptop([str(BIN / "ray"), "get-auth-token", "--generate"], env=env)
            (home / ".ray" / "auth_token").chmod(0o600)
            # The header's sudo for the first `ray up`, and TRACKING's ~/.pgpass on the head.
            setup_sudo = Path(f"/etc/sudoers.d/raytrain-setup-{lan.user}")
            setup_sudo.write_text(f"{lan.user} ALL=(ALL) NOPASSWD: ALL\n")
            setup_sudo.chmod(0o440)
            pgpass = lan.home / ".pgpass"
            pgpass.write_text(f"POSTGRES_HOST:5432:*:mlflow:{DB_PASSWORD}\n")
            shutil.chown(pgpass, lan.user)
            pgpass.chmod(0o600)
            config = root / "onprem.yaml"
            config.write_text(
                _filled_in(CONFIG.read_text(), head.address, worker.address, lan.user, key)
            )
            shared = root / "shared"
            shared.mkdir()
            shutil.chown(shared, lan.user)
            experiments = root / "experiments"
            experiments.mkdir()
            cluster = OnPrem(
                lan, head, worker, config, key, env, "", "", "", shared, experiments, 0.0
            )
            start = time.monotonic()
            up = cluster.laptop(
                str(BIN / "ray"), "up", "-y", str(config), timeout=1500, check=False
            )
            cluster.up_s = time.monotonic() - start
            setup_sudo.unlink()  # the header: right after the first `ray up`
            assert up.returncode == 0, _tail(up) + _logs(root)
            dashboard = subprocess.Popen(
                lan.laptop_command([str(BIN / "ray"), "dashboard", str(config)]),
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            # docs/how-to/on-prem.md's line, as written there (checked in a test of its own)
            read = f"ray exec {config} 'cat ~/mlflow/tracking_uri' | tr -d '\\r' | grep -m1 '^http'"
            cluster.docs_uri = cluster.laptop("bash", "-c", read).stdout.strip()
            # The admin's password (the UI's sign-in): on the head, as root (the header's
            # `sudo cat`); the SSH user cannot read it.
            admin_password = MLFLOW_HOME / "mlflow" / "admin_password"
            cluster.admin_password = admin_password.read_text().strip()
            # The header's line that fetches the cluster's CA to the laptop.
            fetch = (
                f"mkdir -p ~/.mlflow && ray rsync-down {config} '~/.mlflow/ca.pem' ~/.mlflow/ca.pem"
            )
            cluster.laptop("bash", "-c", fetch)
            cluster.ca = home / ".mlflow" / "ca.pem"
            cluster.tracking_uri = f"https://{head.address}:5000"
            yield cluster
    finally:
        if dashboard is not None and dashboard.poll() is None:
            os.killpg(dashboard.pid, 9)
        if setup_sudo is not None:
            setup_sudo.unlink(missing_ok=True)
        _remove_mlflow_user()
        shutil.rmtree(root, ignore_errors=True)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"


def _logs(root: Path) -> str:
    """Ray's and sshd's logs on the machines, for a failure's message."""
    found = []
    for log in [*root.glob("m*/sshd.log"), *root.glob("m*/tmp/ray/session_latest/logs/monitor.*")]:
        found.append(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(found)


def _nodes(cluster: OnPrem, count: int, timeout: float = 240) -> list[dict[str, object]]:
    """The cluster's alive nodes, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    nodes: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            nodes = cluster.python(
                f"""
                import json
                from raytrain.cluster.jobs import cluster_nodes
                print(json.dumps(cluster_nodes(address="{DASHBOARD}")))
                """
            )  # type: ignore[assignment]
        except AssertionError:  # the tunnel or the dashboard is not up yet
            nodes = []
        if len(nodes) == count:
            return nodes
        time.sleep(3)
    found = f"{len(nodes)} nodes, not {count}, after {timeout:.0f} s: {nodes}"
    raise AssertionError(f"{found}\n{_logs(cluster.lan.root)}")


def _mlflow_answers(cluster: OnPrem, timeout: float = 300) -> None:
    """Until the head's MLflow server answers: `ray up` starts it in the background, and it
    takes minutes to import on a loaded machine (a job's check allows it 5 s)."""
    health = ["curl", "-sf", "--max-time", "5", "--cacert", str(cluster.ca)]
    health.append(f"{cluster.tracking_uri}/health")
    deadline = time.monotonic() + timeout
    while cluster.laptop(*health, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"MLflow did not answer in {timeout:.0f} s"
        time.sleep(2)


def _experiment(cluster: OnPrem, name: str, body: str) -> Path:
    path = cluster.experiments / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            data: {{source: "builtin:digits"}}
            model: {{builder: mlp, params: {{hidden_units: [16]}}}}
            scaling: {{num_workers: 2, resources_per_worker: {{CPU: 2}}}}  # one per machine
            tracking: {{experiment: onprem, register_as: {name}}}
            """
        )
        + textwrap.dedent(body)
    )
    return path


def _submit(cluster: OnPrem, experiment: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`raytrain submit` as docs/how-to/on-prem.md writes it."""
    sets = [f"tracking.uri={cluster.tracking_uri}", f"storage={cluster.shared}", *overrides]
    args = [arg for value in sets for arg in ("--set", value)]
    return cluster.raytrain("submit", str(experiment), "--address", DASHBOARD, *args)


def _runs(cluster: OnPrem, experiment: str) -> list[dict[str, object]]:
    """Every run of ``experiment`` in the head's MLflow: status, tags, metric histories."""
    return cluster.python(  # type: ignore[return-value]
        f"""
        import json
        from mlflow import MlflowClient
        client = MlflowClient("{cluster.tracking_uri}")
        found = client.get_experiment_by_name("{experiment}")
        runs = client.search_runs([found.experiment_id]) if found else []
        def history(run, key):
            return sorted((m.step, m.value) for m in client.get_metric_history(run, key))
        print(json.dumps([
            {{"name": r.info.run_name, "status": r.info.status, "tags": r.data.tags,
              "parent": r.data.tags.get("mlflow.parentRunId"),
              "history": {{key: history(r.info.run_id, key) for key in r.data.metrics}},
              "versions": [v.version for v in
                           client.search_model_versions(f"run_id='{{r.info.run_id}}'")]}}
            for r in runs
        ]))
        """
    )


def _steps(cluster: OnPrem, experiment: str) -> list[int]:
    """The epochs in MLflow of ``experiment``'s only run, as logged (none before it starts)."""
    runs = _runs(cluster, experiment)
    history = runs[0]["history"] if runs else {}
    assert isinstance(history, dict)
    return [step for step, _ in history.get("val_accuracy", [])]


def _first_epoch_logged(cluster: OnPrem, experiment: str) -> bool:
    """Whether ``experiment``'s run has an epoch in MLflow, asked with curl through MLflow's REST
    API: a poll every second, where a Python client costs seconds of CPU each time. The admin's
    password goes to curl on its standard input, not on its command line."""
    auth = f'user = "admin:{cluster.admin_password}"\n'
    api = f"{cluster.tracking_uri}/api/2.0/mlflow"

    def call(*args: str) -> dict[str, object]:
        curl = ("curl", "-sf", "--max-time", "10", "--cacert", str(cluster.ca), "-K", "-", *args)
        done = cluster.laptop(*curl, check=False, stdin=auth)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    found = call(
        "-G", f"{api}/experiments/get-by-name", "--data-urlencode", f"experiment_name={experiment}"
    )
    experiment_id = found.get("experiment", {}).get("experiment_id")  # type: ignore[union-attr]
    if not experiment_id:
        return False
    query = json.dumps({"experiment_ids": [experiment_id], "max_results": 1})
    runs = call("-H", "Content-Type: application/json", "-d", query, f"{api}/runs/search")
    return any(
        m["key"] == "val_accuracy"
        for run in runs.get("runs", [])  # type: ignore[union-attr]
        for m in run["data"].get("metrics", [])
    )


def _worker_ips(run: dict[str, object]) -> list[str]:
    tags = run["tags"]
    assert isinstance(tags, dict)
    return re.findall(r"(\d+\.\d+\.\d+\.\d+) \(", tags["raytrain.nodes"])


def test_ray_up_brings_up_both_machines(onprem: OnPrem) -> None:
    nodes = _nodes(onprem, 2)
    assert sorted(str(n["ip"]) for n in nodes) == sorted(
        [onprem.head.address, onprem.worker.address]
    )
    for node in nodes:
        resources = node["resources"]
        assert isinstance(resources, dict)
        assert resources.get("onprem") == 1, node
    # Installed from the wheelhouse: the machines have no route to an index.
    assert (onprem.lan.home / "raytrain-wheelhouse").is_dir()
    print(f"ray up (cold, wheelhouse install): {onprem.up_s:.0f} s")


def test_the_docs_read_the_mlflow_uri(onprem: OnPrem) -> None:
    assert onprem.docs_uri == onprem.tracking_uri, repr(onprem.docs_uri)


def test_mlflow_requires_signing_in(onprem: OnPrem) -> None:
    """Jobs sign in by themselves (the cluster's raytrain-jobs user: the tests below); anyone
    else needs a user, here the admin whose password root read on the head."""
    search = f"{onprem.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    codes = onprem.python(
        f"""
        import json, os, requests
        admin = ("admin", os.environ["MLFLOW_TRACKING_PASSWORD"])
        ca = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        print(json.dumps([
            requests.get("{search}", auth=auth, timeout=30, verify=ca).status_code
            for auth in (None, ("admin", "wrong"), admin)
        ]))
        """
    )
    assert codes == [401, 401, 200]


def test_jobs_cannot_read_mlflow_passwords_and_clients_verify_its_tls(onprem: OnPrem) -> None:
    """A job (any code a Ray token holder sends) runs as the SSH user: it can neither read the
    MLflow admin's password, the database's password (moved from ~/.pgpass at `ray up`) nor the
    TLS key, nor use sudo for more than starting and stopping MLflow. The laptop reaches MLflow
    over HTTPS with the cluster's CA; without it (the system's CAs), with another CA, or over
    plain HTTP, it does not."""
    secret_files = [
        MLFLOW_HOME / "mlflow" / "admin_password",
        MLFLOW_HOME / ".pgpass",
        MLFLOW_HOME / "mlflow" / "tls" / "ca.key",
        MLFLOW_HOME / "mlflow" / "tls" / "server.key",
    ]
    for secret in secret_files:  # they are there, private to MLflow's user
        assert secret.stat().st_mode & 0o077 == 0, secret
        assert secret.owner() == MLFLOW_USER, secret
    assert DB_PASSWORD in (MLFLOW_HOME / ".pgpass").read_text()
    assert not (onprem.lan.home / ".pgpass").exists()
    tries = [f"cat {f}" for f in [*secret_files, "~/.pgpass", "~/mlflow/admin_password"]]
    tries += [f"sudo -n cat {secret_files[0]}", f"sudo -n -u {MLFLOW_USER} cat {secret_files[1]}"]
    tries += ["sudo -n -i true", f"{WRAPPER} status", "ls /var/lib/raytrain-mlflow"]
    script = "; ".join(
        f"if {t} 2>&1; then echo 'READ: {t}'; else echo 'DENIED: {t}'; fi" for t in tries
    )
    done = onprem.laptop(
        str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--", "bash", "-c", script,
        timeout=300, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 0, _tail(done)
    # Lines of the job's own output (Ray also echoes the entrypoint, which names both words).
    lines = set(said.splitlines())
    for t in tries:
        assert f"DENIED: {t}" in lines, said[-5000:]
    assert not [line for line in lines if line.startswith("READ: ")], said[-5000:]
    assert onprem.admin_password not in said
    assert DB_PASSWORD not in said

    other = onprem.experiments / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=another CA", "-out", str(other), "-keyout",
         str(onprem.experiments / "other-ca.key")],
        check=True, capture_output=True,
    )  # fmt: skip
    search = f"{onprem.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    outcomes = onprem.python(
        f"""
        import json, os, requests
        admin = ("admin", os.environ["MLFLOW_TRACKING_PASSWORD"])
        def outcome(url, verify):
            try:
                return requests.get(url, auth=admin, timeout=30, verify=verify).status_code
            except requests.exceptions.SSLError:
                return "ssl-error"
            except requests.exceptions.ConnectionError:
                return "connection-error"
        print(json.dumps([
            outcome("{search}", "{onprem.ca}"),
            outcome("{search}", True),
            outcome("{search}", "{other}"),
            outcome("{search.replace("https:", "http:")}", True),
        ]))
        """
    )
    assert outcomes == [200, "ssl-error", "ssl-error", "connection-error"], outcomes


def test_two_workers_train_on_both_machines(onprem: OnPrem) -> None:
    _nodes(onprem, 2)
    experiment = _experiment(onprem, "two-machines", "train: {epochs: 2, batch_size: 64}\n")
    done = _submit(onprem, experiment)
    assert done.returncode == 0, _tail(done)
    assert "Traceback" not in done.stdout + done.stderr
    (run,) = _runs(onprem, "onprem")
    assert run["status"] == "FINISHED"
    assert sorted(_worker_ips(run)) == sorted([onprem.head.address, onprem.worker.address])
    assert run["versions"], "the model is registered in the head's MLflow"
    history = run["history"]
    assert isinstance(history, dict)
    assert [step for step, _ in history["val_accuracy"]] == [1, 2]


def test_a_sweep_runs_on_the_cluster(onprem: OnPrem) -> None:
    _nodes(onprem, 2)
    experiment = _experiment(
        onprem,
        "sweep-machines",
        """
        train: {epochs: 1, batch_size: 64}
        tune:
          metric: val_accuracy
          mode: max
          num_samples: 2
          search: {algorithm: random, seed: 0}
          space: {train.optimizer.learning_rate: {loguniform: [1.0e-3, 1.0e-2]}}
        """,
    )
    done = _submit(onprem, experiment, "scaling.num_workers=1", "tracking.experiment=onprem-sweep")
    assert done.returncode == 0, _tail(done)
    runs = _runs(onprem, "onprem-sweep")
    parents = [r for r in runs if not r["parent"]]
    trials = [r for r in runs if r["parent"]]
    assert len(parents) == 1, runs
    assert len(trials) == 2, runs
    assert all(t["status"] == "FINISHED" for t in trials)
    assert any(r["versions"] for r in runs), "the sweep's best model is registered"


def test_storage_only_local_to_each_machine_fails_in_one_line(onprem: OnPrem) -> None:
    """/tmp is each machine's own: the same path, not the same folder."""
    _nodes(onprem, 2)
    experiment = _experiment(onprem, "not-shared", "train: {epochs: 1}\n")
    done = _submit(
        onprem, experiment, "storage=/tmp/raytrain-results", "tracking.experiment=not-shared"
    )
    assert done.returncode == 1, _tail(done)
    assert re.search(
        r"error: storage '/tmp/raytrain-results' is not shared: node [\d.]+ does not see",
        done.stdout,
    ), _tail(done)
    assert "Traceback" not in done.stdout + done.stderr
    assert _runs(onprem, "not-shared") == []  # no FAILED run left behind


def test_a_lost_worker_machine_does_not_end_the_run(onprem: OnPrem) -> None:
    """Ray stopped on the worker machine mid-run: the run goes on from its last checkpoint.

    Its 2 workers of {CPU: 2} do not fit on the head alone, so the new group waits for room
    (failures.py); the head's autoscaler (v1) restarts Ray on a machine whose raylet stopped
    answering for 30 s (its `worker_start_ray_commands` over SSH), and the run goes on there."""
    _nodes(onprem, 2)
    _mlflow_answers(onprem)
    epochs = 6
    # Small batches, one step per call: epochs of seconds, so that the loss lands mid-run, with
    # 5 epochs left once the first is in MLflow (seen within a second: _first_epoch_logged).
    # At 6 epochs of batch 8 and a Python client's poll taking seconds, the run was once over
    # before Ray was stopped; each epoch after the loss costs both machines' CPU.
    body = f"train: {{epochs: {epochs}, batch_size: 4, steps_per_execution: 1}}\n"
    experiment = _experiment(onprem, "node-loss", body + "failure: {max_failures: 1}\n")
    sets = [
        f"tracking.uri={onprem.tracking_uri}",
        f"storage={onprem.shared}",
        "tracking.experiment=node-loss",
    ]
    output = onprem.experiments / "node-loss.out"
    with output.open("w") as log:  # `raytrain submit` in the user's terminal, following the job
        submit = subprocess.Popen(
            onprem.lan.laptop_command(
                [str(BIN / "raytrain"), "submit", str(experiment), "--address", DASHBOARD]
                + [arg for value in sets for arg in ("--set", value)]
            ),
            env=onprem.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 400
        while not _first_epoch_logged(onprem, "node-loss"):  # mid-run: an epoch in MLflow
            assert submit.poll() is None, output.read_text()[-5000:]
            assert time.monotonic() < deadline, "no epoch in MLflow after 400 s"
            time.sleep(1)
        assert submit.poll() is None, f"the run ended before the loss: {output.read_text()}"
        stopped = time.monotonic()
        onprem.lan.on_machine(
            onprem.worker, "source ~/raytrain-venv/bin/activate && ray stop --force", onprem.key
        )
        submit.wait(timeout=900)
    finally:
        if submit.poll() is None:
            submit.kill()
    ended = time.monotonic() - stopped
    said = output.read_text()
    assert submit.returncode == 0, said[-5000:]  # the job SUCCEEDED
    assert "Traceback" not in said
    assert "(raylet)" not in said  # Ray's own ~25 lines on the lost node: with --verbose only
    lines = [line for line in said.splitlines() if "lost" in line]
    assert len(lines) == 1, said[-5000:]  # one line says what happened
    assert re.fullmatch(
        rf"lost worker \d on {re.escape(onprem.worker.address)} \([\w ]+\): restarting the workers "
        r"from the last checkpoint once the cluster has room for them \(retry 1 of 1, "
        r"failure.max_failures\)",
        lines[0].strip(),
    ), lines[0]
    (run,) = _runs(onprem, "node-loss")
    assert run["status"] == "FINISHED"
    assert _steps(onprem, "node-loss") == list(range(1, epochs + 1))  # each epoch once
    tags = run["tags"]
    assert isinstance(tags, dict)
    assert int(tags["raytrain.resumed_from_epoch"]) >= 1  # from a checkpoint, not from scratch
    # The worker machine came back (the autoscaler): the run's 2 workers of {CPU: 2} need both.
    _nodes(onprem, 2)
    print(f"node loss: Ray stopped on the worker, the run finished {ended:.0f} s later")


def test_ray_down_stops_ray_on_both_machines(onprem: OnPrem) -> None:
    # The header's TEAR DOWN, in its order.
    onprem.laptop(str(BIN / "ray"), "exec", str(onprem.config), f"{WRAPPER} stop")
    down = onprem.laptop(str(BIN / "ray"), "down", "-y", str(onprem.config))
    assert down.returncode == 0, _tail(down)
    deadline = time.monotonic() + 90
    left: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        left = {
            m.address: [p for p in m.processes() if any(name in p for name in RAY_PROCESSES)]
            for m in (onprem.head, onprem.worker)
        }
        if not any(left.values()):
            break
        time.sleep(2)
    assert not any(left.values()), f"still running after ray down: {left}"
    print(f"ray down: nothing left after {90 - (deadline - time.monotonic()):.0f} s")
