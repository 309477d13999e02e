"""Plan against actual: ``raytrain plan`` keeps its estimate in the experiment's storage folder,
and every run and sweep records, as MLflow tags, that estimate (when one was made for the same
experiment) beside its own wall time and node-hours; ``raytrain show`` prints both."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytrain import storage
from raytrain.config.schema import Experiment
from raytrain.tracking import names

if TYPE_CHECKING:
    from raytrain.tracking.runs import TrackedRun

__all__ = [
    "ACTUAL_NODE_HOURS_TAG",
    "ACTUAL_WALL_TAG",
    "PLAN_WALL_TAG",
    "compare",
    "plan_file",
    "record_actual",
    "save_plan",
]

log = logging.getLogger(__name__)

PLAN_WALL_TAG = f"{names.TAG_PREFIX}plan.wall_s"
PLAN_NODE_HOURS_TAG = f"{names.TAG_PREFIX}plan.node_hours"
ACTUAL_WALL_TAG = f"{names.TAG_PREFIX}actual.wall_s"
ACTUAL_NODE_HOURS_TAG = f"{names.TAG_PREFIX}actual.node_hours"


def plan_file(spec: Experiment) -> str:
    """Where the plan of this exact experiment is kept (its run name aside)."""
    return storage.join(storage_folder(spec), "plans", f"{_digest(spec)}.json")


def storage_folder(spec: Experiment) -> str:
    if storage.is_gcs(spec.storage):
        return storage.join(spec.storage, spec.name)
    return str(Path(spec.storage).expanduser().resolve() / spec.name)


def save_plan(spec: Experiment, plan: dict[str, Any]) -> str:
    location = plan_file(spec)
    storage.write_text(location, json.dumps(plan, indent=2))
    return location


def record_actual(tracked: TrackedRun | None, spec: Experiment, *, started: float) -> None:
    """Tag the run with its wall time since ``started`` (``time.monotonic``), its node-hours (the
    cluster's alive nodes for that time) and the plan made for this experiment, if any. Never
    fails the run: a missing tag is only a missing comparison."""
    if tracked is None:
        return
    from raytrain.tracking.runs import tag_run

    try:
        import ray

        wall = time.monotonic() - started
        nodes = sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1
        tags = {ACTUAL_WALL_TAG: f"{wall:.1f}", ACTUAL_NODE_HOURS_TAG: f"{nodes * wall / 3600:.4g}"}
        location = plan_file(spec)
        if storage.exists(location):
            plan = json.loads(storage.read_text(location))
            tags[PLAN_WALL_TAG] = f"{plan['wall_s']:.1f}"
            tags[PLAN_NODE_HOURS_TAG] = f"{plan['node_hours_here']:.4g}"
        for key, value in tags.items():
            tag_run(tracked, key, value)
    except Exception as exc:  # the run's results matter more than its calibration
        log.warning("the run's wall time was not recorded: %s", exc)


def compare(tags: dict[str, str]) -> str | None:
    """'planned 40 s, took 44 s (+10%); 0.011 node-hours planned, 0.012 used' from a run's
    tags; None when the run recorded no actual time."""
    actual = tags.get(ACTUAL_WALL_TAG)
    if actual is None:
        return None
    hours = tags.get(ACTUAL_NODE_HOURS_TAG, "?")
    planned = tags.get(PLAN_WALL_TAG)
    if planned is None:
        return f"took {float(actual):.0f} s, {hours} node-hours (no plan was made for it)"
    off = (float(actual) - float(planned)) / max(float(planned), 1e-9)
    return (
        f"planned {float(planned):.0f} s, took {float(actual):.0f} s ({off:+.0%}); "
        f"{tags.get(PLAN_NODE_HOURS_TAG, '?')} node-hours planned, {hours} used"
    )


def _digest(spec: Experiment) -> str:
    """The experiment's identity for a plan: everything but the run's own name."""
    dumped = spec.model_dump(mode="json")
    dumped["tracking"].pop("run_name", None)
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
