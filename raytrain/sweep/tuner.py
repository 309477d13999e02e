"""Hyperparameter sweeps: Ray Tune + Optuna + ASHA, every trial a training run.

Each trial is a Tune *function* trainable. A trial of 1 worker trains in that function's own
process (``train.loop.train_in_trial``), and Tune reuses the process for the next trial: no
Ray Train controller, placement group or worker process, TensorFlow imported once per process
(benchmarks/README.md, sweep_overhead). A trial of N > 1 workers trains on N workers under
MultiWorkerMirroredStrategy that the function's process keeps for its next trial
(``train.group``, ``scaling.trial_workers: reused``), or runs ``train.fit`` (a Ray Train run)
and forwards every epoch to Tune with ``TuneReportCallback`` (``ray_train``). Either way the
scheduler sees each epoch and can stop a trial mid-training, and checkpoints land in
``<sweep>-trials/trial-<id>``. Everything MLflow sees goes
through callbacks on this driver (``callbacks.py``): trials never talk to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from raytrain.cluster.placement import (
    AbandonedGroupCollector,
    live_placement_groups,
    release_orphaned_placement_groups,
    release_placement_groups,
)
from raytrain.cluster.resources import check_feasible, worker_slots
from raytrain.config.schema import Experiment
from raytrain.errors import ClusterError, find_user_error
from raytrain.storage import forwarded_env, ray_storage
from raytrain.sweep.callbacks import EVENT_SINKS, SweepProgress, TrialTracker
from raytrain.sweep.edge import report_edge_metrics
from raytrain.sweep.results import trial_rows
from raytrain.sweep.search import Extension, quiet_optuna, tune_config
from raytrain.sweep.space import apply_config, search_space
from raytrain.sweep.state import SweepState
from raytrain.tracking import credentials
from raytrain.tracking.credentials import Credentials
from raytrain.tracking.runs import TrackedRun
from raytrain.tracking.system import watch_trial
from raytrain.train.loop import ray_train_settings
from raytrain.train.session import code_error, mark_delivered, record_code_error

__all__ = ["SweepOutcome", "sweep"]

# The trial function itself holds ~nothing: its training workers hold the CPUs. Tune refuses a
# trial of zero resources ("empty head and zero worker bundles"), and a trial holding a CPU of its
# own would leave a 2-CPU machine one CPU short of a 2-worker trial.
TRIAL_RESOURCES = {"memory": 1024 * 1024}


@dataclass(frozen=True)
class SweepOutcome:
    """One Tune experiment's trials, and how many ran at once at most."""

    rows: list[dict[str, Any]]
    concurrent: int


def sweep(
    setup: SweepState,
    *,
    data_ref: ray.ObjectRef,
    datasets: dict[str, Any] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    restore_path: str | None = None,
    extension: Extension | None = None,
) -> SweepOutcome:
    """Run, resume or extend the sweep; return the trials of this Tune experiment."""
    spec, tune_spec = setup.spec, setup.spec.tune
    assert tune_spec is not None
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"each trial of sweep '{spec.name}'",
    )
    fits = worker_slots(spec.worker_resources()) // spec.scaling.num_workers
    concurrent = min(tune_spec.max_concurrent_trials or fits, fits)
    if concurrent < 1:
        raise ClusterError(f"no trial of sweep '{spec.name}' fits on the cluster")
    tracker = TrialTracker(setup.tracked, spec=spec) if setup.tracked else None
    progress = SweepProgress(spec, sweep_name=setup.sweep_name)
    if on_event:
        EVENT_SINKS[setup.sweep_name] = on_event
    in_process, in_group = spec.in_one_process, spec.in_reused_group
    own = {**TRIAL_RESOURCES, **spec.data.locality_rule.resources()}
    if in_process:  # the trial holds its worker's resources (its GPU too)
        resources: Any = spec.worker_resources()
    elif in_group:  # the function ~nothing, its group's workers one bundle each
        resources = tune.PlacementGroupFactory(
            [own, *[spec.worker_resources()] * spec.scaling.num_workers]
        )
    else:  # a Ray Train trial's workers hold theirs, the function itself ~nothing
        resources = own
    reused = in_process or in_group
    trainable = tune.with_resources(
        tune.with_parameters(
            _reused_trial if reused else _trial,
            base=spec.model_dump(mode="json"),
            data_ref=data_ref,
            datasets=datasets,
            trials_root=trials_root(setup.storage_root, setup.sweep_name),
            base_dir=setup.base_dir,
            env={**forwarded_env(), **ray_train_settings()},
            # Where an in-process trial samples its node's system metrics: its child run.
            **({"parent": setup.tracked, "signed_in": credentials.current()} if in_process else {}),
        ),
        resources,
    )
    if reused:  # no Ray Train groups to lose track of
        keeper: tune.Callback = _ReusedTrialFolders(
            trials_root(setup.storage_root, setup.sweep_name)
        )
    else:
        keeper = _CollectAbandonedGroups(AbandonedGroupCollector(spec.worker_resources()))
    # The keeper first: a report's checkpoint counts before anything else hears of it.
    callbacks = [c for c in (keeper, tracker, progress) if c is not None]
    # Tune's own console output would print over our progress display; the old engine at
    # verbose=0 prints nothing (the new one ignores verbose=0 for its header).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if set(tune_spec.metrics) & set(tune_spec.edge_metrics):
        # Edge objectives arrive with a trial's last report only: Tune's check that every
        # report holds every objective would fail each epoch before it.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    quiet_optuna()
    storage_path, filesystem = ray_storage(setup.storage_root)
    if restore_path:
        # Tune restores its callbacks (and their trial -> child run map) from its own state.
        tuner = tune.Tuner.restore(
            ray_storage(restore_path)[0],
            trainable,
            resume_unfinished=True,
            storage_filesystem=filesystem,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tune_spec),
            tune_config=tune_config(
                tune_spec, spec.train.epochs, concurrent, extension, reuse_actors=reused
            ),
            run_config=tune.RunConfig(
                name=extension.name if extension else setup.sweep_name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                stop=progress,
                callbacks=callbacks,
                # Ray Train restarts a lost worker group itself; Tune restarts a lost in-process
                # trial or group (a code error is not retried: _ReusedTrialFolders).
                failure_config=tune.FailureConfig(
                    max_failures=spec.failure.max_failures if reused else 0
                ),
                verbose=0,
            ),
        )
        if extension is None:
            setup.save()
    before = live_placement_groups()
    try:
        results = tuner.fit()
    finally:
        EVENT_SINKS.pop(setup.sweep_name, None)
        release_placement_groups(before)  # trials stopped mid-run
        # A driver killed just before this sweep (the one it resumes) can leave its trial's
        # group after the look before the run: the cluster is left clean for the next run.
        release_orphaned_placement_groups()
    return SweepOutcome(rows=trial_rows(results, spec), concurrent=concurrent)


def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    data_ref: ray.ObjectRef,
    datasets: dict[str, Any] | None,
    trials_root: str,
    base_dir: str,
    env: dict[str, str],
) -> None:
    """One trial of N > 1 workers: a data-parallel Ray Train run with the sampled values."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain.train.loop import fit

    # The driver's storage settings (an emulator's address) and Ray Train settings, for this
    # trial's Train run: a cluster that was started without them does not give them to trials.
    os.environ.update(env)
    spec = apply_config(Experiment.model_validate(base), config)
    trial_id = tune.get_context().get_trial_id()
    try:
        # A deterministic Train run name: a resumed trial finds its own checkpoints again.
        fit(
            spec,
            data_ref=data_ref,
            run_name=f"trial-{trial_id}",
            storage_path=trials_root,
            tracking=None,
            progress=None,
            base_dir=base_dir,
            callbacks=[TuneReportCallback()],
            datasets=datasets,
        )
        _edge_hook(spec, f"{trials_root}/trial-{trial_id}", data_ref)
    except Exception as exc:
        raise find_user_error(exc) from None


def trials_root(storage_root: str, sweep_name: str) -> str:
    """The folder of a sweep's trial folders (``trial-<id>``: checkpoints, test metrics)."""
    return f"{storage_root}/{sweep_name}-trials"


def _reused_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    data_ref: ray.ObjectRef,
    datasets: dict[str, Any] | None,
    trials_root: str,
    base_dir: str,
    env: dict[str, str],
    parent: TrackedRun | None = None,
    signed_in: Credentials | None = None,
) -> None:
    """One trial in a process Tune reuses for the next trial: of 1 worker, trained in this
    process; of N > 1, on the worker group this process keeps (``train.group``).

    Tune retries a trial whose process, worker or node was lost (``failure.max_failures``), from
    its last checkpoint (in a new group). An error of the trial's own code or data is recorded
    in its folder before it is raised: ``_ReusedTrialFolders`` then gives the trial no
    further retry, and the one attempt Tune has already scheduled raises the recorded error
    before training. ``parent``: the sweep's run, where a 1-worker trial samples its node's
    system metrics into its child run."""
    from raytrain.train.group import LostWorker, train_in_group
    from raytrain.train.loop import train_in_trial

    # The driver's storage settings (an emulator's address) first: the trial's folder may be
    # in a bucket only they reach.
    os.environ.update(env)
    trial_id = tune.get_context().get_trial_id()
    folder = f"{trials_root}/trial-{trial_id}"
    earlier = code_error(folder)
    if earlier is not None:
        raise earlier
    stop_watching = watch_trial(parent, trial_id, signed_in)
    inputs = {"data_ref": data_ref, "folder": folder, "base_dir": base_dir, "datasets": datasets}
    # What this raises is the trial's own (its configuration, code or data), but a lost worker.
    try:
        spec = apply_config(Experiment.model_validate(base), config)
        if spec.scaling.num_workers > 1:  # the sweep does not vary scaling: a reused group
            train_in_group(spec, trial_id=trial_id, report=tune.report, **inputs)
        else:
            train_in_trial(spec, **inputs)
        _edge_hook(spec, folder, data_ref)
    except LostWorker:
        raise
    except Exception as exc:
        error = find_user_error(exc)
        record_code_error(folder, error)
        raise error from None
    finally:
        stop_watching()


def _edge_hook(spec: Experiment, folder: str, data_ref: ray.ObjectRef) -> None:
    """A trial that trained to its end measures its best checkpoint for edge devices, when the
    sweep asks for an edge metric (``edge.py``; stopped trials are measured by the driver)."""
    if spec.tune is not None and spec.tune.edge_metrics:
        report_edge_metrics(spec, folder, ray.get(data_ref))


class _ReusedTrialFolders(tune.Callback):
    """What this driver keeps in the folders of trials that train outside Ray Train.

    A report's checkpoint counts as it arrives here, as Ray Train commits one with its report:
    the trial's process hears of the arrival only at its next step, and a process lost in
    between would have its retry train and report that epoch again. A trial whose own code or
    data failed (its folder says so) gets no retry: Tune retries every failed trial alike, and
    only a lost process deserves one."""

    def __init__(self, root: str) -> None:
        self.root = root

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        mark_delivered(self._folder(trial), result)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if code_error(self._folder(trial)) is not None:
            trial.max_failures = 0

    def _folder(self, trial: Any) -> str:
        return f"{self.root}/trial-{trial.trial_id}"


class _CollectAbandonedGroups(tune.Callback):
    """Looks for worker groups that stopped trials left behind, every few seconds of the
    sweep, so that they do not hold the CPUs the next trials wait for."""

    def __init__(self, collector: AbandonedGroupCollector) -> None:
        self.collector = collector

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.collector.tick()
