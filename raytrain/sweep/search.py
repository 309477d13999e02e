"""How a sweep picks configurations and stops bad trials: Optuna (or random or grid) search,
ASHA (or median stopping) scheduling, and an extension's search warm-started with earlier trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ray import tune

from raytrain.config.schema import TuneSpec
from raytrain.sweep.edge import value_of, violations
from raytrain.sweep.space import search_space

__all__ = ["Extension", "quiet_optuna", "tune_config"]

WARM_STUDY = "raytrain"  # the Optuna study an extension's search loads its earlier trials from


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


def tune_config(
    tune_spec: TuneSpec,
    epochs: int,
    concurrent: int,
    extension: Extension | None,
    *,
    reuse_actors: bool = False,
) -> tune.TuneConfig:
    """``reuse_actors``: a finished trial's process starts the next trial (in-process trials:
    TensorFlow stays imported; ``reset_config`` hands over the new configuration)."""
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
        reuse_actors=reuse_actors,
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

    from raytrain.sweep.constrained import ConstrainedSearch

    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    metrics, modes = tune_spec.metrics, tune_spec.modes
    warm = _warm_study(tune_spec, extension.earlier) if extension else None
    return ConstrainedSearch(
        # Of Optuna's samplers here, TPE alone uses constraints (CMA-ES warns, random ignores).
        tune_spec.constraints if search.sampler == "tpe" else {},
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
    # Earlier trials carry their constraint values, as ConstrainedSearch sets them (TPE only).
    constraints = tune_spec.constraints if tune_spec.search.sampler == "tpe" else {}
    for row in rows:
        values = [row.get(f"best_{m}") for m in tune_spec.metrics]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            continue  # failed trials tell the sampler nothing about the metric
        params = {k: row[k] for k in distributions}
        judged = {m: value_of(row, m) for m in constraints}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                values=cast(list[float], values),  # all numbers: checked above
                system_attrs={
                    f"constraints:{k}": v for k, v in violations(judged, constraints).items()
                },
            )
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
            # A trial at its last epoch ends by itself: stopped there, it would never report
            # its test metrics (measured after the last epoch).
            stop_last_trials=False,
        )
    if sched.name == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(
            time_attr="epoch", metric=metric, mode=mode, grace_period=sched.grace_period
        )
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns that list choices are not storage-friendly
    (our studies live in memory; Tune stores its own state)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")
