"""The test set: evaluated once, after training, with the weights of the epoch a run keeps as
its best, on every worker's share of the test rows.

It is reported once more after the last epoch, without a checkpoint, so that nothing that
selects (the checkpoints kept, ASHA, the best trial, the champion) ever sees it: those read the
per-epoch reports, which never hold test metrics.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from raytrain import storage
from raytrain.config.schema import Experiment

if TYPE_CHECKING:
    pass

__all__ = [
    "TEST_EPOCH",
    "TEST_METRICS_FILE",
    "TEST_PREFIX",
    "read_test_metrics",
    "selection",
    "test_metrics",
    "write_test_metrics",
]

TEST_PREFIX = "test_"
TEST_EPOCH = "test_epoch"  # the epoch whose weights were tested, reported beside the metrics
# In the run's folder: Ray Train's result keeps only reports that carry a checkpoint (a sweep's
# trials hear every report through Tune).
TEST_METRICS_FILE = "test_metrics.json"


def write_test_metrics(run_folder: str, metrics: dict[str, Any]) -> None:
    storage.write_text(storage.join(run_folder, TEST_METRICS_FILE), json.dumps(metrics))


def read_test_metrics(run_folder: str) -> dict[str, Any]:
    """What ``write_test_metrics`` left in a finished run's folder (empty when nothing)."""
    location = storage.join(run_folder, TEST_METRICS_FILE)
    return json.loads(storage.read_text(location)) if storage.exists(location) else {}


def selection(spec: Experiment) -> tuple[str, str]:
    """The metric and mode that choose the run's best epoch: the sweep's first metric (the best
    trial's registered checkpoint), else the checkpoint score (a run's registered checkpoint)."""
    if spec.tune is not None:
        return spec.tune.metrics[0], spec.tune.modes[0]
    return spec.checkpoint.score, spec.checkpoint.mode


def test_metrics(reported: dict[str, Any], *, best_epoch: float | None) -> dict[str, float]:
    """The test metrics of a run's last report, if they were measured with the weights of
    ``best_epoch`` (a run restarted after a failure may have lost the best epoch's weights)."""
    if reported.get(TEST_EPOCH) is None or reported.get(TEST_EPOCH) != best_epoch:
        return {}
    return {
        k: float(v)
        for k, v in reported.items()
        if k.startswith(TEST_PREFIX) and k != TEST_EPOCH and isinstance(v, int | float)
    }
