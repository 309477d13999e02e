"""What a training worker reads of each split: one function, for data in memory and streamed
alike, so the training loop never forks on where its data comes from.

In memory, a worker takes rows ``rank::world`` of the split (equal-length shards for training
and validation, so every worker runs the same number of steps: MultiWorkerMirroredStrategy's
all-reduce waits forever for a worker that has one batch more). Streamed, Ray Data splits each
dataset into equal shards and ``shard_of(split)`` hands over this worker's (Ray Train's dataset
shard, or the whole dataset for a process that trains alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from raytrain.config.schema import Experiment
from raytrain.data.dataset import Dataset, make_tf_dataset, shard
from raytrain.errors import DataError

__all__ = ["Split", "worker_input"]

Split = Literal["train", "val", "test"]


def worker_input(
    spec: Experiment,
    data: Dataset,
    split: Split,
    *,
    rank: int,
    world: int,
    shard_of: Callable[[str], Any],
    epochs: int = 1,
) -> tuple[Any, int]:
    """This worker's ``split`` as a tf.data pipeline, and the steps every worker runs per pass:
    training batches shuffled (seeded per rank) and repeated (streamed: for the ``epochs`` left
    to train, no further), validation repeated (Keras keeps one iterator for the whole fit),
    test once with every row (shorter shards padded with empty batches)."""
    batch = spec.per_worker_batch_size
    if data.streams is not None:
        return _streamed(
            spec, data, split, rank=rank, world=world, shard_of=shard_of, epochs=epochs
        )
    if split == "test":
        return _test_in_memory(data, batch, rank=rank, world=world)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_val, data.y_val)
    x, y = shard(x, y, index=rank, count=world)
    training = split == "train"
    seed = spec.train.seed + rank if training else 0
    ds = make_tf_dataset(x, y, batch_size=batch, shuffle=training, seed=seed).repeat()
    return ds, math.ceil(len(x) / batch)


def _test_in_memory(data: Dataset, batch: int, *, rank: int, world: int) -> tuple[Any, int]:
    import tensorflow as tf

    assert data.x_test is not None
    assert data.y_test is not None
    x, y = data.x_test[rank::world], data.y_test[rank::world]
    steps = max(1, math.ceil(math.ceil(len(data.x_test) / world) / batch))
    ds = make_tf_dataset(x, y, batch_size=batch, shuffle=False, seed=0)
    missing = steps - math.ceil(len(x) / batch)
    if missing:  # the all-reduce of the metrics needs the same steps on every worker
        ds = ds.concatenate(tf.data.Dataset.from_tensors((x[:0], y[:0])).repeat(missing))
    return ds, steps


def _streamed(
    spec: Experiment,
    data: Dataset,
    split: Split,
    *,
    rank: int,
    world: int,
    shard_of: Callable[[str], Any],
    epochs: int,
) -> tuple[Any, int]:
    """Streamed rows: Ray Train's equal split leaves out up to ``world - 1`` rows of each."""
    from raytrain.data.streaming import worker_dataset

    assert data.streams is not None
    batch = spec.per_worker_batch_size
    common = {"streams": data.streams, "shard": shard_of(split)}
    if split == "test":
        steps = max(1, math.ceil(data.info.num_test // world / batch))
        ds = worker_dataset(
            **common, batch_size=batch, steps=steps, shuffle=False, seed=0, drop_last=False,
        )  # fmt: skip
        return ds, steps
    steps = data.info.num_train // world // batch
    val_rows = data.info.num_val // world
    if steps < 1 or val_rows < 1:
        raise DataError(
            f"{data.info.num_train} training and {data.info.num_val} validation rows are too few "
            f"for {world} worker(s) at {batch} rows per worker and step"
        )
    if split == "train":
        ds = worker_dataset(
            **common, batch_size=batch, steps=steps, shuffle=True, seed=spec.train.seed + rank,
            passes=epochs,
        )  # fmt: skip
        return ds, steps
    val_batch = min(batch, val_rows)
    val_steps = val_rows // val_batch
    ds = worker_dataset(**common, batch_size=val_batch, steps=val_steps, shuffle=False, seed=0)
    return ds, val_steps
