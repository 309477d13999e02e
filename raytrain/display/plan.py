"""A plan (``raytrain plan``) for the terminal: time here, trials and epochs, then one row per
cluster config with node-hours and cost, the prices' sources, and what was left out."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_plan"]


def print_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    plain: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}

    def say(text: str) -> None:
        console.print(text, **plain)

    trials, epochs = plan["trials"], plan["epochs"]
    what = (
        f"{trials} trial(s), {epochs:.3g} epoch(s) expected in all"
        if trials > 1
        else (f"1 run of {epochs:g} epoch(s)")
    )
    say(f"plan for '{plan['experiment']}' ({plan['hardware']}): {what}")
    if plan["wall_s"] is None:
        say(f"{plan['where']} has no {plan['hardware']} to profile on: times unknown here")
    else:
        profile = plan["profile"]
        say(
            f"{plan['where']}: {_duration(plan['wall_s'])} expected "
            f"({plan['node_hours_here']:.3g} node-hours); an epoch {plan['epoch_s']:.2f} s "
            f"({profile['steps']} step(s) per worker, profiled on {profile['profiled_steps']}), "
            f"a trial {_duration(plan['trial_s'])}"
            + (f", {plan['concurrent']} trial(s) at once" if plan["concurrent"] else "")
        )
        if plan.get("budget_capped"):
            say("tune.time_budget_s ends the sweep before every trial has run")
    table = Table()
    for column in ("cluster config", "wall", "node-hours", "on demand", "spot", "note"):
        table.add_column(column, overflow="fold")
    for entry in plan["configs"]:
        if not entry["usable"]:
            continue
        hours = entry["node_hours_by_type"]
        table.add_row(
            entry["name"],
            _duration(entry["wall_s"]) if entry["wall_s"] is not None else "unknown",
            ", ".join(f"{k} {v:.3g}" for k, v in hours.items()) if hours else "unknown",
            _usd(entry["on_demand_usd"], hours),
            _usd(entry["spot_usd"], hours),
            entry["note"],
        )
    console.print(table)
    if plan["fastest"]:
        say(f"fastest: {plan['fastest']}; cheapest: {plan['cheapest'] or 'price unknown'}")
    for excluded in plan["excluded"]:
        say(f"not usable: {excluded['name']} ({excluded['why']})")
    say("prices:")
    for entry in plan["configs"]:
        for line in entry["prices"]:
            say(f"  {entry['name']} {line}")
    for name, left_out in plan["not_counted"].items():
        say(f"not counted for {name}: {left_out}")
    if plan.get("saved"):
        say(f"kept for the run's plan-vs-actual tags in {plan['saved']} ({plan['plan_s']:.0f} s)")


def _usd(value: float | None, hours: dict[str, float] | None) -> str:
    if value is not None:
        return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
    return "price unknown" if hours else "unknown"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
