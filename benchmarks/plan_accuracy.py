"""How close ``raytrain plan``'s expected wall time comes to the run it plans.

Six small experiments, every side in this one benchmark run: the quick start, experiments/
sweep.yaml (Optuna + ASHA) with its 2-worker trials and again with 1-worker trials (each trains in
its Tune trial's own process), a CSV experiment (experiments/wine.yaml), an image-folder
experiment (PNG files in class folders) and a streamed one (a CSV read with Ray Data). Each gets
a fresh ``raytrain plan --json --address local`` process, then a fresh ``raytrain run --address
local`` process; the run's actual wall time is the one it records itself (the
``raytrain.actual.wall_s`` MLflow tag, from reading the experiment to the registered model),
which is what the plan estimates. Goal: every estimate within +-20 % of its run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO
from raytrain.plan.calibration import ACTUAL_WALL_TAG, PLAN_WALL_TAG

GOAL = 0.20


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    experiments = {
        "quick start": (REPO / "experiments" / "quickstart.yaml", []),
        "sweep (ASHA)": (REPO / "experiments" / "sweep.yaml", []),
        "sweep (ASHA), 1-worker trials": (
            REPO / "experiments" / "sweep.yaml",
            ["scaling.num_workers=1"],
        ),
        "CSV (wine)": (REPO / "experiments" / "wine.yaml", []),
        "image folder": (_image_experiment(folder, per_class=30 if quick else 60), []),
        "streamed CSV": (_streamed_experiment(folder, rows=600 if quick else 1797), []),
    }
    rows = []
    for number, (name, (path, extra)) in enumerate(experiments.items()):
        db = folder / f"{number}-{path.stem}-mlflow.db"  # one new store per run, as the plan has it
        run_name = f"{path.stem}-{number}-bench"
        overrides = [
            f"storage={folder / 'results'}",
            f"tracking.uri=sqlite:///{db}",
            f"tracking.run_name={run_name}",
            *extra,
        ]
        plan, plan_s = _plan(path, overrides)
        took = time.monotonic()
        _raytrain("run", path, overrides)
        process_s = time.monotonic() - took
        tags = _tags(db, run_name)
        actual = float(tags[ACTUAL_WALL_TAG])
        error = (plan["wall_s"] - actual) / actual
        rows.append(
            {
                "experiment": name,
                "trials": plan["trials"],
                "epochs": round(plan["epochs"], 2),
                "plan_s (time to plan)": round(plan_s, 1),
                "planned wall_s": round(plan["wall_s"], 1),
                "actual wall_s": round(actual, 1),
                "run process s": round(process_s, 1),
                "error": f"{error:+.0%}",
                "goal +-20 %": "met" if abs(error) <= GOAL else "missed",
                "recorded plan tag": tags.get(PLAN_WALL_TAG, "-"),
            }
        )
    return rows


def _plan(path: Path, overrides: list[str]) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    out = _raytrain("plan", path, [*overrides], "--json")
    return json.loads(out.strip().splitlines()[-1]), time.monotonic() - start


def _raytrain(command: str, path: Path, overrides: list[str], *flags: str) -> str:
    args = [sys.executable, "-m", "raytrain", command, str(path), "--address", "local", *flags]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _tags(db: Path, run_name: str) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = '{run_name}'")
    return dict(runs[0].data.tags)


def _image_experiment(folder: Path, *, per_class: int) -> Path:
    """Three classes of 16x16 PNGs, each class a noisy copy of its own template."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = folder / "images"
    for label in range(3):
        (root / f"class{label}").mkdir(parents=True)
        template = rng.random((16, 16)) * 255
        for i in range(per_class):
            pixels = np.clip(template + rng.normal(scale=40, size=(16, 16)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{label}" / f"{i:04d}.png")
    return _write(
        folder,
        "images",
        {
            "data": {"source": f"{root}/", "shape": [16, 16, 1], "validation_split": 0.2},
            "model": {"builder": "cnn", "params": {"filters": [8, 16], "dense_units": 32}},
            "train": {"epochs": 6, "batch_size": 32},
            "scaling": {"num_workers": 2},
        },
    )


def _streamed_experiment(folder: Path, *, rows: int) -> Path:
    """scikit-learn's digits as a CSV file, streamed with Ray Data."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    path = folder / "digits.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"p{i}" for i in range(64)), "label"])
        for features, label in zip(x[:rows], y[:rows], strict=True):
            writer.writerow([*features.tolist(), int(label)])
    return _write(
        folder,
        "streamed",
        {
            "data": {"source": str(path), "streaming": True, "validation_split": 0.2},
            "model": {"builder": "mlp", "params": {"hidden_units": [64]}},
            "train": {"epochs": 5, "batch_size": 64},
            "scaling": {"num_workers": 1},
        },
    )


def _write(folder: Path, name: str, sections: dict[str, Any]) -> Path:
    spec = {
        "name": f"bench-plan-{name}",
        "checkpoint": {"keep": 1, "score": "val_accuracy", "mode": "max"},
        "tracking": {"register_as": f"bench-plan-{name}"},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path
