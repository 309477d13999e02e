"""What a training worker runs with TensorFlow: its distribution strategy, optimizer, gradient
all-reduce and the per-epoch reporter.

Apart from ``loop.py`` so that no process but a worker imports TensorFlow for a run: the
driver, Ray Train's controller (which unpickles the run's callbacks, defined in ``loop.py``) and
each sweep trial's function import ``loop.py`` only. TensorFlow's import takes seconds of CPU,
paid by every process that imports it (benchmarks/README.md, small_run).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import types
from typing import Any

import tensorflow as tf

from raytrain.config.schema import Experiment
from raytrain.errors import TrainingError
from raytrain.train import checkpoint
from raytrain.train.session import Session

__all__ = [
    "Reporter",
    "all_reduce_gradients_as",
    "allreduce_dtype",
    "build_optimizer",
    "distributed",
    "strategy_for",
]


class Reporter(tf.keras.callbacks.Callback):
    """Per-epoch metrics, timing and a checkpoint, reported by every worker; with ``keep_best``
    (metric, mode), the weights of the best epoch so far, kept in memory for the test set."""

    def __init__(
        self,
        *,
        session: Session,
        samples_per_epoch: int,
        history: list[dict[str, float]],
        keep_best: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.session, self.samples, self.history = session, samples_per_epoch, list(history)
        self._t0 = self._train_s = 0.0
        self.keep_best = keep_best
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self._best_score: float | None = None
        self.last: dict[str, float] = {}

    def on_best_candidate(self, epoch: int, metrics: dict[str, float]) -> None:
        """Keep this epoch's weights if its score beats the best so far (ties: the earlier
        epoch, as the run's choice of its best checkpoint)."""
        self.last = metrics
        if self.keep_best is None or self.keep_best[0] not in metrics:
            return
        score, mode = metrics[self.keep_best[0]], self.keep_best[1]
        best = self._best_score
        if best is None or (score > best if mode == "max" else score < best):
            # Reads each worker's local copy of the mirrored variables: no collective op.
            self._best_score, self.best_epoch = score, epoch
            self.best_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._train_s = time.perf_counter() - self._t0  # validation is not training throughput

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = epoch + 1
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise TrainingError(
                f"the loss became {metrics['loss']} at epoch {done}; lower "
                "train.optimizer.learning_rate or set train.optimizer.clipnorm"
            )
        metrics["epoch"] = done
        # Model size, so that a sweep can trade it against accuracy (a multi-objective metric).
        metrics["param_count"] = self.model.count_params()
        metrics["model_bytes"] = sum(int(w.nbytes) for w in self.model.get_weights())
        metrics["epoch_time_s"] = time.perf_counter() - self._t0
        metrics["samples_per_s"] = self.samples / max(self._train_s, 1e-9)
        self.history.append(metrics)
        self.on_best_candidate(done, metrics)
        # 6. Every worker saves: under MWMS, saving reads mirrored variables through collective
        #    ops, and a save on rank 0 alone deadlocks. Only rank 0's copy becomes the checkpoint,
        #    but every worker calls report the same number of times: it is a barrier.
        with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-") as folder:
            checkpoint.write(self.model, folder, history=self.history)
            self.session.report(metrics, folder)


# A process's MultiWorkerMirroredStrategy, by TF_CONFIG and communication: built once. Each new
# strategy enables collective ops again, which resets the process's collective groups; in a
# reused group (``group.py``) a peer may already be resolving the next trial's group with it,
# and fails ("group 1 not found. This normally means the server has restarted", seen in the
# first trial after a stopped one on a loaded machine).
_STRATEGIES: dict[tuple[str, str], Any] = {}


def strategy_for(spec: Experiment, world: int) -> Any:
    if spec.scaling.accelerator == "tpu":
        # This worker holds the whole TPU VM host; its chips are local to it.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if world == 1:
        return tf.distribute.get_strategy()
    key = (os.environ.get("TF_CONFIG", ""), spec.scaling.communication)
    if key not in _STRATEGIES:
        impl = tf.distribute.experimental.CommunicationImplementation
        chosen = {"auto": impl.AUTO, "ring": impl.RING, "nccl": impl.NCCL}
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=chosen[spec.scaling.communication]
        )
        _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return _STRATEGIES[key]


def distributed(strategy: Any, dataset: Any) -> Any:
    """``dataset`` as this worker's input to a multi-worker strategy, its device iterators
    without tf.data autotuning (``device_datasets_without_autotuning`` says why)."""
    from raytrain.shims.tensorflow import device_datasets_without_autotuning

    device_datasets_without_autotuning()
    return strategy.distribute_datasets_from_function(lambda _: dataset)


def allreduce_dtype(spec: Experiment) -> str:
    if spec.scaling.allreduce_dtype != "auto":
        return spec.scaling.allreduce_dtype
    # mixed_float16's LossScaleOptimizer sums the (scaled) gradients itself.
    return "float32" if spec.train.mixed_precision == "mixed_float16" else "bfloat16"


def all_reduce_gradients_as(dtype_name: str, bytes_per_pack: int, optimizer: Any) -> None:
    """Sum gradients across workers in ``dtype_name``, in packs of ``bytes_per_pack``.

    tf_keras documents ``aggregate_gradients`` as the method to override for custom aggregation;
    it is replaced on this instance only, so saved models keep the plain optimizer class.
    """
    dtype = tf.as_dtype(dtype_name)
    options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=bytes_per_pack)

    def aggregate_gradients(
        self: Any, grads_and_vars: list[tuple[Any, Any]]
    ) -> list[tuple[Any, Any]]:
        present = [(g, v) for g, v in grads_and_vars if g is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.cast(g, dtype) for g, _ in present], options=options
        )
        return [(tf.cast(g, v.dtype), v) for g, (_, v) in zip(summed, present, strict=True)]

    optimizer.aggregate_gradients = types.MethodType(aggregate_gradients, optimizer)


def build_optimizer(spec: Experiment) -> Any:
    """The optimizer the experiment names (also used by the benchmarks' plain-Keras baseline)."""
    opt = spec.train.optimizer
    common: dict[str, Any] = {"learning_rate": opt.learning_rate}
    if opt.clipnorm:
        common["clipnorm"] = opt.clipnorm
    if opt.name == "adam":
        return tf.keras.optimizers.Adam(**common)
    if opt.name == "adamw":
        return tf.keras.optimizers.AdamW(weight_decay=opt.weight_decay or 0.004, **common)
    if opt.name == "sgd":
        return tf.keras.optimizers.SGD(
            momentum=opt.momentum, weight_decay=opt.weight_decay or None, **common
        )
    if opt.name == "rmsprop":
        return tf.keras.optimizers.RMSprop(momentum=opt.momentum, **common)
    return tf.keras.optimizers.Adagrad(**common)
