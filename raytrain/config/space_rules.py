"""Rules of a sweep's ``tune:`` section: metrics and modes, the search algorithm, and every
``tune.space`` entry, down to the values a range can take.

A value inside a range can break a rule that its ends keep (a batch of 17 does not split across
2 workers): validation sets sampled values into the experiment and runs every rule on it, so a
bad range fails at ``raytrain validate`` instead of as a failed trial.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raytrain.config.problems import Problem
from raytrain.config.schema import (
    CLASSIFICATION_LOSSES,
    EDGE_METRICS,
    EXTRA_METRICS,
    SPACE_KINDS,
    Experiment,
    unknown_key_message,
)

TEST_ONLY = (
    "test metrics are measured once, after training, on the best checkpoint; choose by a "
    "validation metric (val_<name>)"
)

FIRST_NOT_EDGE = (
    "edge metrics are measured once, at a trial's end, and the first metric ranks every epoch "
    "(checkpoints, the scheduler): put a per-epoch metric first, e.g. [val_accuracy, "
    "tflite_int8_latency_ms], or make it a tune.constraints entry"
)

__all__ = ["PROBES", "check_tune", "sampled_values"]

Rules = Callable[..., list[Problem]]

FIXED_PATHS = ("name", "storage", "tracking", "tune", "description", "export")
PROBES = 32  # values of one search-space range that validation tries


def sampled_values(kind: str, args: list[Any]) -> list[Any]:
    """The values of a space entry that validation tries: every choice; a discrete range's
    values (up to PROBES of them, evenly spread, ends included); a continuous range's ends and a
    fraction between them, since a rule can fail inside a range (a batch that does not split
    across 3 of 1..4 workers) and an integer field takes no fraction."""
    if kind in ("choice", "grid"):
        return list(args)
    low, high = args[0], args[1]
    if kind == "randint":
        return _spread(list(range(low, high + 1)))
    if kind in ("quniform", "qloguniform"):
        q = args[2]
        multiples = range(math.ceil(low / q - 1e-9), math.floor(high / q + 1e-9) + 1)
        return _spread([round(k * q, 12) for k in multiples]) or [low, high]
    between = low * (high / low) ** 0.382 if kind == "loguniform" else low + (high - low) * 0.382
    return [low, round(between, 6), high]


def _spread(values: list[Any]) -> list[Any]:
    """The first values one after another (a rule like "divides by num_workers" fails on one
    of them), then the rest evenly spread, the last included."""
    if len(values) <= PROBES:
        return values
    head, rest = values[: PROBES // 4], values[PROBES // 4 :]
    count = PROBES - len(head)
    step = (len(rest) - 1) / (count - 1)
    return head + [rest[round(i * step)] for i in range(count)]


def check_tune(spec: Experiment, base_dir: Path, *, rules: Rules) -> list[Problem]:
    """Every problem of ``tune:``; ``rules`` (all the experiment's rules) judge each value a
    range can take, set into the experiment as a trial would have it."""
    tune = spec.tune
    if tune is None:
        return []
    problems = []
    known = [*spec.reported_metrics(), *EXTRA_METRICS]
    for i, metric in enumerate(tune.metrics):
        loc = ("tune", "metric", i) if isinstance(tune.metric, list) else ("tune", "metric")
        if metric.startswith("test_"):
            problems.append(Problem(loc, TEST_ONLY))
        elif i == 0 and metric in EDGE_METRICS:
            problems.append(Problem(loc, FIRST_NOT_EDGE))
        elif metric not in known + ([*EDGE_METRICS] if i else []):
            problems.append(
                Problem(
                    loc, f"'{metric}' is not a reported metric; expected one of: {', '.join(known)}"
                )
            )
    problems += _check_constraints(spec, [*known, *EDGE_METRICS])
    if len(tune.modes) != len(tune.metrics):
        problems.append(
            Problem(
                ("tune", "mode"),
                f"{len(tune.metrics)} metric(s) need as many modes, got {len(tune.modes)}",
            )
        )
    if len(tune.metrics) > 1 and tune.search.algorithm != "optuna":
        problems.append(
            Problem(
                ("tune", "search", "algorithm"),
                "a multi-objective sweep (several tune.metric) needs algorithm: optuna",
            )
        )
    if not tune.space:
        problems.append(
            Problem(
                ("tune", "space"),
                "the search space is empty; add e.g. "
                "train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}",
            )
        )
    for key, entry in tune.space.items():
        problems += _check_space_entry(spec, key, entry, base_dir, rules)
    return problems


def _check_constraints(spec: Experiment, known: list[str]) -> list[Problem]:
    """Constraint metrics must be ones a trial reports (typos get a "did you mean")."""
    assert spec.tune is not None
    problems = []
    for metric in spec.tune.constraints:
        loc = ("tune", "constraints", metric)
        if metric.startswith("test_"):
            problems.append(Problem(loc, TEST_ONLY))
        elif metric not in known:
            close = difflib.get_close_matches(metric, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(known)}"
            problems.append(Problem(loc, f"'{metric}' is not a reported metric; {hint}"))
    if spec.train.loss not in CLASSIFICATION_LOSSES:  # a regression's edge "accuracy"
        for metric in [*spec.tune.metrics, *spec.tune.constraints]:
            if metric in EDGE_METRICS and metric.endswith("_accuracy"):
                problems.append(
                    Problem(
                        ("tune",),
                        f"'{metric}' needs a classification loss ({spec.train.loss} is not one)",
                    )
                )
    return problems


def _check_space_entry(
    spec: Experiment, key: str, entry: dict[str, Any], base_dir: Path, rules: Rules
) -> list[Problem]:
    loc: tuple[str | int, ...] = ("tune", "space", key)
    if len(entry) != 1 or next(iter(entry)) not in SPACE_KINDS:
        return [
            Problem(
                loc, f"expected one of {{{', '.join(SPACE_KINDS)}}}: [...], got {dict(entry)!r}"
            )
        ]
    kind, args = next(iter(entry.items()))
    loc = (*loc, kind)
    path = tuple(key.split("."))
    if path[0] in FIXED_PATHS:
        return [Problem(loc, f"'{key}' cannot be swept (it names where and how the sweep runs)")]
    algorithm = spec.tune.search.algorithm if spec.tune else "optuna"
    if kind == "grid" and algorithm != "grid":
        return [
            Problem(
                loc,
                f"grid values need tune.search.algorithm: grid (it is {algorithm}); "
                "use choice to let the search pick",
            )
        ]
    if algorithm == "grid" and kind not in ("grid", "choice"):
        return [
            Problem(
                loc,
                f"tune.search.algorithm: grid enumerates lists; '{kind}' is a range "
                "(use grid: [...] values)",
            )
        ]
    shape_error = _space_args_error(kind, args)
    if shape_error:
        return [Problem(loc, shape_error)]
    for value in sampled_values(kind, args):
        error = _value_error(spec, path, value, base_dir, rules)
        if error and kind in ("uniform", "loguniform") and "fractional part" in error:
            return [
                Problem(
                    loc,
                    f"{key} takes whole numbers, and {kind} draws fractions such as {value!r}: "
                    f"use randint: [{math.ceil(args[0])}, {math.floor(args[1])}] or choice",
                )
            ]
        if error:
            return [Problem(loc, f"value {value!r} does not fit {key}: {error}")]
    return []


def _space_args_error(kind: str, args: Any) -> str | None:
    if kind in ("choice", "grid"):
        return None if isinstance(args, list) and args else f"{kind} needs a non-empty list"
    size = 3 if kind.startswith("q") else 2
    names = "[low, high, q]" if size == 3 else "[low, high]"
    if not isinstance(args, list) or len(args) != size:
        return f"{kind} needs {names}, got {args!r}"
    if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        return f"{kind} needs numbers {names}, got {args!r}"
    low, high = args[0], args[1]
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        return f"randint needs integers [low, high], got {args!r}"
    if not low < high:
        return f"low < high must hold, but got (low={low}, high={high})"
    if "log" in kind and low <= 0:
        return f"{kind} needs low > 0, but got low={low}"
    if size == 3 and args[2] <= 0:
        return f"q must be > 0, but got q={args[2]}"
    return None


def _value_error(
    spec: Experiment, path: tuple[str, ...], value: Any, base_dir: Path, rules: Rules
) -> str | None:
    """Why ``value`` at ``path`` makes the experiment invalid (None when it does not)."""
    tree = spec.model_dump(mode="json")
    node = tree
    for part in path[:-1]:
        if not isinstance(node, dict):
            return f"'{part}' is not a section"
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        return f"{'.'.join(path[:-1])} is not a section"
    node[path[-1]] = value
    try:
        trial = Experiment.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "extra_forbidden":
            return unknown_key_message(tuple(err["loc"]))
        return err["msg"]
    trial = trial.model_copy(update={"tune": None})
    found = rules(trial, base_dir=base_dir)
    return found[0].message if found else None
