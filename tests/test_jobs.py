"""Remote submission through the Ray Jobs API, and data locality, on a real 2-node Ray cluster.

The module's cluster is two `ray start` nodes on this machine, with token auth on:
a head with 1 CPU, and a node with 1 CPU and the custom resource ``onprem``. It has its own temp
dir and ports, so the test session's own Ray instance never sees it; the CLI runs as a user runs
it, in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from raytrain.cluster.connection import ClusterInfo
from raytrain.cluster.jobs import cluster_nodes, list_jobs, stop_job
from raytrain.cluster.resources import check_locality
from raytrain.config.loader import load_experiment
from raytrain.config.locality import Locality
from raytrain.errors import ClusterError, SpecError

from .conftest import free_port, free_ports, write_yaml

RAYTRAIN = [sys.executable, "-m", "raytrain"]
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class TwoNodes:
    url: str  # the Jobs API (dashboard) URL
    env: dict[str, str]  # what a user's shell has: the cluster's token
    onprem: str  # the id of the node with the custom resource


def _node_options(temp: Path) -> list[str]:
    """Free ports for everything a node opens (the session's Ray instance holds the defaults),
    and a temp dir of its own, as on separate machines: two runtime-env agents sharing one each
    unpack a job's working_dir anew into the same folder, under the running driver's feet.

    Ray 2.60's job agent then reads a job's log from the head's temp dir, wherever the driver
    runs: on this one machine, logs stream only for jobs whose driver runs on the head node.
    """
    agent, agent_grpc, runtime_env, metrics = free_ports(4)
    return [
        f"--temp-dir={temp}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        "--disable-usage-stats",
    ]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    # Short path: Ray's unix socket paths live under it and must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="rt-jobs-", dir="/tmp"))
    # The same token as this machine's other Ray clients, so that in-process calls (whose token
    # Ray caches per process) and the CLI's agree.
    token = subprocess.run(
        [RAY, "get-auth-token", "--generate"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Job entrypoints run with the nodes' PATH: this venv's python has raytrain.
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    gcs, dashboard, client = free_ports(3)
    url = f"http://127.0.0.1:{dashboard}"
    head_cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1"]
    head_cmd += [f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1"]
    head_cmd += [f"--ray-client-server-port={client}", *_node_options(temp / "head")]
    node_cmd = [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=1"]
    node_cmd += ['--resources={"onprem": 1}', *_node_options(temp / "onprem")]
    started: list[subprocess.Popen[bytes]] = []
    with open(temp / "ray-start.log", "w") as log:
        try:
            for cmd in (head_cmd, node_cmd):
                # A process group of its own: teardown ends exactly what this command starts.
                started.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
                nodes = _wait_for_nodes(url, len(started), started, temp / "ray-start.log")
            onprem = next(n["node_id"] for n in nodes if "onprem" in n["resources"])
            yield TwoNodes(url=url, env=env, onprem=onprem)
        finally:
            _stop_jobs(url)
            _end_groups(started)
    shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(
    url: str, count: int, started: list[subprocess.Popen[bytes]], log: Path
) -> list[dict]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in started):
            pytest.fail(f"ray start exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(ClusterError):
            nodes = cluster_nodes(address=url)
            if len(nodes) == count:
                return nodes
        time.sleep(0.5)
    pytest.fail(f"the cluster did not come up:\n{log.read_text()[-3000:]}")


def _stop_jobs(url: str) -> None:
    """Job drivers run in process groups of their own: stop them through Ray first."""
    try:
        for job in list_jobs(address=url):
            if job.status in ("PENDING", "RUNNING"):
                stop_job(job.job_id, address=url)
    except ClusterError as exc:  # the cluster may be down already; teardown goes on
        print(f"could not stop the cluster's jobs: {exc}")


def _end_groups(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process the `ray start` commands started, SIGKILL to what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in started):
            time.sleep(0.2)
    for process in started:
        process.wait(timeout=10)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RAYTRAIN, *args],
        cwd=cwd,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _experiment(
    folder: Path, *, epochs: int = 2, workers: int = 2, data: str = '{source: "builtin:digits"}'
) -> Path:
    """A tiny experiment whose results land in ``folder`` (both nodes share this disk)."""
    return write_yaml(
        folder,
        f"""
        name: tiny-remote
        data: {data}
        model: {{builder: mlp, params: {{hidden_units: [16]}}}}
        train: {{epochs: {epochs}, batch_size: 64}}
        scaling:
          num_workers: {workers}
          resources_per_worker: {{CPU: 0.5}}
        storage: {folder / "results"}
        tracking: {{uri: "sqlite:///{folder / "mlflow.db"}", experiment: remote}}
        """,
    )


# The submitting user's MLflow credentials: `raytrain submit` must not send them anywhere (the
# job signs in with the cluster's own, docs/how-to/tracking-server.md).
SUBMITTERS_MLFLOW_USER = {
    "MLFLOW_TRACKING_USERNAME": "alice",
    "MLFLOW_TRACKING_PASSWORD": "alices-secret-7f3a9c",
}


@dataclass(frozen=True)
class Submitted:
    job_id: str
    result: subprocess.CompletedProcess[str]
    folder: Path
    took_s: float


@pytest.fixture(scope="module")
def onprem_job(two_nodes: TwoNodes, tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    """One experiment submitted with data.locality: onprem, run to the end: its data streamed
    (data.streaming) from Parquet files outside the experiment's folder, so not uploaded. One
    job for every test of a remote run: each job costs a driver and a worker group."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    data = tmp_path_factory.mktemp("data")
    for part, rows in enumerate(np.array_split(np.arange(len(frame)), 2)):
        frame.assign(label=digits.target).iloc[rows].to_parquet(data / f"part-{part}.parquet")
    folder = tmp_path_factory.mktemp("remote")
    (folder / "raytrain_results").mkdir()  # a local result folder: it must not be uploaded
    (folder / "raytrain_results" / "big.bin").write_bytes(b"0" * 1_000_000)
    experiment = _experiment(
        folder, epochs=1, data=f'{{source: "{data}/*.parquet", streaming: true}}'
    )
    start = time.monotonic()
    result = _cli(
        "submit",
        str(experiment),
        "--address",
        two_nodes.url,
        "--set",
        "data.locality=onprem",
        env={**two_nodes.env, **SUBMITTERS_MLFLOW_USER},
        cwd=folder,
    )
    found = re.search(r"submitted job (\S+) to", result.stdout)
    assert found, result.stdout + result.stderr
    return Submitted(found.group(1), result, folder, time.monotonic() - start)


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_submit_runs_every_worker_on_the_onprem_node(
    two_nodes: TwoNodes, onprem_job: Submitted
) -> None:
    result = onprem_job.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"job {onprem_job.job_id} SUCCEEDED" in result.stdout
    assert "python -m raytrain run exp.yaml --set data.locality=onprem" in result.stdout
    assert "(0.0 MiB uploaded)" in result.stdout  # not raytrain_results/big.bin
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{onprem_job.folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
    assert run.info.status == "FINISHED"
    workers = re.findall(r"\((\w+)\)", run.data.tags["raytrain.nodes"])
    assert workers == [two_nodes.onprem, two_nodes.onprem]
    # The driver, which reads the data, ran there too.
    (job,) = [j for j in list_jobs(address=two_nodes.url) if j.job_id == onprem_job.job_id]
    assert job.driver_node_id == two_nodes.onprem
    print(f"submit until SUCCEEDED: {onprem_job.took_s:.1f} s")


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_jobs_lists_the_job_with_its_experiment(two_nodes: TwoNodes, onprem_job: Submitted) -> None:
    result = _cli("jobs", "--address", two_nodes.url, env=two_nodes.env, cwd=onprem_job.folder)
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if onprem_job.job_id in line]
    assert "SUCCEEDED" in row
    assert "tiny-remote" in row
    # Nothing the cluster keeps or shows about the job carries the submitter's MLflow password.
    from ray.job_submission import JobSubmissionClient

    from raytrain.cluster.jobs import _auth_headers

    client = JobSubmissionClient(two_nodes.url, headers=_auth_headers())
    shown = json.dumps(client.get_job_info(onprem_job.job_id).__dict__, default=str)
    shown += client.get_job_logs(onprem_job.job_id) + onprem_job.result.stdout
    assert SUBMITTERS_MLFLOW_USER["MLFLOW_TRACKING_PASSWORD"] not in shown


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_streamed_data_is_read_only_on_the_onprem_node(
    two_nodes: TwoNodes, onprem_job: Submitted
) -> None:
    """data.streaming with data.locality: every Ray Data task that reads the files ran on the
    node with the resource, though the head node has a CPU of its own."""
    result = onprem_job.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{onprem_job.folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
    assert run.data.params["data.streaming"] == "True"
    assert re.findall(r"\((\w+)\)", run.data.tags["raytrain.nodes"]) == [two_nodes.onprem] * 2
    # The State API from a process of its own: this one cached Ray's auth mode long ago.
    listed = subprocess.run(
        [
            RAY,
            "list",
            "tasks",
            "--address",
            two_nodes.url,
            "--detail",
            "--format=json",
            "--limit=10000",
        ],
        env=two_nodes.env,
        capture_output=True,
        text=True,
        check=True,
    )
    tasks = json.loads(listed.stdout)
    readers = [t for t in tasks if "_FileReader" in (t.get("name") or "")]
    assert readers, sorted({t.get("name") for t in tasks})
    assert {t["node_id"] for t in readers} == {two_nodes.onprem}


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_follow_detach_logs_and_stop(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """A long job, its driver on the head node: followed, left with Ctrl-C, read, stopped. One
    worker: what is checked is the job's, and the run trains on both cores until it is stopped."""
    experiment = _experiment(tmp_path, epochs=1000, workers=1)
    submitting = subprocess.Popen(
        [*RAYTRAIN, "submit", str(experiment), "--address", two_nodes.url],
        cwd=tmp_path,
        env={**two_nodes.env, "COLUMNS": "200", "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert submitting.stderr is not None
    lines = _collect_lines(submitting)
    header = "tiny-remote: mlp on builtin:digits, 1 worker(s), 1000 epochs"
    deadline = time.monotonic() + 60
    while not any(header in line for line in lines):  # streamed while the job runs
        assert submitting.poll() is None, lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.2)
    found = re.search(r"submitted job (\S+) to", lines[0])
    assert found, lines
    job_id = found.group(1)

    submitting.send_signal(signal.SIGINT)  # Ctrl-C: stop following, not the job
    # Seconds alone; over 30 s once, on a machine loaded 6x its cores (CI beside other work).
    assert submitting.wait(timeout=120) == 130, lines
    err = submitting.stderr.read()
    assert err.splitlines()[-1] == (
        f"detached: job {job_id} keeps running on the cluster; `raytrain logs {job_id} --follow "
        f"--address {two_nodes.url}` follows it again, `raytrain stop {job_id} --address "
        f"{two_nodes.url}` stops it"
    )
    (job,) = [j for j in list_jobs(address=two_nodes.url) if j.job_id == job_id]
    assert job.status == "RUNNING"

    env = {**two_nodes.env, "RAY_ADDRESS": two_nodes.url}  # the default address
    logs = _cli("logs", job_id, env=env, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert header in logs.stdout
    stopped = _cli("stop", job_id, env=env, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"job {job_id} STOPPED"
    followed = _cli("logs", job_id, "--follow", env=env, cwd=tmp_path)
    assert followed.returncode == 1  # it did not succeed
    assert header in followed.stdout
    assert followed.stdout.rstrip().endswith(f"job {job_id} STOPPED")


def _collect_lines(process: subprocess.Popen[str]) -> list[str]:
    """The process's stdout lines so far, read by a thread (a blocking read cannot time out)."""
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout or []:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["data.locality=gpu_rack"],
            "error: data.locality: no node in the cluster has resource 'gpu_rack' (nodes have: "
            "CPU, memory, onprem); start the nodes that hold the data with `ray start ... "
            """--resources '{"gpu_rack": 1}'` (or resources: in the cluster config), or fix """
            "data.locality",
        ),
        (
            ["data.locality=onprem", "data.source=data.csv"],
            "error: data.locality: data.source 'FOLDER/data.csv' is inside the experiment's "
            "folder, which `raytrain submit` uploads to the cluster: keep the data on the "
            "'onprem' nodes and give its path there",
        ),
    ],
    ids=["resource-nobody-has", "data-in-the-uploaded-folder"],
)
def test_locality_mistakes_are_refused_before_submitting(
    two_nodes: TwoNodes, tmp_path: Path, overrides: list[str], expected: str
) -> None:
    (tmp_path / "data.csv").write_text("x,label\n1,0\n")
    sets = [arg for override in overrides for arg in ("--set", override)]
    experiment = str(_experiment(tmp_path))
    result = _cli(
        "submit", experiment, "--address", two_nodes.url, *sets, env=two_nodes.env, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip() == expected.replace("FOLDER", str(tmp_path))
    assert not [j for j in list_jobs(address=two_nodes.url) if j.status == "PENDING"]


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
@pytest.mark.parametrize(
    ("token_env", "expected"),
    [
        (
            {"RAY_AUTH_TOKEN": "not-the-token"},
            "refused the auth token from $RAY_AUTH_TOKEN: it is not this cluster's token",
        ),
        ({"HOME": "/nonexistent"}, "requires an auth token and none was found"),
        (
            {"HOME": "/nonexistent", "RAY_AUTH_MODE": None},  # a shell that never ran Ray
            "requires an auth token and none was found",
        ),
    ],
    ids=["wrong-token", "no-token", "no-token-no-auth-mode"],
)
def test_bad_tokens_fail_in_one_line(
    two_nodes: TwoNodes, tmp_path: Path, token_env: dict[str, str | None], expected: str
) -> None:
    merged = {k: v for k, v in two_nodes.env.items() if k != "RAY_AUTH_TOKEN"} | token_env
    env = {k: v for k, v in merged.items() if v is not None}
    result = _cli("jobs", "--address", two_nodes.url, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: the Ray cluster at {two_nodes.url} ")
    assert expected in result.stderr


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_unknown_job_id(two_nodes: TwoNodes, tmp_path: Path) -> None:
    for command in ("logs", "stop"):
        result = _cli(
            command, "raysubmit_nope", "--address", two_nodes.url, env=two_nodes.env, cwd=tmp_path
        )
        assert result.returncode == 1
        assert result.stderr == (
            f"error: no job 'raysubmit_nope' on the cluster at {two_nodes.url} "
            f"(`raytrain jobs --address {two_nodes.url}` lists them)\n"
        )


def test_unreachable_address_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    result = _cli(
        "submit",
        str(_experiment(tmp_path)),
        "--address",
        "http://127.0.0.1:1",
        env=dict(os.environ),
        cwd=tmp_path,
    )
    assert time.monotonic() - start < 30  # most of it is starting Python
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to Ray at http://127.0.0.1:1: ")
    assert result.stderr.rstrip().endswith(
        "(is the head node up, and is this its dashboard port, 8265 by default?)"
    )
    assert result.stderr.count("\n") == 1


def test_no_address_and_invalid_files_fail_before_any_request(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    result = _cli("submit", str(_experiment(tmp_path)), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: no cluster to submit to: pass --address http://HEAD:8265"
    )
    bad = write_yaml(tmp_path, "train: {epochs: 0}\n", name="bad.yaml")
    result = _cli("submit", str(bad), "--address", "http://127.0.0.1:1", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:1: train.epochs:" in result.stderr
    assert "Traceback" not in result.stderr


def test_locality_pins_workers_and_trials(tmp_path: Path) -> None:
    spec = load_experiment(
        _experiment(tmp_path), ["data.locality=onprem", "scaling.resources_per_worker={CPU: 2}"]
    ).spec
    assert spec.worker_resources() == {"onprem": 0.001, "CPU": 2}
    assert spec.data.locality_rule.resources() == {"onprem": 0.001}  # what each trial adds
    assert load_experiment(_experiment(tmp_path)).spec.data.locality_rule.resources() == {}


def test_locality_data_need_not_exist_on_the_submitting_machine(tmp_path: Path) -> None:
    """It may live only on the nodes with the resource; the job checks it again there."""
    text = "name: t\ndata: {source: /data/on/prem/*.csv, locality: onprem}\n"
    assert load_experiment(write_yaml(tmp_path, text)).spec.data.locality == "onprem"
    with pytest.raises(SpecError, match="no file matches '/data/on/prem/"):
        load_experiment(write_yaml(tmp_path, "name: t\ndata: {source: /data/on/prem/*.csv}\n"))


def test_locality_problem_names_what_the_nodes_have() -> None:
    nodes = [{"CPU": 4.0, "memory": 1e9, "node:10.0.0.1": 1.0, "gcp": 1.0}, {"CPU": 2.0}]
    assert Locality("gcp").problem(nodes) is None
    assert Locality().problem([]) is None  # unpinned: any node will do, even none yet
    problem = Locality("onprem").problem(nodes)
    assert problem is not None
    assert problem.startswith(
        "data.locality: no node in the cluster has resource 'onprem' (nodes have: CPU, gcp, memory)"
    )


def test_locality_answers_for_every_module(tmp_path: Path) -> None:
    """What the summary, the plan, the node filters and `raytrain submit` get from the owner."""
    onprem, anywhere = Locality("onprem"), Locality()
    assert (onprem.describe(), anywhere.describe()) == ("read only on nodes with 'onprem'", None)
    assert (onprem.allows({"onprem": 1.0}), onprem.allows({"CPU": 8.0})) == (True, False)
    assert (anywhere.allows({}), anywhere.pinned, anywhere.resources()) == (True, False, {})
    assert onprem.config_problem({"CPU", "onprem"}) is None
    assert onprem.config_problem({"CPU"}) == "data.locality: onprem: no node here carries it"
    assert anywhere.config_problem(set()) is None
    inside = str(tmp_path / "data.csv")
    assert onprem.upload_problem(inside, tmp_path) == (
        f"data.locality: data.source '{inside}' is inside the experiment's folder, which "
        "`raytrain submit` uploads to the cluster: keep the data on the 'onprem' nodes and give "
        "its path there"
    )
    assert onprem.upload_problem("/data/on/prem/x.csv", tmp_path) is None
    assert onprem.upload_problem("builtin:iris", tmp_path) is None
    assert anywhere.upload_problem(inside, tmp_path) is None


def test_run_checks_locality_on_the_connected_cluster(ray_cluster: ClusterInfo) -> None:
    check_locality(Locality())
    with pytest.raises(ClusterError, match="no node in the cluster has resource 'onprem'"):
        check_locality(Locality("onprem"))


JOB_CANARY = "canary-Jb27qWx"  # a secret's value: must never show


@pytest.mark.slow  # submits to the module's cluster
def test_a_submitted_job_shows_no_secret(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """Secrets referenced by the experiment are resolved on the node: neither the job's record,
    its entrypoint, its logs nor raytrain's listing carry them. (On this module's cluster, not
    the session's Ray instance: with two test workers one of those has no job agent, as both
    want Ray's default agent port.)"""
    from ray.job_submission import JobSubmissionClient

    from raytrain.cluster.jobs import _auth_headers, submit
    from raytrain.config.references import deferred

    secret_file = tmp_path / "password"  # on the node: the job resolves the references there
    secret_file.write_text(JOB_CANARY)
    folder = tmp_path / "experiment"
    folder.mkdir()
    path = write_yaml(
        folder,
        f"""
        name: canary-job
        scaling: {{num_workers: 1}}
        tracking:
          uri: http://raytrain:${{file:{secret_file}}}@127.0.0.1:{free_port()}
          tags: {{MLFLOW_TRACKING_PASSWORD: "${{file:{secret_file}}}"}}
        """,
    )
    with deferred():
        secret = load_experiment(path, [f"tracking.tags.api_key={JOB_CANARY}"])
        plain = load_experiment(path, ["train.epochs=1"])
    with pytest.raises(ClusterError, match=r"--set tracking\.tags\.api_key=\*\*\*: a secret"):
        submit(secret, address=two_nodes.url)
    deadline = time.monotonic() + 120  # a fresh instance's job agent registers a moment late
    while True:
        try:
            job = submit(plain, address=two_nodes.url)
            break
        except ClusterError as exc:
            if "No available agent" not in str(exc):
                raise
            assert time.monotonic() < deadline, "the cluster's job agent never registered"
            time.sleep(2)
    client = JobSubmissionClient(two_nodes.url, headers=_auth_headers())
    deadline = time.monotonic() + 120  # the job fails fast: its tracking server is not there
    while not client.get_job_status(job.job_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    stop_job(job.job_id, address=two_nodes.url)
    info = client.get_job_info(job.job_id)
    everything = [repr(d) for d in client.list_jobs()]
    everything += [repr(info), client.get_job_logs(job.job_id)]
    everything += [str(r) for r in list_jobs(address=two_nodes.url)]
    assert info.entrypoint == "python -m raytrain run exp.yaml --set train.epochs=1"
    assert all(JOB_CANARY not in text for text in everything)
