"""Storage every node can write: checked on each node before a run starts, not found out later.

Ray Train's workers and its controller write checkpoints to ``storage`` from whichever node they
run on, and the driver reads them back: on a cluster of several machines a local folder must be
the same folder everywhere (an NFS mount at the same path on every machine), or a bucket. A
folder that one node cannot write, or that is only local to each machine, otherwise fails deep
inside Ray Train, mid-run, with a traceback; here it fails in seconds, naming the node.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain.config.locality import Locality
from raytrain.errors import RaytrainError, StorageError
from raytrain.storage import check_writable, is_gcs

__all__ = ["check_storage_on_nodes"]

PROBE_TIMEOUT_S = 60.0  # a node starts one Python worker for its probe


def check_storage_on_nodes(location: str, *, locality: Locality) -> None:
    """On a cluster of several nodes: every alive node that may read the data (where the run
    may place work) can write ``location`` and sees what this process wrote there. A bucket is
    one place for every node; one node is this process's own check."""
    nodes = [
        node for node in ray.nodes() if node.get("Alive") and locality.allows(node["Resources"])
    ]
    if is_gcs(location) or len(nodes) < 2:
        return
    folder = Path(location).expanduser()
    marker = folder / f".raytrain-shared-check-{uuid.uuid4().hex}"
    here = ray.util.get_node_ip_address()
    marker.write_bytes(b"")
    try:
        probes = {
            node["NodeManagerAddress"]: _probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(location, str(marker))
            for node in nodes
        }
        for ip, probe in probes.items():
            try:
                problem = ray.get(probe, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                problem = f"its check did not answer in {PROBE_TIMEOUT_S:.0f} s"
            if problem == "not shared":
                raise StorageError(
                    f"storage '{location}' is not shared: node {ip} does not see what node "
                    f"{here} wrote there; every node must reach the same folder (an NFS mount "
                    "at the same path on every machine) or a bucket (gs://)"
                )
            if problem:
                raise StorageError(f"storage '{location}' on node {ip}: {problem}")
    finally:
        marker.unlink(missing_ok=True)


@ray.remote(num_cpus=0, max_retries=0)
def _probe(location: str, marker: str) -> str | None:
    """What is wrong with ``location`` on this node, or None."""
    try:
        check_writable(location, what="storage")
    except RaytrainError as exc:
        return str(exc).removeprefix(f"storage '{location}': ")
    return None if Path(marker).exists() else "not shared"
