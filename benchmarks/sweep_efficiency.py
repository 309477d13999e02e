"""How many epochs a search needs to come within 0.5 points of the full grid's best accuracy.

One search space, one dataset (digits, an MLP, 1 worker per trial), three strategies in one run:
the full grid (no early stopping), random search without early stopping, and Optuna TPE + ASHA.
For each: the epochs (summed over trials, in the order results arrived) and the wall time since
the sweep started (Ray Tune's one-second timestamps) until some trial first reached the grid's
best validation accuracy minus 0.5 points.
Goal: TPE + ASHA needs <= 25 % of the grid's epochs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from raytrain.config.loader import load_experiment
from raytrain.orchestration.sweep import run_sweep

LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
HIDDEN = [[16], [64], [128, 64]]
TOLERANCE = 0.005


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    epochs = 3 if quick else 6
    lrs = LEARNING_RATES[::2] if quick else LEARNING_RATES
    grid_size = len(lrs) * len(HIDDEN)
    hidden = json.dumps(HIDDEN)
    spec_file = folder / "sweep.yaml"
    spec_file.write_text(
        json.dumps(
            {
                "name": "bench-sweep",
                "data": {"source": "builtin:digits"},
                "model": {"builder": "mlp"},
                "train": {"epochs": epochs, "batch_size": 64},
                "scaling": {"num_workers": 1},
                "tracking": {"enabled": False},
                "storage": str(folder / "results"),
                "tune": {"metric": "val_accuracy", "mode": "max", "space": {}},
            }
        )
    )
    strategies = {
        "grid": [
            "tune.search.algorithm=grid",
            "tune.scheduler.name=none",
            f"tune.space={{train.optimizer.learning_rate: {{grid: {lrs}}}, "
            f"model.params.hidden_units: {{grid: {hidden}}}}}",
        ],
        "random, no early stopping": [
            "tune.search={algorithm: random, seed: 0}",
            "tune.scheduler.name=none",
            f"tune.num_samples={grid_size}",
            *_continuous(lrs, hidden),
        ],
        "optuna tpe + asha": [
            "tune.search={algorithm: optuna, sampler: tpe, seed: 0}",
            "tune.scheduler={name: asha, grace_period: 1, reduction_factor: 3}",
            f"tune.num_samples={grid_size}",
            *_continuous(lrs, hidden),
        ],
    }
    curves, starts = {}, {}
    for name, overrides in strategies.items():
        starts[name] = time.time()
        summary = run_sweep(load_experiment(spec_file, overrides))
        curves[name] = _results(Path(summary.storage_path))
    grid_best = max(r["val_accuracy"] for r in curves["grid"])
    grid_epochs = len(curves["grid"])
    rows = []
    for name, results in curves.items():
        epochs_needed, seconds = _until(results, grid_best - TOLERANCE, start=starts[name])
        rows.append(
            {
                "benchmark": "sweep_efficiency",
                "strategy": name,
                "trials": len({r["trial_id"] for r in results}),
                "epochs_total": len(results),
                "best_val_accuracy": round(max(r["val_accuracy"] for r in results), 4),
                "epochs_to_target": epochs_needed,
                "seconds_to_target": seconds,
                "epochs_vs_grid": round(epochs_needed / grid_epochs, 3) if epochs_needed else None,
                "target": round(grid_best - TOLERANCE, 4),
            }
        )
    return rows


def _continuous(lrs: list[float], hidden: str) -> list[str]:
    return [
        f"tune.space={{train.optimizer.learning_rate: {{loguniform: [{lrs[0]}, {lrs[-1]}]}}, "
        f"model.params.hidden_units: {{choice: {hidden}}}}}"
    ]


def _results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every epoch of every trial, in the order the results arrived."""
    results = []
    for path in experiment_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                results.append({k: row.get(k) for k in ("trial_id", "val_accuracy", "timestamp")})
    return sorted(results, key=lambda r: r["timestamp"])


def _until(
    results: list[dict[str, Any]], target: float, *, start: float
) -> tuple[int | None, int | None]:
    """Epochs run (all trials) and seconds since the sweep started, until the target is met."""
    for count, row in enumerate(results, start=1):
        if row["val_accuracy"] >= target:
            return count, int(row["timestamp"] - start)
    return None, None
