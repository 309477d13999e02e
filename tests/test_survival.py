"""Runs that survive their driver's loss and their MLflow server's: `raytrain resume` continues
a killed run in the same MLflow run, and logs afterwards what a dead server missed."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from rich.console import Console

from raytrain import tracking
from raytrain.cluster.connection import ClusterInfo
from raytrain.config.loader import load_experiment
from raytrain.config.schema import Experiment
from raytrain.display import EpochProgress
from raytrain.errors import RaytrainError
from raytrain.orchestration.run import resume_run, run_experiment
from raytrain.train.state import STATE_FILE, RunState, find_run

from .conftest import free_port, wait_for_mlflow, write_yaml

EPOCHS = 6
# What training computes (the same for the same seed); times and throughput vary run to run.
TRAINED = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch")


# Epochs of about a second on 2 cores: batches of 4, one per tf.function call, a wider MLP.
SLOW_EPOCHS = {"hidden_units": "[256, 256]", "train": "batch_size: 4, steps_per_execution: 1"}


def _experiment(
    folder: Path,
    uri: str,
    *,
    epochs: int = EPOCHS,
    hidden_units: str = "[16]",
    train: str = "batch_size: 64",
) -> Path:
    return write_yaml(
        folder,
        f"""
        name: tiny
        data: {{source: "builtin:digits"}}
        model: {{builder: mlp, params: {{hidden_units: {hidden_units}}}}}
        train: {{epochs: {epochs}, {train}}}
        scaling: {{num_workers: 1}}
        storage: {folder / "results"}
        tracking: {{uri: "{uri}", register_as: tiny}}
        """,
    )


def _history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every trained metric's (step, value) pairs, in step order."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in TRAINED
    }


def _registered(uri: str, run_id: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name = 'tiny'")
    return [str(v.version) for v in versions if v.run_id == run_id]  # sqlite: int; REST: str


# --- no Ray: the state file, finding a run, logging what MLflow missed ------------------------


def _state(root: Path, **extra: object) -> RunState:
    return RunState(
        spec=Experiment.model_validate({"name": "tiny"}),
        spec_file=str(root / "exp.yaml"),
        base_dir=str(root),
        storage_root=str(root / "results" / "tiny"),
        run_name="tiny-1",
        **extra,
    )


def test_a_run_is_found_by_folder_name_or_mlflow_run_id(tmp_path: Path) -> None:
    state = _state(tmp_path, tracked=tracking.TrackedRun("sqlite:////x.db", "tiny", "1", "abc"))
    state.save()
    storage = str(tmp_path / "results")
    for name in (state.folder, "tiny-1", "abc"):
        assert find_run(name, storage) == state
    assert find_run("a-sweep", storage) is None
    assert state.resume_command == f"raytrain resume {state.folder}"
    assert RunState.load(state.folder).update(trained=True).trained


def test_the_start_and_ctrl_c_print_the_resume_command(tmp_path: Path) -> None:
    state = _state(tmp_path)
    shown = io.StringIO()
    progress = EpochProgress(3, "val_accuracy", Console(file=shown, width=300))
    with progress:
        progress.started(state)
    assert f"(if it is interrupted: raytrain resume {state.folder})" in shown.getvalue()
    assert progress.interrupted.plain == (
        f"interrupted: continue with `raytrain resume {state.folder}`"
    )


def test_a_finished_run_has_nothing_to_resume(tmp_path: Path) -> None:
    state = _state(tmp_path, trained=True)
    with pytest.raises(RaytrainError, match="run 'tiny-1' finished: nothing to resume"):
        resume_run(state)
    with pytest.raises(RaytrainError, match="is a training run: `num_samples` grows sweeps"):
        resume_run(state, num_samples=3)


def test_missing_epochs_are_logged_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    run = tracking.TrackedRun(uri, "e", "0", run_id)
    epochs = [{"loss": 1.0 / n, "epoch": n} for n in (1, 2, 3)]
    tracking.log_metrics(run, epochs[0], step=1)
    assert tracking.log_missing_epochs(run, epochs) == [2, 3]
    assert tracking.log_missing_epochs(run, epochs) == []
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]


def test_a_dead_server_never_holds_the_epoch_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training hands each epoch over at once, even while a send hangs on the server; the
    epochs the server missed are listed."""
    from raytrain.tracking import runs

    sending, answer = threading.Event(), threading.Event()

    def hanging_server(run: Any, metrics: dict, *, step: int) -> None:
        sending.set()
        answer.wait()
        raise ConnectionError("the server is gone")

    monkeypatch.setattr(runs, "log_metrics", hanging_server)
    logger = tracking.EpochLogger(tracking.TrackedRun("http://127.0.0.1:9", "e", "0", "r"))
    logger.log({"loss": 1.0, "epoch": 1}, step=1)
    assert sending.wait(timeout=60)
    for step in (2, 3):  # handed over while the first send still hangs
        logger.log({"loss": 1.0, "epoch": step}, step=step)
    assert logger.unlogged == []
    assert not answer.is_set()
    answer.set()
    logger.flush(timeout_s=60)
    assert logger.unlogged == [1, 2, 3]  # the first failed; the next two were not tried


# --- a driver killed mid-run -------------------------------------------------------------------


# A run killed and resumed (minutes on a loaded machine; under a minute idle).
@pytest.mark.timeout(1800)
@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_a_run_whose_driver_was_killed_resumes_in_the_same_mlflow_run(
    ray_cluster: ClusterInfo, workdir: Path
) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    # Epochs of about a second, so that the run is still going when the driver's loss reaches its
    # Ray Train controller: tiny epochs (8 batches per call, ~0.2 s) had all finished by then.
    path = _experiment(workdir, uri, epochs=8, **SLOW_EPOCHS)
    # The store and the experiment made before the run starts, so that polling it below never
    # races the run's own first use of a new sqlite file (table creation).
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(load_experiment(path).spec.experiment_name)
    raytrain = [sys.executable, "-m", "raytrain"]
    address = ["--address", ray_cluster.address]
    with open(workdir / "out.txt", "w") as out:
        proc = subprocess.Popen(
            [*raytrain, "run", str(path), *address], cwd=workdir, stdout=out, stderr=out
        )
        killed = None
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
            if running and len(client.get_metric_history(running[0].info.run_id, "epoch")) >= 2:
                os.kill(proc.pid, signal.SIGKILL)  # the driver, as a lost session would
                killed = running[0].info.run_id
        proc.wait()
    assert killed, "the run ended before it could be killed"
    assert len(client.get_metric_history(killed, "epoch")) < 8
    (folder,) = {p.parent for p in workdir.glob(f"results/tiny/*/{STATE_FILE}")}
    assert f"raytrain resume {folder}" in (workdir / "out.txt").read_text()  # said at its start

    result = subprocess.run(
        [*raytrain, "resume", killed, "--storage", str(workdir / "results"), *address],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"MLflow run id {killed}" in " ".join(result.stdout.split())
    run = client.get_run(killed)
    assert run.info.status == "FINISHED"
    # Killed after epoch 2 at the earliest; on a loaded machine, possibly after its last epoch
    # (then the resume only ends the run).
    assert int(run.data.tags["raytrain.resumed_from_epoch"]) >= 2
    # One value per epoch, every epoch, as a run that was never killed logs them.
    steps = {k: [s for s, _ in v] for k, v in _history(uri, killed).items()}
    assert steps == {k: list(range(1, 9)) for k in TRAINED}
    assert "best_val_accuracy" in run.data.metrics
    assert _registered(uri, killed) == ["1"]
    again = subprocess.run(
        [*raytrain, "resume", str(folder)], cwd=workdir, capture_output=True, text=True
    )
    assert again.returncode == 1
    assert "finished and is logged in MLflow: nothing to resume" in again.stderr


# --- an MLflow server lost mid-run ---------------------------------------------------------------


class Server:
    """A real `mlflow server` (sqlite, loopback), stopped and started again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"),
                *("--artifacts-destination", str(self.folder / "artifacts")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers are its process group: killed with it
        )
        wait_for_mlflow(self.uri, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started
            self.proc.wait()


@pytest.fixture
def server(workdir: Path) -> Iterator[Server]:
    running = Server(workdir)
    running.start()
    yield running
    running.kill()


@pytest.mark.timeout(1800)  # two server starts and three runs: minutes on a loaded machine
def test_a_run_whose_mlflow_server_dies_finishes_and_is_logged_later(
    ray_cluster: ClusterInfo, workdir: Path, server: Server
) -> None:
    loaded = load_experiment(_experiment(workdir, server.uri))
    started = time.monotonic()
    reference = run_experiment(loaded)
    reference_s = time.monotonic() - started
    assert reference.tracking is not None
    assert reference.unlogged is None

    def kill_after_epoch_1(event: dict) -> None:
        if event["epoch"] == 1:
            server.kill()

    started = time.monotonic()
    summary = run_experiment(loaded, on_epoch=kill_after_epoch_1)
    lost_s = time.monotonic() - started
    print(f"wall time: {reference_s:.1f} s with MLflow, {lost_s:.1f} s with MLflow killed")
    # A dead server must not hold the run: MLflow's own client retries each call for minutes
    # (7 retries, backoff 2: ~4 min); raytrain's bounded client gives up in seconds. The margin
    # is wide because the other test worker loads this machine unevenly (CI once measured 22.6
    # s against a 9.2 s reference), yet far below one unbounded call.
    assert lost_s <= 2 * reference_s + 30
    assert summary.tracking is not None
    assert summary.registered_version is None
    assert summary.unlogged is not None
    # Epoch 1 was being sent when the server died, or had been sent.
    assert re.search(
        r"not logged: the metrics of epoch\(s\) [12]-6, the model \(and its registration as "
        r"tiny\), the best metrics and the FINISHED status",
        summary.unlogged,
    )
    state = RunState.load(summary.storage_path)
    assert state.trained
    assert not state.model_logged
    assert not state.logged
    assert f"`{state.resume_command}` logs it" in summary.unlogged

    server.start()
    logged = resume_run(state)
    assert logged.unlogged is None
    run_id = summary.tracking.run_id
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    # The values trained while the server was away, as a run that never lost it logged them.
    assert _history(server.uri, run_id) == _history(server.uri, reference.tracking.run_id)
    assert _registered(server.uri, run_id) == [logged.registered_version] == ["2"]
    assert RunState.load(summary.storage_path).logged
