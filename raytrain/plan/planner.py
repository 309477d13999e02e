"""``raytrain plan``: profile where the experiment would run, then estimate its time and its cost
on each cluster config. One JSON-ready dict is the plan; the CLI prints it, ``--json`` as is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raytrain.config.loader import LoadedExperiment
from raytrain.config.schema import Experiment
from raytrain.plan.calibration import save_plan
from raytrain.plan.clusters import load_cluster, shipped_configs
from raytrain.plan.estimate import (
    ConfigCost,
    Profile,
    config_cost,
    hardware_needed,
    run_wall,
    trial_epochs,
)

__all__ = ["make_plan"]


def make_plan(
    loaded: LoadedExperiment,
    *,
    address: str | None = None,
    clusters: list[Path] | None = None,
) -> dict[str, Any]:
    """Profile the experiment on Ray (``address``, else as ``raytrain run`` would connect), then
    plan it here and on each cluster config (default: every shipped one); the plan is kept in
    the experiment's storage folder for the run to record beside its actual time."""
    from raytrain.plan.profile import connect_here, hardware_here, profile

    began = time.monotonic()
    spec = loaded.spec
    configs = [load_cluster(path) for path in (clusters or shipped_configs())]
    need = hardware_needed(spec)
    connect_s = connect_here(address)
    measured: Profile | None = None
    if hardware_here(spec):
        measured = profile(spec, base_dir=str(loaded.path.parent.resolve()), connect_s=connect_s)
    trials = spec.tune.trial_count if spec.tune else 1
    plan: dict[str, Any] = {
        "experiment": spec.name,
        "where": address or "this machine",
        "hardware": need,
        "trials": trials,
        "epochs": sum(trial_epochs(spec, trials)),
        "wall_s": None,
        "node_hours_here": None,
        "epoch_s": None,
        "trial_s": None,
        "concurrent": None,
        "profile": None,
    }
    if measured is not None:
        wall, schedule = run_wall(spec, measured, measured.slots, new_store=_new_store(spec))
        plan["wall_s"] = wall
        plan["node_hours_here"] = _nodes_here() * wall / 3600
        plan["epoch_s"] = measured.epoch_s
        if schedule is not None:
            plan["trials"], plan["epochs"] = schedule.trials, schedule.epochs
            plan["concurrent"] = schedule.concurrent
            plan["budget_capped"] = schedule.budget_capped
        per_trial = plan["epochs"] / max(plan["trials"], 1)
        plan["trial_s"] = measured.start_s + measured.end_s + per_trial * measured.epoch_s
        plan["profile"] = {
            k: round(v, 3) if isinstance(v, float) else v for k, v in vars(measured).items()
        }
    costs = [config_cost(spec, cluster, measured, need) for cluster in configs]
    plan["configs"] = [_config_entry(cost) for cost in costs]
    plan["excluded"] = [{"name": c.name, "why": c.note} for c in costs if not c.usable]
    known = [c for c in costs if c.wall_s is not None]
    plan["fastest"] = min(known, key=lambda c: c.wall_s or 0).name if known else None
    priced = [c for c in costs if c.on_demand_usd is not None]
    plan["cheapest"] = min(priced, key=lambda c: c.on_demand_usd or 0).name if priced else None
    plan["not_counted"] = {c.name: c.not_counted for c in configs if c.not_counted}
    plan["plan_s"] = time.monotonic() - began
    if measured is not None:
        plan["saved"] = save_plan(spec, plan)
    return plan


def _config_entry(cost: ConfigCost) -> dict[str, Any]:
    hours = cost.node_hours
    return {
        "name": cost.name,
        "usable": cost.usable,
        "wall_s": cost.wall_s,
        "node_hours": sum(hours.values()) if hours is not None else None,
        "node_hours_by_type": hours,
        "on_demand_usd": cost.on_demand_usd,
        "spot_usd": cost.spot_usd,
        "note": cost.note,
        "prices": cost.prices,
    }


def _new_store(spec: Experiment) -> bool:
    """Whether the run will create its sqlite MLflow store (seconds of schema migrations)."""
    from raytrain.tracking import absolute_tracking_uri

    uri = absolute_tracking_uri(spec.tracking.uri)
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def _nodes_here() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))
