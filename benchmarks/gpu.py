"""One GPU: plain tf_keras, a raytrain 1-worker run and a 1-worker sweep trial, mixed precision
off and on, every side in a fresh process timed from its start to its exit.

    python -m benchmarks gpu             # on a machine with one GPU (TensorFlow must see it)
    python -m benchmarks gpu --dry-run   # the same sides on the CPU, tiny: checks the benchmark

The model: an MLP 784-1024-1024-10 on 20 000 generated 28x28 examples, global batch 512, 5
epochs: large enough that a GPU step is not all launch overhead. ``plain tf_keras``: one process
(``benchmarks/small_child.py plain``). ``raytrain run``: the CLI on a private Ray instance, 1
worker with ``scaling.use_gpu``, tracked in sqlite MLflow, the model registered. ``1-worker
trial``: a sweep of one configuration (``sweep_child.py``): the trial trains in its Tune
trial's process, holding the GPU. Samples per second: training rows over the median time
between two epoch ends.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import small_run, sweep_overhead

PRECISIONS = ("none", "mixed_float16")


def run(folder: Path, *, quick: bool, dry_run: bool = False) -> list[dict[str, Any]]:
    rows_count, epochs = (512, 2) if dry_run else (5_000, 3) if quick else (20_000, 5)
    data = _data(folder, rows=rows_count)
    rows = []
    for precision in PRECISIONS:
        spec = _spec(folder, data, precision=precision, epochs=epochs, use_gpu=not dry_run)
        sides = {
            "plain tf_keras": small_run._child(folder, "plain", spec),
            "raytrain run": small_run._child(folder, "raytrain", spec, "local"),
        }
        trial = sweep_overhead._child(folder, "raytrain", _as_sweep(spec))
        plain_wall = sides["plain tf_keras"]["wall_s"]
        for side, result in {**sides, "1-worker trial": trial}.items():
            rows.append(
                {
                    "benchmark": "gpu",
                    "device": "cpu (dry run)" if dry_run else "gpu",
                    "mixed_precision": precision,
                    "side": side,
                    "wall_s": round(result["wall_s"], 1),
                    "ratio": round(result["wall_s"] / plain_wall, 2),
                    "samples_per_s": _throughput(result, int(rows_count * 0.9)),
                }
            )
    return rows


def _throughput(result: dict[str, Any], train_rows: int) -> float | str:
    """Training rows over the median time between two epoch ends (validation included, alike
    for every side), the first epoch (tracing) left out."""
    ends = [
        e["t"]
        for e in result.get("epochs") or result.get("events", [])
        if e.get("kind", "result") == "result"
    ]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    return round(train_rows / statistics.median(gaps)) if gaps else ""


def _data(folder: Path, *, rows: int) -> Path:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, size=rows).astype(np.int32)
    centers = rng.random((10, 784)).astype(np.float32)
    x = centers[label] + rng.normal(scale=0.5, size=(rows, 784)).astype(np.float32)
    path = folder / f"gpu_{rows}.npz"
    np.savez(path, x=x, label=label)
    return path


def _spec(folder: Path, data: Path, *, precision: str, epochs: int, use_gpu: bool) -> Path:
    spec = {
        "name": f"bench-gpu-{precision.replace('_', '-')}",
        "data": {"source": str(data), "validation_split": 0.1},
        "model": {"builder": "mlp", "params": {"hidden_units": [1024, 1024]}},
        "train": {"epochs": epochs, "batch_size": 512, "mixed_precision": precision},
        "scaling": {"num_workers": 1, "use_gpu": use_gpu},
        "checkpoint": {"keep": 1, "score": "val_accuracy", "mode": "max"},
        "storage": str(folder / "results"),
        "tracking": {
            "uri": f"sqlite:///{folder / 'mlflow.db'}",
            "experiment": "bench-gpu",
            "register_as": "bench-gpu",
        },
    }
    path = folder / f"gpu-{precision}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _as_sweep(spec_file: Path) -> Path:
    spec = json.loads(spec_file.read_text())
    spec["name"] += "-sweep"
    spec["tune"] = {
        "metric": "val_accuracy",
        "mode": "max",
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "none"},
        "space": {"train.optimizer.learning_rate": {"grid": [1e-3]}},
    }
    path = spec_file.with_name(spec_file.stem + "-sweep.yaml")
    path.write_text(json.dumps(spec))
    return path
