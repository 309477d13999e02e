"""What a sweep tells MLflow and the user, from Tune callbacks on the driver.

One parent run per sweep, one nested child run per trial (tag ``mlflow.parentRunId``) with the
sampled values, per-epoch metrics and the final status: finished, stopped early by the scheduler,
or failed with the reason. Child runs are keyed by Tune's trial id, so a resumed sweep finds them
again instead of creating duplicates. Tune pickles callbacks with its state: they keep only
plain data and look their MLflow client and event sink up again after a restore.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from raytrain import tracking
from raytrain.config.schema import EDGE_METRICS, EXTRA_METRICS, Experiment
from raytrain.secrets import is_secret_key, mask_tree
from raytrain.sweep.edge import EDGE_EPOCH
from raytrain.sweep.results import error_reason, trial_status
from raytrain.tracking import names
from raytrain.train.evaluation import TEST_EPOCH, TEST_PREFIX, test_metrics

__all__ = [
    "EVENT_SINKS",
    "SweepProgress",
    "TrialTracker",
    "discard_lost_trials",
    "find_child",
    "log_sweep_summary",
    "optuna_plots",
]

# Where progress events go, by sweep name (a callable cannot survive Tune's pickling).
EVENT_SINKS: dict[str, Callable[[dict[str, Any]], None]] = {}
log = logging.getLogger(__name__)


def find_child(parent: tracking.TrackedRun, trial_id: str, *, client: Any = None) -> str | None:
    """The id of the trial's child run under the sweep's parent run, if it has one."""
    import mlflow

    client = client or mlflow.MlflowClient(tracking_uri=parent.uri)
    found = tracking.child_runs(client, parent.experiment_id, parent.run_id, trial_id=trial_id)
    return found[0].info.run_id if found else None


def discard_lost_trials(parent: tracking.TrackedRun, trial_ids: set[str]) -> int:
    """Delete the child runs of trials the sweep no longer has; return how many.

    Tune saves its state every 10 s or more: a trial started by a driver killed before the next
    save is not in the restored sweep (nor in its search), yet its child run exists, "running"
    forever. Deleted runs stay restorable in MLflow; the sweep's table matches its runs again.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    children = tracking.child_runs(client, parent.experiment_id, parent.run_id)
    lost = [c for c in children if c.data.tags.get(names.TRIAL_ID_TAG) not in trial_ids]
    for child in lost:
        client.set_tag(child.info.run_id, names.STATUS_TAG, "lost")
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, status="KILLED")
        client.delete_run(child.info.run_id)
    if lost:
        log.warning(
            "deleted %d child run(s) of trials started just before the sweep's driver died: "
            "Tune had not saved them, so the resumed sweep does not have them",
            len(lost),
        )
    return len(lost)


class TrialTracker(tune.Callback):
    """Child MLflow runs, one per trial, under the sweep's parent run."""

    def __init__(self, parent: tracking.TrackedRun, *, spec: Experiment) -> None:
        self.parent = parent
        self.total_epochs = spec.train.epochs
        self.metric_names = {*spec.reported_metrics(), *EXTRA_METRICS}
        self.children: dict[str, str] = {}
        self._client_obj: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client_obj": None}

    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            import mlflow

            self._client_obj = mlflow.MlflowClient(tracking_uri=self.parent.uri)
        return self._client_obj

    def child(self, trial_id: str, config: dict[str, Any] | None = None) -> str:
        """The trial's child run id: found again when it exists, created otherwise."""
        if trial_id in self.children:
            return self.children[trial_id]
        found = find_child(self.parent, trial_id, client=self._client)
        if found:
            run_id = found
        else:
            run = self._client.create_run(
                self.parent.experiment_id,
                run_name=names.trial_run_name(config or {}) or f"trial-{trial_id}",
                tags={
                    names.PARENT_TAG: self.parent.run_id,
                    names.TRIAL_ID_TAG: trial_id,
                    names.STATUS_TAG: "running",
                },
            )
            run_id = run.info.run_id
            params = mask_tree({k: str(v) for k, v in (config or {}).items()})
            for key, value in params.items():
                self._client.log_param(run_id, key, value[:6000])
        self.children[trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.child(trial.trial_id, trial.config)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if EDGE_EPOCH in result:  # after the last epoch and its test: the edge metrics
            metrics = {k: float(v) for k, v in result.items() if k in EDGE_METRICS}
            step = int(result[EDGE_EPOCH])
        elif TEST_EPOCH in result:  # after the last epoch: only the test metrics are new
            metrics = test_metrics(result, best_epoch=result[TEST_EPOCH])
            step = int(result[TEST_EPOCH])
        else:
            metrics = {
                k: float(v)
                for k, v in result.items()
                if k in self.metric_names and isinstance(v, int | float) and math.isfinite(v)
            }
            step = int(result.get("epoch", 0))
        if metrics:
            run = self._child_run(trial)
            tracking.log_metrics(run, metrics, step=step)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        self._end(trial, trial_status(epoch, self.total_epochs, error=False), reason=None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Tune writes the error to the trial's local folder at once, to storage later.
        path = Path(trial.error_file) if trial.error_file else None
        text = path.read_text() if path and path.is_file() else ""
        self._end(trial, "failed", reason=error_reason(text))

    def _child_run(self, trial: Any) -> tracking.TrackedRun:
        run_id = self.child(trial.trial_id, trial.config)
        return tracking.TrackedRun(
            self.parent.uri, self.parent.experiment_name, self.parent.experiment_id, run_id
        )

    def _end(self, trial: Any, status: str, *, reason: str | None) -> None:
        tags = {names.STATUS_TAG: status}
        if reason:
            tags[names.ERROR_TAG] = reason[:5000]
        mlflow_status = "FAILED" if status == "failed" else "FINISHED"
        tracking.end_run(self._child_run(trial), status=mlflow_status, tags=tags)


class SweepProgress(tune.Callback, tune.Stopper):
    """Counts trials for the progress display; ends the sweep at the target or too many failures."""

    def __init__(self, spec: Experiment, *, sweep_name: str) -> None:
        assert spec.tune is not None
        self.sweep_name = sweep_name
        self.metric, self.mode = spec.tune.metrics[0], spec.tune.modes[0]
        self.target, self.max_failed = spec.tune.target, spec.tune.max_failed_trials
        self.total_epochs = spec.train.epochs
        self.counts = {"running": 0, "finished": 0, "stopped_early": 0, "failed": 0}
        self.best: float | None = None
        self.reached_target = False

    # Stopper: no per-trial decision (that is the scheduler's); a sweep-wide one.
    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.metric)
        if self.target is not None and isinstance(value, int | float):
            hit = value >= self.target if self.mode == "max" else value <= self.target
            self.reached_target |= hit
        return False

    def stop_all(self) -> bool:
        too_many_failed = self.max_failed is not None and self.counts["failed"] > self.max_failed
        return self.reached_target or too_many_failed

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.counts["running"] += 1
        self._emit("start", trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            better = self.best is None or (
                value > self.best if self.mode == "max" else value < self.best
            )
            self.best = value if better else self.best
        self._emit("result", trial, epoch=int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        self._finish(trial, trial_status(epoch, self.total_epochs, error=False))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial: Any, status: str) -> None:
        self.counts["running"] = max(0, self.counts["running"] - 1)
        self.counts[status] += 1
        self._emit(status, trial)

    def _emit(self, kind: str, trial: Any, **extra: Any) -> None:
        sink = EVENT_SINKS.get(self.sweep_name)
        if sink:
            sink(
                {
                    "kind": kind,
                    "trial_id": trial.trial_id,
                    **self.counts,
                    "best": self.best,
                    "metric": self.metric,
                    **extra,
                }
            )


def log_sweep_summary(
    parent: tracking.TrackedRun,
    spec: Experiment,
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    front: list[dict[str, Any]],
    storage: str | None = None,
) -> None:
    """The parent run: best trial's values and metrics, the trials table, Optuna's plots."""
    import csv
    import io

    import mlflow

    assert spec.tune is not None
    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    table = mask_tree(rows)
    columns = list(dict.fromkeys(k for r in table for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    client.log_text(parent.run_id, out.getvalue(), names.TRIALS_ARTIFACT)
    counts: dict[str, int] = {}
    for row in table:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tags = {f"{names.TRIALS_COUNT_PREFIX}{k}": str(v) for k, v in counts.items()}
    tags[names.KIND_TAG] = "sweep"
    if storage:
        tags[names.STORAGE_TAG] = storage
    if best is not None:
        tags[names.BEST_TRIAL_TAG] = str(best["trial_id"])
        # Tags, not params: a sweep extended later may find a new best, and params are final.
        tags.update(
            {
                f"{names.BEST_PARAM_PREFIX}{key}": str(best.get(key))[:5000]
                for key in spec.tune.space
            }
        )
        best_metrics = {
            k: v for k, v in best.items() if k.startswith(("best_", TEST_PREFIX)) and v is not None
        }
        tracking.log_metrics(parent, best_metrics, step=int(best.get("epochs", 0)))
    if front:
        tags[names.PARETO_TAG] = ",".join(str(r["trial_id"]) for r in front)
    tags = mask_tree(tags)
    client.log_batch(parent.run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    for name, html in optuna_plots(spec, rows).items():
        client.log_text(parent.run_id, html, f"{names.PLOTS_FOLDER}/{name}.html")


def optuna_plots(spec: Experiment, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Optuna's optimization history, parameter importances and parallel coordinates, as HTML.

    The study is rebuilt from the trial table, so the plots exist whatever the search algorithm.
    A swept value whose key names a secret (``raytrain.secrets``) is left out of them.
    """
    import optuna

    assert spec.tune is not None
    metric, mode = spec.tune.metrics[0], spec.tune.modes[0]
    distributions = {
        k: _distribution(entry) for k, entry in spec.tune.space.items() if not is_secret_key(k)
    }
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for row in rows:
        value = row.get(f"best_{metric}")
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        params = {k: _param_value(row.get(k), distributions[k]) for k in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )
    if len(study.trials) < 2:
        return {}
    from optuna import visualization as vis

    makers: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    plots = {}
    for name, make in makers.items():
        try:
            plots[name] = make(study).to_html(include_plotlyjs="cdn")
        except Exception as exc:  # e.g. importances need two distinct values of a param
            plots[name] = f"<p>{name} is not available for this sweep: {exc}</p>"
    return plots


def _distribution(entry: dict[str, Any]) -> Any:
    import optuna.distributions as d

    kind, args = next(iter(entry.items()))
    if kind in ("choice", "grid"):
        return d.CategoricalDistribution([_categorical(v) for v in args])
    if kind == "randint":
        return d.IntDistribution(args[0], args[1])
    log = "log" in kind
    step = args[2] if kind.startswith("q") and not log else None
    return d.FloatDistribution(args[0], args[1], log=log, step=step)


def _categorical(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _param_value(value: Any, distribution: Any) -> Any:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return _categorical(value)
    low, high = distribution.low, distribution.high
    return min(max(value, low), high)
