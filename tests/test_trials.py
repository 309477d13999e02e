"""1-worker sweep trials train in their Tune trial's own process, 2-worker trials in a worker group
that process keeps, and Tune reuses the process: nothing of one trial may reach the next, a
stopped trial leaves the group ready for the next, and a trial's own error is not retried while a
lost process or worker is."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ray.util.state import list_actors

from raytrain.cluster.connection import state_address
from raytrain.config.loader import load_experiment
from raytrain.orchestration.sweep import run_sweep
from raytrain.train.checkpoint import MODEL_FILE
from raytrain.train.session import CODE_ERROR_FILE

from .conftest import REPO, group_workers

pytestmark = pytest.mark.usefixtures("ray_cluster")
SWEEP = REPO / "experiments" / "sweep.yaml"
ONE_AT_A_TIME = [
    "train.epochs=2",
    "tune.max_concurrent_trials=1",
    "tune.search.algorithm=grid",
    "tune.scheduler.name=none",
    "tracking.enabled=false",
    "checkpoint.keep=1",
]


def _sweep(workdir: Path, name: str, rates: list[float], *more: str, workers: int = 1) -> dict:
    space = f"tune.space={{train.optimizer.learning_rate: {{grid: {json.dumps(rates)}}}}}"
    file = workdir / "sweep.yaml"  # beside the test's own builders
    file.write_text(SWEEP.read_text())
    named = [space, f"tracking.run_name={name}", f"scaling.num_workers={workers}"]
    loaded = load_experiment(file, [*ONE_AT_A_TIME, *named, *more])
    summary = run_sweep(loaded)
    return {row["train.optimizer.learning_rate"]: row for row in summary.rows}


def _weights(row: dict) -> list[np.ndarray]:
    import tensorflow as tf

    return tf.keras.models.load_model(str(Path(row["checkpoint"], MODEL_FILE))).get_weights()


def _reports(folder: Path) -> list[dict]:
    """Every result Tune recorded for a Tune experiment's trials, in order per trial."""
    return [
        json.loads(line)
        for result in folder.glob("*/result.json")
        for line in result.read_text().splitlines()
        if line.strip()
    ]


def _pids(folder: Path) -> set[int]:
    """The processes that trained a Tune experiment's trials (Tune records each result's pid)."""
    return {report["pid"] for report in _reports(folder)}


def test_a_trial_whose_process_is_lost_resumes_from_its_checkpoint(
    workdir: Path, ray_session_dir: Path
) -> None:
    """The trial's process is killed once its first checkpoint is written: Tune starts it again
    (failure.max_failures), and it resumes from its latest checkpoint, not from epoch 0."""
    experiment = workdir / "raytrain_results" / "digits-mlp" / "lost"
    trials = experiment.parent / "lost-trials"
    killed: dict[int, int] = {}  # the process killed -> the last epoch Tune had from it

    def kill_after_the_first_checkpoint() -> None:
        while not (states := list(trials.glob("trial-*/checkpoint_*/raytrain_state.json"))):
            time.sleep(0.05)
        trial_id = states[0].parents[1].name.removeprefix("trial-")
        # The process that reported it, as Tune's driver records it. Not the copy under the
        # storage path: Tune copies it there every 10 s or more, when the trial may be over
        # (Ray's State API, for its part, lists a new actor seconds late on a loaded machine).
        pattern = f"artifacts/*/lost/driver_artifacts/*{trial_id}*/result.json"
        while not (
            lines := [
                json.loads(line)
                for result in ray_session_dir.glob(pattern)
                for line in result.read_text().split("\n")[:-1]  # whole lines only
            ]
        ):
            time.sleep(0.05)
        pid = int(lines[0]["pid"])
        os.kill(pid, signal.SIGKILL)
        killed[pid] = lines[-1]["epoch"]

    killer = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    killer.start()
    rows = _sweep(
        workdir,
        "lost",
        [0.01],
        "train.epochs=40",
        "train.batch_size=4",  # 40 epochs of ~0.15-0.3 s: the kill (at epoch 1) lands mid-run
        "failure.max_failures=1",
    )
    killer.join(timeout=60)
    assert killed, "the trial finished before its process could be killed"
    assert max(killed.values()) < 40, f"killed after its last epoch: {killed}"
    (row,) = rows.values()
    assert row["status"] == "finished"
    assert row["epochs"] == 40
    reports = _reports(experiment)
    after = [r["epoch"] for r in reports if r["pid"] not in killed]
    assert after, "no other process reported"
    assert min(after) > 1, after  # the new process resumed from a checkpoint
    # It resumed from the last epoch Tune had, even one the killed process never heard arrive:
    # each epoch reached Tune once.
    epochs = [r["epoch"] for r in reports]
    assert epochs == list(range(1, 41)), epochs


@pytest.mark.parametrize("workers", [1, 2])
def test_a_trial_after_another_in_the_same_process_trains_as_it_would_alone(
    workdir: Path, workers: int
) -> None:
    """With 2 workers, the second trial trains on the group the first one started: the same
    processes, their strategy's ports, TensorFlow imported."""
    before = group_workers()
    both = _sweep(workdir, "a-then-b", [0.02, 0.003], workers=workers)
    if workers > 1:
        assert len(group_workers() - before) == workers, "the group was not reused"
    alone = _sweep(workdir, "b-alone", [0.003], workers=workers)
    storage = workdir / "raytrain_results" / "digits-mlp"
    assert len(_pids(storage / "a-then-b")) == 1, "Tune did not reuse the trial's process"
    assert both[0.003]["status"] == "finished"
    assert both[0.003]["best_val_accuracy"] == alone[0.003]["best_val_accuracy"]
    for row in (*both.values(), *alone.values()):  # never HDF5, which loading refuses
        assert zipfile.is_zipfile(Path(row["checkpoint"], MODEL_FILE)), row
    for mine, its in zip(_weights(both[0.003]), _weights(alone[0.003]), strict=True):
        np.testing.assert_array_equal(mine, its)
    # Checkpoints in Ray Train's layout, checkpoint.keep of them (and the latest) per trial.
    trial = Path(both[0.003]["checkpoint"]).parent
    assert trial.parent.name == "a-then-b-trials"
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == ["checkpoint_000002"]


def test_a_trial_stopped_by_the_scheduler_leaves_its_group_to_the_next_trial(
    workdir: Path,
) -> None:
    """ASHA stops trials after an epoch: every worker of the group leaves training at that
    epoch, and the next trial trains on the same group (a worker left waiting in an all-reduce
    would hang it)."""
    before = group_workers()
    rows = _sweep(
        workdir,
        "stopped",
        [0.0001, 0.05, 0.0002, 0.03],  # two that learn little in 3 epochs, two that do
        "train.epochs=3",
        "tune.scheduler={name: asha, grace_period: 1, reduction_factor: 2}",
        workers=2,
    )
    assert len(group_workers() - before) == 2, "a stopped trial cost the group"
    statuses = {rate: row["status"] for rate, row in rows.items()}
    assert "stopped_early" in statuses.values(), statuses
    assert statuses[0.05] == statuses[0.03] == "finished", statuses
    for row in rows.values():
        trial = Path(row["checkpoint"]).parent
        assert row["epochs"] == max(int(p.name.split("_")[1]) for p in trial.glob("checkpoint_*"))


def test_a_trial_that_loses_a_worker_resumes_in_a_new_group(workdir: Path) -> None:
    """A worker of the group is killed once the trial's first checkpoint is written: the group
    is given up, Tune starts the trial again (failure.max_failures) in a new group, and it
    resumes from its latest checkpoint."""
    trials = workdir / "raytrain_results" / "digits-mlp" / "lost-worker-trials"
    before = group_workers()
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        while not list(trials.glob("trial-*/checkpoint_*/raytrain_state.json")):
            time.sleep(0.05)
        # This trial's: an earlier test's group may not be gone yet.
        while not (
            workers := [
                worker
                for worker in list_actors(
                    address=state_address(),
                    filters=[("class_name", "=", "_GroupWorker"), ("state", "=", "ALIVE")],
                    detail=True,
                )
                if worker.actor_id not in before
            ]
        ):
            time.sleep(0.1)
        os.kill(int(workers[-1].pid), signal.SIGKILL)
        killed.append(int(workers[-1].pid))

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    rows = _sweep(
        workdir,
        "lost-worker",
        [0.01],
        "train.epochs=12",
        "train.batch_size=16",  # long enough epochs for the kill to land mid-run
        "failure.max_failures=1",
        workers=2,
    )
    killer.join(timeout=60)
    assert killed, "the trial finished before a worker could be killed"
    (row,) = rows.values()
    assert row["status"] == "finished"
    assert row["epochs"] == 12
    assert len(group_workers() - before) == 4, "not one new group for the retry"
    # The new group went on from the latest checkpoint: no epoch reported twice (from scratch,
    # epoch 1 and on would come again).
    epochs = [int(r["epoch"]) for r in _reports(trials.parent / "lost-worker")]
    assert epochs == sorted(set(epochs)), epochs
    assert (epochs[0], epochs[-1]) == (1, 12), epochs


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_of_the_trials_code_fails_it_without_a_retry(workdir: Path, workers: int) -> None:
    (workdir / "broken.py").write_text(
        "def build(**kwargs):\n    raise ValueError('no model today')\n"
    )
    rows = _sweep(
        workdir,
        "bad-builder",
        [0.01],
        "model.builder=broken:build",
        "model.params={}",
        "failure.max_failures=-1",  # Tune would retry it forever
        workers=workers,
    )
    (row,) = rows.values()
    assert row["status"] == "failed"
    assert "no model today" in row["error"]
    folder = workdir / "raytrain_results" / "digits-mlp"
    (trial,) = folder.glob("bad-builder-trials/trial-*")
    assert (trial / CODE_ERROR_FILE).is_file()
    # One attempt built the model and failed; the one Tune had scheduled raised the recorded
    # error before building anything, and there was no third.
    (errors,) = (folder / "bad-builder").glob("*/error.txt")
    assert errors.read_text().count("Failure #") == 2
