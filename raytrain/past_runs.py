"""Past runs and sweeps: what ``raytrain list`` and ``raytrain show`` print.

MLflow is the record (runs, sweeps, their best metrics); storage adds the sweeps that ran with
tracking off, from the state file each sweep leaves next to Tune's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytrain.errors import RaytrainError
from raytrain.plan.calibration import compare
from raytrain.storage import check_location, glob, join, parent
from raytrain.sweep.state import STATE_FILE, SweepState
from raytrain.tracking import names
from raytrain.tracking.runs import absolute_tracking_uri, child_runs

__all__ = ["RunRecord", "list_runs", "show_run"]


@dataclass(frozen=True)
class RunRecord:
    name: str
    kind: str  # "run" or "sweep"
    status: str
    started: str
    best: dict[str, float]
    run_id: str | None = None
    experiment: str | None = None
    storage: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    plan_vs_actual: str | None = None  # from the run's tags (raytrain.plan.calibration)


def list_runs(*, tracking_uri: str, storage: str, limit: int = 50) -> list[RunRecord]:
    """Top-level MLflow runs (newest first), then untracked sweeps found in ``storage`` (a
    folder or gs://bucket/prefix)."""
    check_location(storage, what="`storage`", options=("storage",))
    records = [_record(run) for run in _top_level_runs(tracking_uri, limit)]
    known = {r.name for r in records}
    for state_file in sorted(glob(join(storage, "*", "*", STATE_FILE)), reverse=True):
        state = SweepState.load(parent(state_file))
        if state.sweep_name not in known:
            records.append(
                RunRecord(
                    name=state.sweep_name,
                    kind="sweep",
                    status="untracked",
                    started=_when(state.created * 1000),
                    best={},
                    storage=parent(state_file),
                )
            )
    return records


def show_run(name_or_id: str, *, tracking_uri: str) -> RunRecord:
    """One run or sweep by run name or id, with its params, tags and (for a sweep) its trials."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=absolute_tracking_uri(tracking_uri))
    experiments = [e.experiment_id for e in client.search_experiments()]
    try:
        runs = [client.get_run(name_or_id)]
    except mlflow.exceptions.MlflowException:
        runs = client.search_runs(
            experiments, filter_string=f"attributes.run_name = '{name_or_id}'", max_results=1
        )
    if not runs or not experiments:
        raise RaytrainError(f"no run or sweep named '{name_or_id}' in {tracking_uri}")
    run = runs[0]
    trials = []
    if run.data.tags.get(names.KIND_TAG) == "sweep":
        for child in child_runs(client, run.info.experiment_id, run.info.run_id):
            trials.append(
                {
                    "trial": child.data.tags.get(names.TRIAL_ID_TAG, child.info.run_name),
                    "status": child.data.tags.get(names.STATUS_TAG, child.info.status),
                    **child.data.params,
                    **{k: v for k, v in child.data.metrics.items() if k.startswith("val_")},
                }
            )
    return _record(run, trials=trials)


def _top_level_runs(tracking_uri: str, limit: int) -> list[Any]:
    import mlflow

    uri = absolute_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=500)
    return [r for r in runs if names.PARENT_TAG not in r.data.tags][:limit]


def _record(run: Any, trials: list[dict[str, Any]] | None = None) -> RunRecord:
    tags = run.data.tags
    return RunRecord(
        name=run.info.run_name,
        kind="sweep" if tags.get(names.KIND_TAG) == "sweep" else "run",
        status=run.info.status,
        started=_when(run.info.start_time),
        best={k: v for k, v in run.data.metrics.items() if k.startswith("best_")},
        run_id=run.info.run_id,
        experiment=run.info.experiment_id,
        storage=tags.get(names.STORAGE_TAG),
        params=dict(run.data.params),
        tags={
            k: v
            for k, v in tags.items()
            if k.startswith((names.TAG_PREFIX, names.BEST_PARAM_PREFIX))
        },
        trials=trials or [],
        plan_vs_actual=compare(tags),
    )


def _when(millis: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime((millis or 0) / 1000))
