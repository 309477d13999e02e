"""raytrain: distributed TensorFlow training and tuning on Ray, from one experiment YAML.

The public Python API: everything the ``raytrain`` command does, as functions::

    import raytrain

    loaded = raytrain.load_experiment("experiments/quickstart.yaml", ["train.epochs=3"])
    summary = raytrain.run_experiment(loaded)           # or run_sweep() with a tune: section
    report = raytrain.export_model("digits-cnn", tracking_uri="sqlite:///mlflow.db")

Names load on first use, so ``import raytrain`` stays fast (no TensorFlow, no Ray).
"""

import importlib
import os
from typing import Any

# tf.keras must be tf_keras (Keras 2) in every process that builds or loads a model: Keras 3 fails
# under MultiWorkerMirroredStrategy with 2+ workers, and models saved by one Keras do not load in
# the other. It only takes effect if set before TensorFlow is first imported, hence here.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes, CPU features) buries our output; --verbose
# and an explicit TF_CPP_MIN_LOG_LEVEL bring it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "Experiment": "raytrain.config.schema",
    "LoadedExperiment": "raytrain.config.loader",
    "load_experiment": "raytrain.config.loader",
    "RunSummary": "raytrain.orchestration.run",
    "run_experiment": "raytrain.orchestration.run",
    "resume_run": "raytrain.orchestration.run",
    "find_run": "raytrain.train.state",
    "RunState": "raytrain.train.state",
    "SweepSummary": "raytrain.orchestration.sweep",
    "resume_sweep": "raytrain.orchestration.sweep",
    "run_sweep": "raytrain.orchestration.sweep",
    "Deployment": "raytrain.serve.deployment",
    "serve_model": "raytrain.serve.deployment",
    "run_server": "raytrain.serve.lifecycle",
    "ExportReport": "raytrain.export.report",
    "export_model": "raytrain.export.tflite",
    "Submitted": "raytrain.cluster.jobs",
    "submit": "raytrain.cluster.jobs",
    "RunRecord": "raytrain.past_runs",
    "list_runs": "raytrain.past_runs",
    "show_run": "raytrain.past_runs",
    "RaytrainError": "raytrain.errors",
    "SpecError": "raytrain.errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'raytrain' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
