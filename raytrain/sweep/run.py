"""A sweep end to end: run, resume or extend it, then rank its trials, register the best one and
move the ``champion`` alias.

Everything ``raytrain run`` (with a ``tune:`` section) and ``raytrain resume`` do is here::

    from raytrain import load_experiment, run_sweep
    summary = run_sweep(load_experiment("experiments/sweep.yaml"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from raytrain import tracking
from raytrain.storage import check_location, exists, glob, is_gcs, join
from raytrain.train.run import (
    ProgressFn,
    export_registered,
    prepare,
    spec_tracking_uri,
    start_tracking,
    storage_root,
    unique_name,
)

if TYPE_CHECKING:
    from raytrain.config.loader import LoadedExperiment
    from raytrain.sweep.tuner import Extension

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
    concurrent: int
    tracking: tracking.TrackedRun | None = None
    registered_version: str | None = None
    champion: str | None = None
    ui_command: str | None = None
    export: Any = None  # export.ExportReport, with an ``export:`` section


def run_sweep(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_event: ProgressFn | None = None,
) -> SweepSummary:
    """Sweep the experiment's ``tune.space``; every trial is a data-parallel training run."""
    from raytrain.sweep.tuner import SweepSetup

    spec = loaded.spec
    data = prepare(spec, spec_tracking_uri(spec), address=address, verbose=verbose)
    sweep_name = spec.tracking.run_name or unique_name(f"{spec.name}-sweep")
    tracked = start_tracking(loaded, sweep_name) if spec.tracking.enabled else None
    setup = SweepSetup(
        spec=spec,
        spec_file=str(loaded.path.resolve()),
        base_dir=str(loaded.path.parent.resolve()),
        storage_root=storage_root(spec.storage, spec.name),
        sweep_name=sweep_name,
        tracked=tracked,
    )
    return _run_and_finish(setup, data, on_event=on_event, rounds=[sweep_name], earlier=[])


def resume_sweep(
    path: str,
    *,
    num_samples: int | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_event: ProgressFn | None = None,
    storage: str = "raytrain_results",
) -> SweepSummary:
    """Continue an interrupted sweep from its storage folder: finished trials are not re-run.

    ``path`` is the sweep's folder (local or gs://) or its name under ``storage``. With
    ``num_samples``, a sweep grows to that many trials in all: the trials it lacks run as one
    more Tune experiment whose search is warm-started with every trial so far.
    """
    from raytrain.config.schema import Experiment
    from raytrain.errors import RaytrainError
    from raytrain.sweep.tuner import SweepSetup, load_state, past_rows

    state = load_state(_find_sweep(path, storage))
    spec = Experiment.model_validate(state["spec"])
    assert spec.tune is not None
    tracked = tracking.TrackedRun(**state["tracking"]) if state["tracking"] else None
    setup = SweepSetup(
        spec=spec,
        spec_file=state["spec_file"],
        base_dir=state["base_dir"],
        storage_root=state["storage_root"],
        sweep_name=state["sweep_name"],
        tracked=tracked,
    )
    rounds = [setup.sweep_name, *state.get("extensions", [])]
    interrupted = rounds[-1] not in state.get("finished", [])
    # Trials of the rounds that finished; an interrupted last round is counted once it is done.
    rows = past_rows(setup, rounds[:-1] if interrupted else rounds)
    if num_samples is not None and spec.tune.search.algorithm == "grid":
        raise RaytrainError(
            f"sweep '{setup.sweep_name}' is a grid search: it ran its whole grid; "
            "--num-samples extends random and Optuna searches"
        )
    if not interrupted and (num_samples is None or num_samples <= len(rows)):
        raise RaytrainError(
            f"sweep '{setup.sweep_name}' finished with {len(rows)} trial(s): nothing to resume; "
            f"`raytrain resume {setup.sweep_name} --num-samples N` (N > {len(rows)}) runs more"
        )
    data = prepare(spec, tracked.uri if tracked else None, address=address, verbose=verbose)
    summary = None
    if interrupted:
        summary = _run_and_finish(
            setup, data, on_event=on_event, rounds=rounds, earlier=rows, restore=True
        )
        rows = summary.rows
    if num_samples is not None and num_samples > len(rows):
        add = num_samples - len(rows)
        summary = _extend(setup, data, rounds=rounds, earlier=rows, add=add, on_event=on_event)
    assert summary is not None
    return summary


def _extend(
    setup: Any,
    data: Any,
    *,
    rounds: list[str],
    earlier: list[dict[str, Any]],
    add: int,
    on_event: ProgressFn | None,
) -> SweepSummary:
    from raytrain.sweep.tuner import Extension, update_state

    extension = Extension(
        name=f"{setup.sweep_name}-more-{len(rounds)}",
        num_samples=add,
        round=len(rounds),
        earlier=earlier,
    )
    update_state(
        join(setup.storage_root, setup.sweep_name), extensions=[*rounds[1:], extension.name]
    )
    return _run_and_finish(
        setup,
        data,
        on_event=on_event,
        rounds=[*rounds, extension.name],
        earlier=earlier,
        extension=extension,
    )


def _run_and_finish(
    setup: Any,
    data: Any,
    *,
    on_event: ProgressFn | None,
    rounds: list[str],
    earlier: list[dict[str, Any]],
    restore: bool = False,
    extension: Extension | None = None,
) -> SweepSummary:
    """Run the last of ``rounds`` (Tune experiments of one sweep), then rank its trials with
    ``earlier`` (the other rounds'): best trial, champion, the parent run's summary."""
    from raytrain.sweep.callbacks import (
        discard_lost_trials,
        find_child,
        log_sweep_summary,
        pareto_front,
    )
    from raytrain.sweep.tuner import load_state, sweep, update_state

    spec = setup.spec
    metrics, modes = spec.tune.metrics, spec.tune.modes
    folder = join(setup.storage_root, setup.sweep_name)
    if on_event:  # say where the sweep lives first: it is what `raytrain resume` needs
        on_event({"kind": "sweep_started", "sweep": setup.sweep_name, "storage": folder})
    if setup.tracked and len(rounds) + restore > 1:
        tracking.reopen_run(setup.tracked)
    try:
        outcome = sweep(
            setup,
            data_ref=ray.put(data.for_workers()),
            datasets=data.ray_datasets,
            on_event=on_event,
            restore_path=join(setup.storage_root, rounds[-1]) if restore else None,
            extension=extension,
        )
    except BaseException as exc:
        if setup.tracked:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            tracking.end_run(setup.tracked, status=status, tags={"raytrain.error": str(exc)[:5000]})
        raise
    rows = earlier + outcome.rows
    if setup.tracked and restore:
        discard_lost_trials(setup.tracked, {row["trial_id"] for row in rows})
    scored = [r for r in rows if isinstance(r.get(f"best_{metrics[0]}"), int | float)]
    front = pareto_front(scored, [f"best_{m}" for m in metrics], modes) if len(metrics) > 1 else []
    pick = max if modes[0] == "max" else min
    candidates = front or scored
    best = pick(candidates, key=lambda r: r[f"best_{metrics[0]}"]) if candidates else None
    state = load_state(folder)
    version = state.get("registered", {}).get(best["trial_id"]) if best else None
    champion = None
    if setup.tracked and best is not None:
        if version is None:  # an extension that found no better trial registers nothing new
            child = tracking.TrackedRun(
                setup.tracked.uri,
                setup.tracked.experiment_name,
                setup.tracked.experiment_id,
                find_child(setup.tracked, best["trial_id"]) or setup.tracked.run_id,
            )
            version = tracking.log_checkpoint_model(
                child,
                best["checkpoint"],
                data=data,
                loss=spec.train.loss,
                register_as=spec.tracking.register_as,
            )
        if version:
            _, champion = tracking.promote_champion(
                setup.tracked.uri,
                spec.tracking.register_as,
                version,
                metric=metrics[0],
                mode=modes[0],
                value=best[f"best_{metrics[0]}"],
            )
        log_sweep_summary(setup.tracked, spec, rows, best, front, storage=folder)
        tracking.end_run(setup.tracked, status="FINISHED")
    registered = state.get("registered", {})
    if version and best is not None:
        registered[best["trial_id"]] = version
    update_state(folder, finished=[*state.get("finished", []), rounds[-1]], registered=registered)
    return SweepSummary(
        name=spec.name,
        sweep_name=setup.sweep_name,
        storage_path=folder,
        rows=rows,
        best=best,
        pareto=front,
        concurrent=outcome.concurrent,
        tracking=setup.tracked,
        registered_version=version,
        champion=champion,
        ui_command=tracking.ui_command(setup.tracked) if setup.tracked else None,
        export=export_registered(spec, setup.tracked, version, data),
    )


def _find_sweep(path: str, storage: str) -> str:
    """The folder of the sweep ``path`` names: the folder itself, or a sweep of that name in
    ``storage`` (``<storage>/<experiment>/<sweep>``)."""
    from raytrain.errors import RaytrainError
    from raytrain.sweep.tuner import SWEEP_STATE

    check_location(path if is_gcs(path) else storage, what="the sweep's storage")
    candidates = [join(path, SWEEP_STATE)]
    if "/" not in path:  # a name
        candidates += glob(join(storage, "*", path, SWEEP_STATE))
    for state_file in candidates:
        if exists(state_file):
            folder = state_file.removesuffix(SWEEP_STATE).rstrip("/")
            return folder if is_gcs(folder) else str(Path(folder).resolve())
    raise RaytrainError(
        f"no sweep at '{path}': give the sweep's folder (it holds {SWEEP_STATE}) or its name "
        f"under {storage} (--storage)"
    )
