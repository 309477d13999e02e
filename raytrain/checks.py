"""Rules that span several fields or look outside the schema (files, imports).

They live in one place so that each message can name every key involved and say how to fix it.
"""

from __future__ import annotations

import glob
import importlib
import sys
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from raytrain.spec import BUILTIN_BUILDERS, CLASSIFICATION_LOSSES, Experiment

__all__ = [
    "BUILTIN_DATASETS",
    "FILE_FORMATS",
    "Problem",
    "check_rules",
    "infer_format",
    "load_builder",
]

BUILTIN_DATASETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")
FILE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
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
    ]


def infer_format(source: str, declared: str) -> str | None:
    """The file format named by ``declared`` or, for ``auto``, by the source's extension."""
    if declared != "auto":
        return declared
    return FILE_FORMATS.get(Path(source).suffix.lower())


def load_builder(path: str, base_dir: Path | None = None) -> object:
    """Import a user's ``package.module:function``; ``base_dir`` (the experiment's folder) first."""
    module_name, _, attr = path.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    module = importlib.import_module(module_name)
    return getattr(module, attr)


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
        return []
    if "://" in data.source:
        return [
            Problem(
                loc,
                f"'{data.source}': only builtin:<name> and local files are supported "
                "as data sources in this version",
            )
        ]
    matches = sorted(glob.glob(data.source))
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
                f"data.format to one of: csv, parquet, npz",
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
    reported = {"loss", *train.metrics}
    scores = sorted(reported | {f"val_{name}" for name in reported})
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
