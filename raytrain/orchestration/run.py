"""One training run end to end: data -> cluster -> tracked training run -> model in MLflow, and
its resume.

Everything the ``raytrain run`` command does for an experiment without ``tune:`` is here::

    from raytrain import load_experiment, run_experiment
    summary = run_experiment(load_experiment("experiments/quickstart.yaml"))
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain import tracking
from raytrain.cluster.resources import check_feasible
from raytrain.config.loader import LoadedExperiment
from raytrain.errors import RaytrainError, find_user_error
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
from raytrain.plan.calibration import record_actual
from raytrain.storage import exists, join
from raytrain.tracking import names
from raytrain.train import checkpoint
from raytrain.train.evaluation import read_test_metrics, test_metrics
from raytrain.train.process import release
from raytrain.train.session import Trained
from raytrain.train.state import STATE_FILE, RunState, find_run

if TYPE_CHECKING:
    from ray.util.queue import Queue

    from raytrain.export.report import ExportReport

__all__ = ["ProgressFn", "RunSummary", "find_run", "resume_run", "run_experiment"]

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
    export: ExportReport | None = None  # with an ``export:`` section
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
    started = time.monotonic()
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
    summary = _train(state, data, on_epoch=on_epoch, on_start=on_start, on_notice=on_notice)
    record_actual(state.tracked, spec, started=started)  # plan vs actual (raytrain plan)
    return summary


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
    data: PreparedData,
    *,
    on_epoch: ProgressFn | None,
    on_start: Callable[[RunState], None] | None,
    on_notice: Callable[[str], None] | None = None,
) -> RunSummary:
    """Fit the run's epochs that are not trained yet (Ray Train resumes from the run's last
    checkpoint in its folder), then log its end."""
    from raytrain.train.loop import fit
    from raytrain.train.process import fit_in_process

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

    # One worker trains in one actor (no Ray Train run to start), unless the experiment asks
    # for Ray Train (scaling.one_worker).
    train = fit_in_process if spec.in_one_process else fit

    def _fit() -> None:
        try:
            outcome["result"] = train(
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


def _next_event(progress: Queue | None, worker: threading.Thread) -> dict[str, Any] | str | None:
    """The next epoch (a dict) or notice (a str) from the run's progress queue."""
    if progress is None:
        worker.join(timeout=0.5)
        return None
    try:
        return cast("dict[str, Any] | str", progress.get(timeout=0.5))
    except (queue.Empty, ray.util.queue.Empty):
        return None


def _finish(
    state: RunState,
    result: Trained,
    data: PreparedData,
    epochs: list[dict[str, float]],
    missed: list[int],
) -> RunSummary:
    spec, tracked = state.spec, state.tracked
    best_checkpoint, best_metrics = _best(result, spec.checkpoint.score, spec.checkpoint.mode)
    folder = result.folder
    tested = test_metrics(read_test_metrics(folder), best_epoch=best_metrics.get("epoch"))
    if data.info.num_test and not tested:
        log.warning(
            "no test metrics: the run restarted after a failure and no longer held the best "
            "epoch's weights; evaluate the registered model on the test data instead"
        )
    unlogged = None
    try:
        if tracked:
            state = _log_end(state, result, best_checkpoint, best_metrics, data, tested)
    except Exception as exc:  # MLflow raises many types; the trained run is kept
        unlogged = _unlogged(state, exc, missed)
    finally:
        release(result)
    return RunSummary(
        name=spec.name,
        run_name=state.run_name,
        storage_path=folder,
        best_checkpoint=best_checkpoint,
        best_metrics=best_metrics,
        final_metrics=dict(result.metrics),
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
    result: Trained,
    best_checkpoint: str | None,
    best_metrics: dict[str, float],
    data: PreparedData,
    tested: dict[str, float],
) -> RunState:
    """Everything MLflow lacks of a trained run: the epochs it missed (from the latest
    checkpoint's history), the best checkpoint's model (registered), the best metrics and the
    FINISHED status. Each part is recorded in ``state`` once logged: a retry skips it."""
    spec, tracked = state.spec, state.tracked
    assert tracked is not None
    if result.latest is not None:
        tracking.log_missing_epochs(tracked, checkpoint.read_history(result.latest))
    if not state.model_logged:
        version = log_best_model(
            tracked,
            best_checkpoint,
            data=data,
            loss=spec.train.loss,
            register_as=spec.tracking.register_as,
            trainer=result.trainer,
        )
        record_test_metrics(tracked.uri, spec.tracking.register_as, version, tested)
        state = state.update(model_logged=True, registered_version=version)
    folder = result.folder
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


def _best(result: Trained, score: str, mode: str) -> tuple[str | None, dict[str, float]]:
    ranked = [(c, m) for c, m in result.kept if score in m]
    if not ranked:
        return None, dict(result.metrics)
    sign = 1 if mode == "max" else -1  # ties: the earliest epoch, as the test set's weights
    return max(ranked, key=lambda cm: (sign * cm[1][score], -cm[1]["epoch"]))
