"""raytrain with 1 worker against a plain tf_keras ``fit``: same model, data, batch, threads.

Goal: ratio >= 0.9 for a model whose step takes >= 20 ms (the 256-1024-1024-10 MLP at batch 512
takes ~40 ms per step on one core here).
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
from raytrain.config.loader import load_experiment
from raytrain.orchestration.run import run_experiment


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    data = synthetic_npz(folder, rows=8192 if quick else 32768)
    rows = []
    for batch, spe in [(512, 1), (512, 8), (2048, 1)]:
        spec_file = experiment_file(
            folder, data=data, params=MLP_LARGE, epochs=3 if quick else 5, batch=batch
        )
        overrides = ["scaling.num_workers=1", f"train.steps_per_execution={spe}"]
        baseline = plain_keras(_with(spec_file, overrides), threads=1)[0]
        summary = run_experiment(load_experiment(spec_file, overrides), on_epoch=lambda e: None)
        plain = steady_throughput(baseline["epochs"])
        ours = steady_throughput(summary.epochs)
        rows.append(
            {
                "benchmark": "train_overhead",
                "model": "mlp 256-1024-1024-10",
                "global_batch": batch,
                "steps_per_execution": spe,
                "plain_keras_samples_s": round(plain),
                "raytrain_1w_samples_s": round(ours),
                "ratio": round(ours / plain, 3),
                "ms_per_step_plain": round(1000 * batch / plain, 1),
            }
        )
    return rows


def _with(spec_file: Path, overrides: list[str]) -> Path:
    """The experiment file with overrides applied, for the baseline process to read."""
    import json

    loaded = load_experiment(spec_file, overrides)
    out = spec_file.with_name(f"{spec_file.stem}-plain.yaml")
    out.write_text(json.dumps(loaded.spec.model_dump(mode="json")))
    return out
