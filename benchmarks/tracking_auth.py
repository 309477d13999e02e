"""What signing in costs the tracking server: the same run logged to a server started by
cluster_configs/start_mlflow.sh with MLflow's password cache off (MLFLOW_AUTH_CACHE_TTL_S=0: a
scrypt check on every request) and on (the default, 60 s), every side in this one run.

Each side: a fresh server (sqlite stores, loopback, one server process, as a small head), then
a client signed in as the jobs user logs one run the way a training run does: parameters, tags,
per-epoch metrics, a few files. Timed from the first request to the last; the server's CPU
seconds over that time come from its process group. Goal: none (a measured lever).
"""

from __future__ import annotations

import configparser
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, free_ports

SCRIPT = REPO / "cluster_configs" / "start_mlflow.sh"


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    epochs = 10 if quick else 50
    rows = []
    for ttl in ("0", "60"):
        home = Path(tempfile.mkdtemp(prefix=f"auth-{ttl}-", dir=folder))
        uri = _start(home, ttl)
        try:
            took, cpu, requests = _log_run(home, uri, epochs)
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=_env(home, ttl, 0), check=False,
                           capture_output=True)  # fmt: skip
        rows.append(
            {
                "benchmark": "tracking_auth",
                "side": "password checked on every request" if ttl == "0" else "cache 60 s",
                "requests": requests,
                "wall s": round(took, 2),
                "server CPU s": round(cpu, 2),
                "ms per request": round(1000 * took / requests, 1),
            }
        )
    for row in rows:
        row["speed-up"] = round(rows[0]["wall s"] / row["wall s"], 2)
    return rows


def _env(home: Path, ttl: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {
        "HOME": str(home),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_AUTH_CACHE_TTL_S": ttl,
        "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
    }


def _start(home: Path, ttl: str) -> str:
    (port,) = free_ports(1)
    subprocess.run(["bash", str(SCRIPT)], env=_env(home, ttl, port), check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    return (home / "mlflow" / "tracking_uri").read_text().strip()


def _log_run(home: Path, uri: str, epochs: int) -> tuple[float, float, int]:
    """(wall s, server CPU s, requests) of one run logged request by request, signed in."""
    import mlflow

    ini = configparser.ConfigParser()
    ini.read(home / ".mlflow" / "credentials")
    os.environ["MLFLOW_TRACKING_USERNAME"] = ini["mlflow"]["mlflow_tracking_username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = ini["mlflow"]["mlflow_tracking_password"]
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        group = int((home / "mlflow" / "server.pid").read_text())
        cpu_before = _group_cpu(group)
        start = time.monotonic()
        experiment = client.create_experiment(f"bench-{time.monotonic_ns()}")
        run = client.create_run(experiment).info.run_id
        requests = 2
        for i in range(10):
            client.log_param(run, f"param_{i}", i)
            client.set_tag(run, f"raytrain.tag_{i}", str(i))
            requests += 2
        for epoch in range(1, epochs + 1):
            for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s"):
                client.log_metric(run, metric, 1.0 / epoch, step=epoch)
                requests += 1
        files = home / "files"
        files.mkdir()
        for i in range(5):
            (files / f"f{i}.txt").write_text("x" * 1000)
            client.log_artifact(run, str(files / f"f{i}.txt"))
            requests += 1
        client.set_terminated(run)
        requests += 1
        took = time.monotonic() - start
        return took, _group_cpu(group) - cpu_before, requests
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)


def _group_cpu(group: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``group``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp: the 5th field, 3rd after the name
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick
