"""Data-parallel scaling: 1 vs 2 workers holding one CPU each, against what 2 cores can do at all.

efficiency = throughput(2 workers) / (2 x throughput(1 worker)). Three ceilings, all plain tf_keras
without Ray: one thread (one core), two threads in one process, and two one-thread processes at
once on half the batch each (data parallelism with free communication). Then each lever raytrain
offers, one at a time on top of the one before, on the big MLP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import (
    MLP_LARGE,
    experiment_file,
    plain_keras,
    steady_throughput,
    synthetic_npz,
)
from raytrain.config.loader import load_experiment
from raytrain.orchestration.run import run_experiment

MODELS = {"mlp 256-1024-1024-10": MLP_LARGE, "mlp 256-128-10": {"hidden_units": [128]}}
BIG = "mlp 256-1024-1024-10"
# Each lever adds to the one above; the first row is raytrain's defaults before issue 7.
LEVERS = [
    (
        "before: 2 inter-op threads, 1 step per call",
        [
            "scaling.inter_op_threads=2",
            "train.steps_per_execution=1",
            "scaling.allreduce_dtype=float32",
        ],
    ),
    (
        "inter-op threads = CPUs held (1)",
        ["train.steps_per_execution=1", "scaling.allreduce_dtype=float32"],
    ),
    ("+ steps_per_execution 8", ["scaling.allreduce_dtype=float32"]),
    ("+ bfloat16 all-reduce (defaults now)", []),
    (
        "+ 1 MB all-reduce packs",
        ["scaling.bytes_per_pack=1048576"],
    ),
]


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    data = synthetic_npz(folder, rows=8192 if quick else 32768)
    epochs = 3 if quick else 5
    rows: list[dict[str, Any]] = []
    for model_name, params in MODELS.items():
        for batch in (512, 2048):
            spec_file = experiment_file(
                folder, data=data, params=params, epochs=epochs, batch=batch
            )
            half = experiment_file(
                folder, data=data, params=params, epochs=epochs, batch=batch // 2
            )
            plain1 = _plain(spec_file, threads=1)
            plain2 = _plain(spec_file, threads=2)
            pair = plain_keras(half, threads=1, processes=2)
            pair_thr = sum(steady_throughput(r["epochs"]) for r in pair)
            ours = {w: _raytrain(spec_file, [f"scaling.num_workers={w}"]) for w in (1, 2)}
            row = {"model": model_name, "global_batch": batch}
            rows += [
                _row("ceiling", row, "plain tf_keras, 1 thread", plain1, plain1[0]),
                _row("ceiling", row, "plain tf_keras, 2 threads", plain2, plain1[0]),
                _row(
                    "ceiling",
                    row,
                    "2 plain processes x 1 thread",
                    (pair_thr, _acc(pair[0]["epochs"])),
                    plain1[0],
                ),
                _row("scaling", row, "raytrain 1 worker", ours[1], plain1[0]),
                _row("scaling", row, "raytrain 2 workers", ours[2], ours[1][0]),
            ]
            if model_name == BIG:
                for lever, overrides in LEVERS:
                    one = _raytrain(spec_file, ["scaling.num_workers=1", *overrides])
                    two = _raytrain(spec_file, ["scaling.num_workers=2", *overrides])
                    rows.append(_row("lever", row, lever, two, one[0], one[1]))
    return rows


def _plain(spec_file: Path, *, threads: int) -> tuple[float, float]:
    epochs = plain_keras(spec_file, threads=threads)[0]["epochs"]
    return steady_throughput(epochs), _acc(epochs)


def _raytrain(spec_file: Path, overrides: list[str]) -> tuple[float, float]:
    summary = run_experiment(load_experiment(spec_file, overrides), on_epoch=lambda e: None)
    return steady_throughput(summary.epochs), _acc(summary.epochs)


def _acc(epochs: list[dict[str, Any]]) -> float:
    return float(epochs[-1]["val_accuracy"])


def _row(
    part: str,
    base: dict[str, Any],
    setup: str,
    result: tuple[float, float],
    one: float,
    one_acc: float | None = None,
) -> dict[str, Any]:
    """``efficiency`` compares with twice ``one`` (1 worker or 1 thread); ``acc_delta`` with the
    1-worker run of the same lever where there is one."""
    thr, acc = result
    return {
        "part": part,
        **base,
        "setup": setup,
        "samples_s": round(thr),
        "efficiency": round(thr / (2 * one), 3),
        "val_accuracy": round(acc, 4),
        "acc_delta_pts": round(100 * (acc - one_acc), 2) if one_acc is not None else "",
    }
