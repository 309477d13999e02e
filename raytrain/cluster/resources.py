"""What the cluster has, and refusing requests it can never satisfy.

Ray queues a request that does not fit and waits forever, silently. ``check_feasible`` turns that
into an error in seconds that names what is missing; ``check_locality`` does the same for the
``data.locality`` resource.
"""

from __future__ import annotations

import math

import ray

from raytrain.config.locality import Locality
from raytrain.errors import ClusterError

__all__ = [
    "check_feasible",
    "check_locality",
    "cpus_on",
    "worker_nodes",
    "worker_slots",
]


def check_feasible(*, num_workers: int, per_worker: dict[str, float], what: str) -> None:
    """Fail fast unless the alive nodes can place ``num_workers`` bundles of ``per_worker``."""
    nodes = _alive_nodes()
    needed = {name: amount for name, amount in per_worker.items() if amount > 0}
    fits = worker_slots(per_worker)
    if fits >= num_workers:
        return
    totals = {name: sum(node.get(name, 0.0) for node in nodes) for name in needed}
    absent = [name for name, total in totals.items() if total == 0]
    have = ", ".join(f"{_fmt(totals[n])} {n}" for n in needed)
    ask = ", ".join(f"{_fmt(v)} {n}" for n, v in needed.items())
    message = (
        f"{what} needs {num_workers} worker(s) x {{{ask}}}, but the cluster's {len(nodes)} "
        f"node(s) have {have} in all and fit {fits} such worker(s)."
    )
    if absent:
        message += f" No node has {', '.join(repr(a) for a in absent)}."
    message += (
        " Lower scaling.num_workers or scaling.resources_per_worker, or add nodes "
        "(an autoscaling cluster must have them up before this run)."
    )
    raise ClusterError(message)


def check_locality(locality: Locality) -> None:
    """Fail fast unless some alive node may read the data: work that asks for the
    ``data.locality`` resource would otherwise wait in Ray's queue forever."""
    problem = locality.problem(_alive_nodes()) if locality.pinned else None
    if problem:
        raise ClusterError(problem)


def worker_nodes(node_ids: list[str]) -> list[str]:
    """``IP (node ID)`` of each node in ``node_ids`` (a worker group's nodes), sorted."""
    ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return sorted(f"{ips.get(node, '?')} ({node})" for node in node_ids)


def worker_slots(per_worker: dict[str, float]) -> int:
    """How many workers holding ``per_worker`` the alive nodes can place at once."""
    needed = {name: amount for name, amount in per_worker.items() if amount > 0}
    return sum(_fits_on(node, needed) for node in _alive_nodes())


def cpus_on(locality: Locality) -> float:
    """CPUs of the alive nodes that may read the data."""
    return sum(n.get("CPU", 0.0) for n in _alive_nodes() if locality.allows(n))


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _fits_on(node: dict[str, float], needed: dict[str, float]) -> int:
    if not needed:
        return 0
    return min(math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in needed.items())


def _fmt(value: float) -> str:
    return f"{value:g}"
