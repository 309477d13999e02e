"""The search space: ``tune.space`` as Ray Tune domains, and a trial's experiment from the values
Tune sampled (pure functions: no Tune run needed to test them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from raytrain.config.schema import Experiment, TuneSpec

__all__ = ["apply_config", "search_space"]


def search_space(tune_spec: TuneSpec) -> dict[str, Any]:
    """The spec's ``tune.space`` as Ray Tune domains, keyed by dotted path."""
    domains: dict[str, Callable[[list[Any]], Any]] = {
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
