"""Data-parallel scaling: 1 vs 2 workers with one CPU thread each, plain Keras as the ceiling.

efficiency = throughput(2 workers) / (2 x throughput(1 worker)). The machine has 2 cores, so
plain tf_keras with 2 threads shows what 2 cores can do for this model at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import (
    MLP_LARGE,
    experiment_file,
    plain_keras,
    steady_throughput,
    synthetic_npz,
)
from raytrain.run import run_experiment
from raytrain.specfile import load_experiment

MODELS = {"mlp 256-1024-1024-10": MLP_LARGE, "mlp 256-128-10": {"hidden_units": [128]}}


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    data = synthetic_npz(folder, rows=8192 if quick else 32768)
    rows = []
    for model_name, params in MODELS.items():
        for batch in (512, 2048):
            spec_file = experiment_file(
                folder, data=data, params=params, epochs=3 if quick else 5, batch=batch
            )
            thr = {}
            for workers in (1, 2):
                loaded = load_experiment(spec_file, [f"scaling.num_workers={workers}"])
                summary = run_experiment(loaded, on_epoch=lambda e: None)
                thr[workers] = steady_throughput(summary.epochs)
            plain1 = steady_throughput(plain_keras(spec_file, threads=1)["epochs"])
            plain2 = steady_throughput(plain_keras(spec_file, threads=2)["epochs"])
            rows.append(
                {
                    "benchmark": "scaling",
                    "model": model_name,
                    "global_batch": batch,
                    "plain_1thread_samples_s": round(plain1),
                    "plain_2threads_samples_s": round(plain2),
                    "raytrain_1w_samples_s": round(thr[1]),
                    "raytrain_2w_samples_s": round(thr[2]),
                    "efficiency": round(thr[2] / (2 * thr[1]), 3),
                    "speedup_vs_plain_1thread": round(thr[2] / plain1, 3),
                }
            )
    return rows
