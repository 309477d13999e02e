"""The checkpoint format: what one epoch's checkpoint folder holds, and reading it back.

    model.keras             the whole tf_keras model (what MLflow logs and serving loads)
    weights.*               the weights and optimizer state, for resuming training in place
    raytrain_state.json     {"epoch": epochs completed, "metrics": what that epoch reported,
                             "history": what every epoch so far reported, in order}

The history makes the latest checkpoint the run's record of its metrics: Ray Train commits it with
the weights, so it never holds an epoch the run will train again, and a run whose tracking server
was away logs its epochs from it afterwards (``read_history``).

Only this module knows the layout: the training loop writes and restores through it, the driver
loads the best checkpoint's model through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FILE", "load_model", "log_model", "read_history", "restore", "write"]

MODEL_FILE = "model.keras"
WEIGHTS = "weights"
STATE_FILE = "raytrain_state.json"


def write(model: Any, folder: str, *, history: list[dict[str, float]]) -> None:
    """Fill ``folder`` with the model after the epochs of ``history`` (each with its ``epoch``).

    Under MultiWorkerMirroredStrategy every worker must call this, not only rank 0: saving reads
    mirrored variables through collective ops, and a save on rank 0 alone deadlocks (no error).
    """
    model.save_weights(os.path.join(folder, WEIGHTS))
    # The zip format, said explicitly: tf_keras infers it from ".keras" through a per-thread
    # flag that its own save and load reset to "HDF5" in any thread but the one that imported
    # it, so the second save in a reused trial process (Tune runs trials in threads) wrote
    # HDF5, which model loading refuses (raytrain.tracking.keras_file).
    model.save(os.path.join(folder, MODEL_FILE), save_format="keras_v3")
    last = history[-1]
    state = {"epoch": int(last["epoch"]), "metrics": last, "history": history}
    # A plain write: ``folder`` is a fresh temporary folder that becomes a checkpoint only once
    # complete (Ray Train commits it, or CheckpointFolder copies it), and this module stays
    # loadable with TensorFlow alone (tests/tf_versions_child.py, the TPU hosts' TensorFlow).
    Path(folder, STATE_FILE).write_text(json.dumps(state))


def restore(model: Any, folder: str | None) -> list[dict[str, float]]:
    """Load the checkpoint in ``folder`` into ``model`` (the session's checkpoint to resume from:
    after a restart, or a run resumed from its storage folder); return the metrics of the epochs
    it completed (none without a checkpoint)."""
    if folder is None:
        return []
    state = json.loads(Path(folder, STATE_FILE).read_text())
    model.load_weights(os.path.join(folder, WEIGHTS))
    return _history(state)


def log_model(
    run: Any, location: str, *, example: Any, metadata: dict[str, Any], register_as: str | None
) -> str | None:
    """Log the model of the checkpoint at ``location`` on ``run`` (a ``TrackedRun``), registered
    as ``register_as`` if given; return the version. Run where TensorFlow is imported already."""
    from raytrain.tracking.runs import log_model as log_keras_model

    return log_keras_model(
        run, load_model(location), example=example, metadata=metadata, register_as=register_as
    )


def read_history(location: str) -> list[dict[str, float]]:
    """The metrics of every epoch up to the checkpoint at ``location`` (local or gs://)."""
    from raytrain.storage import join, read_text

    return _history(json.loads(read_text(join(location, STATE_FILE))))


def _history(state: dict[str, Any]) -> list[dict[str, float]]:
    # A checkpoint written before the history was kept knows its own epoch only.
    return state.get("history") or [state["metrics"]]


def load_model(location: str) -> Any:
    """The tf_keras model of the checkpoint at ``location`` (a local path or gs:// URI), not
    compiled: for logging, serving and export, not for more training. Storage may be shared:
    the file passes the same gate as a registered model's (``tracking.keras_file``)."""
    import ray.train

    from raytrain.storage import resolve
    from raytrain.tracking.keras_file import load_keras_file

    filesystem, path = resolve(location)
    with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as folder:
        return load_keras_file(
            Path(folder, MODEL_FILE), what=f"the checkpoint at {location}", name=MODEL_FILE
        )
