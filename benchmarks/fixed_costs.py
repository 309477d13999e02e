"""What a Ray process costs before it does any work: the units the test suite's time is made of.

`make test` on 2 cores is CPU-bound (both cores ~94 % busy), so its wall time is its CPU divided
by two. Much of that CPU is fixed: every Ray actor is a fresh process (Ray reuses processes for
tasks, never for actors), every training process imports TensorFlow again, and every Ray
instance costs CPU while it waits. This measures each unit on a local instance set up as the
tests' is (2 CPUs, dashboard on, Ray's metrics and prestarted workers off, raytrain's worker
runtime environment), each side in the same run, in a child process so those settings hold:

- an idle instance: CPU seconds per minute, its own processes only (after a first task);
- a fresh Ray worker process: an actor with raytrain's worker runtime environment created,
  called once and killed, until its process is gone;
- the same, importing TensorFlow and tf_keras (every training process, trial and replica);
- plain ``python -c "import tensorflow, tf_keras"``: the import alone, no Ray (the anchor).

CPU is machine-wide (/proc/stat, Linux) over each unit, minus the machine's own background rate
(measured before Ray starts) and, for worker processes, the idle instance's: run it on an idle
machine. Goal: none (it measures the floor of the suite's fixed costs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO

# The tests' settings (tests/conftest.py), for the child's instance.
SUITE_ENV = {"RAY_enable_metrics_collection": "0", "RAY_prestart_worker_first_driver": "0"}


def run(_folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    rounds, idle_s = (3, 20) if quick else (8, 60)
    args = [sys.executable, "-m", "benchmarks.fixed_costs", str(rounds), str(idle_s)]
    done = subprocess.run(
        args,
        env={**os.environ, **SUITE_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=REPO,  # the child runs this module
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def busy_cpu_s() -> float:
    """Machine-wide CPU seconds spent so far (user, nice, system, irq, softirq, steal)."""
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:3]) + sum(values[5:8])) / ticks


def _measure(rounds: int, idle_s: float) -> list[dict[str, Any]]:
    """Every side, on the instance this child starts."""
    import logging

    import ray

    from raytrain.cluster.connection import WORKER_ENV

    background = _rate(idle_s / 3)  # the machine's own, before Ray starts
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )

    @ray.remote(num_cpus=1)
    class Probe:
        def pid(self, with_tf: bool) -> int:
            if with_tf:
                import tensorflow  # noqa: F401
                import tf_keras  # noqa: F401
            return os.getpid()

    ray.get(ray.remote(lambda: None).remote())  # the instance's first worker, as a test has
    time.sleep(10)  # its start settles
    idle_rate = _rate(idle_s)
    rows = [_row("idle Ray instance (per minute)", 1, [60.0], [60 * (idle_rate - background)])]

    env = {"env_vars": dict(WORKER_ENV)}
    for tensorflow in (False, True):
        walls, cpus = [], []
        for _ in range(rounds):
            start_cpu, start = busy_cpu_s(), time.monotonic()
            probe = Probe.options(runtime_env=env).remote()  # type: ignore[attr-defined]
            pid = ray.get(probe.pid.remote(tensorflow))
            ray.kill(probe)
            while Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            took = time.monotonic() - start
            walls.append(took)
            cpus.append(busy_cpu_s() - start_cpu - idle_rate * took)
        what = "importing TensorFlow" if tensorflow else "started, called, gone"
        rows.append(_row(f"fresh Ray worker process ({what})", rounds, walls, cpus))
    ray.shutdown()

    walls, cpus = [], []
    for _ in range(rounds):
        start_cpu, start = busy_cpu_s(), time.monotonic()
        code = "import tensorflow, tf_keras"
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **WORKER_ENV}, check=True)
        took = time.monotonic() - start
        walls.append(took)
        cpus.append(busy_cpu_s() - start_cpu - background * took)
    rows.append(_row("plain python importing TensorFlow (no Ray)", rounds, walls, cpus))
    return rows


def _rate(seconds: float) -> float:
    """Machine-wide CPU seconds per second over the next ``seconds``."""
    start_cpu, start = busy_cpu_s(), time.monotonic()
    time.sleep(seconds)
    return (busy_cpu_s() - start_cpu) / (time.monotonic() - start)


def _row(side: str, count: int, walls: list[float], cpus: list[float]) -> dict[str, Any]:
    return {
        "benchmark": "fixed_costs",
        "side": side,
        "count": count,
        "wall s (median)": round(statistics.median(walls), 2),
        "CPU s (median)": round(statistics.median(cpus), 2),
        "CPU s (max)": round(max(cpus), 2),
    }


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]), float(sys.argv[2]))))
