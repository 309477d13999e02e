"""A sweep end to end: run, resume or extend it, then rank its trials, register the best one and
move the ``champion`` alias.

Everything ``raytrain run`` (with a ``tune:`` section) and ``raytrain resume`` do is here::

    from raytrain import load_experiment, run_sweep
    summary = run_sweep(load_experiment("experiments/sweep.yaml"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from raytrain import tracking
from raytrain.config.schema import DEFAULT_STORAGE, EDGE_METRICS
from raytrain.errors import RaytrainError
from raytrain.orchestration.finish import export_registered, log_best_model, record_test_metrics
from raytrain.orchestration.prepare import (
    PreparedData,
    log_lineage,
    prepare,
    spec_tracking_uri,
    start_tracking,
    storage_root,
    unique_name,
)
from raytrain.orchestration.run import ProgressFn
from raytrain.plan.calibration import record_actual
from raytrain.storage import check_location, exists, glob, is_gcs, join
from raytrain.sweep.results import best_trial
from raytrain.sweep.search import Extension
from raytrain.sweep.state import STATE_FILE, SweepState, check_private
from raytrain.tracking import names
from raytrain.train.evaluation import TEST_PREFIX
from raytrain.train.state import STATE_FILE as RUN_STATE

if TYPE_CHECKING:
    from raytrain.config.loader import LoadedExperiment
    from raytrain.export.report import ExportReport
    from raytrain.sweep.tuner import SweepOutcome

__all__ = ["SweepSummary", "resume_sweep", "run_sweep"]


@dataclass(frozen=True)
class SweepSummary:
    """Where a finished sweep's results are."""

    name: str
    sweep_name: str
    storage_path: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    concurrent: int  # trials at once at most, in the last round
    tracking: tracking.TrackedRun | None = None
    registered_version: str | None = None
    champion: str | None = None
    ui_command: str | None = None
    export: ExportReport | None = None  # with an ``export:`` section
    edge_front: list[dict[str, Any]] | None = None  # with edge metrics or tune.constraints
    unmet_constraints: str | None = None  # why nothing was registered: no trial satisfied them


def run_sweep(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_event: ProgressFn | None = None,
) -> SweepSummary:
    """Sweep the experiment's ``tune.space``; every trial is a data-parallel training run."""
    started = time.monotonic()
    spec = loaded.spec
    data = prepare(spec, spec_tracking_uri(spec), address=address, verbose=verbose)
    sweep_name = spec.tracking.run_name or unique_name(f"{spec.name}-sweep")
    state = SweepState(
        spec=spec,
        spec_file=str(loaded.path.resolve()),
        base_dir=str(loaded.path.parent.resolve()),
        storage_root=storage_root(spec.storage, spec.name),
        sweep_name=sweep_name,
        tracked=start_tracking(loaded, sweep_name) if spec.tracking.enabled else None,
    )
    log_lineage(state.tracked, spec, data)  # once, on the parent run: every trial reads it
    summary = _run_and_finish(state, data, on_event=on_event, earlier=[])
    record_actual(state.tracked, spec, started=started)  # plan vs actual (raytrain plan)
    return summary


def resume_sweep(
    path: str,
    *,
    num_samples: int | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_event: ProgressFn | None = None,
    storage: str = DEFAULT_STORAGE,
) -> SweepSummary:
    """Continue an interrupted sweep from its storage folder: finished trials are not re-run.

    ``path`` is the sweep's folder (local or gs://) or its name under ``storage``. With
    ``num_samples``, a sweep grows to that many trials in all: the trials it lacks run as one
    more Tune experiment whose search is warm-started with every trial so far.
    """
    from raytrain.sweep.results import past_rows

    state = SweepState.load(_find_sweep(path, storage))
    check_private(state)
    spec, rounds = state.spec, state.rounds
    assert spec.tune is not None
    interrupted = rounds[-1] not in state.finished
    # Trials of the rounds that finished; an interrupted last round is counted once it is done.
    rows = past_rows(state, rounds[:-1] if interrupted else rounds)
    if num_samples is not None and spec.tune.search.algorithm == "grid":
        raise RaytrainError(
            f"sweep '{state.sweep_name}' is a grid search: it ran its whole grid; "
            "`num_samples` extends random and Optuna searches",
            options=("num_samples",),
        )
    if not interrupted and (num_samples is None or num_samples <= len(rows)):
        raise RaytrainError(
            f"sweep '{state.sweep_name}' finished with {len(rows)} trial(s): nothing to resume; "
            f"`raytrain resume {state.sweep_name} --num-samples N` (N > {len(rows)}) runs more"
        )
    tracked = state.tracked
    data = prepare(spec, tracked.uri if tracked else None, address=address, verbose=verbose)
    summary = None
    if interrupted:
        summary = _run_and_finish(state, data, on_event=on_event, earlier=rows, restore=True)
        rows, state = summary.rows, SweepState.load(state.folder)
    if num_samples is not None and num_samples > len(rows):
        extension = Extension(
            name=f"{state.sweep_name}-more-{len(state.rounds)}",
            num_samples=num_samples - len(rows),
            round=len(state.rounds),
            earlier=rows,
        )
        state = state.update(extensions=[*state.extensions, extension.name])
        summary = _run_and_finish(state, data, on_event=on_event, earlier=rows, extension=extension)
    assert summary is not None
    return summary


def _run_and_finish(
    state: SweepState,
    data: PreparedData,
    *,
    on_event: ProgressFn | None,
    earlier: list[dict[str, Any]],
    restore: bool = False,
    extension: Extension | None = None,
) -> SweepSummary:
    """Run the sweep's last round (a Tune experiment), then rank its trials with ``earlier``
    (the other rounds'): best trial, its registered model, champion, the parent run's summary."""
    from raytrain.sweep.callbacks import log_sweep_summary

    spec, tracked = state.spec, state.tracked
    assert spec.tune is not None
    outcome = _run_round(state, data, on_event=on_event, restore=restore, extension=extension)
    rows = earlier + outcome.rows
    edge_front, unmet = _edge_step(state, rows, data)
    best, front = best_trial(rows, spec.tune.metrics, spec.tune.modes, spec.tune.constraints)
    version = state.registered.get(best["trial_id"]) if best else None
    champion = None
    if tracked and best is not None:
        if version is None:  # an extension that found no better trial registers nothing new
            version = _register(state, best, data)
        if version and spec.tracking.register_as:
            metric, mode = spec.tune.metrics[0], spec.tune.modes[0]
            _, champion = tracking.promote_champion(
                tracked.uri,
                spec.tracking.register_as,
                version,
                metric=metric,
                mode=mode,
                value=best[f"best_{metric}"],
            )
    if tracked and (best is not None or unmet):
        log_sweep_summary(tracked, spec, rows, best, front, storage=state.folder)
        if edge_front is not None:
            from raytrain.sweep.front import log_front

            log_front(tracked, spec.tune, rows, edge_front)
        tags = {names.UNMET_TAG: unmet} if unmet else None
        tracking.end_run(tracked, status="FINISHED", tags=tags)
    registered = dict(state.registered)
    if version and best is not None:
        registered[best["trial_id"]] = version
    state.update(finished=[*state.finished, state.rounds[-1]], registered=registered)
    return SweepSummary(
        name=spec.name,
        sweep_name=state.sweep_name,
        storage_path=state.folder,
        rows=rows,
        best=best,
        pareto=front,
        edge_front=edge_front,
        unmet_constraints=unmet,
        concurrent=outcome.concurrent,
        tracking=tracked,
        registered_version=version,
        champion=champion,
        ui_command=tracking.ui_command(tracked) if tracked else None,
        export=export_registered(spec, tracked, version, data),
    )


def _run_round(
    state: SweepState,
    data: PreparedData,
    *,
    on_event: ProgressFn | None,
    restore: bool,
    extension: Extension | None,
) -> SweepOutcome:
    """Run (or restore) the sweep's last round on Tune."""
    from raytrain.sweep.callbacks import discard_lost_trials
    from raytrain.sweep.tuner import sweep

    tracked = state.tracked
    if on_event:  # say where the sweep lives first: it is what `raytrain resume` needs
        on_event({"kind": "sweep_started", "sweep": state.sweep_name, "storage": state.folder})
    if tracked and len(state.rounds) + restore > 1:
        tracking.reopen_run(tracked)
    try:
        outcome = sweep(
            state,
            data_ref=ray.put(data.for_workers()),
            datasets=data.ray_datasets,
            on_event=on_event,
            restore_path=join(state.storage_root, state.rounds[-1]) if restore else None,
            extension=extension,
        )
    except BaseException as exc:
        if tracked:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            tracking.end_run(tracked, status=status, tags={names.ERROR_TAG: str(exc)[:5000]})
        raise
    if tracked and restore:
        discard_lost_trials(tracked, {row["trial_id"] for row in outcome.rows})
    return outcome


def _register(state: SweepState, best: dict[str, Any], data: PreparedData) -> str | None:
    """Log the best trial's best checkpoint on its child run and register it."""
    from raytrain.sweep.callbacks import find_child

    tracked, spec = state.tracked, state.spec
    assert tracked is not None
    child = tracking.TrackedRun(
        tracked.uri,
        tracked.experiment_name,
        tracked.experiment_id,
        find_child(tracked, best["trial_id"]) or tracked.run_id,
    )
    version = log_best_model(
        child,
        best["checkpoint"],
        data=data,
        loss=spec.train.loss,
        register_as=spec.tracking.register_as,
    )
    tested = {k: v for k, v in best.items() if k.startswith(TEST_PREFIX)}
    record_test_metrics(tracked.uri, spec.tracking.register_as, version, tested)
    if version and spec.tracking.register_as:  # its edge metrics, under the same names
        from raytrain.tracking.registry import tag_version

        measured = {m: _tag_value(best[m]) for m in EDGE_METRICS if m in best}
        tag_version(tracked.uri, spec.tracking.register_as, version, measured)
    return version


def _tag_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _edge_step(
    state: SweepState, rows: list[dict[str, Any]], data: PreparedData
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """With edge metrics: trials stopped early measured here (``sweep.edge``); with edge
    metrics or constraints: the Pareto front, and the line saying no trial satisfied them."""
    tune_spec = state.spec.tune
    assert tune_spec is not None
    if not (tune_spec.edge_metrics or tune_spec.constraints):
        return None, None
    from raytrain.sweep.edge import measure_stopped_trials, satisfies, unmet_message
    from raytrain.sweep.front import edge_front
    from raytrain.sweep.tuner import trials_root

    if tune_spec.edge_metrics:
        measure_stopped_trials(
            state.spec,
            rows,
            trials_root=trials_root(state.storage_root, state.sweep_name),
            data=data,
            parent=state.tracked,
        )
    feasible = any(satisfies(r, tune_spec.constraints) for r in rows)
    unmet = None if feasible or not tune_spec.constraints else unmet_message(tune_spec, rows)
    return edge_front(tune_spec, rows), unmet


def _find_sweep(path: str, storage: str) -> str:
    """The folder of the sweep ``path`` names: the folder itself, or a sweep of that name in
    ``storage`` (``<storage>/<experiment>/<sweep>``)."""
    check_location(path if is_gcs(path) else storage, what="the sweep's storage")
    candidates = [join(path, STATE_FILE)]
    if "/" not in path:  # a name
        candidates += glob(join(storage, "*", path, STATE_FILE))
    for state_file in candidates:
        if exists(state_file):
            folder = state_file.removesuffix(STATE_FILE).rstrip("/")
            return folder if is_gcs(folder) else str(Path(folder).resolve())
    raise RaytrainError(
        f"no run or sweep at '{path}': give its folder (it holds {STATE_FILE} or "
        f"{RUN_STATE}), its name under {storage} (`storage`) or a run's MLflow run id",
        options=("storage",),
    )
