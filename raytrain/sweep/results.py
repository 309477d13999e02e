"""The trial table: one row per trial read from Tune's results, each trial's status and error,
and the best trial (or the Pareto front of a multi-objective sweep)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raytrain.config.schema import EDGE_METRICS, ConstraintSpec, Experiment, TuneSpec
from raytrain.storage import exists, join, ray_storage, to_uri
from raytrain.sweep.edge import satisfies
from raytrain.sweep.state import SweepState
from raytrain.train.evaluation import test_metrics

__all__ = ["best_trial", "error_reason", "pareto_front", "past_rows", "trial_rows", "trial_status"]


def error_reason(text: str) -> str:
    """The last line of an error trace, without its exception class: what the user must read."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last


def trial_status(last_epoch: int, total_epochs: int, error: bool) -> str:
    if error:
        return "failed"
    return "finished" if last_epoch >= total_epochs else "stopped_early"


def pareto_front(
    rows: list[dict[str, Any]], metrics: list[str], modes: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows no other row beats on every metric (multi-objective sweeps)."""

    def key(row: dict[str, Any]) -> list[float]:
        return [
            row[m] if mode == "min" else -row[m] for m, mode in zip(metrics, modes, strict=True)
        ]

    usable = [r for r in rows if all(isinstance(r.get(m), int | float) for m in metrics)]
    front = []
    for row in usable:
        mine = key(row)
        dominated = any(
            all(o <= s for o, s in zip(key(other), mine, strict=True)) and key(other) != mine
            for other in usable
        )
        if not dominated:
            front.append(row)
    return front


def best_trial(
    rows: list[dict[str, Any]],
    metrics: Sequence[str],
    modes: Sequence[str],
    constraints: dict[str, ConstraintSpec] | None = None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The best row by the first metric's best value, and (several metrics) the Pareto front
    it is picked from: a multi-objective sweep's best trial is never one the front beats. With
    ``constraints``, only rows that satisfy every one compete (none may: no best row)."""
    scored = [r for r in rows if isinstance(r.get(f"best_{metrics[0]}"), int | float)]
    scored = [r for r in scored if satisfies(r, constraints or {})]
    front = pareto_front(scored, [f"best_{m}" for m in metrics], modes) if len(metrics) > 1 else []
    pick = max if modes[0] == "max" else min
    candidates = front or scored
    best = pick(candidates, key=lambda r: r[f"best_{metrics[0]}"]) if candidates else None
    return best, front


def trial_rows(results: Any, spec: Experiment) -> list[dict[str, Any]]:
    """One row per trial: id, status, epochs, sampled values, last and best metric values."""
    tune_spec = spec.tune
    assert tune_spec is not None
    rows = []
    for result in results:
        if result.config is None:
            continue  # a trial the time budget (or an interruption) stopped before it started
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        epoch = int(metrics.get("epoch", 0))
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "status": trial_status(epoch, spec.train.epochs, error=result.error is not None),
            "epochs": epoch,
            **{k: result.config.get(k) for k in tune_spec.space},
        }
        for metric, mode in zip(tune_spec.metrics, tune_spec.modes, strict=True):
            series = frame[metric] if frame is not None and metric in frame else None
            row[metric] = metrics.get(metric)
            if series is not None and len(series):
                row[f"best_{metric}"] = float(series.max() if mode == "max" else series.min())
        best_epoch = _best_epoch(frame, *_first(tune_spec))
        row |= test_metrics(metrics, best_epoch=best_epoch)
        row |= {m: float(metrics[m]) for m in EDGE_METRICS if _number(metrics.get(m))}
        for metric in tune_spec.constraints:  # judged at the epoch the sweep would register
            if metric not in row and frame is not None and metric in frame and best_epoch:
                row[metric] = float(frame.loc[frame["epoch"] == best_epoch, metric].iloc[0])
        if result.error is not None:
            row["error"] = error_reason(str(result.error))[:300]
        row["checkpoint"] = _best_checkpoint(
            frame, tune_spec.metrics[0], tune_spec.modes[0], result.filesystem
        )
        rows.append(row)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float)


def _first(tune_spec: TuneSpec) -> tuple[str, str]:
    return tune_spec.metrics[0], tune_spec.modes[0]


def _best_epoch(frame: Any, metric: str, mode: str) -> Any:
    """The epoch of the trial's best report (ties: the earliest, as its test weights)."""
    if frame is None or metric not in frame or "epoch" not in frame:
        return None
    scored = frame.dropna(subset=[metric])
    if not len(scored):
        return None
    ranked = scored.sort_values(metric, ascending=mode == "min", kind="stable")
    return ranked["epoch"].iloc[0]


def past_rows(state: SweepState, names: list[str]) -> list[dict[str, Any]]:
    """The trial rows of Tune experiments that already ran, read back from their storage."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    rows = []
    for name in names:
        path, filesystem = ray_storage(join(state.storage_root, name))
        analysis = ExperimentAnalysis(path, storage_filesystem=filesystem)
        rows += trial_rows(ResultGrid(analysis), state.spec)
    return rows


def _best_checkpoint(frame: Any, metric: str, mode: str, filesystem: Any) -> str | None:
    """The trial's best-scoring checkpoint that Ray Train still keeps (a local path or a
    gs:// URI: Tune records paths on ``filesystem`` without their scheme)."""
    if frame is None or "checkpoint_path" not in frame or metric not in frame:
        return None
    ranked = frame.dropna(subset=["checkpoint_path"]).sort_values(
        metric, ascending=mode == "min", kind="stable"
    )
    for path in ranked["checkpoint_path"]:
        location = to_uri(str(path), filesystem)
        if exists(location):
            return location
    return None
