"""One experiment end to end: data -> cluster -> tracked training run -> model in MLflow.

Everything the ``raytrain run`` command does is here, callable from Python::

    from raytrain import load_experiment, run_experiment
    summary = run_experiment(load_experiment("experiments/quickstart.yaml"))
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain import tracking
from raytrain.cluster.connection import connect
from raytrain.cluster.placement import release_orphaned_placement_groups
from raytrain.cluster.resources import check_feasible, check_locality, cpus_on
from raytrain.cluster.shared import check_storage_on_nodes
from raytrain.config.loader import LoadedExperiment
from raytrain.data.dataset import load_dataset
from raytrain.errors import RaytrainError, TrackingError, find_user_error
from raytrain.masking import mask_override
from raytrain.storage import check_writable, exists, forwarded_env, is_gcs, join, to_uri
from raytrain.tracking import names
from raytrain.train import checkpoint
from raytrain.train.evaluation import read_test_metrics, test_metrics
from raytrain.train.state import STATE_FILE, RunState, find_run

__all__ = ["RunSummary", "find_run", "log_best_model", "resume_run", "run_experiment"]

log = logging.getLogger(__name__)

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
    unlogged: str | None = None  # what MLflow did not get (it was unreachable), and what logs it
    test_metrics: dict[str, float] = field(default_factory=dict)  # with data.test


def run_experiment(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_epoch: ProgressFn | None = None,
    on_start: Callable[[RunState], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> RunSummary:
    """Train the experiment on Ray (a local instance unless ``address`` is given) and track it.

    ``on_epoch`` gets each committed epoch's metrics; ``on_start`` the run's state once it is
    saved (what ``resume_run`` needs); ``on_notice`` a line for the user when something happened
    that training survives (a lost worker, and the restart), else it is logged as a warning."""
    spec = loaded.spec
    tracking.bound_client()
    data = prepare(
        spec, spec_tracking_uri(spec), address=address, verbose=verbose, on_notice=on_notice
    )
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"experiment '{spec.name}'",
    )
    run_name = spec.tracking.run_name or unique_name(spec.name)
    root = storage_root(spec.storage, spec.name)
    if exists(join(root, run_name, STATE_FILE)):
        raise RaytrainError(
            f"run '{run_name}' exists in {root}: `raytrain resume {join(root, run_name)}` "
            "continues it; a new run needs another `tracking.run_name`",
            options=("tracking.run_name",),
        )
    state = RunState(
        spec=spec,
        spec_file=str(loaded.path.resolve()),
        base_dir=str(loaded.path.parent.resolve()),
        storage_root=root,
        run_name=run_name,
        address=address,
        tracked=start_tracking(loaded, run_name) if spec.tracking.enabled else None,
    )
    state.save()
    log_lineage(state.tracked, spec, data)
    return _train(state, data, on_epoch=on_epoch, on_start=on_start, on_notice=on_notice)


def resume_run(
    state: RunState,
    *,
    address: str | None = None,
    verbose: bool = False,
    on_epoch: ProgressFn | None = None,
    on_start: Callable[[RunState], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    num_samples: int | None = None,
) -> RunSummary:
    """Continue a run whose driver was lost, from its storage folder (``find_run``): training
    from the last checkpoint (weights, optimizer state, epoch, best so far) in the same MLflow
    run, then its end; or, when training was done and MLflow was not, what MLflow missed.

    ``num_samples`` grows sweeps: given here, it is a mistake said in one line."""
    tracked = state.tracked
    if num_samples is not None:
        raise RaytrainError(
            f"'{state.run_name}' is a training run: `num_samples` grows sweeps",
            options=("num_samples",),
        )
    if state.logged or (state.trained and tracked is None):
        logged = " and is logged in MLflow" if tracked else ""
        raise RaytrainError(f"run '{state.run_name}' finished{logged}: nothing to resume")
    tracking.bound_client()
    address = address or state.address
    uri = tracked.uri if tracked else None
    data = prepare(state.spec, uri, address=address, verbose=verbose, on_notice=on_notice)
    if tracked:
        tracking.reopen_run(tracked)
    return _train(state, data, on_epoch=on_epoch, on_start=on_start, on_notice=on_notice)


def _train(
    state: RunState,
    data: Any,
    *,
    on_epoch: ProgressFn | None,
    on_start: Callable[[RunState], None] | None,
    on_notice: Callable[[str], None] | None = None,
) -> RunSummary:
    """Fit the run's epochs that are not trained yet (Ray Train resumes from the run's last
    checkpoint in its folder), then log its end."""
    from raytrain.train.loop import fit

    spec, tracked = state.spec, state.tracked
    if on_start:
        on_start(state)
    wanted = on_epoch or on_notice
    # On this process's node: anywhere else, losing that node (a worker machine) would end the
    # run with it, though Ray Train restarts the workers (seen on a two-machine cluster).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue_options = {"num_cpus": 0, "scheduling_strategy": here}
    progress = ray.util.queue.Queue(actor_options=queue_options) if wanted else None
    epochs: list[dict[str, float]] = []
    missed: list[int] = []  # the epochs the controller could not log
    outcome: dict[str, Any] = {}

    def _fit() -> None:
        try:
            outcome["result"] = fit(
                spec,
                data_ref=ray.put(data.for_workers()),
                datasets=data.ray_datasets,
                run_name=state.run_name,
                storage_path=state.storage_root,
                tracking=tracked,
                progress=progress,
                base_dir=state.base_dir,
            )
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=_fit, name="raytrain-fit", daemon=True)
    worker.start()
    try:
        while worker.is_alive() or (progress is not None and not progress.empty()):
            event = _next_event(progress, worker)
            if isinstance(event, str):  # a notice: something training survives
                (on_notice or log.warning)(event)
            elif event is not None:
                missed = event.pop("unlogged_epochs", missed)
                epochs.append(event)
                if on_epoch:
                    on_epoch(event)
    except KeyboardInterrupt:
        _end_quietly(tracked, "KILLED")
        raise
    if "error" in outcome:
        _end_quietly(tracked, "FAILED", {names.ERROR_TAG: str(outcome["error"])[:5000]})
        raise find_user_error(outcome["error"]) from None
    return _finish(state.update(trained=True), outcome["result"], data, epochs, missed)


def _end_quietly(
    tracked: tracking.TrackedRun | None, status: str, tags: dict[str, str] | None = None
) -> None:
    """Mark the run ``status`` if MLflow answers: its error must not hide the run's own."""
    try:
        if tracked:
            tracking.end_run(tracked, status=status, tags=tags)
    except Exception as exc:  # MLflow raises many types; the run's outcome matters more
        log.warning("MLflow could not mark the run %s: %s", status, exc)


def _next_event(progress: Any, worker: threading.Thread) -> dict[str, Any] | str | None:
    """The next epoch (a dict) or notice (a str) from the run's progress queue."""
    if progress is None:
        worker.join(timeout=0.5)
        return None
    try:
        return progress.get(timeout=0.5)
    except (queue.Empty, ray.util.queue.Empty):
        return None


def _finish(
    state: RunState, result: Any, data: Any, epochs: list[dict[str, float]], missed: list[int]
) -> RunSummary:
    spec, tracked = state.spec, state.tracked
    best_checkpoint, best_metrics = _best(result, spec.checkpoint.score, spec.checkpoint.mode)
    folder = to_uri(result.path, result.filesystem)
    tested = test_metrics(read_test_metrics(folder), best_epoch=best_metrics.get("epoch"))
    if data.info.num_test and not tested:
        log.warning(
            "no test metrics: the run restarted after a failure and no longer held the best "
            "epoch's weights; evaluate the registered model on the test data instead"
        )
    unlogged = None
    if tracked:
        try:
            state = _log_end(state, result, best_checkpoint, best_metrics, data, tested)
        except Exception as exc:  # MLflow raises many types; the trained run is kept
            unlogged = _unlogged(state, exc, missed)
    return RunSummary(
        name=spec.name,
        run_name=state.run_name,
        storage_path=folder,
        best_checkpoint=best_checkpoint,
        best_metrics=best_metrics,
        final_metrics=dict(result.metrics or {}),
        epochs=epochs,
        tracking=tracked,
        registered_version=state.registered_version,
        ui_command=tracking.ui_command(tracked) if tracked else None,
        export=export_registered(spec, tracked, state.registered_version, data)
        if state.logged
        else None,
        unlogged=unlogged,
        test_metrics=tested,
    )


def _log_end(
    state: RunState,
    result: Any,
    best_checkpoint: str | None,
    best_metrics: dict[str, float],
    data: Any,
    tested: dict[str, float],
) -> RunState:
    """Everything MLflow lacks of a trained run: the epochs it missed (from the latest
    checkpoint's history), the best checkpoint's model (registered), the best metrics and the
    FINISHED status. Each part is recorded in ``state`` once logged: a retry skips it."""
    spec, tracked = state.spec, state.tracked
    assert tracked is not None
    if result.checkpoint is not None:
        latest = to_uri(result.checkpoint.path, result.checkpoint.filesystem)
        tracking.log_missing_epochs(tracked, checkpoint.read_history(latest))
    if not state.model_logged:
        version = log_best_model(
            tracked,
            best_checkpoint,
            data=data,
            loss=spec.train.loss,
            register_as=spec.tracking.register_as,
        )
        record_test_metrics(tracked.uri, spec.tracking.register_as, version, tested)
        state = state.update(model_logged=True, registered_version=version)
    folder = to_uri(result.path, result.filesystem)
    tags = {names.BEST_CHECKPOINT_TAG: best_checkpoint or "", names.STORAGE_TAG: folder}
    best = {f"best_{k}": v for k, v in best_metrics.items() if isinstance(v, int | float)}
    tracking.end_run(
        tracked,
        status="FINISHED",
        tags=tags,
        metrics={**best, **tested},
        step=int(best_metrics.get("epoch", 0)),
    )
    return state.update(logged=True)


def _unlogged(state: RunState, error: Exception, missed: list[int]) -> str:
    """One line: what MLflow did not get, where it is kept, and the command that logs it."""
    assert state.tracked is not None
    parts = [f"the metrics of epoch(s) {_spans(missed)}"] if missed else []
    if not state.model_logged:
        register_as = state.spec.tracking.register_as
        parts.append(
            "the model" + (f" (and its registration as {register_as})" if register_as else "")
        )
    parts.append("the best metrics and the FINISHED status")
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (
        f"MLflow at {state.tracked.uri} failed ({reason}); not logged: {', '.join(parts)}. "
        f"The run is kept in {state.folder}: `{state.resume_command}` logs it"
    )


def _spans(numbers: list[int]) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def log_lineage(tracked: tracking.TrackedRun | None, spec: Any, data: Any) -> None:
    """The run's training, validation and test data, as MLflow dataset inputs (metadata only:
    sources, digests, schema, row counts). A run is not stopped for its lineage."""
    if tracked is None:
        return
    from raytrain.data.lineage import describe
    from raytrain.tracking.lineage import log_datasets

    try:
        log_datasets(tracked, describe(spec.data, data))
    except Exception as exc:
        log.warning("the dataset lineage was not logged (training goes on): %s", exc)


def record_test_metrics(
    uri: str, name: str | None, version: str | None, tested: dict[str, float]
) -> None:
    """Copy the test metrics to the registered version's tags (``raytrain.test_<metric>``)."""
    if name and version and tested:
        from raytrain.tracking.registry import tag_version

        tag_version(
            uri, name, version, {names.metric_tag(k): f"{v:.6g}" for k, v in tested.items()}
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
    sign = 1 if mode == "max" else -1  # ties: the earliest epoch, as the test set's weights
    checkpoint, metrics = max(ranked, key=lambda cm: (sign * cm[1][score], -cm[1]["epoch"]))
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


def prepare(
    spec: Any,
    tracking_uri: str | None,
    *,
    address: str | None,
    verbose: bool,
    on_notice: Callable[[str], None] | None = None,
) -> Any:
    """Everything that can fail fast, before any cluster time: tracking, data, then Ray
    (``on_notice`` hears which Ray instance, when it is one found running)."""
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
    env = {**WORKER_ENV, **tracking.CLIENT_ENV, **forwarded_env()}
    cluster = connect(address, verbose=verbose, env_vars=env, on_notice=on_notice)
    if not cluster.started:  # a killed driver's leftovers would block this run
        release_orphaned_placement_groups()  # (none on an instance this run just started)
    check_locality(spec.data.locality)
    check_storage_on_nodes(spec.storage, resource=spec.data.locality)
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
