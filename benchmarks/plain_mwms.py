"""One worker of MultiWorkerMirroredStrategy without Ray: what MWMS itself costs on this machine.

Usage: python -m benchmarks.plain_mwms SPEC_FILE RANK WORLD PORT ALLREDUCE_DTYPE SHUFFLE OUT_JSON

WORLD 1 runs plain tf_keras (TF's default strategy) on the whole batch. Otherwise each process
trains on its shard at batch/WORLD, like a raytrain worker, with the same model, optimizer,
thread settings and gradient all-reduce (raytrain's own hook for a bfloat16 all-reduce).
The step time is the median between Keras batch ends (one per ``steps_per_execution`` steps),
so start-up and the first tracing do not count.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def main(spec_file: str, rank: int, world: int, port: int, dtype: str, shuffle: bool, out: str):
    if world > 1:
        workers = [f"127.0.0.1:{port + i}" for i in range(world)]
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
        os.environ["TF_CONFIG"] = json.dumps(config)
    import tensorflow as tf

    import raytrain  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from raytrain.config.loader import load_experiment
    from raytrain.data.dataset import load_dataset, make_tf_dataset, shard
    from raytrain.models import build_model
    from raytrain.train.worker import all_reduce_gradients_as, build_optimizer

    spec = load_experiment(spec_file).spec
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    )
    data = load_dataset(spec.data, loss=spec.train.loss)
    x, y = shard(data.x_train, data.y_train, index=rank, count=world)
    batch = spec.train.batch_size // world
    ds = make_tf_dataset(x, y, batch_size=batch, shuffle=shuffle, seed=rank).repeat()
    if world > 1:
        ds = strategy.distribute_datasets_from_function(lambda _: ds)
    with strategy.scope():
        model = build_model(spec.model, data.info, loss=spec.train.loss)
        model.compile(
            optimizer=build_optimizer(spec),
            loss=spec.train.loss,
            steps_per_execution=spec.train.steps_per_execution,
        )
    if world > 1 and dtype != "float32":
        all_reduce_gradients_as(dtype, 0, model.optimizer)
    stamps: list[float] = []
    record = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_: stamps.append(time.perf_counter())
    )
    steps = spec.train.steps_per_execution * 24
    model.fit(ds, epochs=2, steps_per_epoch=steps, callbacks=[record], verbose=0)
    calls = [b - a for a, b in zip(stamps[24 + 2 : -2], stamps[24 + 3 : -1], strict=True)]
    step_s = statistics.median(calls) / spec.train.steps_per_execution
    with open(out, "w") as f:
        json.dump({"step_ms": 1000 * step_s, "samples_per_s": spec.train.batch_size / step_s}, f)


if __name__ == "__main__":
    spec, rank, world, port, dtype, shuffle, out = sys.argv[1:]
    main(spec, int(rank), int(world), int(port), dtype, shuffle == "shuffle", out)
