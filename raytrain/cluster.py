"""Connecting to Ray, and refusing requests the cluster can never satisfy.

Ray queues a request that does not fit and waits forever, silently. ``check_feasible`` turns that
into an error in seconds that names what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ray

from raytrain.errors import ClusterError

__all__ = [
    "AbandonedGroupCollector",
    "ClusterInfo",
    "check_feasible",
    "check_locality",
    "connect",
    "cpus_on",
    "live_placement_groups",
    "locality_problem",
    "orphaned_groups",
    "probe_dashboard",
    "release_orphaned_placement_groups",
    "release_placement_groups",
    "worker_nodes",
    "worker_slots",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None


def connect(
    address: str | None = None,
    *,
    verbose: bool = False,
    env_vars: dict[str, str] | None = None,
    metrics_port: int | None = None,
) -> ClusterInfo:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a private local Ray instance (with
    Prometheus metrics on ``metrics_port``, if given).

    A process that is already connected (a test session, a Ray job's driver) keeps its connection.
    """
    if ray.is_initialized():
        return ClusterInfo(ray.get_runtime_context().gcs_address, None)
    target = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(env_vars or {})},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if target:
        _probe(target)
    try:
        if target:
            ctx = ray.init(address=target, **options)
        else:
            # "local" starts a private instance even when `ray start --head` runs on this machine.
            # The dashboard stays on: Train V2 needs its State API (FACTS.md).
            if metrics_port:
                options["_metrics_export_port"] = metrics_port
            ctx = ray.init(address="local", include_dashboard=True, **options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = target or "a local instance"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot connect to Ray at {where}: {first_line}") from None
    dashboard = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    return ClusterInfo(ctx.address_info["gcs_address"], dashboard)


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an address nobody listens on (``ray.init`` retries for minutes)."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"cannot connect to Ray at {address}: expected HOST:PORT")
    _listening(host, int(port), address, "its GCS port, 6379 by default", timeout_s)


def probe_dashboard(url: str, *, timeout_s: float = 5.0) -> None:
    """Fail in seconds unless something listens at the Jobs API URL (HTTP clients wait for the
    operating system's connect timeout, minutes, on an address that drops packets)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ClusterError(
            f"cannot connect to Ray at {url}: expected the head node's dashboard URL, "
            "http://HEAD:8265"
        )
    _listening(parts.hostname, port, url, "its dashboard port, 8265 by default", timeout_s)


def _listening(host: str, port: int, address: str, port_hint: str, timeout_s: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot connect to Ray at {address}: {exc.strerror or exc} (is the head node up, "
            f"and is this {port_hint}?)"
        ) from None


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


def release_orphaned_placement_groups() -> int:
    """Remove placement groups whose creating driver has exited; return how many.

    Ray should drop them with the driver, but a sweep driver killed mid-trial (SIGKILL, a lost
    head process) left its trial's worker group holding its CPUs (seen with Ray 2.60), and every
    later run on the cluster waited for them forever. Ray's own rule decides: a group outlives
    its job only if it is detached or its creator is a live detached actor. Looking at the job's
    actors instead is not enough: a dead job can own Ray's own detached helpers (Ray Train's
    placement group cleaner, Ray Data's stats actor), which kept such a group held for good.
    """
    try:
        return _release_orphaned_placement_groups()
    except Exception as exc:  # housekeeping: the run itself may still fit
        log.warning("could not look for placement groups of exited drivers: %s", exc)
        return 0


def _release_orphaned_placement_groups() -> int:
    from ray._private.state import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.util.state import list_actors

    actors = list_actors(
        address=_state_address(), filters=[("state", "=", "ALIVE")], detail=True, limit=10_000
    )
    keepers = {actor.actor_id for actor in actors if actor.is_detached}
    groups = [
        PlacementGroupTableData.FromString(raw)
        for raw in state._connect_and_get_accessor().get_placement_group_table()
    ]
    orphans = orphaned_groups(groups, keepers)
    _remove_placement_groups(orphans)
    return len(orphans)


def orphaned_groups(groups: Iterable[Any], keepers: set[str]) -> list[str]:
    """Ids of the GCS placement group records (``PlacementGroupTableData``) whose lifetime is
    over: not detached, their job dead, their creator not one of ``keepers`` (live detached
    actors' ids)."""
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    return [
        group.placement_group_id.hex()
        for group in groups
        if group.state != PlacementGroupTableData.REMOVED
        and not group.is_detached
        and group.creator_job_dead
        and group.creator_actor_id.hex() not in keepers
    ]


def check_locality(resource: str | None) -> None:
    """Fail fast unless some alive node carries the ``data.locality`` resource: work that asks
    for it would otherwise wait in Ray's queue forever."""
    problem = locality_problem(resource, _alive_nodes()) if resource else None
    if problem:
        raise ClusterError(problem)


def locality_problem(resource: str, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of ``nodes`` (their resources) can hold ``data.locality``'s work, or None."""
    if any(node.get(resource, 0.0) > 0 for node in nodes):
        return None
    internal = ("node:", "accelerator_type:", "object_store_memory")
    have = sorted({name for node in nodes for name in node if not name.startswith(internal)})
    return (
        f"data.locality: no node in the cluster has resource '{resource}' (nodes have: "
        f"{', '.join(have) or 'nothing'}); start the nodes that hold the data with "
        f"`ray start ... --resources '{{\"{resource}\": 1}}'` (or resources: in the cluster "
        "config), or fix data.locality"
    )


def worker_nodes(world_size: int, *, timeout_s: float = 10.0) -> list[str]:
    """Where this Ray Train worker group runs: ``IP (node ID)`` of each worker, sorted.

    Called from a worker: its peers are the actors in its placement group (the State API lists
    them, a moment late under load; Ray Train does not tell a worker where the others are).
    """
    from ray.util.state import list_actors

    ctx = ray.get_runtime_context()
    group = ctx.get_placement_group_id()
    nodes = [ctx.get_node_id()]
    deadline = time.monotonic() + timeout_s
    while group is not None and len(nodes) < world_size:
        try:
            actors = list_actors(
                address=_state_address(),
                filters=[("placement_group_id", "=", group), ("state", "!=", "DEAD")],
            )
        except Exception as exc:  # informational: never worth a training run
            log.warning("cannot list this run's workers, naming this one's node only: %s", exc)
            break
        if len(actors) >= world_size or time.monotonic() > deadline:
            nodes = [actor.node_id for actor in actors] or nodes
            break
        time.sleep(0.5)
    ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return sorted(f"{ips.get(node, '?')} ({node})" for node in nodes)


def worker_slots(per_worker: dict[str, float]) -> int:
    """How many workers holding ``per_worker`` the alive nodes can place at once."""
    needed = {name: amount for name, amount in per_worker.items() if amount > 0}
    return sum(_fits_on(node, needed) for node in _alive_nodes())


def cpus_on(resource: str | None) -> float:
    """CPUs of the alive nodes that carry ``resource`` (every alive node when None)."""
    return sum(n.get("CPU", 0.0) for n in _alive_nodes() if resource is None or n.get(resource))


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _fits_on(node: dict[str, float], needed: dict[str, float]) -> int:
    if not needed:
        return 0
    return min(math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in needed.items())


def _fmt(value: float) -> str:
    return f"{value:g}"


def live_placement_groups() -> set[str]:
    """Ids of this job's placement groups that hold (or wait for) resources."""
    from ray.util.state import list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    found = list_placement_groups(
        address=_state_address(), filters=[("creator_job_id", "=", job)], limit=10_000
    )
    return {pg.placement_group_id for pg in found if pg.state != "REMOVED"}


def release_placement_groups(before: set[str], *, timeout_s: float = 30.0) -> None:
    """Remove the placement groups this job created since ``before`` once the actors that could
    still create one (Tune's trial actors, Ray Train's controllers) have exited.

    When Tune stops a trial mid-run (a sweep's time budget), the trial actor and its Train
    controller die asynchronously, after ``Tuner.fit`` returned, sometimes after creating the
    worker group's placement group and before registering it with Ray Train's cleaner; that group
    then holds its CPUs until the driver exits, and every later run on the cluster waits for them
    forever.
    """
    try:
        _release_placement_groups(before, timeout_s)
    except Exception as exc:  # housekeeping: never worth failing a finished sweep
        log.warning("could not release this sweep's placement groups: %s", exc)


def _release_placement_groups(before: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(
            actor.class_name == "TrainController"
            or (actor.placement_group_id and actor.placement_group_id not in before)
            for actor in _live_actors_of_this_job()
        ):
            break
        time.sleep(0.5)
    _remove_placement_groups(live_placement_groups() - before)


class AbandonedGroupCollector:
    """Removes, while a sweep runs, the worker-group placement groups that Ray Train abandoned.

    When a scheduler stops a trial just as its Train controller asks for the worker group's
    placement group, the group can be created after the controller died (Ray 2.60): it then
    holds the workers' CPUs with no actor in it, and the sweep's next trials wait for them
    forever (seen: a 2-worker group held both CPUs of a 2-CPU cluster). A group shaped like a
    worker group (``bundle`` per worker) with no live actor in it for ``grace_s`` is abandoned:
    Ray Train creates its workers in a group as soon as the group is ready.
    """

    def __init__(self, bundle: dict[str, float], *, grace_s: float = 30.0, every_s: float = 5.0):
        self.bundle = {k: float(v) for k, v in bundle.items() if v}
        self.grace_s, self.every_s = grace_s, every_s
        self._empty_since: dict[str, float] = {}
        self._next = 0.0

    def tick(self) -> None:
        """Look now if the last look is ``every_s`` old; never raises (housekeeping only)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            self._collect(now)
        except Exception as exc:
            log.warning("could not look for abandoned placement groups: %s", exc)

    def _collect(self, now: float) -> None:
        from ray.util.state import list_placement_groups

        groups = list_placement_groups(
            address=_state_address(),
            filters=[
                ("creator_job_id", "=", ray.get_runtime_context().get_job_id()),
                ("state", "=", "CREATED"),
            ],
            detail=True,
            limit=10_000,
        )
        occupied = {actor.placement_group_id for actor in _live_actors_of_this_job()}
        empty = {
            g.placement_group_id
            for g in groups
            if g.placement_group_id not in occupied
            and all(b["unit_resources"] == self.bundle for b in g.bundles or [])
        }
        self._empty_since = {g: self._empty_since.get(g, now) for g in empty}
        abandoned = [g for g, since in self._empty_since.items() if now - since >= self.grace_s]
        if abandoned:
            log.warning("removing %d abandoned worker placement group(s)", len(abandoned))
            _remove_placement_groups(abandoned)
            for g in abandoned:
                self._empty_since.pop(g)


def _live_actors_of_this_job() -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(
        address=_state_address(),
        filters=[("job_id", "=", ray.get_runtime_context().get_job_id()), ("state", "!=", "DEAD")],
        detail=True,  # placement_group_id is a detail column
        limit=10_000,
    )


def _remove_placement_groups(ids: Iterable[str]) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg_id in ids:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def _state_address() -> str:
    """The connected cluster's address for State API calls: given none, Ray looks for the
    machine's most recently started cluster, which is another one where several share a host."""
    return ray.get_runtime_context().gcs_address
