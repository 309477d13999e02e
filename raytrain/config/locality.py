"""Data locality (``data.locality``) in one place: what it asks of Ray and of the cluster.

``data.locality`` names a custom Ray resource that only the nodes allowed to read the data carry.
Every process that reads the data (a training worker, a sweep trial, a Ray Data read task, a
submitted job's driver) asks for a sliver of it, and every check of it and message about it is
here, so the rule means the same thing wherever it applies. ``DataSpec.locality_rule`` hands it
out; no other module reads the field.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARE", "Locality"]

SHARE = 0.001  # of the resource, per worker, trial, read task or job driver
# Resources Ray gives nodes itself: noise in the list of what the nodes have.
_RAY_OWN = ("node:", "accelerator_type:", "object_store_memory")


@dataclass(frozen=True)
class Locality:
    """Where the data may be read: only on nodes carrying ``resource``, or anywhere (None)."""

    resource: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether only some nodes may read the data (then it need not exist on this machine)."""
        return self.resource is not None

    def resources(self) -> dict[str, float]:
        """The Ray resources that pin a process reading the data to the nodes that may read it.
        Placement, not capacity: a node with ``{onprem: 1}`` still takes any number of them."""
        return {self.resource: SHARE} if self.resource else {}

    def allows(self, node: Mapping[str, float]) -> bool:
        """Whether a node with these resources may read the data."""
        return self.resource is None or node.get(self.resource, 0.0) > 0

    def describe(self) -> str | None:
        """Where the data is read, for a summary; None when anywhere."""
        return f"read only on nodes with {self.resource!r}" if self.resource else None

    def problem(self, nodes: Iterable[Mapping[str, float]]) -> str | None:
        """Why no node of ``nodes`` (their resources) can run work that reads the data, in one
        line, or None: Ray would queue such work forever, silently."""
        nodes = list(nodes)
        if self.resource is None or any(self.allows(node) for node in nodes):
            return None
        have = sorted({name for node in nodes for name in node if not name.startswith(_RAY_OWN)})
        return (
            f"data.locality: no node in the cluster has resource '{self.resource}' (nodes have: "
            f"{', '.join(have) or 'nothing'}); start the nodes that hold the data with "
            f"`ray start ... --resources '{{\"{self.resource}\": 1}}'` (or resources: in the "
            "cluster config), or fix data.locality"
        )

    def config_problem(self, provides: Collection[str]) -> str | None:
        """Why a cluster config whose node types carry ``provides`` cannot run the experiment,
        or None (``raytrain plan`` rules such a config out)."""
        if self.resource is None or self.resource in provides:
            return None
        return f"data.locality: {self.resource}: no node here carries it"

    def upload_problem(self, source: str, folder: Path) -> str | None:
        """Why uploading ``folder`` (what ``raytrain submit`` sends to the cluster) would carry
        the data, at ``source``, off the nodes it belongs on; or None."""
        if self.resource is None or source.startswith("builtin:"):
            return None
        if not Path(source).is_relative_to(folder):
            return None
        return (
            f"data.locality: data.source '{source}' is inside the experiment's folder, which "
            f"`raytrain submit` uploads to the cluster: keep the data on the '{self.resource}' "
            "nodes and give its path there"
        )
