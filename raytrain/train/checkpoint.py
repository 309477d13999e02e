"""The checkpoint format: what one epoch's checkpoint folder holds, and reading it back.

    model.keras             the whole tf_keras model (what MLflow logs and serving loads)
    weights.*               the weights and optimizer state, for resuming training in place
    raytrain_state.json     {"epoch": epochs completed, "metrics": what that epoch reported}

Only this module knows the layout: the training loop writes and restores through it, the driver
loads the best checkpoint's model through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FILE", "load_model", "restore", "write"]

MODEL_FILE = "model.keras"
WEIGHTS = "weights"
STATE_FILE = "raytrain_state.json"


def write(model: Any, folder: str, *, epoch: int, metrics: dict[str, float]) -> None:
    """Fill ``folder`` with the model after ``epoch`` epochs.

    Under MultiWorkerMirroredStrategy every worker must call this, not only rank 0: saving reads
    mirrored variables through collective ops, and a save on rank 0 alone deadlocks (no error).
    """
    model.save_weights(os.path.join(folder, WEIGHTS))
    model.save(os.path.join(folder, MODEL_FILE))
    Path(folder, STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))


def restore(model: Any) -> tuple[int, dict[str, float]]:
    """Load the run's last reported checkpoint into ``model``, if Ray Train hands one to this
    worker (after a restart); return the epochs it completed and the metrics it reported."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, STATE_FILE).read_text())
        model.load_weights(os.path.join(folder, WEIGHTS))
    return int(state["epoch"]), state["metrics"]


def load_model(location: str) -> Any:
    """The tf_keras model of the checkpoint at ``location`` (a local path or gs:// URI), not
    compiled: for logging, serving and export, not for more training."""
    import ray.train
    import tensorflow as tf

    from raytrain.storage import resolve

    filesystem, path = resolve(location)
    with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as folder:
        return tf.keras.models.load_model(str(Path(folder, MODEL_FILE)), compile=False)
