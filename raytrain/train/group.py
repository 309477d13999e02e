"""A multi-worker sweep trial's own worker group, kept for the next trial of its Tune process.

A Ray Train run starts a controller and a new worker group, whose processes import TensorFlow
and shake hands for MultiWorkerMirroredStrategy: a 2-worker trial costs 9.5-11 s beyond its
epochs on 2 cores that way, 2.1 s on a reused group (benchmarks/README.md, sweep_overhead).
TensorFlow starts a process's collective-ops server once, on the ports ``TF_CONFIG`` names, and
cannot start it again on others (``python -m benchmarks.mwms_reuse``: a second strategy on new
ports hangs, on the same ports it trains). A group that trains the next trial must keep its
processes and their ports; Ray Train has no API to hand a group to the next run, so raytrain
keeps its own:

    created:   by the trial's function (Tune reuses its process for the next trial), N actors
               in the trial's placement group (bundles 1..N), ``TF_CONFIG`` set once for good
    per trial: every worker runs ``loop.train`` with a ``GroupSession``; rank 0's reports go to
               Tune; at each report every worker waits for the trial's answer, continue or stop
               (the scheduler stopped the trial): all stop at the same epoch, none is left
               waiting in an all-reduce, and the group trains the next trial
    on error:  any worker's error or loss ends the whole group (its peers would wait in an
               all-reduce for good); the trial fails (its code or data), or Tune starts it
               again from its last checkpoint in a new group (a lost worker,
               ``failure.max_failures``)
    at the end: the group's actors belong to the trial's process and end with it
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain import storage
from raytrain.cluster.connection import WORKER_ENV
from raytrain.config.schema import Experiment
from raytrain.tracking.runs import CLIENT_ENV
from raytrain.train.backend import place_worker, set_tf_config
from raytrain.train.loop import loop_config
from raytrain.train.session import (
    CheckpointFolder,
    GroupSession,
    Trained,
    TrialStopped,
    mark_delivered,
)

__all__ = ["LostWorker", "fit_in_group", "train_in_group"]

# How long the workers of a stopped trial may take to leave training (a checkpoint being
# written) before the group is given up and the next trial starts a new one.
STOP_GRACE_S = 60.0


class LostWorker(RuntimeError):
    """A worker's process or node was lost: the trial may be tried again, in a new group."""


@dataclass
class _Group:
    workers: list[Any]
    local_ranks: list[int]
    nodes: list[str]
    resources: dict[str, Any]

    def end(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


# This process's group, by its placement group (Tune keeps a reused trial process's group).
_KEPT: dict[str, _Group] = {}


def train_in_group(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    folder: str,
    base_dir: str,
    trial_id: str,
    report: Callable[[dict[str, Any]], None],
    datasets: dict[str, Any] | None = None,
) -> None:
    """Train one trial on this process's group (started first if it has none): rank 0's
    reports to ``report`` (Tune's), checkpoints to ``folder`` in Ray Train's layout, each to
    count once the report's receiver marks it (``mark_delivered``). An error of
    a worker's code or data is raised as it is; a lost worker as ``LostWorker``."""
    try:
        group = _group(spec)
    except ray.exceptions.RayActorError as exc:  # a worker lost while the group started
        raise LostWorker(f"a worker of the trial's group was lost: {exc}") from exc
    world = len(group.workers)
    shards: list[dict[str, Any]] = [{} for _ in range(world)]
    for name, dataset in (datasets or {}).items():  # as Ray Train's DataConfig splits them
        for rank, part in enumerate(
            dataset.streaming_split(world, equal=True, locality_hints=group.nodes)
        ):
            shards[rank][name] = part
    config = loop_config(spec, data_ref=data_ref, run_folder=folder, base_dir=base_dir)
    attempt = f"{trial_id}/{uuid.uuid4().hex}"  # a retried trial's answers are not the last's
    pending = [
        worker.train.remote(config, folder, attempt, rank, world, group.local_ranks[rank], shard)
        for rank, (worker, shard) in enumerate(zip(group.workers, shards, strict=True))
    ]
    try:
        sent = 0
        while (metrics := _next_report(group, attempt, sent, pending)) is not None:
            sent += 1
            try:
                report(metrics)
            except BaseException:  # the scheduler stopped the trial (Tune raises SystemExit)
                _stop(group, attempt, sent, pending)
                raise
            _answer(group, attempt, sent, go=True)
        ray.get(pending)
    except ray.exceptions.RayActorError as exc:
        _discard(group)
        raise LostWorker(f"a worker of the trial's group was lost: {exc}") from exc
    except BaseException as exc:
        if not isinstance(exc, SystemExit):  # stopped: _stop kept the group, or gave it up
            _discard(group)
        raise


def fit_in_group(
    spec: Experiment,
    *,
    data_ref: ray.ObjectRef,
    run_name: str,
    storage_path: str,
    tracking: None,
    progress: Any,
    base_dir: str,
    datasets: dict[str, Any] | None = None,
) -> Trained:
    """One trial's training on a new group, outside Tune, each report to the ``progress`` queue
    (``fit``'s signature): how ``raytrain plan`` profiles the trials of such a sweep. The group
    ends with it: this process keeps none."""
    folder = storage.join(storage_path, run_name)
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        last.update(metrics)
        progress.put(dict(metrics))
        mark_delivered(folder, metrics)  # in a sweep, Tune's driver marks it on arrival

    try:
        train_in_group(
            spec,
            data_ref=data_ref,
            folder=folder,
            base_dir=base_dir,
            trial_id=run_name,
            report=report,
            datasets=datasets,
        )
    finally:
        for group in list(_KEPT.values()):
            _discard(group)
    return CheckpointFolder(spec, folder).trained(last)


def _next_report(
    group: _Group, attempt: str, index: int, pending: list[ray.ObjectRef]
) -> dict[str, Any] | None:
    """Rank 0's report ``index`` of this attempt, or None once it trained to its end. A worker
    that fails meanwhile raises its error here (the others may be waiting for it)."""
    wanted = group.workers[0].sent.remote(attempt, index)
    while True:
        ready, _ = ray.wait([wanted, *pending], num_returns=1)
        if wanted in ready:
            return ray.get(wanted)  # type: ignore[no-any-return]
        ray.get(ready[0])  # a worker ended: raises its error, if it failed
        pending.remove(ready[0])


def _answer(group: _Group, attempt: str, index: int, *, go: bool) -> None:
    ray.get([worker.answer.remote(attempt, index, go) for worker in group.workers])


def _stop(group: _Group, attempt: str, index: int, pending: list[ray.ObjectRef]) -> None:
    """Every worker leaves training at report ``index``; the group is kept for the next trial,
    unless a worker fails or does not leave in time."""
    try:
        _answer(group, attempt, index, go=False)
        ray.get(pending, timeout=STOP_GRACE_S)
    except Exception:
        _discard(group)


def _group(spec: Experiment) -> _Group:
    """This process's kept group, or a new one in its placement group's worker bundles."""
    placement = ray.util.get_current_placement_group()
    key = placement.id.hex() if placement else ""
    resources = spec.worker_resources()
    kept = _KEPT.get(key)
    if kept and len(kept.workers) == spec.scaling.num_workers and kept.resources == resources:
        return kept
    if kept:
        _discard(kept)
    asks = dict(resources)
    options: dict[str, Any] = {
        "num_cpus": asks.pop("CPU", 0.0),
        "num_gpus": asks.pop("GPU", 0.0),
        "resources": asks,
        "runtime_env": {"env_vars": {**WORKER_ENV, **CLIENT_ENV, **storage.forwarded_env()}},
    }
    workers = [
        _GroupWorker.options(  # type: ignore[attr-defined]
            **options,
            # Bundle 0 is the trial function's own; bundle i + 1 is worker i's.
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement, rank + 1)
            if placement
            else None,
        ).remote()
        for rank in range(spec.scaling.num_workers)
    ]
    try:
        places = ray.get([worker.place.remote() for worker in workers])
        urls, nodes = [url for url, _ in places], [node for _, node in places]
        ray.get(
            [worker.join.remote(urls, rank, ",".join(nodes)) for rank, worker in enumerate(workers)]
        )
    except BaseException:
        for worker in workers:
            ray.kill(worker)
        raise
    local_ranks = [nodes[:rank].count(node) for rank, node in enumerate(nodes)]
    _KEPT[key] = group = _Group(workers, local_ranks, nodes, resources)
    return group


def _discard(group: _Group) -> None:
    group.end()
    for key, kept in list(_KEPT.items()):
        if kept is group:
            del _KEPT[key]


# Threads: one trains; the others take the trial's calls for reports and answers meanwhile.
@ray.remote(max_concurrency=3)
class _GroupWorker:
    """One worker of the group: a process that keeps TensorFlow, its collective-ops server and
    its ports from one trial to the next."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._attempt = ""
        self._sent: list[dict[str, Any]] = []
        self._answers: dict[int, bool] = {}
        self._training = False

    def place(self) -> tuple[str, str]:
        return place_worker()

    def join(self, urls: list[str], rank: int, nodes: str) -> None:
        set_tf_config(urls, rank, nodes)

    def train(
        self,
        config: dict[str, Any],
        folder: str,
        attempt: str,
        rank: int,
        world: int,
        local_rank: int,
        shards: dict[str, Any],
    ) -> bool:
        """Train this worker's share of the trial; False if the trial was stopped."""
        from raytrain.train.loop import train

        with self._changed:
            self._attempt, self._sent, self._answers = attempt, [], {}
            self._training = True
            self._changed.notify_all()
        session = GroupSession(
            Experiment.model_validate(config["spec"]),
            folder,
            rank=rank,
            world=world,
            local_rank=local_rank,
            shards=shards,
            send=self._send,
            answer=self._wait,
        )
        try:
            train(config, session)
            return True
        except TrialStopped:
            return False
        finally:
            with self._changed:
                self._training = False
                self._changed.notify_all()

    def sent(self, attempt: str, index: int) -> dict[str, Any] | None:
        """Report ``index`` of the attempt, once this worker sent it; None if it ended first."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._attempt == attempt and (len(self._sent) > index or not self._training)
            )
            return self._sent[index] if len(self._sent) > index else None

    def answer(self, attempt: str, index: int, go: bool) -> None:
        with self._changed:
            if self._attempt == attempt:
                self._answers[index] = go
                self._changed.notify_all()

    def _send(self, metrics: dict[str, Any]) -> None:
        with self._changed:
            self._sent.append(metrics)
            self._changed.notify_all()

    def _wait(self, index: int) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: index in self._answers)
            return self._answers[index]
