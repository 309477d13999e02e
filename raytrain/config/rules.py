"""Rules that span several fields or look outside the schema (files, imports).

They live in one place so that each message can name every key involved and say how to fix it.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from raytrain.config.resolve import (
    BUILTIN_DATASETS,
    STREAMED_FORMATS,
    infer_format,
    load_builder,
)
from raytrain.config.schema import (
    BUILTIN_BUILDERS,
    CLASSIFICATION_LOSSES,
    EXTRA_METRICS,
    SPACE_KINDS,
    Experiment,
    ExportSpec,
    unknown_key_message,
)

__all__ = [
    "Problem",
    "check_rules",
    "export_problems",
    "sampled_values",
]

ACCURACY_METRICS = {
    "accuracy",
    "sparse_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "auc",
    "precision",
    "recall",
}


class Problem(NamedTuple):
    loc: tuple[str | int, ...]
    message: str


def check_rules(spec: Experiment, *, base_dir: Path) -> list[Problem]:
    """Every cross-field problem of a schema-valid experiment (empty when it is consistent)."""
    return [
        *_check_data(spec),
        *_check_model(spec, base_dir),
        *_check_train(spec),
        *_check_scaling(spec),
        *_check_locations(spec),
        *_check_tune(spec, base_dir),
        *_check_export(spec),
    ]


def _check_data(spec: Experiment) -> list[Problem]:
    data, loc = spec.data, ("data", "source")
    if data.source.startswith("builtin:"):
        name = data.source.removeprefix("builtin:")
        if name not in BUILTIN_DATASETS:
            return [
                Problem(
                    loc,
                    f"unknown built-in dataset '{name}'; expected one of: "
                    f"{', '.join(BUILTIN_DATASETS)}",
                )
            ]
        if data.streaming:
            return [
                Problem(
                    ("data", "streaming"),
                    "built-in datasets are small and read whole; data.streaming reads CSV, "
                    "Parquet or TFRecord files",
                )
            ]
        return []
    if "://" in data.source and not data.source.startswith("gs://"):
        return [
            Problem(
                loc,
                f"'{data.source}': a data source is builtin:<name>, a local file or glob, "
                "or gs://BUCKET/PATH (a glob too)",
            )
        ]
    # A gs:// source is listed when the run starts (that takes credentials); here, its format.
    matches = [data.source] if data.source.startswith("gs://") else sorted(glob.glob(data.source))
    if not matches and data.locality:
        # The data may live only on the nodes with that resource, and is checked there again:
        # a submitted job re-validates the experiment on the node that reads it.
        matches = [data.source]
    if not matches:
        return [
            Problem(
                loc,
                f"no file matches '{data.source}' (relative paths are relative to "
                "the experiment file)",
            )
        ]
    fmt = infer_format(matches[0], data.format)
    if fmt is None:
        return [
            Problem(
                ("data", "format"),
                f"cannot infer the format of '{matches[0]}'; set "
                f"data.format to one of: csv, parquet, tfrecord, npz",
            )
        ]
    if data.streaming and fmt not in STREAMED_FORMATS:
        return [
            Problem(
                ("data", "streaming"),
                f"{fmt} files are read whole; data.streaming reads CSV, Parquet or TFRecord files",
            )
        ]
    return []


def _check_model(spec: Experiment, base_dir: Path) -> list[Problem]:
    model = spec.model
    params_model = BUILTIN_BUILDERS.get(model.builder)
    if params_model is not None:
        try:
            params_model.model_validate(model.params)
        except ValidationError as exc:
            return [_param_problem(err) for err in exc.errors(include_url=False)]
        return []
    module_name, sep, attr = model.builder.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        return [
            Problem(
                ("model", "builder"),
                f"'{model.builder}' is neither a built-in builder "
                f"({', '.join(BUILTIN_BUILDERS)}) nor 'package.module:function'",
            )
        ]
    try:
        builder = load_builder(model.builder, base_dir)
    except ImportError as exc:
        return [Problem(("model", "builder"), f"cannot import '{module_name}': {exc}")]
    except AttributeError:
        return [Problem(("model", "builder"), f"module '{module_name}' has no attribute '{attr}'")]
    except Exception as exc:  # user code failing at import time is still the user's to fix
        return [
            Problem(
                ("model", "builder"),
                f"importing '{module_name}' failed: {type(exc).__name__}: {exc}",
            )
        ]
    if not callable(builder):
        return [Problem(("model", "builder"), f"'{model.builder}' is not callable")]
    return []


def _param_problem(err: dict) -> Problem:
    loc = ("model", "params", *err["loc"])
    if err["type"] == "extra_forbidden":
        return Problem(loc, f"unknown parameter '{err['loc'][-1]}' of this builder")
    return Problem(loc, f"{err['msg']} (got {err.get('input')!r})")


def _check_train(spec: Experiment) -> list[Problem]:
    problems = []
    train, workers = spec.train, spec.scaling.num_workers
    if train.batch_size % workers:
        problems.append(
            Problem(
                ("train", "batch_size"),
                f"the global batch size ({train.batch_size}) "
                f"must split evenly across scaling.num_workers ({workers}); use a "
                f"multiple of {workers}",
            )
        )
    wrong = [m for m in train.metrics if m in ACCURACY_METRICS]
    if train.loss not in CLASSIFICATION_LOSSES and wrong:
        problems.append(
            Problem(
                ("train", "loss"),
                f"'{train.loss}' is a regression loss, but train.metrics has classification "
                f"metrics ({', '.join(wrong)}); set train.metrics, e.g. [mean_absolute_error]",
            )
        )
    scores = spec.reported_metrics()
    if spec.checkpoint.score not in scores:
        problems.append(
            Problem(
                ("checkpoint", "score"),
                f"'{spec.checkpoint.score}' is not a "
                f"reported metric; expected one of: {', '.join(scores)}",
            )
        )
    return problems


def _check_scaling(spec: Experiment) -> list[Problem]:
    problems = []
    resources = spec.scaling.resources_per_worker
    for name, amount in resources.items():
        if amount < 0:
            problems.append(
                Problem(("scaling", "resources_per_worker", name), f"must be >= 0 (got {amount})")
            )
    if spec.scaling.use_gpu and resources.get("GPU", 1) == 0:
        problems.append(
            Problem(
                ("scaling", "use_gpu"),
                "use_gpu is true but scaling.resources_per_worker.GPU is 0; drop one of them",
            )
        )
    if not any(v > 0 for v in spec.worker_resources().values()):
        problems.append(
            Problem(
                ("scaling", "resources_per_worker"),
                "each worker must hold some resource, e.g. {CPU: 1}",
            )
        )
    if spec.scaling.accelerator == "tpu":
        problems += _tpu_problems(spec)
    explicit = spec.scaling.allreduce_dtype not in ("auto", "float32")
    if explicit and spec.train.mixed_precision == "mixed_float16":
        problems.append(
            Problem(
                ("scaling", "allreduce_dtype"),
                "mixed_float16 scales the loss and sums gradients itself; use float32 here, or "
                "train.mixed_precision: mixed_bfloat16",
            )
        )
    return problems


def _tpu_problems(spec: Experiment) -> list[Problem]:
    """TensorFlow on Ray trains on one TPU host: Ray Train's TensorFlow backend sets up only
    MultiWorkerMirroredStrategy; a TPU pod spanning hosts needs a TPUStrategy it cannot build.
    """
    problems = []
    if spec.scaling.num_workers != 1:
        problems.append(
            Problem(
                ("scaling", "num_workers"),
                "accelerator: tpu trains on one TPU VM host; set num_workers: 1 (Ray cannot "
                "span a TPU pod with TensorFlow)",
            )
        )
    if spec.scaling.use_gpu:
        problems.append(Problem(("scaling", "use_gpu"), "accelerator: tpu takes no GPU"))
    if "TPU" not in spec.scaling.resources_per_worker:
        problems.append(
            Problem(
                ("scaling", "resources_per_worker"),
                "accelerator: tpu needs the host's TPU chips, e.g. {CPU: 8, TPU: 4} on a v4-8",
            )
        )
    return problems


def _check_locations(spec: Experiment) -> list[Problem]:
    problems = []
    if "://" in spec.storage and not spec.storage.startswith("gs://"):
        problems.append(
            Problem(
                ("storage",),
                f"'{spec.storage}': storage must be a local folder or gs://bucket/prefix",
            )
        )
    scheme = spec.tracking.uri.partition("://")[0] if "://" in spec.tracking.uri else ""
    if scheme not in ("", "sqlite", "file", "http", "https", "databricks"):
        problems.append(
            Problem(
                ("tracking", "uri"),
                f"unsupported MLflow tracking URI scheme "
                f"'{scheme}'; use sqlite:///FILE, a folder, or http(s)://HOST:PORT",
            )
        )
    return problems


def _check_export(spec: Experiment) -> list[Problem]:
    export = spec.export
    if export is None:
        return []
    problems = []
    if not (spec.tracking.enabled and spec.tracking.register_as):
        problems.append(
            Problem(
                ("export",),
                "the export reads the model from the MLflow registry: set tracking.register_as "
                "(with tracking.enabled: true), or drop export",
            )
        )
    return problems + export_problems(export)


def export_problems(export: ExportSpec) -> list[Problem]:
    """Rules within the export settings; ``raytrain export`` checks its options with them too."""
    if export.int8_io and "int8" not in export.quantize:
        return [
            Problem(
                ("export", "int8_io"),
                f"int8_io applies to the int8 mode, but export.quantize is "
                f"{list(export.quantize)}; add int8 to export.quantize or drop int8_io",
            )
        ]
    return []


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


def _check_tune(spec: Experiment, base_dir: Path) -> list[Problem]:
    tune = spec.tune
    if tune is None:
        return []
    problems = []
    known = [*spec.reported_metrics(), *EXTRA_METRICS]
    for i, metric in enumerate(tune.metrics):
        if metric not in known:
            loc = ("tune", "metric", i) if isinstance(tune.metric, list) else ("tune", "metric")
            problems.append(
                Problem(
                    loc, f"'{metric}' is not a reported metric; expected one of: {', '.join(known)}"
                )
            )
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
        problems += _check_space_entry(spec, key, entry, base_dir)
    return problems


def _check_space_entry(spec: Experiment, key: str, entry: dict, base_dir: Path) -> list[Problem]:
    loc = ("tune", "space", key)
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
        error = _value_error(spec, path, value, base_dir)
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


def _value_error(spec: Experiment, path: tuple[str, ...], value: Any, base_dir: Path) -> str | None:
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
    rules = check_rules(trial, base_dir=base_dir)
    return rules[0].message if rules else None
