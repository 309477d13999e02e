"""Seconds per sweep trial beyond its epochs, and a sweep's wall time against plain Optuna.

A 6-trial grid sweep (learning rates) of the digits MLP, 4 epochs each, no early stopping,
tracked in a sqlite MLflow store. Every side runs in a fresh process (``sweep_child.py``), one
after the other, timed from its start to its exit:

- plain Optuna + tf_keras: the same 6 configurations (model, data, epochs, batch, seed) trained
  one after another in one process, TensorFlow's default threads: the anchor;
- Ray Tune floor: the same plain tf_keras training in Ray Tune function trials (1 CPU each, 2 at
  a time, processes reused), nothing of raytrain's: what a sweep on Ray Tune pays here at least;
- raytrain, 1-worker trials in their Tune trial's process (the default), 2 at a time;
- raytrain, 1-worker trials as Ray Train runs (``scaling.one_worker: ray_train``: every trial before
  in-process trials), 2 at a time;
- raytrain, 2-worker trials under MultiWorkerMirroredStrategy, 1 at a time: on the worker group
  the trial process keeps for the next trial (the default), and as Ray Train runs
  (``scaling.trial_workers: ray_train``: every 2-worker trial before reused groups).

A trial's epochs are 4 x the median time between two of its consecutive epoch results (epochs
2-4, so tracing counts as overhead: plain Keras pays it too); its overhead is the rest of its
wall time, start to end. Goals: 1-worker trial overhead <= 2 s, 2-worker <= 8 s (medians); the
in-process sweep <= 1.5x plain Optuna.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LEARNING_RATES = [3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]
SIDES = {  # side -> (program, overrides of the experiment)
    "plain optuna + tf_keras": ("optuna", {}),
    "Ray Tune floor": ("tune_floor", {}),
    "raytrain in-process trials": ("raytrain", {}),
    "raytrain Ray Train trials": ("raytrain", {"one_worker": "ray_train"}),
    "raytrain 2-worker trials on a reused group": ("raytrain", {"num_workers": 2}),
    "raytrain 2-worker trials as Ray Train runs": (
        "raytrain",
        {"num_workers": 2, "trial_workers": "ray_train"},
    ),
}


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    epochs, rates = (3, LEARNING_RATES[:2]) if quick else (4, LEARNING_RATES)
    rows = []
    plain_wall = None
    for side, (program, change) in SIDES.items():
        spec_file = _spec(folder, side, epochs, rates, **change)
        result = _child(folder, program, spec_file)
        trials = _trials(result["events"], epochs)
        overheads = [t["wall_s"] - t["epochs_s"] for t in trials]
        plain_wall = plain_wall or result["wall_s"]
        rows.append(
            {
                "benchmark": "sweep_overhead",
                "side": side,
                "trials": len(trials),
                "epochs_per_trial": epochs,
                "concurrent": 1 if program == "optuna" or change.get("num_workers") else 2,
                "sweep_wall_s": round(result["wall_s"], 1),
                "ratio": round(result["wall_s"] / plain_wall, 2),
                "trial_epochs_s_median": round(statistics.median(t["epochs_s"] for t in trials), 2),
                "overhead_s_per_trial_median": round(statistics.median(overheads), 2),
                "overhead_s_per_trial_max": round(max(overheads), 2),
            }
        )
    return rows


def _spec(
    folder: Path,
    side: str,
    epochs: int,
    rates: list[float],
    *,
    one_worker: str = "process",
    num_workers: int = 1,
    trial_workers: str = "reused",
) -> Path:
    name = side.replace(" ", "-").replace("+", "").replace("--", "-")
    spec = {
        "name": f"bench-{name}",
        "data": {"source": "builtin:digits", "validation_split": 0.2},
        "model": {"builder": "mlp", "params": {"hidden_units": [64]}},
        "train": {"epochs": epochs, "batch_size": 64},
        "scaling": {
            "num_workers": num_workers,
            "one_worker": one_worker,
            "trial_workers": trial_workers,
        },
        "storage": str(folder / "results"),
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "bench-sweep"},
        "tune": {
            "metric": "val_accuracy",
            "mode": "max",
            "max_concurrent_trials": 2,
            "search": {"algorithm": "grid"},
            "scheduler": {"name": "none"},
            "space": {"train.optimizer.learning_rate": {"grid": rates}},
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _child(folder: Path, program: str, spec_file: Path) -> dict[str, Any]:
    """One side in a fresh process (no Ray instance of the caller's): its events and wall time."""
    out = Path(tempfile.mkstemp(dir=folder, suffix=".json")[1])
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep_child", program, str(spec_file), str(out)],
        cwd=folder,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{program} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "wall_s": wall}


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
