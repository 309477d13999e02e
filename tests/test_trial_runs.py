"""What runs and sweeps show in MLflow, read back from a real sqlite store: trial runs named by
their swept values, a parent run whose params leave the swept paths to its trials, and system
metrics per node (no Ray)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest

from raytrain import tracking
from raytrain.config.schema import Experiment
from raytrain.sweep.callbacks import TrialTracker
from raytrain.tracking import names, system
from raytrain.tracking.system import start_monitor

SPACE = {
    "train.optimizer.learning_rate": {"loguniform": [1e-4, 1e-2]},
    "model.params.hidden_units": {"choice": [[64], [64, 32]]},
}


@pytest.mark.parametrize(
    ("values", "name"),
    [
        (
            {"train.optimizer.learning_rate": 0.0032, "model.params.hidden_units": [64]},
            "learning_rate=3.2e-3 hidden_units=[64]",
        ),
        ({"model.params.dropout": 0.25, "train.batch_size": 64}, "dropout=0.25 batch_size=64"),
        ({"model.params.dropout": 0.1, "data.dropout": 0.2}, "params.dropout=0.1 data.dropout=0.2"),
        ({"data.password": "hunter2", "train.epochs": 3}, "epochs=3"),
    ],
)
def test_a_trial_is_named_by_its_swept_values(values: dict, name: str) -> None:
    assert names.trial_run_name(values) == name


def test_trials_and_their_parent_read_back_from_mlflow(tmp_path: Path) -> None:
    spec = Experiment.model_validate({"name": "s", "tune": {"space": SPACE}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(
        uri=uri,
        experiment="s",
        run_name="s-sweep",
        spec=spec.model_dump(mode="json"),
        tags={},
        spec_file=None,
        swept=tuple(SPACE),
    )
    tracker = TrialTracker(parent, spec=spec)
    child_id = tracker.child(
        "ab12_00001", {"train.optimizer.learning_rate": 0.0032, "model.params.hidden_units": [64]}
    )

    client = mlflow.MlflowClient(tracking_uri=uri)
    child = client.get_run(child_id)
    assert child.info.run_name == "learning_rate=3.2e-3 hidden_units=[64]"
    assert child.data.tags[names.TRIAL_ID_TAG] == "ab12_00001"
    assert child.data.params == {
        "train.optimizer.learning_rate": "0.0032",
        "model.params.hidden_units": "[64]",
    }
    run = client.get_run(parent.run_id)
    assert (
        run.data.tags[names.SWEPT_TAG] == "train.optimizer.learning_rate, model.params.hidden_units"
    )
    # The base values no trial trained with are not the parent's: only the trials have the axes.
    assert "train.optimizer.learning_rate" not in run.data.params
    assert "model.params.hidden_units" not in run.data.params
    assert run.data.params["train.epochs"] == "10"
    assert (
        run.data.params["tune.space.train.optimizer.learning_rate.loguniform"] == "[0.0001, 0.01]"
    )


def _metrics_once_logged(client: mlflow.MlflowClient, run_id: str, key: str) -> dict:
    """The run's metrics once ``key`` is among them (the monitor's thread logs it)."""
    deadline = time.monotonic() + 60
    while key not in (logged := client.get_run(run_id).data.metrics):
        assert time.monotonic() < deadline, f"{key} never logged: {sorted(logged)}"
        time.sleep(0.1)
    return logged


def test_system_metrics_are_logged_per_node(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("system")
    run_id = client.create_run(experiment_id).info.run_id
    stop = start_monitor(
        tracking.TrackedRun(uri, "system", experiment_id, run_id), node="10.0.0.2", interval_s=0.2
    )
    try:
        logged = _metrics_once_logged(
            client, run_id, "system/10.0.0.2/system_memory_usage_megabytes"
        )
    finally:
        stop()
    assert "system/10.0.0.2/cpu_utilization_percentage" in logged, sorted(logged)
    assert system.node_label("node:a b/c@x") == "node_a b/c_x"


def test_a_trial_samples_its_node_into_its_child_run_once_the_driver_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's process starts training before the driver's Tune callback makes its child
    run: it finds the run when it appears, and samples its node there."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("sweep")
    parent_id = client.create_run(experiment_id).info.run_id
    parent = tracking.TrackedRun(uri, "sweep", experiment_id, parent_id)
    stop = system.watch_trial(parent, "t_00001", None)
    try:
        child = client.create_run(
            experiment_id,
            tags={names.PARENT_TAG: parent_id, names.TRIAL_ID_TAG: "t_00001"},
        ).info.run_id
        logged = _system_keys(client, child)
    finally:
        stop()
    assert any(k.endswith("/system_memory_usage_megabytes") for k in logged), logged
    assert not [k for k in client.get_run(parent_id).data.metrics if k.startswith("system/")]


def _system_keys(client: mlflow.MlflowClient, run_id: str) -> list[str]:
    deadline = time.monotonic() + 60
    while not (keys := [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]):
        assert time.monotonic() < deadline, "no system metric was ever logged"
        time.sleep(0.1)
    return keys
