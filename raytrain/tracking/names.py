"""Every name raytrain writes into MLflow, defined once: tags, artifact paths, the alias.

Writers and readers (``raytrain list``/``show``, serving, export, a resumed sweep) import these,
so a tag is never spelled two ways. Renaming one breaks reading older runs: add, don't rename.
"""

import json
import math
from typing import Any

__all__ = [
    "BEST_CHECKPOINT_TAG",
    "BEST_PARAM_PREFIX",
    "BEST_TRIAL_TAG",
    "CHAMPION",
    "EDGE_FRONT_ARTIFACT",
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "GIT_COMMIT_TAG",
    "KIND_TAG",
    "MODEL_ARTIFACT",
    "NODES_TAG",
    "NOTE_TAG",
    "OVERRIDES_TAG",
    "PARENT_TAG",
    "PARETO_TAG",
    "PLOTS_FOLDER",
    "RESUMED_FROM_TAG",
    "SPEC_ARTIFACT",
    "SPEC_FOLDER",
    "SPEC_HASH_TAG",
    "STATUS_TAG",
    "STORAGE_TAG",
    "SWEPT_TAG",
    "TAG_PREFIX",
    "TRIALS_ARTIFACT",
    "TRIALS_COUNT_PREFIX",
    "TRIAL_ID_TAG",
    "UNMET_TAG",
    "VERSION_TAG",
    "metric_tag",
    "trial_run_name",
]

TAG_PREFIX = "raytrain."  # every tag raytrain writes, except MLflow's own and best.<param>

# MLflow's own tags, with the meaning MLflow's UI gives them.
PARENT_TAG = "mlflow.parentRunId"  # nests a sweep's trial runs under its parent run
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens training runs with this...
EXPERIMENT_KIND = "custom_model_development"  # ...value (else it opens its GenAI view)

# On every run (a training run, or a sweep's parent run).
VERSION_TAG = "raytrain.version"
SPEC_HASH_TAG = "raytrain.spec_hash"
OVERRIDES_TAG = "raytrain.overrides"  # the --set values, as given
STORAGE_TAG = "raytrain.storage"  # the run's or sweep's storage folder
ERROR_TAG = "raytrain.error"  # why a run or trial failed
KIND_TAG = "raytrain.kind"  # "sweep" on a sweep's parent run; absent on a training run
BEST_CHECKPOINT_TAG = "raytrain.best_checkpoint"
NODES_TAG = "raytrain.nodes"  # where the workers ran
RESUMED_FROM_TAG = "raytrain.resumed_from_epoch"

# A sweep's parent run and its trials' child runs.
TRIAL_ID_TAG = "raytrain.trial_id"
STATUS_TAG = "raytrain.trial_status"  # running, finished, stopped_early, failed, lost
BEST_TRIAL_TAG = "raytrain.best_trial"
PARETO_TAG = "raytrain.pareto_trials"
UNMET_TAG = "raytrain.constraints_unmet"  # a sweep none of whose trials met tune.constraints
TRIALS_COUNT_PREFIX = "raytrain.trials_"  # + a status: how many trials ended so
BEST_PARAM_PREFIX = "best."  # + a swept dotted path: the best trial's value
SWEPT_TAG = "raytrain.swept"  # on the parent: the swept paths, the trials' params to compare

# Artifacts.
SPEC_FOLDER = "spec"
SPEC_ARTIFACT = "spec/resolved.yaml"  # the validated experiment, on every run and sweep
MODEL_ARTIFACT = "model"  # the logged tf_keras model
TRIALS_ARTIFACT = "trials.csv"  # a sweep's trial table
PLOTS_FOLDER = "plots"  # a sweep's Optuna plots, as HTML
EDGE_FRONT_ARTIFACT = "pareto_front"  # an edge sweep's front: .csv, plots/<it>.html and .png

# The model registry.
CHAMPION = "champion"  # the alias a bare model name means; moved only by a better version


def metric_tag(metric: str) -> str:
    """The model-version tag holding the metric value its champion claim rests on."""
    return f"{TAG_PREFIX}{metric}"


def trial_run_name(values: dict[str, Any]) -> str:
    """A trial's run name from what differs between trials, its swept values:
    ``learning_rate=3.2e-3 hidden_units=[64]``. Each path is shortened to its last key, or more
    where two would read alike. Secrets are left out (``raytrain.secrets``)."""
    from raytrain.secrets import is_secret_key

    keys = [key for key in values if not is_secret_key(key)]
    labels = {}
    for key in keys:
        parts = key.split(".")
        depth = 1
        while depth < len(parts) and any(
            other != key and other.split(".")[-depth:] == parts[-depth:] for other in keys
        ):
            depth += 1
        labels[key] = ".".join(parts[-depth:])
    name = " ".join(f"{labels[key]}={_short(values[key])}" for key in keys)
    return name[:_RUN_NAME_LENGTH]


_RUN_NAME_LENGTH = 250  # MLflow's longest run name


def _short(value: Any) -> str:
    """A value as a run name shows it: 3.2e-3, 0.25, [64,32], true."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalars from a searcher
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and math.isfinite(value):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_short(item) for item in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)
