"""Where the training loop runs, behind one small interface: a worker of a Ray Train run, or a
1-worker sweep trial training inside its own Ray Tune trial process.

The loop (``loop.py``) asks its session for its rank and world size, the checkpoint to resume
from, a streamed dataset's shard, and hands it each epoch's metrics and checkpoint folder. Ray
Train's session keeps checkpoints and restarts lost workers itself. A trial's session does the
same with the trial's folder: checkpoints in the layout Ray Train uses (``checkpoint_<epoch>``
under ``<sweep>-trials/trial-<id>``), the ``checkpoint.keep`` best by ``checkpoint.score`` kept
(and the latest, which a restarted trial resumes from), each epoch reported to Tune with its
checkpoint's location, as Ray Train's ``TuneReportCallback`` does. No TensorFlow here: the
sweep's driver and Tune's trial processes import this module before a trial decides to train.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from raytrain import storage
from raytrain.config.schema import Experiment
from raytrain.errors import TrainingError

__all__ = [
    "CHECKPOINT_PATH",
    "CODE_ERROR_FILE",
    "RayTrainSession",
    "Session",
    "TrialSession",
    "code_error",
]

# The metric that carries an epoch's checkpoint location to Tune (Ray Train's own key for it).
CHECKPOINT_PATH = "checkpoint_path"
# A trial's record that its own code or data failed: Tune must not retry it (``code_error``).
CODE_ERROR_FILE = "raytrain_code_error.json"
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")


class Session(Protocol):
    rank: int
    world: int

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        """One epoch (or the final test metrics, without ``folder``): every worker calls it."""

    def resume_from(self) -> Any:
        """A context manager giving the local folder of the checkpoint to resume from, or None."""

    def dataset_shard(self, name: str) -> Any:
        """This worker's share of a streamed (Ray Data) split."""


class RayTrainSession:
    """A worker of a Ray Train run: Ray Train commits, keeps and restores the checkpoints."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        import ray.train

        # Only rank 0's copy becomes the checkpoint; every worker reports (it is a barrier).
        saved = ray.train.Checkpoint.from_directory(folder) if folder and self.rank == 0 else None
        ray.train.report(metrics, checkpoint=saved)

    @contextmanager
    def resume_from(self) -> Iterator[str | None]:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            yield folder

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)


class TrialSession:
    """A 1-worker sweep trial training in its Tune trial's process."""

    rank, world = 0, 1

    def __init__(self, spec: Experiment, folder: str, datasets: dict[str, Any] | None) -> None:
        self.folder, self.datasets = folder, datasets or {}
        self.keep = spec.checkpoint.keep
        self.score, self.mode = spec.checkpoint.score, spec.checkpoint.mode
        self.kept = _checkpoints(folder)  # epoch -> metrics, of a trial that ran before

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        from ray import tune

        if folder is None:
            tune.report(dict(metrics))
            return
        epoch = int(metrics["epoch"])
        location = storage.join(self.folder, f"checkpoint_{epoch:06d}")
        storage.upload_folder(Path(folder), location)
        self.kept[epoch] = dict(metrics)
        for old in self._surplus():
            _delete_checkpoint(storage.join(self.folder, f"checkpoint_{old:06d}"))
            del self.kept[old]
        tune.report({**metrics, CHECKPOINT_PATH: location})

    def _surplus(self) -> list[int]:
        """The epochs whose checkpoints ``checkpoint.keep`` lets go: all but the best ``keep``
        by score (ties: the earlier epoch) and the latest."""
        if self.keep is None:
            return []
        scored = [e for e, m in self.kept.items() if self.score in m]
        sign = -1 if self.mode == "max" else 1
        best = sorted(scored, key=lambda e: (sign * self.kept[e][self.score], e))[: self.keep]
        latest = max(self.kept)
        return sorted(e for e in self.kept if e not in best and e != latest)

    @contextmanager
    def resume_from(self) -> Iterator[str | None]:
        if not self.kept:
            yield None
            return
        from ray.train import Checkpoint

        path, filesystem = storage.ray_storage(
            storage.join(self.folder, f"checkpoint_{max(self.kept):06d}")
        )
        with Checkpoint(path, filesystem=filesystem).as_directory() as folder:
            yield folder

    def dataset_shard(self, name: str) -> Any:
        return self.datasets[name]  # one worker reads the whole split


def _checkpoints(folder: str) -> dict[int, dict[str, float]]:
    """The checkpoints a trial's folder holds (epoch -> that epoch's metrics)."""
    from raytrain.train.checkpoint import STATE_FILE

    found: dict[int, dict[str, float]] = {}
    for name in storage.list_files(folder):
        parts = name.split("/")
        match = _CHECKPOINT.match(parts[0])
        if match and parts[1:] == [STATE_FILE]:
            state = json.loads(storage.read_text(storage.join(folder, name)))
            found[int(match.group(1))] = state["metrics"]
    return found


def _delete_checkpoint(location: str) -> None:
    storage.delete_files(location, storage.list_files(location))
    if not storage.is_gcs(location):
        for path in sorted(Path(location).rglob("*"), reverse=True):
            path.rmdir()  # the emptied subfolders (a SavedModel's variables/)
        Path(location).rmdir()


def code_error(folder: str) -> TrainingError | None:
    """The error a trial's own code or data raised in an earlier attempt, if one did."""
    location = storage.join(folder, CODE_ERROR_FILE)
    if not storage.exists(location):
        return None
    return TrainingError(json.loads(storage.read_text(location))["error"])


def record_code_error(folder: str, error: Exception) -> None:
    storage.write_text(storage.join(folder, CODE_ERROR_FILE), json.dumps({"error": str(error)}))
