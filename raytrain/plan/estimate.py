"""A plan's arithmetic, with no Ray in it: how many trials and epochs the search and scheduler
run, how long that takes at a profile's measured speed, and what each cluster config charges.

Times come from a ``Profile`` (``profile.py``: a few real steps where the experiment would
run); the rest is the experiment's own structure: epochs, the grid or ``num_samples``, ASHA's
rungs, the time budget and how many trials fit at once.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from raytrain.config.schema import Experiment
from raytrain.plan.clusters import Cluster, Hardware, NodeType

__all__ = [
    "ConfigCost",
    "Profile",
    "Schedule",
    "asha_epochs",
    "config_cost",
    "hardware_needed",
    "run_wall",
    "schedule",
    "trial_epochs",
]

# Costs the profile does not run, measured on 2 cores, idle (benchmarks/README.md,
# plan_accuracy): opening the MLflow run and logging the data's lineage; creating a new sqlite
# store (MLflow's schema migrations: 1.6 s); logging and registering the best model, on the
# driver after a Ray Train run (which imports TensorFlow there first) or in the actor that
# trained a 1-worker run (TensorFlow imported already); Tune's start and end in a sweep, and
# each trial's share of Tune's bookkeeping: a trial in a new process, or in a process (and worker
# group) Tune reused, whose start beyond its retrace measured ~0.4 s (sweep_overhead's median
# overhead of reused trials, 1.38 s with 1 worker and 2.11 s with 2, less the profiles' retrace,
# 0.95 s and 1.73 s; 2026-12-07).
TRACKING_START_S = 1.5
NEW_STORE_S = 1.5
MODEL_LOG_S = 4.0
MODEL_LOG_IN_PROCESS_S = 2.3
SWEEP_START_S = 3.0
TRIAL_OVERHEAD_S = 1.5
REUSED_TRIAL_OVERHEAD_S = 0.4


@dataclass(frozen=True)
class Profile:
    """What a short real run measured, in seconds; ``epoch_s`` is a full epoch of the real data
    at steady state (checkpoint and report included)."""

    hardware: Hardware
    connect_s: float  # joining or starting Ray
    data_s: float  # reading the data on the driver (or opening its streams)
    start_s: float  # a training run's start: worker group, model, first epoch's tracing
    epoch_s: float
    end_s: float  # the run's end after its last epoch
    retrace_s: float  # a reused sweep trial process's (or group's) start: model, tracing
    slots: int  # workers of this experiment that fit here at once
    steps: int  # steps per epoch and worker, full data
    profiled_steps: int


@dataclass(frozen=True)
class Schedule:
    trials: int  # trials started
    epochs: float  # expected epochs over all trials
    concurrent: int
    trials_s: float  # from the first trial's start to the last one's end
    budget_capped: bool = False


@dataclass(frozen=True)
class ConfigCost:
    """One cluster config's share of a plan; None where unknown, with ``note`` saying why."""

    name: str
    usable: bool
    wall_s: float | None = None
    node_hours: dict[str, float] | None = None
    on_demand_usd: float | None = None
    spot_usd: float | None = None
    note: str = ""
    prices: list[str] = field(default_factory=list)  # "node type: $/h (source, date)"


def hardware_needed(spec: Experiment) -> Hardware:
    if spec.scaling.accelerator == "tpu":
        return "tpu"
    return "gpu" if spec.scaling.use_gpu else "cpu"


def trial_epochs(spec: Experiment, trials: int) -> list[float]:
    """Expected epochs of each trial in start order: ASHA's rungs stop some early; the median
    rule is counted as stopping none (it depends on the metric's curve: an upper bound)."""
    epochs = spec.train.epochs
    tune = spec.tune
    if tune is None or tune.scheduler.name != "asha":
        return [float(epochs)] * trials
    sched = tune.scheduler
    return asha_epochs(trials, epochs, sched.grace_period, sched.reduction_factor)


def asha_epochs(trials: int, max_t: int, grace_period: int, reduction_factor: float) -> list[float]:
    """Each trial's expected epochs under Ray's ASHA (one bracket, ``time_attr`` = epoch).

    Ray's rule: rungs at grace_period x rf^k (``int(log(max_t / grace) / log(rf) + 1)`` of
    them); a trial is judged at the first epoch that reaches a rung, against the values recorded
    there before it (the first arrival always continues), and stops below their (1 - 1/rf)
    quantile. The rule is simulated here (seeded: the same plan every time) with trials in start
    order and random values whose order is the same at every rung, which is what ASHA bets on;
    with independent values the early arrivals would look luckier than they are."""
    grace = min(grace_period, max_t)
    count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1 + 1e-9)
    rungs = sorted({math.ceil(grace * reduction_factor**k - 1e-9) for k in range(count)})
    rungs = [r for r in rungs if r < max_t]  # a trial at max_t ends by itself
    quantile = (1 - 1 / reduction_factor) * 100
    rng = np.random.default_rng(0)
    rounds = max(50, 4_000 // max(trials, 1))
    totals = np.zeros(trials)
    for _ in range(rounds):
        recorded: list[list[float]] = [[] for _ in rungs]
        for j, value in enumerate(rng.random(trials)):
            totals[j] += max_t
            for rung, seen in zip(rungs, recorded, strict=True):
                stop = bool(seen) and value < np.percentile(seen, quantile)
                seen.append(value)
                if stop:
                    totals[j] -= max_t - rung
                    break
    return [float(t) for t in totals / rounds]


def schedule(spec: Experiment, profile: Profile, slots: int) -> Schedule:
    """A sweep's trials on ``slots`` worker slots: Tune starts them in order on whichever
    concurrent place frees first (each trial's expected epochs, its start and Tune's share),
    stopping new starts at ``time_budget_s``."""
    tune = spec.tune
    assert tune is not None
    trials = tune.trial_count
    fits = slots // spec.scaling.num_workers
    concurrent = max(1, min(tune.max_concurrent_trials or fits, fits))
    epochs = trial_epochs(spec, trials)
    # A reused Tune process (and its worker group): no new workers after a place's first trial.
    reused = spec.in_one_process or spec.in_reused_group
    free = [(0.0, True)] * concurrent  # (when a place frees, whether its process is new)
    heapq.heapify(free)
    ended = 0.0
    started = 0
    capped = False
    for expected in epochs:
        at, fresh = heapq.heappop(free)
        if tune.time_budget_s is not None and at >= tune.time_budget_s:
            capped = True
            break
        if fresh or not reused:
            begin = TRIAL_OVERHEAD_S + profile.start_s + profile.end_s
        else:
            begin = REUSED_TRIAL_OVERHEAD_S + profile.retrace_s
        end = at + begin + expected * profile.epoch_s
        if tune.time_budget_s is not None and end > tune.time_budget_s:
            end, capped = tune.time_budget_s, True
        ended = max(ended, end)
        started += 1
        heapq.heappush(free, (end, False))
    return Schedule(started, sum(epochs[:started]), concurrent, ended, capped)


def run_wall(
    spec: Experiment, profile: Profile, slots: int, *, new_store: bool = False
) -> tuple[float, Schedule | None]:
    """Expected wall time of ``raytrain run`` (from reading the experiment to its summary),
    and a sweep's schedule; ``new_store``: the run creates its sqlite MLflow store."""
    fixed = profile.connect_s + profile.data_s
    if spec.tracking.enabled:
        fixed += TRACKING_START_S + (NEW_STORE_S if new_store else 0.0)
        fixed += MODEL_LOG_IN_PROCESS_S if spec.in_one_process and not spec.tune else MODEL_LOG_S
    if spec.tune is None:
        training = profile.start_s + spec.train.epochs * profile.epoch_s + profile.end_s
        return fixed + training, None
    planned = schedule(spec, profile, slots)
    return fixed + SWEEP_START_S + planned.trials_s, planned


def config_cost(
    spec: Experiment, cluster: Cluster, profile: Profile | None, hardware: Hardware
) -> ConfigCost:
    """Node-hours and cost of the experiment on ``cluster``: the head for the whole run, worker
    nodes of the cheapest type that fits (spot: a spot type) for as many as the concurrent work
    needs. Unknown (None) where the profile ran on other hardware or a price is not declared."""
    prices = [
        f"{n.name}: {_dollars(n.price.usd_per_hour)} ({n.price.source}, {n.price.date})"
        if n.price
        else f"{n.name}: price unknown (no entry in prices/{cluster.name})"
        for n in cluster.node_types
    ]
    need = spec.worker_resources()
    unplaceable = spec.data.locality_rule.config_problem(cluster.provides)
    if unplaceable:
        return ConfigCost(cluster.name, False, note=unplaceable)
    fitting = [n for n in cluster.node_types if n.hardware == hardware and _fits(n, need) > 0]
    if not fitting:
        return ConfigCost(cluster.name, False, note=f"no {hardware} node type fits a worker")
    if profile is None or profile.hardware != hardware:
        return ConfigCost(
            cluster.name,
            True,
            note=f"node-hours unknown: no {hardware} profile; on that cluster run "
            f"`raytrain plan FILE --address HEAD_IP:6379` (ray up {cluster.path.name}, then "
            f"ray attach {cluster.path.name})",
            prices=prices,
        )
    head = next((n for n in cluster.node_types if n.is_head), None)
    on_head = _fits(head, need) if head in fitting and head else 0
    costs = [
        _priced(spec, cluster, profile, on_head, head, spot) for spot in (False, True)
    ]  # on demand, spot
    wall, hours, on_demand, note = costs[0]
    spot_usd = costs[1][2] if costs[1][0] is not None else None
    return ConfigCost(cluster.name, True, wall, hours, on_demand, spot_usd, note, prices)


def _priced(
    spec: Experiment,
    cluster: Cluster,
    profile: Profile,
    on_head: int,
    head: NodeType | None,
    spot: bool,
) -> tuple[float | None, dict[str, float] | None, float | None, str]:
    """(wall s, node-hours by type, USD, note) with workers on on-demand or on spot nodes."""
    need = spec.worker_resources()
    workers = [
        n
        for n in cluster.node_types
        if not n.is_head and n.hardware == hardware_needed(spec) and _fits(n, need) > 0
    ]
    if cluster.local:  # every listed machine, held while the cluster is up; no spot
        if spot:
            return None, None, None, ""
        node = cluster.node_types[0]
        wall, _ = run_wall(spec, profile, node.max_nodes * profile.slots)
        hours = {node.name: node.max_nodes * wall / 3600}
        note = "every listed machine for the whole run, each taken to be like the one profiled"
        return wall, hours, _usd(hours, {node.name: node}), note
    if spot:
        workers = [n for n in workers if n.price and n.price.spot]
    else:
        workers = [n for n in workers if not (n.price and n.price.spot)]
    worker = min(workers, key=_sort_price, default=None)
    per_node = _fits(worker, need) if worker else 0
    slots = on_head + (worker.max_nodes * per_node if worker else 0)
    if slots < spec.scaling.num_workers:
        return None, None, None, "the cluster cannot place the workers"
    wall, planned = run_wall(spec, profile, slots)
    concurrent = planned.concurrent if planned else 1
    extra = max(0, concurrent * spec.scaling.num_workers - on_head)
    hours = {}
    if head is not None:
        hours[head.name] = wall / 3600
    if extra and worker is not None:
        hours[worker.name] = math.ceil(extra / per_node) * wall / 3600
    note = "" if extra else "the workers fit on the head"
    return wall, hours, _usd(hours, {n.name: n for n in cluster.node_types}), note


def _fits(node: NodeType | None, need: dict[str, float]) -> int:
    """Workers of ``need`` one node holds; a local machine's CPUs are unknown: one at least."""
    if node is None:
        return 0
    wanted = {k: v for k, v in need.items() if v > 0}
    if not node.resources.get("CPU") and not node.resources.get("GPU"):
        wanted = {k: v for k, v in wanted.items() if k not in ("CPU", "GPU", "memory")}
        if not wanted:
            return 1
    return min((math.floor(node.resources.get(k, 0.0) / v + 1e-9) for k, v in wanted.items()))


def _usd(hours: dict[str, float], nodes: dict[str, NodeType]) -> float | None:
    total = 0.0
    for name, h in hours.items():
        price = nodes[name].price
        if price is None or price.usd_per_hour is None:
            return None
        total += h * price.usd_per_hour
    return total


def _sort_price(node: NodeType) -> float:
    price = node.price
    if price is None or price.usd_per_hour is None:
        return math.inf
    return price.usd_per_hour


def _dollars(value: float | None) -> str:
    return "price unknown" if value is None else f"${value:.4g}/h"
