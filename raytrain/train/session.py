"""Where the training loop runs, behind one small interface: a worker of a Ray Train run, a
1-worker run in one Ray actor, a 1-worker sweep trial inside its own Ray Tune trial process, or a
worker of a multi-worker sweep trial's reused group (``group.py``).

The loop (``loop.py``) asks its session for its rank and world size, the checkpoint to resume
from, a streamed dataset's shard, and hands it each epoch's metrics and checkpoint folder. Ray
Train keeps checkpoints itself; the other two keep them in a ``CheckpointFolder``, in the layout
Ray Train uses (``checkpoint_<epoch>`` in the run's folder, or in ``<sweep>-trials/trial-<id>``).
No TensorFlow here: the
sweep's driver and Tune's trial processes import this module before a trial decides to train.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raytrain import storage
from raytrain.config.schema import Experiment
from raytrain.errors import TrainingError

__all__ = [
    "CHECKPOINT_PATH",
    "CODE_ERROR_FILE",
    "CheckpointFolder",
    "GroupSession",
    "ProcessSession",
    "RayTrainSession",
    "Session",
    "Trained",
    "TrialSession",
    "TrialStopped",
    "code_error",
    "mark_delivered",
]

# The metric that carries an epoch's checkpoint location to Tune (Ray Train's own key for it).
CHECKPOINT_PATH = "checkpoint_path"
# A trial's record that its own code or data failed: Tune must not retry it (``code_error``).
CODE_ERROR_FILE = "raytrain_code_error.json"
# The latest epoch whose checkpoint counts: a trial's, once Tune's driver has its report (the
# sweep's driver marks it, ``mark_delivered``); a 1-worker run's, once stored.
REPORTED_FILE = "raytrain_reported.json"
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")


@dataclass(frozen=True)
class Trained:
    """What a finished training run left, however it ran: its folder, its last report (the
    last epoch's metrics, with the test metrics), its latest checkpoint and the checkpoints kept,
    each with its metrics (locations local or gs://)."""

    folder: str
    metrics: dict[str, float]
    latest: str | None
    kept: list[tuple[str, dict[str, float]]]
    # The process that trained, still up with TensorFlow imported (a 1-worker run's actor): the
    # driver has it log the best model instead of importing TensorFlow itself (seconds of CPU).
    # None after a Ray Train run, whose workers are gone once it returns.
    trainer: Any = None


class Session(Protocol):
    rank: int
    world: int
    local_rank: int  # among the workers on this node

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
        self.local_rank = context.get_local_rank()

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


class CheckpointFolder:
    """A run's or trial's folder of checkpoints, in Ray Train's layout (``checkpoint_<epoch>``),
    where a training process without Ray Train keeps them: the ``checkpoint.keep`` best by
    ``checkpoint.score`` (ties: the earlier epoch), and always the latest, which a restarted
    process resumes from."""

    def __init__(self, spec: Experiment, folder: str) -> None:
        self.folder = folder
        self.keep = spec.checkpoint.keep
        self.score, self.mode = spec.checkpoint.score, spec.checkpoint.mode
        self.kept = _checkpoints(folder)  # epoch -> metrics, of an earlier attempt too

    def location(self, epoch: int) -> str:
        return storage.join(self.folder, f"checkpoint_{epoch:06d}")

    @contextmanager
    def saving(self, local: str, metrics: dict[str, float]) -> Iterator[str]:
        """Store the checkpoint written to ``local`` for ``metrics["epoch"]`` and give its
        location to the block that reports it. It counts once whoever receives the report marks
        it (``mark_delivered``); once the block returns, those ``checkpoint.keep`` no longer
        keeps are let go."""
        epoch = int(metrics["epoch"])
        storage.upload_folder(Path(local), self.location(epoch))
        yield self.location(epoch)
        self.kept[epoch] = dict(metrics)
        for old in self._surplus():
            _delete_checkpoint(self.location(old))
            del self.kept[old]

    def save(self, local: str, metrics: dict[str, float]) -> str:
        """``saving`` with nothing to deliver first: the checkpoint counts at once."""
        with self.saving(local, metrics) as location:
            mark_delivered(self.folder, {**metrics, CHECKPOINT_PATH: location})
            return location

    def _surplus(self) -> list[int]:
        if self.keep is None:
            return []
        scored = [e for e, m in self.kept.items() if self.score in m]
        sign = -1 if self.mode == "max" else 1
        best = sorted(scored, key=lambda e: (sign * self.kept[e][self.score], e))[: self.keep]
        latest = max(self.kept)
        return sorted(e for e in self.kept if e not in best and e != latest)

    def latest(self) -> int | None:
        return max(self.kept) if self.kept else None

    def trained(self, metrics: dict[str, float]) -> Trained:
        """The run as it ended, its last report ``metrics``."""
        latest = self.latest()
        return Trained(
            folder=self.folder,
            metrics=metrics,
            latest=self.location(latest) if latest is not None else None,
            kept=[(self.location(e), m) for e, m in sorted(self.kept.items())],
        )

    @contextmanager
    def resume_from(self) -> Iterator[str | None]:
        """The latest checkpoint as a local folder (downloaded from gs://), or None."""
        latest = self.latest()
        if latest is None:
            yield None
            return
        from ray.train import Checkpoint

        path, filesystem = storage.ray_storage(self.location(latest))
        with Checkpoint(path, filesystem=filesystem).as_directory() as folder:
            yield folder


class TrialSession:
    """A 1-worker sweep trial training in its Tune trial's process: each epoch to Tune with its
    checkpoint's location, as Ray Train's ``TuneReportCallback`` does (the sweep's driver
    marks it delivered when the report arrives)."""

    rank, world, local_rank = 0, 1, 0

    def __init__(self, spec: Experiment, folder: str, datasets: dict[str, Any] | None) -> None:
        self.checkpoints = CheckpointFolder(spec, folder)
        self.datasets = datasets or {}

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        from ray import tune

        if folder is None:
            tune.report(dict(metrics))
            return
        with self.checkpoints.saving(folder, metrics) as location:
            tune.report({**metrics, CHECKPOINT_PATH: location})

    def resume_from(self) -> Any:
        return self.checkpoints.resume_from()

    def dataset_shard(self, name: str) -> Any:
        return self.datasets[name]  # one worker reads the whole split


class ProcessSession:
    """A 1-worker run training in one Ray actor (``train.process``): each epoch, once its
    checkpoint is stored, to ``on_epoch`` (MLflow and the driver's progress queue)."""

    rank, world, local_rank = 0, 1, 0

    def __init__(
        self,
        spec: Experiment,
        folder: str,
        datasets: dict[str, Any] | None,
        on_epoch: Callable[[dict[str, float]], None],
    ) -> None:
        self.checkpoints = CheckpointFolder(spec, folder)
        self.datasets, self.on_epoch = datasets or {}, on_epoch
        self.final: dict[str, float] = {}

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        if folder is None:  # the final metrics (test metrics, or a run resumed when done)
            self.final = dict(metrics)
            return
        # It counts before it is sent: the run's end logs the epochs MLflow lacks from the
        # checkpoint's history, and a driver lost meanwhile takes this actor with it.
        self.checkpoints.save(folder, metrics)
        self.final = dict(metrics)
        self.on_epoch(dict(metrics))

    def resume_from(self) -> Any:
        return self.checkpoints.resume_from()

    def dataset_shard(self, name: str) -> Any:
        return self.datasets[name]


class TrialStopped(Exception):
    """The trial's scheduler stopped it at this epoch: every worker of its group leaves training
    here, at the same epoch, so that none is left waiting in an all-reduce."""


class GroupSession:
    """A worker of a multi-worker sweep trial in a reused group (``group.py``). Rank 0 keeps the
    checkpoints (``CheckpointFolder``) and sends each report to the trial (``send``); every
    worker then waits for the trial's answer to that report (``answer``: continue or stop), so
    that all of them stop at the same epoch when the scheduler stops the trial."""

    def __init__(
        self,
        spec: Experiment,
        folder: str,
        *,
        rank: int,
        world: int,
        local_rank: int,
        shards: dict[str, Any],
        send: Callable[[dict[str, Any]], None],
        answer: Callable[[int], bool],
    ) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.checkpoints = CheckpointFolder(spec, folder)
        self.shards, self.send, self.answer = shards, send, answer
        self.reports = 0

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        self.reports += 1
        keeps = folder if self.rank == 0 else None
        saving = self.checkpoints.saving(keeps, metrics) if keeps else nullcontext(None)
        with saving as location:  # it counts once Tune's driver has the report
            if self.rank == 0:  # with the checkpoint's location, as Ray Train sends it
                self.send({**metrics, CHECKPOINT_PATH: location} if location else dict(metrics))
            go = self.answer(self.reports)
        if not go:
            raise TrialStopped(f"stopped after report {self.reports}")

    def resume_from(self) -> Any:
        return self.checkpoints.resume_from()

    def dataset_shard(self, name: str) -> Any:
        return self.shards[name]  # this worker's part of the trial's streaming_split


def _checkpoints(folder: str) -> dict[int, dict[str, float]]:
    """The checkpoints a run's or trial's folder holds whose reports were delivered (epoch ->
    that epoch's metrics). One saved after the last delivered report is left out: the epoch is
    trained again, and the save then replaces its files."""
    from raytrain.train.checkpoint import STATE_FILE

    names = storage.list_files(folder)
    if REPORTED_FILE not in names:
        return {}
    reported = json.loads(storage.read_text(storage.join(folder, REPORTED_FILE)))["epoch"]
    found: dict[int, dict[str, float]] = {}
    for name in names:
        parts = name.split("/")
        match = _CHECKPOINT.match(parts[0])
        if match and parts[1:] == [STATE_FILE] and int(match.group(1)) <= reported:
            state = json.loads(storage.read_text(storage.join(folder, name)))
            found[int(match.group(1))] = state["metrics"]
    return found


def mark_delivered(folder: str, report: dict[str, Any]) -> None:
    """The checkpoint ``report`` carries, if it carries one, counts from now on: the report was
    delivered. Whoever receives the report marks it, as Ray Train commits a checkpoint when its
    report arrives: a process lost just after resumes from it, and no epoch is reported twice."""
    if CHECKPOINT_PATH in report:
        epoch = json.dumps({"epoch": int(report["epoch"])})
        storage.write_text(storage.join(folder, REPORTED_FILE), epoch)


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


def record_code_error(folder: str, error: BaseException) -> None:
    storage.write_text(storage.join(folder, CODE_ERROR_FILE), json.dumps({"error": str(error)}))
