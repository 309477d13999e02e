"""Shared pieces: a synthetic dataset with a known answer and the plain-Keras baseline."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MLP_LARGE = {"hidden_units": [1024, 1024]}  # with 256 inputs and 10 classes: 256-1024-1024-10


def synthetic_npz(folder: Path, *, rows: int, features: int = 256, classes: int = 10) -> Path:
    """Linearly separable-ish data from a random teacher: learnable, so accuracy means something."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    teacher = rng.normal(size=(features, classes)).astype(np.float32)
    label = (x @ teacher).argmax(axis=1).astype(np.int32)
    path = folder / f"synthetic_{rows}x{features}.npz"
    np.savez(path, x=x, label=label)
    return path


def experiment_file(folder: Path, *, data: Path, params: dict, epochs: int, batch: int) -> Path:
    """An experiment YAML for the benchmark model; workers and levers come as overrides."""
    spec = {
        "name": "bench",
        "data": {"source": str(data), "validation_split": 0.1, "normalize": "none"},
        "model": {"builder": "mlp", "params": params},
        "train": {"epochs": epochs, "batch_size": batch, "optimizer": {"learning_rate": 1e-3}},
        "checkpoint": {"keep": 1},
        "tracking": {"enabled": False},
        "storage": str(folder / "results"),
    }
    path = folder / f"bench-{batch}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def steady_throughput(epochs: list[dict[str, Any]]) -> float:
    """Median samples/s over epochs after the first (which pays for tracing and warm-up)."""
    values = [e["samples_per_s"] for e in epochs[1:]] or [e["samples_per_s"] for e in epochs]
    return float(statistics.median(values))


def plain_keras(spec_file: Path, *, threads: int, processes: int = 1) -> list[dict[str, Any]]:
    """Plain tf_keras ``fit`` of the same model and data in ``processes`` fresh processes at once,
    each with ``threads``; one result (its per-epoch logs) per process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as folder:
        outs = [Path(folder, f"{i}.json") for i in range(processes)]
        running = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.plain_keras", str(spec_file), str(threads), out],
                env=env,
                cwd=REPO,
            )
            for out in outs
        ]
        if any(proc.wait() for proc in running):
            raise RuntimeError(f"plain tf_keras baseline failed for {spec_file}")
        return [json.loads(out.read_text()) for out in outs]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now (all held open together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
