"""A small run's wall time: plain tf_keras in one process against ``raytrain run``.

Two small experiments, each run side by side in one benchmark run, every side in a fresh process
timed from its start to its exit:
- ``plain``: tf_keras with TensorFlow's default threads, same model, data, global batch and
  epochs, then ``model.save`` (``benchmarks/small_child.py``);
- ``raytrain cold``: ``raytrain run`` starting its own private Ray instance (``--address local``),
  tracking in a sqlite MLflow store, the model registered;
- ``raytrain cold, 1 worker (process)``: the same with one worker of 2 CPUs, trained in one Ray
  actor (the default for one worker); ``(ray_train)``: as a Ray Train run
  (``scaling.one_worker: ray_train``), what one worker cost before;
- ``raytrain warm``: the same command on a local Ray instance started before (``ray start``);
- ``Ray Train floor cold`` / ``warm``: Ray Train alone with the same workers, whose function only
  imports TensorFlow and builds MultiWorkerMirroredStrategy (``benchmarks/small_child.py``): what
  any Ray Train run of a TensorFlow model pays before its first step, that no change in
  raytrain can remove.

The phases come from timestamps the child takes around the library calls the command makes:
imports, Ray (``ray.init``), the MLflow run, the Train controller and worker group up to the
first epoch's start, the first epoch (with tracing), the other epochs, the workers' shutdown,
the model's logging and registration, and the exit (Ray's shutdown). Goals: cold <= 2.5x plain,
warm <= 1.5x; one worker, cold: <= 2x.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, free_ports

PHASES = [
    "python_start_s",
    "imports_s",
    "before_ray_s",
    "ray_init_s",
    "mlflow_run_s",
    "worker_group_start_s",
    "first_epoch_s",
    "other_epochs_s",
    "worker_shutdown_s",
    "model_logging_s",
    "exit_s",
]
CNN = {"builder": "cnn", "params": {"filters": [16, 32], "dense_units": 64, "dropout": 0.1}}


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    images = _images(folder, rows=2000 if quick else 8000)
    experiments = {
        "digits cnn, 8 epochs": _spec(folder, "digits", "builtin:digits", [8, 8, 1], 8),
        "8 000 28x28 images, cnn, 5 epochs": _spec(folder, "images", str(images), None, 5),
    }
    rows = []
    for name, spec_file in experiments.items():
        sides = {"plain tf_keras": _child(folder, "plain", spec_file)}
        # One worker: one actor (the default), and the Ray Train run it replaced.
        for one_worker in ("process", "ray_train"):
            side = f"raytrain cold, 1 worker ({one_worker})"
            sides[side] = _child(folder, "raytrain", _one_worker(spec_file, one_worker), "local")
        sides["raytrain cold"] = _child(folder, "raytrain", spec_file, "local")
        sides["Ray Train floor cold"] = _child(folder, "floor", spec_file, "local")
        with local_ray_instance() as env:  # found by the command, which says so
            sides["raytrain warm"] = _child(folder, "raytrain", spec_file, env=env)
            sides["Ray Train floor warm"] = _child(folder, "floor", spec_file, env=env)
        said = " ".join(sides["raytrain warm"]["out"].split())  # however the console wrapped it
        if "using the Ray instance running on this machine" not in said:
            raise RuntimeError(f"the warm run did not join the running instance: {sides}")
        plain_wall = sides["plain tf_keras"]["wall_s"]
        for side, result in sides.items():
            rows.append(
                {
                    "benchmark": "small_run",
                    "experiment": name,
                    "side": side,
                    "wall_s": round(result["wall_s"], 1),
                    "ratio": round(result["wall_s"] / plain_wall, 2),
                    "val_accuracy": round(result["epochs"][-1].get("val_accuracy", 0.0), 4)
                    if result["epochs"]
                    else "",
                    **{k: round(v, 1) if v is not None else "" for k, v in _phases(result).items()},
                }
            )
    return rows


def _one_worker(spec_file: Path, one_worker: str) -> Path:
    """The experiment with 1 worker of ``scaling.resources_per_worker`` CPU 2 (both cores, as
    plain tf_keras has), trained the ``scaling.one_worker`` way."""
    spec = json.loads(spec_file.read_text())
    spec["scaling"] = {
        "num_workers": 1,
        "resources_per_worker": {"CPU": 2},
        "one_worker": one_worker,
    }
    path = spec_file.with_name(f"{spec_file.stem}-1-{one_worker}.yaml")
    path.write_text(json.dumps(spec))
    return path


def _images(folder: Path, *, rows: int) -> Path:
    """28x28 one-channel images of 10 classes, each class a noisy copy of its own template."""
    rng = np.random.default_rng(0)
    templates = rng.random((10, 28, 28, 1)).astype(np.float32)
    label = rng.integers(0, 10, size=rows).astype(np.int32)
    x = templates[label] + rng.normal(scale=0.6, size=(rows, 28, 28, 1)).astype(np.float32)
    path = folder / f"images_{rows}x28x28.npz"
    np.savez(path, x=x.astype(np.float32), label=label)
    return path


def _spec(folder: Path, name: str, source: str, shape: list[int] | None, epochs: int) -> Path:
    spec = {
        "name": f"bench-small-{name}",
        "data": {"source": source, "validation_split": 0.2, **({"shape": shape} if shape else {})},
        "model": CNN,
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": {"name": "adam", "learning_rate": 0.003},
        },
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}},
        "checkpoint": {"keep": 2, "score": "val_accuracy", "mode": "max"},
        "storage": str(folder / "results"),
        "tracking": {
            "uri": f"sqlite:///{folder / 'mlflow.db'}",
            "experiment": "bench-small",
            "register_as": f"bench-small-{name}",
        },
    }
    path = folder / f"small-{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _child(
    folder: Path,
    side: str,
    spec_file: Path,
    address: str | None = None,
    *,
    env: dict[str, str] | None = None,
) -> dict:
    """One side in a fresh process: its marks, epochs and wall time from start to exit."""
    out = Path(tempfile.mkstemp(dir=folder, suffix=".json")[1])
    command = [sys.executable, "-m", "benchmarks.small_child", side, str(spec_file), str(out)]
    start = time.time()
    done = subprocess.run(
        [*command, *([address] if address else [])],
        cwd=folder,
        env={**(env or _clean_env()), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{side} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {**result, "start": start, "end": start + wall, "wall_s": wall, "out": done.stdout}


def _phases(result: dict[str, Any]) -> dict[str, float | None]:
    """Seconds per phase, from the child's marks (absent phases are left out)."""
    marks, epochs = result["marks"], result["epochs"]
    points = [
        ("python_start_s", result["start"], marks["python"]),
        ("imports_s", marks["python"], marks["imported"]),
    ]
    if not epochs:  # the floor: Ray Train's run with no training in it
        points += [
            ("ray_init_s", marks["ray_init"], marks["ray_ready"]),
            ("worker_group_start_s", marks["training"], marks["trained"]),
            ("exit_s", marks["trained"], result["end"]),
        ]
        return _durations(points)
    first, last = epochs[0], epochs[-1]
    # The first epoch began its own duration before the driver heard of it.
    first_began = first["t"] - first.get("epoch_time_s", 0.0)
    if "ray_init" in marks:  # raytrain
        points += [
            ("before_ray_s", marks["imported"], marks["ray_init"]),
            ("ray_init_s", marks["ray_init"], marks["ray_ready"]),
            ("mlflow_run_s", marks["ray_ready"], marks["training"]),
            ("worker_group_start_s", marks["training"], first_began),
            ("first_epoch_s", first_began, first["t"]),
            ("other_epochs_s", first["t"], last["t"]),
            ("worker_shutdown_s", last["t"], marks["trained"]),
            ("model_logging_s", marks["trained"], marks["logged"]),
            ("exit_s", marks["logged"], result["end"]),
        ]
    else:
        points += [
            ("before_ray_s", marks["imported"], marks["ready"]),  # data, model, compile
            ("first_epoch_s", marks["ready"], first["t"]),
            ("other_epochs_s", first["t"], last["t"]),
            ("model_logging_s", last["t"], marks["saved"]),
            ("exit_s", marks["saved"], result["end"]),
        ]
    return _durations(points)


def _durations(points: list[tuple[str, float, float]]) -> dict[str, float | None]:
    measured = {name: b - a for name, a, b in points}
    return {name: measured.get(name) for name in PHASES}  # the same columns for every side


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}


@contextlib.contextmanager
def local_ray_instance(cpus: int = 2) -> Iterator[dict[str, str]]:
    """A ``ray start --head`` instance on free ports, in a temp dir of its own (RAY_TMPDIR, where
    it writes its address file); yields the environment in which Ray clients find it."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp = Path(tempfile.mkdtemp(prefix="rt-warm-", dir="/tmp"))  # Ray's socket paths are short
    token = subprocess.run(
        [ray, "get-auth-token", "--generate"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {**_clean_env(), "RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "token"}
    env["RAY_AUTH_TOKEN"] = token
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    command = [ray, "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={cpus}"]
    command += [f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1"]
    command += [f"--ray-client-server-port={client}", "--disable-usage-stats"]
    command += [f"--dashboard-agent-listen-port={agent}", f"--runtime-env-agent-port={runtime_env}"]
    command += [f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}"]
    log = open(temp / "ray-start.log", "w")  # noqa: SIM115  (closed below)
    started = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (temp / "ray" / "ray_current_cluster").exists():
            if started.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {(temp / 'ray-start.log').read_text()}")
            time.sleep(0.5)
        time.sleep(5)  # its dashboard and agents settle, as on an instance started long before
        yield env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the group `ray start` made, only it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.wait(timeout=5)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
