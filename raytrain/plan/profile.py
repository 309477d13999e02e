"""The profile: a few epochs of the experiment's real model on (a slice of) its real data, trained
the way ``raytrain run`` trains it, where it would run (a private local Ray, or ``--address``).

Three short epochs: the first pays for the worker group and TensorFlow's tracing, the others
are steady state. Each epoch's commit is timed on this driver, and the workers' own
``epoch_time_s`` separates the per-step compute (which scales to the full data) from what each
epoch pays whatever its size (the checkpoint, the report).
"""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
import ray.util.queue

from raytrain import tracking
from raytrain.cluster.connection import WORKER_ENV, connect
from raytrain.cluster.resources import check_feasible, check_locality, worker_slots
from raytrain.config.schema import Experiment
from raytrain.data.dataset import Dataset, load_dataset
from raytrain.errors import find_user_error
from raytrain.plan.estimate import Profile, hardware_needed
from raytrain.storage import forwarded_env
from raytrain.train.session import Trained

__all__ = ["PROFILE_EPOCHS", "PROFILE_STEPS", "hardware_here", "profile"]

PROFILE_EPOCHS = 3  # one to warm up, two at steady state
PROFILE_STEPS = 24  # steps per epoch and worker at most: enough for a steady per-step time


def connect_here(address: str | None) -> float:
    """Join ``address`` or start Ray as ``raytrain run`` would; the seconds it took."""
    start = time.monotonic()
    connect(address, env_vars={**WORKER_ENV, **tracking.CLIENT_ENV, **forwarded_env()})
    return time.monotonic() - start


def hardware_here(spec: Experiment) -> bool:
    """Whether the connected cluster has the hardware the experiment asks for."""
    need = hardware_needed(spec)
    return need == "cpu" or worker_slots(spec.worker_resources()) >= spec.scaling.num_workers


def profile(spec: Experiment, *, base_dir: str, connect_s: float) -> Profile:
    """Train ``PROFILE_EPOCHS`` short epochs of ``spec`` on the connected cluster and measure,
    the way the run trains (one actor for 1 worker, a sweep's worker group for its trials of N > 1
    workers, else Ray Train): their starts differ by seconds."""
    from raytrain.train.group import fit_in_group
    from raytrain.train.loop import fit
    from raytrain.train.process import fit_in_process

    check_locality(spec.data.locality_rule)
    check_feasible(
        num_workers=spec.scaling.num_workers,
        per_worker=spec.worker_resources(),
        what=f"experiment '{spec.name}'",
    )
    start = time.monotonic()
    data = load_dataset(spec.data, loss=spec.train.loss, task_cpus=0 if spec.tune else None)
    data_s = time.monotonic() - start
    world, batch = spec.scaling.num_workers, spec.per_worker_batch_size
    steps = _steps(data.info.num_train, world, batch, streamed=data.streams is not None)
    profiled = min(steps, PROFILE_STEPS)
    short = _sliced(data, rows=profiled * batch * world, world=world)
    quick = spec.model_copy(
        update={
            "train": spec.train.model_copy(update={"epochs": PROFILE_EPOCHS}),
            "checkpoint": spec.checkpoint.model_copy(update={"keep": 1}),
        }
    )
    with tempfile.TemporaryDirectory(prefix="raytrain-plan-") as folder:
        train = (
            fit_in_process if spec.in_one_process else fit_in_group if spec.in_reused_group else fit
        )
        commits, began, ended = _timed_fit(train, quick, short, folder, base_dir)
    times = [at for at, _ in commits]
    cycles = [b - a for a, b in itertools.pairwise(times)]
    cycle = statistics.median(cycles)
    compute = statistics.median(event["epoch_time_s"] for _, event in commits[1:])
    epoch_s = max(cycle - compute, 0.0) + compute * steps / profiled
    return Profile(
        hardware=hardware_needed(spec),
        connect_s=connect_s,
        data_s=data_s,
        start_s=max(times[0] - began - cycle, 0.0),
        epoch_s=epoch_s,
        end_s=ended - times[-1],
        retrace_s=max(commits[0][1]["epoch_time_s"] - compute, 0.0),
        slots=worker_slots(spec.worker_resources()),
        steps=steps,
        profiled_steps=profiled,
    )


def _steps(rows: int, world: int, batch: int, *, streamed: bool) -> int:
    """Steps per epoch and worker, as the training loop counts them."""
    if streamed:
        return max(rows // world // batch, 1)
    return max(math.ceil(math.ceil(rows / world) / batch), 1)


def _sliced(data: Dataset, *, rows: int, world: int) -> Dataset:
    """The first ``rows`` training rows and as large a share of the validation rows, no test
    rows (the profile times epochs, not the final evaluation)."""
    info = data.info
    if rows >= info.num_train:
        return replace(data, x_test=None, y_test=None, info=replace(info, num_test=0))
    val = max(math.ceil(info.num_val * rows / info.num_train), world)
    info = replace(info, num_train=rows, num_val=val, num_test=0)
    if data.ray_datasets is not None:
        sets = dict(data.ray_datasets)
        sets["train"] = sets["train"].limit(rows)
        if "val" in sets:
            sets["val"] = sets["val"].limit(val)
        return replace(data, info=info, ray_datasets=sets, x_test=None, y_test=None)
    return replace(
        data,
        x_train=data.x_train[:rows],
        y_train=data.y_train[:rows],
        x_val=data.x_val[:val],
        y_val=data.y_val[:val],
        x_test=None,
        y_test=None,
        info=info,
    )


def _timed_fit(
    fit: Callable[..., Trained], spec: Experiment, data: Dataset, folder: str, base_dir: str
) -> tuple[list[tuple[float, dict[str, Any]]], float, float]:
    """Run ``fit`` with no tracking; each committed epoch with the time it reached this driver,
    when fit began and when it returned."""
    from raytrain.train.process import release

    queue = ray.util.queue.Queue(actor_options={"num_cpus": 0})
    outcome: dict[str, Any] = {}

    def _fit() -> None:
        try:
            trained = fit(
                spec,
                data_ref=ray.put(data.for_workers()),
                datasets=data.ray_datasets,
                run_name="profile",
                storage_path=folder,
                tracking=None,
                progress=queue,
                base_dir=base_dir,
            )
            release(trained)  # a 1-worker actor stays up for the model's logging otherwise
        except BaseException as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    commits: list[tuple[float, dict[str, Any]]] = []
    began = time.monotonic()
    worker = threading.Thread(target=_fit, name="raytrain-plan-profile", daemon=True)
    worker.start()
    while worker.is_alive() or not queue.empty():
        try:
            event = queue.get(timeout=0.05)
        except ray.util.queue.Empty:
            continue
        if isinstance(event, dict):
            commits.append((time.monotonic(), event))
    if "error" in outcome:
        raise find_user_error(outcome["error"]) from None
    return commits, began, outcome["ended"]
