"""Sweeps on a real local Ray instance with a real MLflow store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray
from ray import tune
from ray.tune.experiment import Experiment as TuneExperiment
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch
from ray.util.state import list_actors, list_jobs, list_placement_groups

from raytrain import tracking
from raytrain.cluster.connection import ClusterInfo, state_address
from raytrain.config.loader import load_experiment
from raytrain.data.dataset import load_dataset
from raytrain.errors import RaytrainError
from raytrain.orchestration.sweep import resume_sweep, run_sweep
from raytrain.past_runs import list_runs, show_run
from raytrain.sweep.callbacks import TrialTracker, discard_lost_trials
from raytrain.sweep.search import tune_config
from raytrain.sweep.space import search_space
from raytrain.sweep.state import STATE_FILE as SWEEP_STATE
from raytrain.sweep.tuner import TRIAL_RESOURCES
from raytrain.tracking import names
from raytrain.train.loop import fit

from .conftest import REPO

pytestmark = pytest.mark.usefixtures("ray_cluster")
SWEEP = REPO / "experiments" / "sweep.yaml"


def _children(client: mlflow.MlflowClient, parent: mlflow.entities.Run) -> list:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )


def test_optuna_asha_sweep_tracks_trials_and_promotes_the_champion(workdir: Path) -> None:
    # 1-worker trials, 4 epochs (ASHA's rungs at 1 and 2): what the test needs, at a third of
    # the example's cost.
    cheaper = ["scaling.num_workers=1", "train.epochs=4", "tune.num_samples=5"]
    summary = run_sweep(load_experiment(SWEEP, cheaper))
    rows = summary.rows
    assert len(rows) == 5
    statuses = {r["status"] for r in rows}
    assert "stopped_early" in statuses, rows  # ASHA stopped at least one trial mid-training
    assert statuses <= {"finished", "stopped_early"}
    assert summary.best is not None
    assert summary.best["best_val_accuracy"] >= 0.9

    tracked = summary.tracking
    assert tracked is not None
    client = mlflow.MlflowClient(tracking_uri=tracked.uri)
    parent = client.get_run(tracked.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["raytrain.kind"] == "sweep"
    assert float(parent.data.tags["best.train.optimizer.learning_rate"]) > 0
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(
        summary.best["best_val_accuracy"]
    )
    artifacts = {a.path for a in client.list_artifacts(tracked.run_id)}
    assert "trials.csv" in artifacts
    plots = {a.path for a in client.list_artifacts(tracked.run_id, "plots")}
    assert "plots/optimization_history.html" in plots

    children = _children(client, parent)
    assert len(children) == 5
    by_trial = {c.data.tags["raytrain.trial_id"]: c for c in children}
    for row in rows:
        child = by_trial[row["trial_id"]]
        assert child.data.tags["raytrain.trial_status"] == row["status"]
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, row["epochs"] + 1))
        assert "train.optimizer.learning_rate" in child.data.params

    listed = list_runs(tracking_uri="sqlite:///mlflow.db", storage="raytrain_results")
    assert [r.kind for r in listed if r.name == summary.sweep_name] == ["sweep"]
    shown = show_run(summary.sweep_name, tracking_uri="sqlite:///mlflow.db")
    assert len(shown.trials) == 5
    assert shown.best["best_val_accuracy"] == pytest.approx(summary.best["best_val_accuracy"])

    champion = client.get_model_version_by_alias("digits-mlp", "champion")
    assert champion.run_id == by_trial[summary.best["trial_id"]].info.run_id
    assert "is now 'champion'" in (summary.champion or "")

    # A worse sweep registers its best model but does not move the champion.
    worse = load_experiment(
        SWEEP,
        [
            "scaling.num_workers=1",
            "tune.num_samples=1",
            "train.epochs=1",
            "tune.space={train.optimizer.learning_rate: {choice: [1.0e-5]}}",
        ],
    )
    second = run_sweep(worse)
    assert second.registered_version == "2"
    assert "champion unchanged" in (second.champion or "")
    assert client.get_model_version_by_alias("digits-mlp", "champion").version == champion.version


def _suggested(overrides: list[str]) -> list[tuple]:
    """The (learning rate, hidden units) a grid or random sweep's searcher hands out, asked
    directly: the searcher a sweep builds, without running its trials."""
    spec = load_experiment(SWEEP, overrides).spec
    assert spec.tune is not None
    config = tune_config(spec.tune, spec.train.epochs, concurrent=2, extension=None)
    space = search_space(spec.tune)
    searcher = config.search_alg
    searcher.add_configurations(
        TuneExperiment("suggested", run=_no_trial, config=space, num_samples=config.num_samples)
    )
    configs = []
    while (trial := searcher.next_trial()) is not None:
        values = trial.config
        configs.append(
            (values["train.optimizer.learning_rate"], tuple(values["model.params.hidden_units"]))
        )
        searcher.on_trial_complete(trial.trial_id)  # as Tune does: the next one may start
    return configs


def _no_trial(config: dict) -> None:
    """The trainable _suggested registers: never run."""


def test_grid_runs_exactly_the_grid(workdir: Path) -> None:
    grid = [
        "scaling.num_workers=1",
        "train.epochs=1",
        "tracking.enabled=false",
        "tune.search.algorithm=grid",
        "tune.scheduler.name=none",
    ]
    # A choice in a grid sweep is one more axis of the grid: every combination, once.
    four = "{train.optimizer.learning_rate: {grid: [0.001, 0.01]}, "
    four += "model.params.hidden_units: {choice: [[8], [16]]}}"
    combos = [(0.001, (8,)), (0.001, (16,)), (0.01, (8,)), (0.01, (16,))]
    assert sorted(_suggested([*grid, f"tune.space={four}"])) == combos
    # The grid run: 2 trials are enough to show that it runs the grid and no more.
    two = "{train.optimizer.learning_rate: {grid: [0.001, 0.01]}, "
    two += "model.params.hidden_units: {choice: [[8]]}}"
    events: list[dict] = []
    summary = run_sweep(
        load_experiment(SWEEP, [*grid, f"tune.space={two}"]), on_event=events.append
    )
    # 2 CPUs, 1 worker per trial: never more than 2 trials at once (trials hold ~no resources
    # themselves, so only the computed limit keeps the rest waiting).
    assert summary.concurrent == 2
    assert events[0]["kind"] == "sweep_started"
    assert max(e["running"] for e in events[1:]) == 2
    ran = sorted(
        (r["train.optimizer.learning_rate"], tuple(r["model.params.hidden_units"]))
        for r in summary.rows
    )
    assert ran == [(0.001, (8,)), (0.01, (8,))]
    assert all(r["status"] == "finished" for r in summary.rows)
    with pytest.raises(RaytrainError, match="grid search"):
        resume_sweep(summary.sweep_name, num_samples=6)  # a grid has nothing more to try


def test_the_same_seed_samples_the_same_configs() -> None:
    # The searcher a sweep builds decides the configs: asked directly, no trial needs to run.
    overrides = ["tune.num_samples=2", "tune.search.algorithm=random"]
    first = _suggested([*overrides, "tune.search.seed=7"])
    assert first == _suggested([*overrides, "tune.search.seed=7"])
    assert len({lr for lr, _ in first}) == 2
    assert _suggested([*overrides, "tune.search.seed=8"]) != first


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_a_killed_sweep_resumes_without_duplicates(ray_cluster: ClusterInfo, workdir: Path) -> None:
    args = [
        "--set", "scaling.num_workers=1",
        "--set", "train.epochs=4",
        "--set", "train.batch_size=4",  # ~0.3 s epochs: the kill lands mid-trial
        "--set", "tune.num_samples=3",
        "--set", "tune.scheduler.name=none",
        "--set", "tune.max_concurrent_trials=1",
        "--address", ray_cluster.address,
    ]  # fmt: skip
    raytrain = [sys.executable, "-m", "raytrain"]
    said = workdir / "run.out"
    with said.open("w") as out:
        proc = subprocess.Popen(
            [*raytrain, "run", str(SWEEP), *args], cwd=workdir, stdout=out, stderr=out
        )
    database = workdir / "mlflow.db"
    deadline = time.monotonic() + 300
    # Kill once a trial has finished and the next has logged an epoch (and has more to train).
    while _finished_children(database) < 1 or _trials_with_epochs(database) < 2:
        assert proc.poll() is None, said.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no trial done in 300 s\n{said.read_text()[-3000:]}"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _finished_children(database) < 3, "the sweep ended before it could be killed"

    (folder,) = [p.parent for p in workdir.glob(f"raytrain_results/*/*/{SWEEP_STATE}")]
    result = subprocess.run(
        [*raytrain, "resume", folder.name, "--address", ray_cluster.address],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 trial(s)" in result.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`raytrain.kind` = 'sweep'",
    )
    children = _children(client, parent)
    assert len(children) == 3, [(c.data.tags, c.info.status) for c in children]
    assert {c.data.tags["raytrain.trial_status"] for c in children} == {"finished"}
    # The killed driver's trial held a worker group's CPU after the driver died; the resume
    # released it (otherwise every later run on this cluster waits for it forever).
    _assert_all_cpus_return()


def test_num_samples_extends_a_finished_sweep_with_a_warm_started_search(workdir: Path) -> None:
    overrides = [
        "scaling.num_workers=1",
        "train.epochs=1",
        "tune.num_samples=1",
        "tune.scheduler.name=none",
    ]
    first = run_sweep(load_experiment(SWEEP, overrides))
    with pytest.raises(RaytrainError, match="finished with 1 trial"):
        resume_sweep(first.sweep_name)

    more = resume_sweep(first.sweep_name, num_samples=2)
    assert len(more.rows) == 2
    assert {r["trial_id"] for r in first.rows} < {r["trial_id"] for r in more.rows}
    assert more.best is not None
    assert more.best["best_val_accuracy"] >= first.best["best_val_accuracy"]
    # The new round's Optuna study started from the first round's trials.
    state = json.loads((Path(more.storage_path) / SWEEP_STATE).read_text())
    (extension,) = state["extensions"]
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(Path(more.storage_path).parent / extension))
    assert len(searcher._ot_study.trials) == 2

    assert more.tracking is not None
    assert more.tracking.run_id == first.tracking.run_id
    client = mlflow.MlflowClient(tracking_uri=more.tracking.uri)
    parent = client.get_run(more.tracking.run_id)
    assert parent.info.status == "FINISHED"
    assert len(_children(client, parent)) == 2
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(more.best["best_val_accuracy"])
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert len(versions) == (1 if more.best["trial_id"] == first.best["trial_id"] else 2)
    with pytest.raises(RaytrainError, match="finished with 2 trial"):
        resume_sweep(first.sweep_name, num_samples=1)


def _trials_with_epochs(database: Path) -> int:
    """Runs in the sweep's MLflow database with at least one epoch logged (read as below)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            logged = "SELECT COUNT(DISTINCT run_uuid) FROM metrics WHERE key = 'val_accuracy'"
            (count,) = db.execute(logged).fetchone()
    except sqlite3.Error:  # no database, or no tables yet
        return 0
    return int(count)


def _finished_children(database: Path) -> int:
    """Finished trials in the sweep's MLflow database, read without MLflow: a client would
    create the tables itself while the sweep's own process creates them, and one of the two
    fails."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            finished = "SELECT COUNT(*) FROM tags WHERE key = ? AND value = 'finished'"
            (count,) = db.execute(finished, (names.STATUS_TAG,)).fetchone()
    except sqlite3.Error:  # no database, or no tables yet
        return 0
    return int(count)


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(workdir: Path) -> None:
    # Linear regression by SGD diverges geometrically once the step is too large.
    loaded = load_experiment(
        SWEEP,
        [
            "data.source=builtin:diabetes",
            "model.params={hidden_units: [4], activation: linear}",
            "train={epochs: 3, batch_size: 8, loss: mean_squared_error, "
            "metrics: [mean_absolute_error], optimizer: {name: sgd}}",
            "checkpoint={score: val_loss, mode: min}",
            "scaling.num_workers=1",
            "tracking.register_as=null",
            "tune={metric: val_loss, mode: min, search: {algorithm: grid}, "
            "scheduler: {name: none}, "
            "space: {train.optimizer.learning_rate: {grid: [0.001, 5.0]}}}",
        ],
    )
    summary = run_sweep(loaded)
    by_lr = {r["train.optimizer.learning_rate"]: r for r in summary.rows}
    assert by_lr[0.001]["status"] == "finished"
    assert by_lr[5.0]["status"] == "failed"
    assert "the loss became" in by_lr[5.0]["error"]
    assert summary.tracking is not None
    client = mlflow.MlflowClient(tracking_uri=summary.tracking.uri)
    failed = client.search_runs(
        [summary.tracking.experiment_id], filter_string="tags.`raytrain.trial_status` = 'failed'"
    )
    assert len(failed) == 1
    assert failed[0].info.status == "FAILED"
    assert "the loss became" in failed[0].data.tags["raytrain.error"]


def test_multi_objective_sweep_reports_the_pareto_front(workdir: Path) -> None:
    loaded = load_experiment(
        SWEEP,
        [
            "scaling.num_workers=1",
            "train.epochs=1",
            "tracking.enabled=false",
            "tune.num_samples=3",
            "tune.metric=[val_accuracy, param_count]",
            "tune.mode=[max, min]",
            "tune.scheduler.name=none",
            "tune.space={model.params.hidden_units: {choice: [[4], [32], [128]]}}",
        ],
    )
    summary = run_sweep(loaded)
    assert len(summary.rows) == 3
    assert all(isinstance(r["best_param_count"], float) for r in summary.rows)
    front = summary.pareto
    assert front
    for row in summary.rows:  # nothing outside the front beats a front member on both
        for member in front:
            assert not (
                row["best_val_accuracy"] > member["best_val_accuracy"]
                and row["best_param_count"] < member["best_param_count"]
            )
    assert summary.best in front


def test_reaching_the_target_ends_the_sweep(workdir: Path) -> None:
    loaded = load_experiment(
        SWEEP,
        [
            "scaling.num_workers=1",
            "train.epochs=2",
            "tracking.enabled=false",
            "tune.num_samples=6",
            "tune.max_concurrent_trials=1",
            "tune.scheduler.name=none",
            "tune.target=0.5",  # any trial with a sane learning rate reaches it at epoch 1
            "tune.space={train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}}",
        ],
    )
    summary = run_sweep(loaded)
    assert len(summary.rows) < 6
    assert summary.best is not None
    assert summary.best["best_val_accuracy"] >= 0.5


def test_too_many_failed_trials_end_the_sweep(workdir: Path) -> None:
    # Every trial diverges (see the diverging test): with max_failed_trials 0, the first ends it.
    loaded = load_experiment(
        SWEEP,
        [
            "data.source=builtin:diabetes",
            "model.params={hidden_units: [4], activation: linear}",
            "train={epochs: 2, batch_size: 8, loss: mean_squared_error, "
            "metrics: [mean_absolute_error], optimizer: {name: sgd}}",
            "checkpoint={score: val_loss, mode: min}",
            "scaling.num_workers=1",
            "tracking.enabled=false",
            "tune={metric: val_loss, mode: min, num_samples: 5, max_concurrent_trials: 1, "
            "max_failed_trials: 0, scheduler: {name: none}, "
            "space: {train.optimizer.learning_rate: {uniform: [5.0, 6.0]}}}",
        ],
    )
    summary = run_sweep(loaded)
    assert {r["status"] for r in summary.rows} == {"failed"}
    assert len(summary.rows) < 5
    assert summary.best is None


def test_the_time_budget_ends_the_sweep(workdir: Path) -> None:
    loaded = load_experiment(
        SWEEP,
        [
            "scaling.num_workers=1",
            "train.epochs=1",
            "tracking.enabled=false",
            "tune.num_samples=50",
            "tune.max_concurrent_trials=1",
            "tune.scheduler.name=none",
            "tune.time_budget_s=20",
        ],
    )
    start = time.monotonic()
    summary = run_sweep(loaded)
    assert 1 <= len(summary.rows) < 50
    assert time.monotonic() - start < 120
    # The trial the budget stopped mid-run gave its worker's CPU back (Ray Train left it held,
    # and every later run on the cluster waited for it forever).
    _assert_all_cpus_return()


def _held_placement_groups() -> list[tuple]:
    """The groups still holding resources, with their creator job's status and live actors."""
    here = state_address()  # this session's Ray: others may run on the machine
    groups = [
        g
        for g in list_placement_groups(address=here, detail=True, limit=10_000)
        if g.state != "REMOVED"
    ]
    jobs = {job.job_id: job.status for job in list_jobs(address=here, limit=10_000)}
    actors = list_actors(address=here, filters=[("state", "!=", "DEAD")], detail=True, limit=10_000)
    return [
        (
            g.placement_group_id,
            g.creator_job_id,
            jobs.get(g.creator_job_id),
            g.state,
            g.is_detached,
            g.bundles,
            [
                (a.class_name, a.state, a.is_detached, a.placement_group_id)
                for a in actors
                if a.job_id == g.creator_job_id
            ],
        )
        for g in groups
    ] + [("this job", ray.get_runtime_context().get_job_id())]


def _assert_all_cpus_return() -> None:
    deadline = time.monotonic() + 60  # Ray removes a group within seconds, more when loaded
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, _held_placement_groups()
        time.sleep(0.5)


def test_a_trial_restarted_after_its_last_checkpoint_reports_its_final_metrics(
    workdir: Path,
) -> None:
    # A sweep killed after a trial's last checkpoint, before Tune marked it done: on resume the
    # trial's Train run has nothing left to train, and Tune still needs the trial's metrics.
    spec = load_experiment(SWEEP, ["train.epochs=2", "scaling.num_workers=1"]).spec
    data_ref = ray.put(load_dataset(spec.data, loss=spec.train.loss))

    def trial(config: dict) -> None:
        fit(
            spec,
            data_ref=data_ref,
            run_name="killed-trial",
            storage_path=str(workdir / "trials"),
            tracking=None,
            progress=None,
            base_dir=str(workdir),
            callbacks=[TuneReportCallback()],
        )

    def sweep() -> dict:
        tuner = tune.Tuner(
            tune.with_resources(trial, TRIAL_RESOURCES),
            run_config=tune.RunConfig(storage_path=str(workdir / "sweeps"), verbose=0),
        )
        (result,) = tuner.fit()
        return result.metrics

    first, again = sweep(), sweep()
    assert first["epoch"] == again["epoch"] == 2
    assert again["val_accuracy"] == pytest.approx(first["val_accuracy"])


def test_resume_deletes_the_runs_of_trials_the_killed_sweep_never_saved(workdir: Path) -> None:
    # Tune saves its state every 10 s or more: a trial started just before the driver was killed
    # is not in the restored sweep, but its child run exists and would say "running" forever.
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("lost")
    parent_id = client.create_run(experiment_id).info.run_id
    parent = tracking.TrackedRun(uri, "lost", experiment_id, parent_id)
    tracker = TrialTracker(parent, spec=load_experiment(SWEEP).spec)
    kept, lost = tracker.child("kept_1", {"lr": 0.1}), tracker.child("lost_2", {"lr": 0.2})

    assert discard_lost_trials(parent, {"kept_1"}) == 1
    (child,) = _children(client, client.get_run(parent_id))
    assert child.info.run_id == kept
    gone = client.get_run(lost)
    assert gone.info.lifecycle_stage == "deleted"
    assert gone.info.status == "KILLED"
    assert gone.data.tags["raytrain.trial_status"] == "lost"
