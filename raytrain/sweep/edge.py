"""Edge-aware sweeps: each trial's best checkpoint converted to TFLite and measured as
``raytrain export`` measures it (``export.edge.measure_mode``), and ``tune.constraints``.

Where a trial is measured:

- a trial that trains to its last epoch measures in its own process, right after training, and
  reports the values to Tune with the last epoch's metrics: the search reads them (an edge metric
  can be an objective, a constraint steers TPE) and ``TrialTracker`` logs them on its child run;
- a trial the scheduler stopped is ended by Tune inside its next report (Ray exits its thread),
  and Tune has already told the search it is done: it is measured on the driver after Tune's
  fit, by the same function, and logged on its child run then.

Either way the values are written to the trial's folder (``edge_metrics.json``), so a resumed or
extended sweep reads them back instead of measuring again.
"""

from __future__ import annotations

import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raytrain import storage, tracking
from raytrain.config.schema import EDGE_MODES, ConstraintSpec, Experiment, TuneSpec
from raytrain.data.dataset import Dataset
from raytrain.train.checkpoint import STATE_FILE, read_history
from raytrain.train.evaluation import read_test_metrics

__all__ = [
    "EDGE_EPOCH",
    "EDGE_FILE",
    "best_checkpoint",
    "measure_checkpoint",
    "measure_stopped_trials",
    "report_edge_metrics",
    "satisfies",
    "unmet_message",
    "value_of",
    "violations",
]

EDGE_FILE = "edge_metrics.json"
EDGE_EPOCH = "edge_epoch"  # the epoch whose checkpoint was measured, reported beside the values


def measure_checkpoint(spec: Experiment, location: str, data: Dataset) -> dict[str, float]:
    """The edge metrics of the checkpoint at ``location`` for every mode the sweep names: file
    size, median latency and its spread, and (classifiers) accuracy on the validation split."""
    # In a thread of its own: loading a .keras file or saving a SavedModel leaves tf_keras'
    # thread saving .keras files as HDF5 afterwards (a thread-local flag it restores to False),
    # and a trial's thread goes on to train the next trial of its process, whose checkpoints
    # must stay zip files (the only ones raytrain loads).
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(_measure, spec, location, data).result()


def _measure(spec: Experiment, location: str, data: Dataset) -> dict[str, float]:
    from raytrain.export.tflite import (
        evaluation_metric,
        export_settings,
        measure_mode,
        save_saved_model,
    )
    from raytrain.train.checkpoint import load_model

    assert spec.tune is not None
    modes = dict.fromkeys(m.split("_")[1] for m in spec.tune.edge_metrics)
    settings = export_settings(spec)
    metric = evaluation_metric(spec.train.loss, spec.train.metrics)
    values: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="raytrain-edge-") as folder:
        saved_model = save_saved_model(load_model(location), Path(folder))
        for name in modes:
            measured = measure_mode(
                saved_model, EDGE_MODES[name], data=data, metric=metric, settings=settings
            )
            values[f"tflite_{name}_bytes"] = len(measured.content)
            values[f"tflite_{name}_latency_ms"] = measured.latency_ms
            values[f"tflite_{name}_latency_spread_ms"] = measured.latency_spread_ms
            if metric == "accuracy":
                values[f"tflite_{name}_accuracy"] = measured.metric
    return values


def best_checkpoint(folder: str, metric: str, mode: str) -> tuple[str, int] | None:
    """The trial's best kept checkpoint by ``metric`` (ties: the earlier epoch) and its epoch:
    the one the sweep registers if the trial wins (``results._best_checkpoint`` ranks alike)."""
    found = []
    for name in storage.list_files(folder):
        parts = name.split("/")
        if len(parts) == 2 and parts[0].startswith("checkpoint_") and parts[1] == STATE_FILE:
            state = json.loads(storage.read_text(storage.join(folder, name)))
            if isinstance(state["metrics"].get(metric), int | float):
                found.append((state["metrics"][metric], int(state["epoch"]), parts[0]))
    if not found:
        return None
    sign = -1 if mode == "max" else 1
    _, epoch, name = min(found, key=lambda f: (sign * f[0], f[1]))
    return storage.join(folder, name), epoch


def report_edge_metrics(spec: Experiment, folder: str, data: Dataset) -> None:
    """In a trial's process, after its last epoch: measure its best checkpoint and report the
    values to Tune with the last epoch's (and test) metrics, which the search reads at the end."""
    from ray import tune

    assert spec.tune is not None
    found = best_checkpoint(folder, spec.tune.metrics[0], spec.tune.modes[0])
    if found is None:
        return
    location, epoch = found
    values = measure_checkpoint(spec, location, data)
    storage.write_text(storage.join(folder, EDGE_FILE), json.dumps(values))
    latest = max(
        (n for n in storage.list_files(folder) if n.endswith(f"/{STATE_FILE}")),
        key=lambda n: json.loads(storage.read_text(storage.join(folder, n)))["epoch"],
    )
    last = json.loads(storage.read_text(storage.join(folder, latest)))["metrics"]
    tune.report({**last, **read_test_metrics(folder), **values, EDGE_EPOCH: epoch})


def measure_stopped_trials(
    spec: Experiment,
    rows: list[dict[str, Any]],
    *,
    trials_root: str,
    data: Dataset,
    parent: tracking.TrackedRun | None,
) -> None:
    """Fill in the edge metrics of trials that were not measured in their process (stopped by
    the scheduler), in place: read back from the trial's folder, or measured here on its best
    checkpoint and logged on its child run."""
    tune_spec = spec.tune
    assert tune_spec is not None
    for row in rows:
        measured = all(isinstance(row.get(m), int | float) for m in tune_spec.edge_metrics)
        if row.get("checkpoint") is None or measured:
            continue
        folder = f"{trials_root}/trial-{row['trial_id']}"
        recorded = storage.join(folder, EDGE_FILE)
        if storage.exists(recorded):
            values = json.loads(storage.read_text(recorded))
        else:
            values = measure_checkpoint(spec, row["checkpoint"], data)
            storage.write_text(recorded, json.dumps(values))
            if parent is not None:
                epoch = int(read_history(row["checkpoint"])[-1]["epoch"])
                _log_on_child(parent, str(row["trial_id"]), values, step=epoch)
        row.update(values)
        row.update({f"best_{m}": values[m] for m in tune_spec.metrics if m in values})


def _log_on_child(
    parent: tracking.TrackedRun, trial_id: str, values: dict[str, float], *, step: int
) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    found = tracking.child_runs(client, parent.experiment_id, parent.run_id, trial_id=trial_id)
    if found:
        run_id = found[0].info.run_id
        run = tracking.TrackedRun(parent.uri, parent.experiment_name, parent.experiment_id, run_id)
        tracking.log_metrics(run, values, step=step)


def value_of(row: dict[str, Any], metric: str) -> Any:
    """A trial's value of ``metric`` as the sweep judges it: an objective's best value, an edge
    metric's measured one, another metric's at the trial's best epoch."""
    return row.get(f"best_{metric}", row.get(metric))


def violations(values: dict[str, Any], constraints: dict[str, ConstraintSpec]) -> dict[str, float]:
    """How far each bound is missed, by ``<metric>.max`` / ``<metric>.min``: <= 0 where it is
    met (Optuna's convention); a value the trial does not have (a trial stopped before it was
    measured) misses it by infinity."""
    found = {}
    for metric, bound in constraints.items():
        value = values.get(metric, math.nan)  # missing: not known
        known = isinstance(value, int | float) and math.isfinite(value)
        if bound.max is not None:
            found[f"{metric}.max"] = float(value - bound.max) if known else math.inf
        if bound.min is not None:
            found[f"{metric}.min"] = float(bound.min - value) if known else math.inf
    return found


def satisfies(row: dict[str, Any], constraints: dict[str, ConstraintSpec]) -> bool:
    return _missed_by(row, constraints) <= 0


def _missed_by(row: dict[str, Any], constraints: dict[str, ConstraintSpec]) -> float:
    judged = {m: value_of(row, m) for m in constraints}
    return sum(max(v, 0) for v in violations(judged, constraints).values())


def unmet_message(tune_spec: TuneSpec, rows: list[dict[str, Any]]) -> str:
    """The one line a sweep whose trials all miss ``tune.constraints`` ends with."""
    bounds = ", ".join(
        f"{m} {'<=' if side == 'max' else '>='} {getattr(b, side):g}"
        for m, b in tune_spec.constraints.items()
        for side in ("max", "min")
        if getattr(b, side) is not None
    )
    constraints = tune_spec.constraints
    judged = [(_missed_by(r, constraints), r) for r in rows]
    closest = min(judged, key=lambda j: j[0], default=None)
    near = ""
    if closest is not None and math.isfinite(closest[0]):
        row = closest[1]
        shown = ", ".join(f"{m} {value_of(row, m):.4g}" for m in tune_spec.constraints)
        near = f"; closest: trial {row['trial_id']} ({shown})"
    return (
        f"no trial satisfies tune.constraints ({bounds}): no champion registered{near}; "
        "loosen a bound or widen tune.space"
    )
