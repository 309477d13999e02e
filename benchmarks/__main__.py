"""Run benchmarks and print a table and JSON.

    python -m benchmarks                     # all but gpu (about 40 minutes on 2 cores)
    python -m benchmarks gpu [--dry-run]     # one GPU (--dry-run: the same sides on the CPU)
    python -m benchmarks train_overhead      # one of them
    python -m benchmarks fixed_costs         # what a Ray process costs before any work
    python -m benchmarks --quick scaling     # smaller data, fewer epochs (a smoke run)

Results also go to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import (
    collectives,
    edge_sweep,
    export,
    fixed_costs,
    gpu,
    plan_accuracy,
    scaling,
    serve,
    small_run,
    sweep_efficiency,
    sweep_overhead,
    tracking_auth,
    train_overhead,
)
from raytrain.cluster.connection import WORKER_ENV, connect

BENCHMARKS = {
    "collectives": collectives.run,  # first: it measures with no Ray processes running
    "fixed_costs": fixed_costs.run,  # its own instance, on an otherwise idle machine
    "small_run": small_run.run,  # each side starts its own Ray, or joins one this starts
    "train_overhead": train_overhead.run,
    "scaling": scaling.run,
    "sweep_efficiency": sweep_efficiency.run,
    "sweep_overhead": sweep_overhead.run,
    "export": export.run,
    "edge_sweep": edge_sweep.run,
    "serve": serve.run,
    "gpu": gpu.run,  # one GPU; --dry-run checks it on the CPU
    "plan_accuracy": plan_accuracy.run,
    "tracking_auth": tracking_auth.run,  # an MLflow server, no Ray
}
WITHOUT_RAY = {
    "collectives",
    "fixed_costs",
    "small_run",
    "sweep_overhead",
    "gpu",
    "plan_accuracy",
    "tracking_auth",
}  # each side starts its own
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs")
    parser.add_argument(
        "--dry-run", action="store_true", help="gpu: the same sides on the CPU, tiny"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; expected: {', '.join(BENCHMARKS)}"
        )
    console = Console(width=max(Console().width, 180))
    RESULTS.mkdir(exist_ok=True)
    default = [name for name in BENCHMARKS if name != "gpu"]  # gpu needs one
    for name in sorted(args.names or default, key=list(BENCHMARKS).index):
        if name not in WITHOUT_RAY:
            connect(env_vars=WORKER_ENV)  # keeps an existing connection
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"raytrain-bench-{name}-") as folder:
            options = {"dry_run": args.dry_run} if name == "gpu" else {}
            rows = BENCHMARKS[name](Path(folder), quick=args.quick, **options)
        table = Table(title=f"{name} ({time.monotonic() - start:.0f} s)")
        for column in rows[0]:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
        (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
