"""What MultiWorkerMirroredStrategy costs by itself, without Ray: the ceiling for raytrain.

Two 1-thread processes train the big MLP with MWMS over gRPC on loopback, as two raytrain workers
would, but with nothing else running. Efficiency is against twice plain tf_keras with one thread
at the same global batch. Rows: float32 and bfloat16 gradient all-reduce, without and with the
per-epoch shuffle, and with ~15 % of one core of background load (two processes each busy 7.5 %
of the time, at normal priority while the workers run at Ray's niceness 15): about what Ray's own
processes used during a 2-worker run here (`top`: Train controller, raylet, GCS, dashboard, idle
actors). Workers in lockstep wait for the slower one at every all-reduce, so a core's stolen
time costs both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import MLP_LARGE, REPO, experiment_file, synthetic_npz

BURNER = (
    "import time,sys\n"
    "end=time.time()+float(sys.argv[1])\n"
    "while time.time()<end:\n"
    " t=time.perf_counter()\n"
    " while time.perf_counter()-t<0.00075: pass\n"
    " time.sleep(0.00925)\n"
)


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    data = synthetic_npz(folder, rows=16384 if quick else 65536)
    rows = []
    for batch in (512, 2048):
        spec = experiment_file(folder, data=data, params=MLP_LARGE, epochs=1, batch=batch)
        one = _workers(spec, world=1, dtype="float32", shuffle=True)
        rows.append(_row(batch, "plain tf_keras, 1 process, 1 thread", one, one))
        for label, dtype, shuffle, load in [
            ("MWMS float32, no shuffle", "float32", False, False),
            ("MWMS bfloat16, no shuffle", "bfloat16", False, False),
            ("MWMS bfloat16, shuffle", "bfloat16", True, False),
            ("MWMS bfloat16, shuffle, 15 % background load", "bfloat16", True, True),
        ]:
            two = _workers(spec, world=2, dtype=dtype, shuffle=shuffle, load=load)
            rows.append(_row(batch, label, two, one))
    return rows


def _row(batch: int, label: str, result: dict, one: dict) -> dict[str, Any]:
    efficiency = result["samples_per_s"] / (2 * one["samples_per_s"])
    return {
        "global batch": batch,
        "setup (no Ray)": label,
        "step ms": round(result["step_ms"], 1),
        "samples/s": round(result["samples_per_s"]),
        "efficiency": "" if result is one else round(efficiency, 2),
    }


def _workers(
    spec: Path, *, world: int, dtype: str, shuffle: bool, load: bool = False
) -> dict[str, float]:
    """Start ``world`` worker processes at Ray's worker niceness; rank 0's result."""
    port = _free_ports(world)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        burners = (
            [subprocess.Popen([sys.executable, "-c", BURNER, "600"]) for _ in range(2)]
            if load
            else []
        )
        outs = [Path(tmp, f"{rank}.json") for rank in range(world)]
        procs = [
            subprocess.Popen(
                [
                    *("nice", "-n", "15", sys.executable, "-m", "benchmarks.plain_mwms"),
                    *(str(spec), str(rank), str(world), str(port), dtype),
                    *("shuffle" if shuffle else "none", str(out)),
                ],
                env=env,
                cwd=REPO,
            )
            for rank, out in enumerate(outs)
        ]
        failed = [p.wait() for p in procs]
        for burner in burners:
            burner.kill()
            burner.wait()
        if any(failed):
            raise RuntimeError(f"plain MWMS run failed ({world} workers, {dtype})")
        return json.loads(outs[0].read_text())


def _free_ports(count: int) -> int:
    """A first port with ``count`` free ports after it (the workers' gRPC servers)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count < 65536 and all(_free(first + i) for i in range(count)):
            return first
    raise RuntimeError("no free ports for the MWMS workers")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
