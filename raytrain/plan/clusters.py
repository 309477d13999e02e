"""Cluster configs as a plan sees them: node types, what each holds, how many, and their prices.

Prices are data (``cluster_configs/prices/<config>.yaml``, one file beside each ``ray up``
config): Ray's own schema rejects keys it does not know, so they cannot live in the config.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raytrain.errors import RaytrainError

__all__ = [
    "CONFIGS",
    "Cluster",
    "NodePrice",
    "NodeType",
    "PriceFile",
    "hardware_of",
    "load_cluster",
    "shipped_configs",
]

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"
Hardware = Literal["cpu", "gpu", "tpu"]
LOCAL_NODE = "node"  # the one node type of a `local` provider config: every listed machine
_RESOURCES = re.compile(r"--resources='(\{[^']*\})'")


class NodePrice(BaseModel):
    """One node type's hourly price, with where and when it was read."""

    model_config = ConfigDict(extra="forbid")

    machine: str = Field(description="What the node is (machine type, accelerators).")
    usd_per_hour: float | None = Field(ge=0, description="USD per node-hour; null: unknown.")
    spot: bool = Field(False, description="The node type runs on spot (preemptible) capacity.")
    source: str = Field(description="Where the price comes from.")
    date: str = Field(description="When it was read (YYYY-MM).")


class PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="The cluster config these prices belong to.")
    region: str | None = None
    node_types: dict[str, NodePrice]
    not_counted: str = Field("", description="Costs the plan leaves out, said with every plan.")


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]  # empty for a local provider's machines: Ray detects them
    hardware: Hardware
    max_nodes: int  # the head: 1
    is_head: bool
    price: NodePrice | None


@dataclass(frozen=True)
class Cluster:
    name: str  # the config's file name
    path: Path
    local: bool  # Ray's `local` provider: every listed machine is held while the cluster is up
    node_types: list[NodeType]
    not_counted: str

    @property
    def provides(self) -> set[str]:
        """Every resource some node carries (``data.locality`` needs its resource here)."""
        return {name for node in self.node_types for name in node.resources}


def shipped_configs() -> list[Path]:
    """Every ``ray up`` config in cluster_configs/ (the KubeRay manifests are not planned)."""
    return sorted(CONFIGS.glob("*.yaml"))


def load_cluster(path: Path) -> Cluster:
    """The config at ``path`` and its prices (``prices/<name>``); a missing price file or node
    type leaves prices unknown, never guessed."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RaytrainError(f"cluster config {path}: {exc}") from None
    if not isinstance(config, dict) or "provider" not in config:
        raise RaytrainError(f"{path} is not a `ray up` cluster config (no provider:)")
    prices = _prices(path)
    priced = prices.node_types if prices else {}
    local = config["provider"].get("type") == "local"
    if local:
        # Ray detects each machine's CPUs and GPUs; the start commands add custom resources.
        commands = " ".join(map(str, config.get("head_start_ray_commands", [])))
        found = _RESOURCES.search(commands)
        custom = {k: float(v) for k, v in json.loads(found.group(1)).items()} if found else {}
        count = 1 + len(config["provider"].get("worker_ips") or [])
        nodes = [NodeType(LOCAL_NODE, custom, "cpu", count, True, priced.get(LOCAL_NODE))]
    else:
        head = config.get("head_node_type")
        nodes = [
            NodeType(
                name=name,
                resources={k: float(v) for k, v in (entry.get("resources") or {}).items()},
                hardware=hardware_of(entry),
                max_nodes=1 if name == head else int(entry.get("max_workers", 0)),
                is_head=name == head,
                price=priced.get(name),
            )
            for name, entry in (config.get("available_node_types") or {}).items()
        ]
    return Cluster(path.name, path, local, nodes, prices.not_counted if prices else "")


def hardware_of(node_type: dict[str, Any]) -> Hardware:
    """cpu, gpu or tpu: what a profile must have run on to predict this node type."""
    resources = node_type.get("resources") or {}
    node_config = node_type.get("node_config") or {}
    if resources.get("TPU") or "acceleratorType" in node_config:
        return "tpu"
    if resources.get("GPU") or node_config.get("guestAccelerators"):
        return "gpu"
    return "cpu"


def _prices(config: Path) -> PriceFile | None:
    path = config.parent / "prices" / config.name
    if not path.exists():
        return None
    try:
        return PriceFile.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).strip().splitlines()
        raise RaytrainError(f"price file {path}: {' '.join(first[:3])}") from None
