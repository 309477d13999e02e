"""TensorFlow's private names: the per-device datasets of a distributed dataset's iterator.

Written for TensorFlow 2.21. Imported by training workers only (it imports TensorFlow).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow.python.data.ops import multi_device_iterator_ops

from raytrain.shims.check import calls, require

__all__ = ["WRITTEN_FOR", "device_datasets_without_autotuning"]

WRITTEN_FOR = "tensorflow 2.21"
_SHIM = __name__

require(multi_device_iterator_ops, "_create_device_dataset", shim=_SHIM, written_for=WRITTEN_FOR)
calls(multi_device_iterator_ops, "_create_device_dataset", shim=_SHIM, written_for=WRITTEN_FOR)


def device_datasets_without_autotuning() -> None:
    """Work around a stall at the end of ``fit`` under MultiWorkerMirroredStrategy (TF 2.21).

    A distributed dataset is read through a multi-device iterator that builds one dataset per
    device (``_create_device_dataset``). Those have no inputs, so they do not inherit the
    dataset's options: their iterators are tf.data root iterators with autotuning on.
    Destroying one when ``fit`` returns waits for its autotune thread, which sleeps on a timer
    (py-spy and gdb: the training thread in ``RootDataset::Iterator``'s destructor, an
    ``OptimizeLoop`` thread waiting). Two-worker runs of the digits CNN: one worker sat 2-24 s
    after its last epoch in 9 of 18 runs before, in none of 8 since each device dataset carries
    options with autotuning off (benchmarks/README.md, small_run). Idempotent.
    """
    create = multi_device_iterator_ops._create_device_dataset
    if getattr(create, "autotune_off", False):
        return
    options = tf.data.Options()
    options.autotune.enabled = False

    def without_autotuning(*args: Any, **kwargs: Any) -> Any:
        return create(*args, **kwargs).with_options(options)

    # A marker on the function (the check above): typeshed's functions have no such attribute.
    without_autotuning.autotune_off = True  # type: ignore[attr-defined]
    multi_device_iterator_ops._create_device_dataset = without_autotuning
