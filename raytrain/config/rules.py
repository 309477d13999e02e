"""Rules that span several fields or look outside the schema (files, imports).

They live in one place so that each message can name every key involved and say how to fix it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from raytrain.config.problems import Problem
from raytrain.config.resolve import (
    BUILTIN_DATASETS,
    STREAMED_FORMATS,
    infer_format,
    load_builder,
)
from raytrain.config.schema import (
    BUILTIN_BUILDERS,
    CLASSIFICATION_LOSSES,
    Experiment,
    ExportSpec,
)
from raytrain.config.space_rules import TEST_ONLY, check_tune

__all__ = [
    "Problem",
    "check_rules",
    "export_problems",
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


def check_rules(spec: Experiment, *, base_dir: Path) -> list[Problem]:
    """Every cross-field problem of a schema-valid experiment (empty when it is consistent)."""
    return [
        *_check_data(spec),
        *_check_model(spec, base_dir),
        *_check_train(spec),
        *_check_scaling(spec),
        *_check_locations(spec),
        *check_tune(spec, base_dir, rules=check_rules),
        *_check_export(spec),
    ]


def _check_data(spec: Experiment) -> list[Problem]:
    data = spec.data
    problems = []
    for split, (source, fmt) in data.sources().items():
        loc: tuple[str, ...] = ("data",) if split == "train" else ("data", split)
        problems += _check_source(spec, loc, source, fmt, train=split == "train")
    if data.validation is not None and "validation_split" in data.model_fields_set:
        problems.append(
            Problem(
                ("data", "validation_split"),
                "data.validation is a fixed validation set, which replaces the split; drop "
                "data.validation_split or data.validation",
            )
        )
    return problems


def _check_source(
    spec: Experiment, loc: tuple[str, ...], source: str, declared: str, *, train: bool
) -> list[Problem]:
    """One split's source: it exists (gs:// is listed when the run starts), its format is known
    and it can be read the way data.streaming asks."""
    data, where = spec.data, (*loc, "source")
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if not train:
            return [
                Problem(
                    where,
                    "a built-in dataset is split by data.validation_split; a held-out set is "
                    "a file, glob or image folder",
                )
            ]
        if name not in BUILTIN_DATASETS:
            return [
                Problem(
                    where,
                    f"unknown built-in dataset '{name}'; expected one of: "
                    f"{', '.join(BUILTIN_DATASETS)}",
                )
            ]
        if data.streaming:
            return [
                Problem(
                    ("data", "streaming"),
                    "built-in datasets are small and read whole; data.streaming reads CSV, "
                    "Parquet, TFRecord files or image folders",
                )
            ]
        return []
    if "://" in source and not source.startswith("gs://"):
        return [
            Problem(
                where,
                f"'{source}': a data source is builtin:<name>, a local file, glob or folder, "
                "or gs://BUCKET/PATH (a glob too)",
            )
        ]
    # A gs:// source is listed when the run starts (that takes credentials); here, its format.
    matches = [source] if source.startswith("gs://") or os.path.isdir(source) else []
    matches = matches or sorted(glob.glob(source))
    if not matches and data.locality_rule.pinned:
        # The data may live only on the nodes with that resource, and is checked there again:
        # a submitted job re-validates the experiment on the node that reads it.
        matches = [source]
    if not matches:
        return [
            Problem(
                where,
                f"no file matches '{source}' (relative paths are relative to the experiment file)",
            )
        ]
    fmt = infer_format(matches[0], declared)
    if fmt is None:
        return [
            Problem(
                (*loc, "format"),
                f"cannot infer the format of '{matches[0]}'; set "
                f"{'.'.join(loc)}.format to one of: csv, parquet, tfrecord, npz, images",
            )
        ]
    if data.streaming and fmt not in STREAMED_FORMATS:
        return [
            Problem(
                ("data", "streaming"),
                f"{fmt} files are read whole; data.streaming reads CSV, Parquet, TFRecord files "
                "or image folders",
            )
        ]
    if fmt == "images" and data.shape is not None and len(data.shape) != 3:
        return [
            Problem(
                ("data", "shape"),
                f"images are resized to [height, width, channels], got {data.shape}",
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


def _param_problem(err: ErrorDetails) -> Problem:
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
    if spec.checkpoint.score.startswith("test_"):
        problems.append(Problem(("checkpoint", "score"), TEST_ONLY))
    elif spec.checkpoint.score not in scores:
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
