"""Seconds per sweep trial beyond its epochs.

A 6-trial grid sweep (learning rates) of the digits CNN, 1 worker per trial, 4 epochs each, no
early stopping, tracked in a sqlite MLflow store, through ``run_sweep`` (what ``raytrain run``
calls). The driver timestamps every trial event it hears (start, each epoch's result, the end).
A trial's epochs are 4 x the median time between two of its consecutive epoch results (epochs
2-4, so tracing counts as overhead: plain Keras pays it too, but once per process, not per
trial); its overhead is the rest of its wall time, start to end. Goal: <= 3 s per trial.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from raytrain.config.loader import load_experiment
from raytrain.orchestration.sweep import run_sweep

LEARNING_RATES = [3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    epochs, rates = (3, LEARNING_RATES[:2]) if quick else (4, LEARNING_RATES)
    spec_file = folder / "sweep.yaml"
    spec = {
        "name": "bench-sweep-overhead",
        "data": {"source": "builtin:digits", "shape": [8, 8, 1], "validation_split": 0.2},
        "model": {"builder": "cnn", "params": {"filters": [16, 32], "dense_units": 64}},
        "train": {"epochs": epochs, "batch_size": 64},
        "scaling": {"num_workers": 1},
        "storage": str(folder / "results"),
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "bench-sweep"},
        "tune": {
            "metric": "val_accuracy",
            "mode": "max",
            "search": {"algorithm": "grid"},
            "scheduler": {"name": "none"},
            "space": {"train.optimizer.learning_rate": {"grid": rates}},
        },
    }
    spec_file.write_text(json.dumps(spec))  # JSON is YAML
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    summary = run_sweep(
        load_experiment(spec_file), on_event=lambda e: events.append({**e, "t": time.monotonic()})
    )
    wall = time.monotonic() - start
    trials = _trials(events, epochs)
    overheads = [t["wall_s"] - t["epochs_s"] for t in trials]
    return [
        {
            "benchmark": "sweep_overhead",
            "trials": len(trials),
            "epochs_per_trial": epochs,
            "concurrent": summary.concurrent,
            "sweep_wall_s": round(wall, 1),
            "trial_wall_s_median": round(statistics.median(t["wall_s"] for t in trials), 1),
            "trial_epochs_s_median": round(statistics.median(t["epochs_s"] for t in trials), 1),
            "overhead_s_per_trial_median": round(statistics.median(overheads), 1),
            "overhead_s_per_trial_max": round(max(overheads), 1),
        }
    ]


def _trials(events: list[dict[str, Any]], epochs: int) -> list[dict[str, float]]:
    """Per trial: wall time from its start to its end, and its epochs' time."""
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if "trial_id" in event:  # not the sweep's own events
            by_trial.setdefault(event["trial_id"], []).append(event)
    out = []
    for trial in by_trial.values():
        results = [e["t"] for e in trial if e["kind"] == "result"]
        gaps = [b - a for a, b in itertools.pairwise(results)]
        out.append(
            {
                "wall_s": trial[-1]["t"] - trial[0]["t"],
                "epochs_s": epochs * statistics.median(gaps) if gaps else 0.0,
            }
        )
    return out
