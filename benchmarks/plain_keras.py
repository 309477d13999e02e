"""The baseline: what a user writes without Ray. Same model, data, batch and thread count.

Usage: python -m benchmarks.plain_keras SPEC_FILE THREADS OUT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import tensorflow as tf

import raytrain  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from raytrain.config.loader import load_experiment
from raytrain.data.dataset import load_dataset, make_tf_dataset
from raytrain.models import build_model
from raytrain.train.worker import build_optimizer


class _Timer(tf.keras.callbacks.Callback):
    """Times training only (not validation), exactly like raytrain's reporter."""

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.samples, self.epochs = samples, []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.train_s = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({**logs, "samples_per_s": self.samples / self.train_s})


def compiled(spec: Any) -> tuple[Any, Any, Any, Any]:
    """The experiment's model, compiled, with its data and train and validation pipelines."""
    tf.keras.utils.set_random_seed(spec.train.seed)
    if spec.train.mixed_precision != "none":
        tf.keras.mixed_precision.set_global_policy(spec.train.mixed_precision)
    data = load_dataset(spec.data, loss=spec.train.loss)
    batch = spec.train.batch_size
    train = make_tf_dataset(data.x_train, data.y_train, batch_size=batch, shuffle=True, seed=0)
    val = make_tf_dataset(data.x_val, data.y_val, batch_size=batch, shuffle=False, seed=0)
    model = build_model(spec.model, data.info, loss=spec.train.loss)
    model.compile(
        optimizer=build_optimizer(spec),
        loss=spec.train.loss,
        metrics=list(spec.train.metrics),
        steps_per_execution=spec.train.steps_per_execution,
    )
    return model, data, train, val


def main(spec_file: str, threads: int, out: str) -> None:
    spec = load_experiment(spec_file).spec
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)  # "1 thread" means one core
    model, data, train, val = compiled(spec)
    timer = _Timer(len(data.x_train))
    model.fit(train, validation_data=val, epochs=spec.train.epochs, callbacks=[timer], verbose=0)
    with open(out, "w") as f:
        json.dump({"epochs": [{k: float(v) for k, v in e.items()} for e in timer.epochs]}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
