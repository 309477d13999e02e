"""One experiment end to end: data -> cluster -> tracked training run -> model in MLflow.

Everything the ``raytrain run`` command does is here, callable from Python::

    from raytrain import load_experiment, run_experiment
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
from typing import Any

import ray

from raytrain import tracking
from raytrain.cluster.connection import connect
from raytrain.cluster.placement import release_orphaned_placement_groups
from raytrain.cluster.resources import check_feasible, check_locality, cpus_on
from raytrain.config.loader import LoadedExperiment
from raytrain.data.dataset import load_dataset
from raytrain.errors import TrackingError, find_user_error
from raytrain.masking import mask_override
from raytrain.storage import check_writable, forwarded_env, is_gcs, join, to_uri
from raytrain.tracking import names
from raytrain.train import checkpoint

__all__ = ["RunSummary", "log_best_model", "run_experiment"]

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
    from raytrain.train.loop import fit

    spec = loaded.spec
    data = prepare(spec, spec_tracking_uri(spec), address=address, verbose=verbose)
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"experiment '{spec.name}'",
    )
    run_name = spec.tracking.run_name or unique_name(spec.name)
    storage = storage_root(spec.storage, spec.name)
    tracked = start_tracking(loaded, run_name) if spec.tracking.enabled else None
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
                tracked, status="FAILED", tags={names.ERROR_TAG: str(outcome["error"])[:5000]}
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
        version = log_best_model(
            tracked,
            best_checkpoint,
            data=data,
            loss=spec.train.loss,
            register_as=spec.tracking.register_as,
        )
        tags = {names.BEST_CHECKPOINT_TAG: best_checkpoint or "", names.STORAGE_TAG: folder}
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
        export=export_registered(spec, tracked, version, data),
    )


def log_best_model(
    run: tracking.TrackedRun,
    checkpoint_path: str | None,
    *,
    data: Any,
    loss: str,
    register_as: str | None,
) -> str | None:
    """Log the model of a checkpoint on ``run``, with what serving and export must know about
    its input (shape, classes, label names); register it if asked; return the version."""
    if checkpoint_path is None:
        return None
    info = data.info
    metadata = {
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "label_names": info.label_names,
        "feature_names": info.feature_names[:1000],
        "loss": loss,
        "checkpoint": checkpoint_path,
    }
    model = checkpoint.load_model(checkpoint_path)
    return tracking.log_model(
        run, model, example=data.x_val[:5], metadata=metadata, register_as=register_as
    )


def _best(result: Any, score: str, mode: str) -> tuple[str | None, dict[str, float]]:
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if score in m]
    if not ranked:
        return None, dict(result.metrics or {})
    pick = max if mode == "max" else min
    checkpoint, metrics = pick(ranked, key=lambda cm: cm[1][score])
    return to_uri(checkpoint.path, checkpoint.filesystem), dict(metrics)


def start_tracking(loaded: LoadedExperiment, run_name: str) -> tracking.TrackedRun:
    """The run's MLflow run. Everything stored there is masked: a run that needs the real
    experiment again (a resumed sweep) reads it from its storage folder, never from MLflow."""
    spec = loaded.spec
    overrides = " ".join(mask_override(item) for item in loaded.overrides)
    try:
        return tracking.start_run(
            uri=tracking.absolute_tracking_uri(spec.tracking.uri),
            experiment=spec.experiment_name,
            run_name=run_name,
            spec=spec.model_dump(mode="json"),
            tags={**spec.tracking.tags, names.OVERRIDES_TAG: overrides},
            description=spec.description,
            spec_file=loaded.path,
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


def storage_root(storage: str, name: str) -> str:
    if storage.startswith("gs://"):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def export_registered(
    spec: Any, tracked: tracking.TrackedRun | None, version: str | None, data: Any
) -> Any:
    """The ``export:`` section's edge export, once a model version is registered."""
    if spec.export is None or tracked is None or not version:
        return None
    from raytrain.export.edge import export_after_training

    return export_after_training(spec, tracking_uri=tracked.uri, version=version, data=data)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def spec_tracking_uri(spec: Any) -> str | None:
    return tracking.absolute_tracking_uri(spec.tracking.uri) if spec.tracking.enabled else None


def prepare(spec: Any, tracking_uri: str | None, *, address: str | None, verbose: bool) -> Any:
    """Everything that can fail fast, before any cluster time: tracking, data, then Ray."""
    from raytrain.cluster.connection import WORKER_ENV

    check_writable(spec.storage, what="storage")
    if spec.export is not None and spec.export.out:
        from raytrain.export.destination import check_destination

        check_writable(spec.export.out, what="export.out")
        check_destination(spec.export.out)  # it holds nothing raytrain may not replace
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
