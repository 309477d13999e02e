"""Ray core's private names: the driver's error listener, the address a running ``ray start``
left, the GCS placement-group table, the auth token loader and the loggers of private modules.

Written for Ray 2.60. Why each is needed is said where it is used: raytrain/cluster/connection.py
(errors a driver prints, the running instance), raytrain/cluster/placement.py (placement groups
of exited drivers), raytrain/cluster/jobs.py (the token on Jobs API requests).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray._private.utils
import ray._private.worker
import ray._raylet
from ray._private import state as ray_state
from ray.core.generated.gcs_pb2 import PlacementGroupTableData

from raytrain.shims.check import ShimError, calls, require

__all__ = [
    "WRITTEN_FOR",
    "PlacementGroupTableData",
    "auth_token",
    "placement_group",
    "placement_group_table",
    "quiet_logger",
    "read_ray_address",
    "unprinted_cluster_errors",
]

WRITTEN_FOR = "ray 2.60"
_SHIM = "raytrain.shims.ray_core"


def _need(owner: Any, name: str) -> Any:
    return require(owner, name, shim=_SHIM, written_for=WRITTEN_FOR)


# ray.init starts a thread running the module's ``listen_error_messages``, looked up by name.
_need(ray._private.worker, "listen_error_messages")
calls(ray._private.worker, "listen_error_messages", shim=_SHIM, written_for=WRITTEN_FOR)
_read_ray_address = _need(ray._private.utils, "read_ray_address")
_state = _need(ray_state, "state")
_need(_state, "_connect_and_get_accessor")
_PlacementGroupID = _need(ray._raylet, "PlacementGroupID")
_AuthenticationTokenLoader = _need(ray._raylet, "AuthenticationTokenLoader")

# Loggers of Ray's private modules that raytrain quiets, by what they log.
PRIVATE_LOGGERS = {
    "uploads": "ray._private.runtime_env.packaging",  # each upload of a job's working dir
    "data_progress": "ray.data._internal.progress",  # Ray Data's "progress bars disabled"
}


def _unprinted(worker: Any, threads_stopped: Any) -> None:
    """The driver's error-message listener, printing nothing."""


@contextmanager
def unprinted_cluster_errors(quiet: bool = True) -> Iterator[None]:
    """Within, ``ray.init`` starts a driver that does not print the errors the cluster publishes
    (with ``quiet``); Ray prints them whatever ``log_to_driver`` says."""
    listener = ray._private.worker.listen_error_messages
    if quiet:
        ray._private.worker.listen_error_messages = _unprinted
    try:
        yield
    finally:
        ray._private.worker.listen_error_messages = listener


def read_ray_address() -> str | None:
    """The GCS address ``ray start --head`` on this machine wrote to Ray's temp dir, if any."""
    found = _read_ray_address()
    return str(found) if found else None


def placement_group_table() -> list[Any]:
    """Every placement group record of the connected cluster's GCS (``PlacementGroupTableData``),
    with the fields Ray's public State API leaves out (``creator_job_dead``)."""
    raw = _state._connect_and_get_accessor().get_placement_group_table()
    return [PlacementGroupTableData.FromString(record) for record in raw]


def placement_group(hex_id: str) -> Any:
    """The ``ray.util.placement_group.PlacementGroup`` with that hex id (for removing it)."""
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(_PlacementGroupID(bytes.fromhex(hex_id)))


def auth_token() -> str | None:
    """Ray's auth token from where Ray reads it, whatever ``RAY_AUTH_MODE`` says; None if there
    is none (``AuthenticationError`` where a source is named but unreadable)."""
    loader = _AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return None
    return str(loader.get_raw_token(ignore_auth_mode=True))


def quiet_logger(what: str, level: int) -> None:
    """Set the level of the private module's logger named in ``PRIVATE_LOGGERS[what]``."""
    name = PRIVATE_LOGGERS[what]
    if importlib.util.find_spec(name) is None:
        raise ShimError(
            f"raytrain's shim {_SHIM} (written for {WRITTEN_FOR}) quiets {name}, which the "
            "installed Ray no longer has: install the versions in constraints.txt"
        )
    logging.getLogger(name).setLevel(level)
