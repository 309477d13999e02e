"""The test set: evaluated once, after training, with the weights of the epoch a run keeps as
its best, on every worker's share of the test rows.

It is reported once more after the last epoch, without a checkpoint, so that nothing that
selects (the checkpoints kept, ASHA, the best trial, the champion) ever sees it: those read the
per-epoch reports, which never hold test metrics.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from raytrain import storage
from raytrain.config.schema import Experiment

if TYPE_CHECKING:
    from raytrain.data.dataset import Dataset

__all__ = [
    "TEST_EPOCH",
    "TEST_METRICS_FILE",
    "TEST_PREFIX",
    "read_test_metrics",
    "selection",
    "test_input",
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


def test_metrics(reported: dict[str, Any], *, best_epoch: Any) -> dict[str, float]:
    """The test metrics of a run's last report, if they were measured with the weights of
    ``best_epoch`` (a run restarted after a failure may have lost the best epoch's weights)."""
    if reported.get(TEST_EPOCH) is None or reported.get(TEST_EPOCH) != best_epoch:
        return {}
    return {
        k: float(v)
        for k, v in reported.items()
        if k.startswith(TEST_PREFIX) and k != TEST_EPOCH and isinstance(v, int | float)
    }


def test_input(spec: Experiment, data: Dataset, *, rank: int, world: int) -> tuple[Any, int]:
    """This worker's test rows as a tf.data pipeline, and the steps every worker runs.

    In memory, rows ``rank::world`` with none dropped: shards may differ by one row, so a
    shorter one is padded with empty batches to the same number of steps (the all-reduce of
    the metrics needs it), and the metrics are those of every test row. Streamed, Ray Train's
    equal split leaves out up to ``world - 1`` rows.
    """
    import tensorflow as tf

    from raytrain.data.dataset import make_tf_dataset

    batch = spec.per_worker_batch_size
    if data.streams is not None:
        import ray.train

        from raytrain.data.streaming import worker_dataset

        rows = data.info.num_test // world
        steps = max(1, math.ceil(rows / batch))
        shard = ray.train.get_dataset_shard("test")
        ds = worker_dataset(
            data.streams,
            shard,
            batch_size=batch,
            steps=steps,
            shuffle=False,
            seed=0,
            repeat=False,
            drop_last=False,
        )
        return ds, steps
    assert data.x_test is not None
    assert data.y_test is not None
    x, y = data.x_test[rank::world], data.y_test[rank::world]
    steps = max(1, math.ceil(math.ceil(len(data.x_test) / world) / batch))
    ds = make_tf_dataset(x, y, batch_size=batch, shuffle=False, seed=0)
    missing = steps - math.ceil(len(x) / batch)
    if missing:
        ds = ds.concatenate(tf.data.Dataset.from_tensors((x[:0], y[:0])).repeat(missing))
    return ds, steps
