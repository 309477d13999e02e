"""Edge export: what each quantization mode costs against the Keras model, in one run.

Two models, each trained by ``raytrain run`` (1 worker) with an ``export:`` section, exactly as a
user would: the digits CNN (~53k parameters, accuracy) and the MLP 256-1024-1024-10 (~1.3M
parameters, on synthetic data). For each mode: file size and ratio to float32, the accuracy delta
of the .tflite file in LiteRT against the Keras model, and batch-1 latency (median of 1 000 runs,
LiteRT with one thread, Keras as a tf.function).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from benchmarks.common import MLP_LARGE, REPO, experiment_file, synthetic_npz
from raytrain.config.loader import load_experiment
from raytrain.orchestration.run import run_experiment

EXPORT = ["export.quantize=[none,float16,dynamic,int8]", "export.latency_runs=1000"]


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    data = synthetic_npz(folder, rows=8192 if quick else 32768)
    mlp_file = experiment_file(folder, data=data, params=MLP_LARGE, epochs=3, batch=512)
    tracked = [
        "scaling.num_workers=1",
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
    ]
    experiments = {
        "cnn digits [32, 64] dense 128": (
            REPO / "experiments" / "quickstart.yaml",
            [
                "model.params={filters: [32, 64], dense_units: 128, dropout: 0.1}",
                f"train.epochs={3 if quick else 10}",
            ],
        ),
        "mlp 256-1024-1024-10": (mlp_file, ["tracking.register_as=bench-mlp"]),
    }
    rows = []
    with contextlib.chdir(folder):  # MLflow puts artifacts in ./mlruns
        for model_name, (spec_file, overrides) in experiments.items():
            loaded = load_experiment(spec_file, [*overrides, *tracked, *EXPORT])
            report = run_experiment(loaded, on_epoch=lambda e: None).export
            for mode in report.modes:
                rows.append(
                    {
                        "benchmark": "export",
                        "model": model_name,
                        "mode": mode.mode,
                        "kib": round(mode.bytes / 1024, 1),
                        "ratio_to_float32": round(mode.ratio_to_float32, 3),
                        "keras_accuracy": round(report.keras_metric, 4),
                        "tflite_accuracy": round(mode.metric, 4),
                        "delta_points": round(100 * mode.delta, 2),
                        "keras_ms": round(report.keras_latency_ms, 4),
                        "tflite_ms": round(mode.latency_ms, 4),
                        "speedup": round(report.keras_latency_ms / mode.latency_ms, 1),
                    }
                )
    return rows
