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
from typing import Any

import ray
import yaml

from raytrain import tracking
from raytrain.cluster import check_feasible, connect
from raytrain.data import load_dataset
from raytrain.errors import RaytrainError, TrackingError, TrainingError
from raytrain.specfile import LoadedExperiment

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
    dashboard_url: str | None = None


def run_experiment(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_epoch: ProgressFn | None = None,
) -> RunSummary:
    """Train the experiment on Ray (a local instance unless ``address`` is given) and track it."""
    from raytrain.train import WORKER_ENV, fit

    spec = loaded.spec
    if spec.tracking.enabled:
        tracking.check_reachable(tracking.absolute_tracking_uri(spec.tracking.uri))
    data = load_dataset(spec.data, loss=spec.train.loss)
    cluster = connect(address, verbose=verbose, env_vars=WORKER_ENV)
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"experiment '{spec.name}'",
    )
    run_name = (
        spec.tracking.run_name
        or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    )
    storage = _storage_root(spec.storage, spec.name)
    tracked = _start_tracking(loaded, run_name) if spec.tracking.enabled else None
    progress = ray.util.queue.Queue(actor_options={"num_cpus": 0}) if on_epoch else None
    epochs: list[dict[str, float]] = []
    outcome: dict[str, Any] = {}

    def _train() -> None:
        try:
            outcome["result"] = fit(
                spec,
                data_ref=ray.put(data),
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
        raise _user_error(outcome["error"]) from None
    return _finish(
        loaded, outcome["result"], run_name, storage, tracked, data, epochs, cluster.dashboard_url
    )


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
    dashboard_url: str | None,
) -> RunSummary:
    spec = loaded.spec
    best_checkpoint, best_metrics = _best(result, spec.checkpoint.score, spec.checkpoint.mode)
    version = None
    if tracked:
        version = _log_best_model(loaded, tracked, best_checkpoint, data)
        tags = {"raytrain.best_checkpoint": best_checkpoint or "", "raytrain.storage": result.path}
        best = {f"best_{k}": v for k, v in best_metrics.items() if isinstance(v, int | float)}
        tracking.log_metrics(tracked, best, step=int(best_metrics.get("epoch", 0)))
        tracking.end_run(tracked, status="FINISHED", tags=tags)
    return RunSummary(
        name=spec.name,
        run_name=run_name,
        storage_path=result.path,
        best_checkpoint=best_checkpoint,
        best_metrics=best_metrics,
        final_metrics=dict(result.metrics or {}),
        epochs=epochs,
        tracking=tracked,
        registered_version=version,
        ui_command=tracking.ui_command(tracked) if tracked else None,
        dashboard_url=dashboard_url,
    )


def _best(result: Any, score: str, mode: str) -> tuple[str | None, dict[str, float]]:
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if score in m]
    if not ranked:
        return None, dict(result.metrics or {})
    pick = max if mode == "max" else min
    checkpoint, metrics = pick(ranked, key=lambda cm: cm[1][score])
    return checkpoint.path, dict(metrics)


def _log_best_model(
    loaded: LoadedExperiment, tracked: tracking.TrackedRun, checkpoint_path: str | None, data: Any
) -> str | None:
    """Log the best checkpoint's model (tf_keras) to the run and register it if asked."""
    if checkpoint_path is None:
        return None
    import tensorflow as tf

    from raytrain.train import MODEL_FILE

    checkpoint = ray.train.Checkpoint(checkpoint_path)
    with checkpoint.as_directory() as folder:
        model = tf.keras.models.load_model(str(Path(folder, MODEL_FILE)), compile=False)
    info = data.info
    metadata = {
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "label_names": info.label_names,
        "feature_names": info.feature_names[:1000],
        "loss": loaded.spec.train.loss,
        "checkpoint": checkpoint_path,
    }
    return tracking.log_model(
        tracked,
        model,
        example=data.x_val[:5],
        metadata=metadata,
        register_as=loaded.spec.tracking.register_as,
    )


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
        )
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow ({spec.tracking.uri}): {first}") from None


def _storage_root(storage: str, name: str) -> str:
    if storage.startswith("gs://"):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def _user_error(exc: BaseException) -> BaseException:
    """The user's own error if one caused the failure (it may be wrapped by Ray several times)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RaytrainError):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        stack += [
            e
            for e in getattr(current, "worker_failures", {}).values()
            if isinstance(e, BaseException)
        ]
    return TrainingError(f"training failed: {exc}")
