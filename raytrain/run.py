"""One experiment end to end: data -> cluster -> tracked training run -> model in MLflow.

Everything the ``raytrain run`` command does is here, callable from Python::

    from raytrain.specfile import load_experiment
    from raytrain.run import run_experiment
    summary = run_experiment(load_experiment("experiments/quickstart.yaml"))
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import yaml

from raytrain import tracking
from raytrain.cluster import (
    check_feasible,
    check_locality,
    connect,
    cpus_on,
    release_orphaned_placement_groups,
)
from raytrain.data import load_dataset
from raytrain.errors import TrackingError, find_user_error
from raytrain.specfile import LoadedExperiment
from raytrain.storage import check_location, exists, forwarded_env, glob, is_gcs, join, to_uri

if TYPE_CHECKING:
    from raytrain.sweep import Extension

__all__ = ["RunSummary", "run_experiment"]

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunSummary:
    """Where a finished run's results are."""

    name: str
    run_name: str
    storage_path: str
    best_checkpoint: str | None
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    epochs: list[dict[str, float]] = field(default_factory=list)
    tracking: tracking.TrackedRun | None = None
    registered_version: str | None = None
    ui_command: str | None = None
    export: Any = None  # export.ExportReport, with an ``export:`` section


def run_experiment(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_epoch: ProgressFn | None = None,
) -> RunSummary:
    """Train the experiment on Ray (a local instance unless ``address`` is given) and track it."""
    from raytrain.train import fit

    spec = loaded.spec
    data = _prepare(spec, _tracking_uri(spec), address=address, verbose=verbose)
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"experiment '{spec.name}'",
    )
    run_name = spec.tracking.run_name or _unique_name(spec.name)
    storage = _storage_root(spec.storage, spec.name)
    tracked = _start_tracking(loaded, run_name) if spec.tracking.enabled else None
    progress = ray.util.queue.Queue(actor_options={"num_cpus": 0}) if on_epoch else None
    epochs: list[dict[str, float]] = []
    outcome: dict[str, Any] = {}

    def _train() -> None:
        try:
            outcome["result"] = fit(
                spec,
                data_ref=ray.put(data.for_workers()),
                datasets=data.ray_datasets,
                run_name=run_name,
                storage_path=storage,
                tracking=tracked,
                progress=progress,
                base_dir=str(loaded.path.parent.resolve()),
            )
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=_train, name="raytrain-fit", daemon=True)
    worker.start()
    try:
        while worker.is_alive() or (progress is not None and not progress.empty()):
            event = _next_event(progress, worker)
            if event is not None:
                epochs.append(event)
                if on_epoch:
                    on_epoch(event)
    except KeyboardInterrupt:
        if tracked:
            tracking.end_run(tracked, status="KILLED")
        raise
    if "error" in outcome:
        if tracked:
            tracking.end_run(
                tracked, status="FAILED", tags={"raytrain.error": str(outcome["error"])[:5000]}
            )
        raise find_user_error(outcome["error"]) from None
    return _finish(loaded, outcome["result"], run_name, storage, tracked, data, epochs)


def _next_event(progress: Any, worker: threading.Thread) -> dict[str, Any] | None:
    if progress is None:
        worker.join(timeout=0.5)
        return None
    try:
        return progress.get(timeout=0.5)
    except (queue.Empty, ray.util.queue.Empty):
        return None


def _finish(
    loaded: LoadedExperiment,
    result: Any,
    run_name: str,
    storage: str,
    tracked: tracking.TrackedRun | None,
    data: Any,
    epochs: list[dict[str, float]],
) -> RunSummary:
    spec = loaded.spec
    folder = to_uri(result.path, result.filesystem)
    best_checkpoint, best_metrics = _best(result, spec.checkpoint.score, spec.checkpoint.mode)
    version = None
    if tracked:
        version = tracking.log_checkpoint_model(
            tracked,
            best_checkpoint,
            data=data,
            loss=spec.train.loss,
            register_as=spec.tracking.register_as,
        )
        tags = {"raytrain.best_checkpoint": best_checkpoint or "", "raytrain.storage": folder}
        best = {f"best_{k}": v for k, v in best_metrics.items() if isinstance(v, int | float)}
        tracking.log_metrics(tracked, best, step=int(best_metrics.get("epoch", 0)))
        tracking.end_run(tracked, status="FINISHED", tags=tags)
    return RunSummary(
        name=spec.name,
        run_name=run_name,
        storage_path=folder,
        best_checkpoint=best_checkpoint,
        best_metrics=best_metrics,
        final_metrics=dict(result.metrics or {}),
        epochs=epochs,
        tracking=tracked,
        registered_version=version,
        ui_command=tracking.ui_command(tracked) if tracked else None,
        export=_export(spec, tracked, version, data),
    )


def _best(result: Any, score: str, mode: str) -> tuple[str | None, dict[str, float]]:
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if score in m]
    if not ranked:
        return None, dict(result.metrics or {})
    pick = max if mode == "max" else min
    checkpoint, metrics = pick(ranked, key=lambda cm: cm[1][score])
    return to_uri(checkpoint.path, checkpoint.filesystem), dict(metrics)


def _start_tracking(loaded: LoadedExperiment, run_name: str) -> tracking.TrackedRun:
    spec = loaded.spec
    spec_dict = spec.model_dump(mode="json")
    try:
        return tracking.start_run(
            uri=tracking.absolute_tracking_uri(spec.tracking.uri),
            experiment=spec.experiment_name,
            run_name=run_name,
            params=tracking.flatten(spec_dict),
            tags={**spec.tracking.tags, "raytrain.overrides": " ".join(loaded.overrides)},
            description=spec.description,
            spec_file=loaded.path,
            spec_text=yaml.safe_dump(spec_dict, sort_keys=False),
            artifact_location=_artifact_location(spec),
        )
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow ({spec.tracking.uri}): {first}") from None


def _artifact_location(spec: Any) -> str | None:
    """With gs:// storage and a tracking store on this machine (sqlite, a folder), a new MLflow
    experiment keeps its artifacts (models, spec files) in the bucket beside the checkpoints.
    A tracking server keeps them where the server is configured to."""
    uri = spec.tracking.uri
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if not is_gcs(spec.storage) or scheme not in ("", "sqlite", "file"):
        return None
    return join(spec.storage, "mlflow", spec.experiment_name)


def _storage_root(storage: str, name: str) -> str:
    if storage.startswith("gs://"):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


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
    from raytrain.sweep import SweepSetup

    spec = loaded.spec
    data = _prepare(spec, _tracking_uri(spec), address=address, verbose=verbose)
    sweep_name = spec.tracking.run_name or _unique_name(f"{spec.name}-sweep")
    tracked = _start_tracking(loaded, sweep_name) if spec.tracking.enabled else None
    setup = SweepSetup(
        spec=spec,
        spec_file=str(loaded.path.resolve()),
        base_dir=str(loaded.path.parent.resolve()),
        storage_root=_storage_root(spec.storage, spec.name),
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
    from raytrain.errors import RaytrainError
    from raytrain.spec import Experiment
    from raytrain.sweep import SweepSetup, load_state, past_rows

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
    data = _prepare(spec, tracked.uri if tracked else None, address=address, verbose=verbose)
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
    from raytrain.sweep import Extension, update_state

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
    from raytrain.sweep import load_state, sweep, update_state
    from raytrain.sweep_tracking import (
        discard_lost_trials,
        find_child,
        log_sweep_summary,
        pareto_front,
    )

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
        export=_export(spec, setup.tracked, version, data),
    )


def _find_sweep(path: str, storage: str) -> str:
    """The folder of the sweep ``path`` names: the folder itself, or a sweep of that name in
    ``storage`` (``<storage>/<experiment>/<sweep>``)."""
    from raytrain.errors import RaytrainError
    from raytrain.sweep import SWEEP_STATE

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


def _export(spec: Any, tracked: tracking.TrackedRun | None, version: str | None, data: Any) -> Any:
    """The ``export:`` section's edge export, once a model version is registered."""
    if spec.export is None or tracked is None or not version:
        return None
    from raytrain.export import export_after_training

    return export_after_training(spec, tracking_uri=tracked.uri, version=version, data=data)


def _unique_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _tracking_uri(spec: Any) -> str | None:
    return tracking.absolute_tracking_uri(spec.tracking.uri) if spec.tracking.enabled else None


def _prepare(spec: Any, tracking_uri: str | None, *, address: str | None, verbose: bool) -> Any:
    """Everything that can fail fast, before any cluster time: tracking, data, then Ray."""
    from raytrain.train import WORKER_ENV

    check_location(spec.storage, what="storage")
    if tracking_uri:
        tracking.check_reachable(tracking_uri)
    if not spec.data.streaming:  # read here, before any cluster time; streamed data reads on Ray
        data = load_dataset(spec.data, loss=spec.train.loss)
    # Workers reach the same storage as this process (an emulator's address, when one is set).
    connect(address, verbose=verbose, env_vars={**WORKER_ENV, **forwarded_env()})
    release_orphaned_placement_groups()  # a killed driver's leftovers would block this run
    check_locality(spec.data.locality)
    if spec.data.streaming:
        data = load_dataset(spec.data, loss=spec.train.loss, task_cpus=_data_task_cpus(spec))
    return data


def _data_task_cpus(spec: Any) -> float | None:
    """None (Ray Data's default CPU per task) when the training workers leave a CPU free where
    the data may be read (``data.locality`` nodes); else 0: a sweep fills the cluster with
    trials, and workers holding every CPU would starve the tasks that feed them (seen: a
    2-worker run on 2 CPUs waited forever)."""
    held = spec.scaling.num_workers * spec.worker_resources().get("CPU", 0.0)
    spare = cpus_on(spec.data.locality) - held
    return None if spec.tune is None and spare >= 1 else 0
