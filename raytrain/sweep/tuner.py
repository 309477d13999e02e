"""Hyperparameter sweeps: Ray Tune + Optuna + ASHA, every trial a data-parallel training run.

Each trial is a Tune *function* trainable that runs ``train.fit`` (a TensorflowTrainer with
``scaling.num_workers`` workers) and forwards every epoch to Tune with ``TuneReportCallback``, so
the scheduler sees each epoch and can stop a trial mid-training. Everything MLflow sees goes
through callbacks on this driver (``sweep_tracking.py``): workers never talk to MLflow in a sweep.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raytrain import tracking
from raytrain.cluster.placement import (
    AbandonedGroupCollector,
    live_placement_groups,
    release_orphaned_placement_groups,
    release_placement_groups,
)
from raytrain.cluster.resources import check_feasible, worker_slots
from raytrain.config.schema import Experiment, TuneSpec
from raytrain.errors import ClusterError, find_user_error
from raytrain.history import SWEEP_STATE  # what `raytrain resume` needs, next to Tune's state
from raytrain.storage import (
    exists,
    forwarded_env,
    join,
    ray_storage,
    read_text,
    to_uri,
    write_text,
)
from raytrain.sweep.callbacks import (
    EVENT_SINKS,
    SweepProgress,
    TrialTracker,
    error_reason,
    trial_status,
)

__all__ = [
    "SWEEP_STATE",
    "Extension",
    "SweepOutcome",
    "SweepSetup",
    "apply_config",
    "load_state",
    "past_rows",
    "search_space",
    "sweep",
    "trial_rows",
    "update_state",
]

TRIAL_RESOURCES = {"memory": 1024 * 1024}  # the trial function itself holds ~nothing (FACTS.md)
WARM_STUDY = "raytrain"  # the Optuna study an extension's search loads its earlier trials from


@dataclass(frozen=True)
class SweepSetup:
    spec: Experiment
    spec_file: str
    base_dir: str
    storage_root: str
    sweep_name: str
    tracked: tracking.TrackedRun | None


@dataclass(frozen=True)
class Extension:
    """More trials for a finished sweep, run as one more Tune experiment beside the first.

    Tune keeps ``num_samples`` inside its pickled searcher, so a finished experiment cannot be
    told to run more; a new one, warm-started with every trial so far, continues the search.
    """

    name: str  # the new Tune experiment's folder, beside the sweep's
    num_samples: int  # trials to add
    round: int  # 1, 2, ...: shifts the seed so that random draws do not repeat the first round's
    earlier: list[dict[str, Any]]  # trial rows so far: what the search is warm-started with


def search_space(tune_spec: TuneSpec) -> dict[str, Any]:
    """The spec's ``tune.space`` as Ray Tune domains, keyed by dotted path."""
    domains = {
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        "qloguniform": lambda a: tune.qloguniform(a[0], a[1], a[2]),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive, as the YAML reads
        "choice": lambda a: tune.choice(a),
        "grid": lambda a: tune.grid_search(a),
    }
    space = {}
    for key, entry in tune_spec.space.items():
        kind, args = next(iter(entry.items()))
        if tune_spec.search.algorithm == "grid" and kind == "choice":
            kind = "grid"  # a grid enumerates every listed value
        space[key] = domains[kind](args)
    return space


def apply_config(spec: Experiment, config: dict[str, Any]) -> Experiment:
    """The trial's experiment: sampled values set at their dotted paths, no tune section, and
    checkpoints ranked by the sweep's (first) metric so that the best one is the one kept."""
    tree = spec.model_dump(mode="json")
    if spec.tune is not None:
        tree["checkpoint"].update(score=spec.tune.metrics[0], mode=spec.tune.modes[0])
    tree["tune"] = None
    for key, value in config.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.item() if hasattr(value, "item") else value  # numpy scalars
    return Experiment.model_validate(tree)


def sweep(
    setup: SweepSetup,
    *,
    data_ref: ray.ObjectRef,
    datasets: dict[str, Any] | None = None,
    on_event: Any | None = None,
    restore_path: str | None = None,
    extension: Extension | None = None,
) -> SweepOutcome:
    """Run, resume or extend the sweep; return this Tune experiment's trials."""
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
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=spec.model_dump(mode="json"),
            data_ref=data_ref,
            datasets=datasets,
            storage_root=setup.storage_root,
            sweep_name=setup.sweep_name,
            base_dir=setup.base_dir,
            env=forwarded_env(),
        ),
        {**TRIAL_RESOURCES, **spec.locality_resources()},
    )
    collector = _CollectAbandonedGroups(AbandonedGroupCollector(spec.worker_resources()))
    callbacks = [c for c in (tracker, progress, collector) if c is not None]
    # Tune's own console output would print over our progress display; the old engine at
    # verbose=0 prints nothing (the new one ignores verbose=0 for its header).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    _quiet_optuna()
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
            tune_config=_tune_config(tune_spec, spec.train.epochs, concurrent, extension),
            run_config=tune.RunConfig(
                name=extension.name if extension else setup.sweep_name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                stop=progress,
                callbacks=callbacks,
                verbose=0,
            ),
        )
        if extension is None:
            _write_state(setup)
    before = live_placement_groups()
    try:
        results = tuner.fit()
    finally:
        EVENT_SINKS.pop(setup.sweep_name, None)
        release_placement_groups(before)  # trials stopped mid-run
        # A driver killed just before this sweep (the one it resumes) can leave its trial's
        # group after the look before the run: the cluster is left clean for the next run.
        release_orphaned_placement_groups()
    return SweepOutcome(rows=trial_rows(results, spec), results=results, concurrent=concurrent)


@dataclass(frozen=True)
class SweepOutcome:
    rows: list[dict[str, Any]]
    results: Any
    concurrent: int


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
        if result.error is not None:
            row["error"] = error_reason(str(result.error))[:300]
        row["checkpoint"] = _best_checkpoint(
            frame, tune_spec.metrics[0], tune_spec.modes[0], result.filesystem
        )
        rows.append(row)
    return rows


def past_rows(setup: SweepSetup, names: list[str]) -> list[dict[str, Any]]:
    """The trial rows of Tune experiments that already ran, read back from their storage."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    rows = []
    for name in names:
        path, filesystem = ray_storage(join(setup.storage_root, name))
        analysis = ExperimentAnalysis(path, storage_filesystem=filesystem)
        rows += trial_rows(ResultGrid(analysis), setup.spec)
    return rows


def _best_checkpoint(frame: Any, metric: str, mode: str, filesystem: Any) -> str | None:
    """The trial's best-scoring checkpoint that Ray Train still keeps (a local path or a
    gs:// URI: Tune records paths on ``filesystem`` without their scheme)."""
    if frame is None or "checkpoint_path" not in frame or metric not in frame:
        return None
    ranked = frame.dropna(subset=["checkpoint_path"]).sort_values(metric, ascending=mode == "min")
    for path in ranked["checkpoint_path"]:
        location = to_uri(str(path), filesystem)
        if exists(location):
            return location
    return None


def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    data_ref: ray.ObjectRef,
    datasets: dict[str, Any] | None,
    storage_root: str,
    sweep_name: str,
    base_dir: str,
    env: dict[str, str],
) -> None:
    """One trial: a full data-parallel training run with the sampled values."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain.train.loop import fit

    # The driver's storage settings (an emulator's address), for this trial's Train run: a
    # cluster that was started without them does not give them to trial processes.
    os.environ.update(env)
    spec = apply_config(Experiment.model_validate(base), config)
    trial_id = tune.get_context().get_trial_id()
    try:
        # A deterministic Train run name: a resumed trial finds its own checkpoints again.
        fit(
            spec,
            data_ref=data_ref,
            run_name=f"trial-{trial_id}",
            storage_path=f"{storage_root}/{sweep_name}-trials",
            tracking=None,
            progress=None,
            base_dir=base_dir,
            callbacks=[TuneReportCallback()],
            datasets=datasets,
        )
    except Exception as exc:
        raise find_user_error(exc) from None


class _CollectAbandonedGroups(tune.Callback):
    """Looks for worker groups that stopped trials left behind, every few seconds of the
    sweep, so that they do not hold the CPUs the next trials wait for."""

    def __init__(self, collector: AbandonedGroupCollector) -> None:
        self.collector = collector

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.collector.tick()


def _tune_config(
    tune_spec: TuneSpec, epochs: int, concurrent: int, extension: Extension | None
) -> tune.TuneConfig:
    # metric/mode stay on the searcher and scheduler: Tune refuses them in both places.
    if extension:
        num_samples = extension.num_samples
    else:
        num_samples = 1 if tune_spec.search.algorithm == "grid" else tune_spec.num_samples
    return tune.TuneConfig(
        search_alg=_searcher(tune_spec, concurrent, extension),
        scheduler=_scheduler(tune_spec, epochs),
        num_samples=num_samples,
        max_concurrent_trials=concurrent,
        time_budget_s=tune_spec.time_budget_s,
    )


def _searcher(tune_spec: TuneSpec, concurrent: int, extension: Extension | None) -> Any:
    search = tune_spec.search
    seed = search.seed
    if seed is not None and extension:
        seed += extension.round
    if search.algorithm != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in: say it here.
        # Trials hold almost no resources themselves, so nothing else would hold them back.
        return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    metrics, modes = tune_spec.metrics, tune_spec.modes
    warm = _warm_study(tune_spec, extension.earlier) if extension else None
    return OptunaSearch(
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=samplers[search.sampler](),
        storage=warm,
        study_name=WARM_STUDY if warm else None,
    )


def _warm_study(tune_spec: TuneSpec, rows: list[dict[str, Any]]) -> Any:
    """An Optuna study that already holds the earlier trials, for OptunaSearch to load.

    OptunaSearch's own ``evaluated_rewards`` takes one value per point; a study in storage
    carries multi-objective values too. Trials stopped early count with their best value.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    distributions = OptunaSearch.convert_search_space(search_space(tune_spec))
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        study_name=WARM_STUDY,
        directions=["maximize" if m == "max" else "minimize" for m in tune_spec.modes],
    )
    for row in rows:
        values = [row.get(f"best_{m}") for m in tune_spec.metrics]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            continue  # failed trials tell the sampler nothing about the metric
        params = {k: row[k] for k in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, values=values)
        )
    return storage


def _scheduler(tune_spec: TuneSpec, epochs: int) -> Any:
    sched = tune_spec.scheduler
    metric, mode = tune_spec.metrics[0], tune_spec.modes[0]  # multi-objective: the first
    if sched.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            max_t=epochs,
            grace_period=min(sched.grace_period, epochs),
            reduction_factor=sched.reduction_factor,
        )
    if sched.name == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(
            time_attr="epoch", metric=metric, mode=mode, grace_period=sched.grace_period
        )
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _write_state(setup: SweepSetup) -> None:
    state = {
        "spec": setup.spec.model_dump(mode="json"),
        "spec_file": setup.spec_file,
        "base_dir": setup.base_dir,
        "storage_root": setup.storage_root,
        "sweep_name": setup.sweep_name,
        "tracking": setup.tracked.__dict__ if setup.tracked else None,
        "created": time.time(),
    }
    write_text(join(setup.storage_root, setup.sweep_name, SWEEP_STATE), json.dumps(state, indent=2))


def load_state(path: str) -> dict[str, Any]:
    """The state ``sweep`` wrote next to Tune's, for ``raytrain resume``."""
    return json.loads(read_text(join(path, SWEEP_STATE)))


def update_state(path: str, **changes: Any) -> dict[str, Any]:
    """Record what a resume must know: extension experiments, which ones finished."""
    state = {**load_state(path), **changes}
    write_text(join(path, SWEEP_STATE), json.dumps(state, indent=2))
    return state


def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns that list choices are not storage-friendly
    (our studies live in memory; Tune stores its own state)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")
