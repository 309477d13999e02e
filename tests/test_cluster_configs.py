"""cluster_configs/ checked offline: Ray's own cluster-config schema, then our rules.

Every rule is a function from a file's text to the problems it finds (none: the file keeps the
rule). The positive tests run each rule on each file, so a new file is covered by being there;
the negative tests feed each rule a file broken on purpose, so a rule that stopped looking fails.
Nothing here brings up a cluster or calls a cloud API: `ray up` on GCP and `kubectl apply` were
not run. The KubeRay manifests are checked against KubeRay's own schema (tests/fixtures/). Two
rules run shell: every `ray start` command under a low open-files limit, and one test the head's
MLflow start command, because only running them can check them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MlflowServer, free_port, signed_in_as, stop_mlflow
from .test_locks import dockerfile_runs, install_problems, lock_paths, pip_installs, raytrain_itself

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cluster_configs"
RAY_UP_FILES = sorted(CONFIGS.glob("*.yaml"))
KUBE_FILES = sorted((CONFIGS / "kuberay").glob("*.yaml"))
DOCKERFILE = CONFIGS / "kuberay" / "Dockerfile"
PINS = {
    name.strip().lower(): version.strip()
    for name, _, version in (
        line.partition("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
    )
    if version and not name.startswith("#")
}
RAY_VERSION = PINS["ray"]
RAYTRAIN_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
LOCALITY = {"gcp", "onprem"}  # the custom resources that data.locality names
# `ray start --head` binds the dashboard to get_localhost_ip() unless told otherwise
# (ray/scripts/scripts.py, the --dashboard-host option): 127.0.0.1, or ::1 on IPv6-only hosts.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*"}

Rule = Callable[[str], list[str]]


# ---- reading the files --------------------------------------------------------------------------


def prepared(text: str) -> dict[str, Any]:
    """The config as `ray up` sees it: Ray's defaults merged in (a private Ray API)."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(yaml.safe_load(text)))


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def node_setups(config: dict[str, Any]) -> dict[str, list[str]]:
    """Each node type's setup commands; a type's own worker_setup_commands replace the global."""
    setups = {}
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            setups[name] = config["head_setup_commands"]
        else:
            setups[name] = node_type.get("worker_setup_commands", config["worker_setup_commands"])
    return setups


def all_commands(config: dict[str, Any]) -> list[str]:
    cmds = [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]
    cmds += config.get("initialization_commands", [])
    for node_type in config["available_node_types"].values():
        cmds += node_type.get("initialization_commands", [])
    return cmds + [c for setup in node_setups(config).values() for c in setup]


def ray_starts(config: dict[str, Any]) -> list[str]:
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in starts if "ray start" in c]


def ray_resources(kind_docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, RayCluster spec) of every RayCluster and RayJob."""
    for d in kind_docs:
        if d.get("kind") == "RayCluster":
            yield d["metadata"]["name"], d.get("spec", {})
        elif d.get("kind") == "RayJob":
            yield d["metadata"]["name"], d.get("spec", {}).get("rayClusterSpec", {})


def ray_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec.get("headGroupSpec", {}), *spec.get("workerGroupSpecs", [])]


def containers(kind_docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for _, spec in ray_resources(kind_docs):
        for group in ray_groups(spec):
            yield from group.get("template", {}).get("spec", {}).get("containers", [])
    for d in kind_docs:
        if d.get("kind") == "Deployment":
            yield from d["spec"]["template"]["spec"]["containers"]


# ---- rules for `ray up` configs -----------------------------------------------------------------


def ray_schema(text: str) -> list[str]:
    """Ray's own validation, offline: prepare_config first, or it misses its defaults."""
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(prepared(text))
    except Exception as exc:
        return [f"Ray rejects the config: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
    return []


def dashboard_local_only(text: str) -> list[str]:
    problems = []
    for cmd in ray_starts(prepared(text)):
        for host in re.findall(r"--dashboard-host[= ]+['\"]?([^\s'\"]+)", cmd):
            if host not in LOCAL_HOSTS:
                problems.append(f"dashboard bound to {host}, not localhost: {cmd!r}")
    return problems


def token_auth(text: str) -> list[str]:
    config = prepared(text)
    problems = [
        f"no RAY_AUTH_MODE=token: {c!r}"
        for c in ray_starts(config)
        if "RAY_AUTH_MODE=token" not in c
    ]
    if "~/.ray/auth_token" not in config["file_mounts"]:
        problems.append("file_mounts does not copy ~/.ray/auth_token to the nodes")
    return problems


SECRET_PATTERNS = {
    "a private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "GOOGLE_APPLICATION_CREDENTIALS": r"GOOGLE_APPLICATION_CREDENTIALS",
    "inline GCP credentials": r"\bgcp_credentials\b",
    "a JSON key file": r"[\w~./-]+\.json\b",
    "an inline secret": r"(?i)\b(RAY_AUTH_TOKEN|password|passwd|api_?key|secret_?key)\s*[=:]\s*"
    r"[\"']?(?![$\"'])[^\s\"']{6,}",
    "a Kubernetes Secret": r"(?m)^kind:\s*Secret\b",
}


def no_credentials(text: str) -> list[str]:
    return [
        f"{what}: {m.group(0)!r}"
        for what, pattern in SECRET_PATTERNS.items()
        for m in re.finditer(pattern, text)
    ]


def pinned_install(text: str) -> list[str]:
    """Every pip install is a hash-pinned lock with --require-hashes, or raytrain itself with
    --no-deps (tests/test_locks.py); GPU node types install the `gpu` extra's lock, TPU hosts the
    TPU build's (TensorFlow's TPU build is a minor behind), no other node a TPU lock."""
    config = prepared(text)
    problems = [p for c in all_commands(config) for p in install_problems(c)]
    for name, setup in node_setups(config).items():
        installs = [i for c in setup for i in pip_installs(c)]
        locks = {path for c in setup for i in pip_installs(c) for path in lock_paths(i, c)}
        if not any(raytrain_itself(i) for i in installs):
            problems.append(f"node type {name}: raytrain is never installed")
        resources = config["available_node_types"][name]["resources"]
        if resources.get("GPU", 0) and "requirements/nodes-gpu.txt" not in locks:
            problems.append(f"node type {name} has GPUs but not the `gpu` extra's lock")
        if resources.get("TPU", 0) and "requirements/nodes-tpu.txt" not in locks:
            problems.append(f"node type {name} has TPUs but not the `tpu` extra's lock")
        if not resources.get("TPU", 0) and any("tpu" in c for c in setup):
            problems.append(f"node type {name} has no TPU but installs TensorFlow's TPU build")
    return problems


# The head starts MLflow through the wrapper mlflow_user.sh installed (start_mlflow.sh run as
# the system user raytrain-mlflow), the one command the Ray user may run with sudo.
START_MLFLOW = "sudo -n /opt/raytrain-mlflow/bin/raytrain-mlflow start"
MLFLOW_USER = "bash ~/raytrain/cluster_configs/mlflow_user.sh"


def mlflow_on_head(text: str) -> list[str]:
    """The head sets up MLflow's own system user (mlflow_user.sh, in head_setup_commands, with
    the settings) and starts MLflow through its wrapper, once, before Ray (workers that join copy
    its credentials file, and its CA where it serves HTTPS); nothing starts an MLflow server
    another way or as the Ray user, and no database URI carries a password. On-prem, where the
    network is the site's own, MLflow serves HTTPS (MLFLOW_TLS=1)."""
    config = prepared(text)
    head = config["head_start_ray_commands"]
    servers = [i for i, c in enumerate(head) if START_MLFLOW in c]
    problems = (
        [f"{len(servers)} MLflow servers started on the head, not 1"] if len(servers) != 1 else []
    )
    ray_start = [i for i, c in enumerate(head) if "ray start --head" in c]
    if servers and ray_start and servers[0] > ray_start[0]:
        problems.append("MLflow starts after Ray: joining workers would miss its credentials")
    setups = [c for c in config.get("head_setup_commands", []) if MLFLOW_USER in c]
    if len(setups) != 1:
        problems.append(f"{len(setups)} head_setup_commands run mlflow_user.sh, not 1")
    synced = config.get("cluster_synced_files", [])
    if "~/.mlflow/credentials" not in synced:
        problems.append("cluster_synced_files lacks ~/.mlflow/credentials")
    tls = any("MLFLOW_TLS=1" in c for c in setups)
    if tls and "~/.mlflow/ca.pem" not in synced:
        problems.append("MLflow serves HTTPS but cluster_synced_files lacks ~/.mlflow/ca.pem")
    if config["provider"]["type"] == "local" and not tls:
        problems.append("on-prem MLflow without TLS (MLFLOW_TLS=1): passwords in clear text")
    for cmd in all_commands(config):
        if "mlflow server" in cmd or "start_mlflow.sh" in cmd:
            problems.append(f"MLflow started without its own user's wrapper: {cmd!r}")
        if START_MLFLOW in cmd and cmd not in (head[i] for i in servers):
            problems.append(f"MLflow started on workers: {cmd!r}")
        if MLFLOW_USER in cmd and cmd not in setups:
            problems.append(f"mlflow_user.sh run outside the head's setup: {cmd!r}")
        if re.search(r"MLFLOW_\w+=\S*://[^\s/@]*:[^\s/@]*@", cmd):
            problems.append("a database password in an MLflow setting")
    return problems


def gpu_terminate_on_maintenance(text: str) -> list[str]:
    problems = []
    for name, node_type in prepared(text)["available_node_types"].items():
        node = node_type["node_config"]
        if node.get("guestAccelerators") or node_type["resources"].get("GPU"):
            entries = node.get("scheduling", [])
            entries = entries if isinstance(entries, list) else [entries]
            if not any(e.get("onHostMaintenance") == "TERMINATE" for e in entries):
                problems.append(
                    f"GPU node type {name} lacks scheduling onHostMaintenance TERMINATE"
                )
    return problems


def tpu_node_types(text: str) -> list[str]:
    """Our reading of TPU node types, and Ray's GCP launcher's (offline; the `gcp` extra)."""
    from ray._private.accelerators.tpu import TPUAcceleratorManager
    from ray.autoscaler._private.gcp.config import GCPNodeType, get_node_type

    config = prepared(text)
    if config["provider"]["type"] != "gcp":
        return []
    problems = []
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if not (
            {"acceleratorType", "acceleratorConfig"} & node.keys()
            or "TPU" in node_type["resources"]
        ):
            continue
        kind = node.get("acceleratorType", "")
        if not TPUAcceleratorManager.is_valid_tpu_accelerator_type(kind):
            problems.append(f"TPU node type {name}: acceleratorType {kind!r} is not a TPU type")
        if "runtimeVersion" not in node or "machineType" in node:
            problems.append(f"TPU node type {name}: needs runtimeVersion and no machineType")
        if not node_type["resources"].get("TPU"):
            problems.append(f"TPU node type {name} does not declare the TPU resource")
        if name == config["head_node_type"]:
            problems.append(f"TPU node type {name} is the head; TPUs cannot be")
        if get_node_type(node) != GCPNodeType.TPU:
            problems.append(f"Ray's GCP launcher would not create node type {name} as a TPU VM")
    return problems


def locality_everywhere(text: str) -> list[str]:
    config = prepared(text)
    if config["provider"]["type"] == "local":  # no node types: resources go on `ray start`
        problems = []
        for cmd in ray_starts(config):
            found = re.search(r"--resources[= ]+'([^']*)'", cmd)
            if not found or not LOCALITY & json.loads(found.group(1)).keys():
                problems.append(
                    f"ray start without a locality resource {sorted(LOCALITY)}: {cmd!r}"
                )
        return problems
    return [
        f"node type {name} carries none of the locality resources {sorted(LOCALITY)}"
        for name, node_type in config["available_node_types"].items()
        if not LOCALITY & node_type["resources"].keys()
    ]


def ulimit_never_blocks(text: str) -> list[str]:
    """Each `ray start` command, its `ray start` swapped for an echo, runs to that echo where the
    hard open-files limit is low: a failing `ulimit -n 65536 &&` stopped `ray up` with only
    "Failed to setup head node" (seen on machines with a hard limit of 20 000)."""
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    problems = []
    for cmd in ray_starts(prepared(text)):
        probe = re.sub(r"RAY_AUTH_MODE=token ray start.*", "echo STARTED", cmd, flags=re.S)
        probe = probe.replace("source ~/raytrain-venv/bin/activate", "true")
        ran = subprocess.run(
            ["bash", "-c", probe], capture_output=True, text=True, preexec_fn=low_limit
        )
        if "STARTED" not in ran.stdout:
            problems.append(f"ray start not reached under a hard limit of 1024 files: {cmd!r}")
    return problems


def gcp_node_types(text: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(name, node_config, is the head) of each node type of a GCP config."""
    config = prepared(text)
    if config["provider"]["type"] == "gcp":
        for name, node_type in config["available_node_types"].items():
            yield name, node_type["node_config"], name == config["head_node_type"]


def workers_internal_only(text: str) -> list[str]:
    """No worker gets an external IP, read as Ray's GCP launcher reads node configs: without
    networkInterfaces (Compute) or networkConfig (TPU) on every node type, its
    _configure_subnet gives each VM a ONE_TO_ONE_NAT address; a TPU VM gets one unless
    networkConfig.enableExternalIps is false (GCPTPU.create_instance)."""
    from ray.autoscaler._private.gcp.config import GCPNodeType, _configure_subnet, get_node_type

    if not list(gcp_node_types(text)):
        return []
    try:
        _configure_subnet(prepared(text), None)  # returns before using the API client, or not
    except AttributeError:
        return ["a node type without networkInterfaces: Ray picks a subnet and an external IP"]
    problems = []
    for name, node, head in gcp_node_types(text):
        if head:
            continue
        if get_node_type(node) == GCPNodeType.TPU:
            if node.get("networkConfig", {}).get("enableExternalIps") is not False:
                problems.append(f"TPU node type {name}: networkConfig.enableExternalIps not false")
        elif any("accessConfigs" in nic for nic in node.get("networkInterfaces", [])):
            problems.append(f"worker node type {name} has an external IP (accessConfigs)")
    return problems


def gcloud_commands(text: str) -> list[str]:
    """The gcloud commands of the top comment block, continuation lines joined."""
    header = re.match(r"(?:#.*\n|\s*\n)*", text).group(0)
    lines = [line.removeprefix("#").strip() for line in header.splitlines()]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    return [m.group(0) for m in re.finditer(r"(?m)^.*\bgcloud .*$", joined)]


HEAD_ACCOUNT = "raytrain-head@"
HEAD_ROLE = "projects/PROJECT_ID/roles/raytrainHead"
# TPU clusters: IAM Conditions cannot name TPU nodes (tpu.googleapis.com has no resource
# attributes), so a custom role of Ray's TPU calls, unconditioned.
TPU_HEAD_ROLE = "projects/PROJECT_ID/roles/raytrainTpuHead"
# Project-wide roles the head's account may hold: what Ray's node provider calls on the head
# (instances insert/list/setLabels/delete and zone operations; TPU nodes create/list/delete).
HEAD_PROJECT_ROLES = {HEAD_ROLE, TPU_HEAD_ROLE}
BROAD_ROLES = {"roles/owner", "roles/editor", "roles/compute.admin", "roles/storage.admin",
               "roles/tpu.admin", "roles/compute.viewer",
               "roles/storage.objectAdmin", "roles/iam.serviceAccountAdmin",
               "roles/compute.instanceAdmin.v1", "roles/compute.instanceAdmin"}  # fmt: skip
# What Ray 2.60's GCP node provider (ray/autoscaler/_private/gcp/node.py) calls for Compute VMs.
RAY_COMPUTE_PERMISSIONS = {
    *(f"compute.instances.{verb}" for verb in ("create", "delete", "get", "list", "setLabels",
      "setMetadata", "setServiceAccount", "setTags", "start", "stop")),
    "compute.disks.create", "compute.subnetworks.use", "compute.images.useReadOnly",
    "compute.zoneOperations.get",
}  # fmt: skip
# What its TPU node provider calls (the GCPTPU class there): TPU nodes list, get, create, patch
# (labels: update), start, stop, delete and their operations; and Compute VMs listed and read
# (the head is one).
RAY_TPU_PERMISSIONS = {
    *(f"tpu.nodes.{verb}" for verb in ("create", "delete", "get", "list", "update", "start",
      "stop")),
    "tpu.operations.get", "compute.instances.get", "compute.instances.list",
}  # fmt: skip


def head_account_least_privilege(text: str) -> list[str]:
    """The head runs as its own service account, not Ray's ray-autoscaler-sa-v1 (`ray up` merges
    Ray's choice first, then the head's node_config over it: commands.py), and the header's
    gcloud commands grant it only the roles it needs, the broad ones never, and bucket and
    actAs rights never project-wide. Its VM rights are a custom role of Ray's calls, bound with
    a condition that keeps it to this cluster's VMs and disks (a Ray token holder acts as it)."""
    from ray.autoscaler._private.gcp.config import DEFAULT_SERVICE_ACCOUNT_ID

    problems = []
    for name, node, head in gcp_node_types(text):
        if head:
            merged = {"serviceAccounts": [{"email": f"{DEFAULT_SERVICE_ACCOUNT_ID}@p"}], **node}
            email = merged["serviceAccounts"][0]["email"]
            if not email.startswith(HEAD_ACCOUNT):
                problems.append(f"the head ({name}) runs as {email}, not {HEAD_ACCOUNT}...")
    if not problems and not list(gcp_node_types(text)):
        return []
    cluster = f"ray-{prepared(text)['cluster_name']}-"
    granted = []
    for cmd in gcloud_commands(text):
        if "iam roles create" in cmd:
            listed = re.search(r"--permissions[= ](\S+)", cmd)
            calls = RAY_TPU_PERMISSIONS if "raytrainTpuHead" in cmd else RAY_COMPUTE_PERMISSIONS
            extra = set(listed.group(1).split(",")) - calls if listed else set()
            problems += [f"the head's role holds {p}, which Ray never calls" for p in sorted(extra)]
        role = re.search(r"--role[= ](\S+)", cmd)
        roles = re.findall(r"roles/[\w.]+", cmd) if "for role in" in cmd else []
        roles += [role.group(1)] if role and "roles/" in role.group(1) else []
        for r in roles:
            if r in BROAD_ROLES:
                problems.append(f"a broad role is granted: {r}")
            if HEAD_ACCOUNT in cmd and "projects add-iam-policy-binding" in cmd:
                granted.append(r)
                if r not in HEAD_PROJECT_ROLES:
                    problems.append(f"the head's account gets {r} project-wide")
                kept = re.findall(r'\.startsWith\("([^"]*)"\)', cmd)
                if r == HEAD_ROLE and (len(kept) != 2 or set(kept) != {cluster}):
                    problems.append(f"{r} is not kept to the cluster's VMs and disks ({cluster}*)")
    tpu = any("acceleratorType" in node for _, node, _ in gcp_node_types(text))
    needed = {TPU_HEAD_ROLE} if tpu else {HEAD_ROLE}
    problems += [f"the header never grants the head {r}" for r in sorted(needed - set(granted))]
    header = re.match(r"(?:#.*\n|\s*\n)*", text).group(0)
    problems += [
        f"the header does not explain {r}" for r in set(granted) if f"#   {r} " not in header
    ]
    return problems


def firewall_ssh_only(text: str) -> list[str]:
    """The header's firewall rules admit from outside the cluster SSH only, to the head only,
    from the user's range only; everything else only between the cluster's own VMs, so MLflow
    (5000), the dashboard (8265) and Ray's ports never face the internet."""
    if not list(gcp_node_types(text)):
        return []
    rules = [c for c in gcloud_commands(text) if "firewall-rules create" in c]
    problems = [] if rules else ["the header has no gcloud firewall rules"]
    for rule in rules:
        ports = re.search(r"--rules[= ](\S+)", rule)
        if "--source-ranges" in rule:
            if (
                ports is None
                or ports.group(1) != "tcp:22"
                or "--target-tags raytrain-head" not in rule
            ):
                problems.append(f"a rule admits more than SSH to the head from outside: {rule!r}")
            if re.search(r"--source-ranges[= ](0\.0\.0\.0/0|::/0)", rule):
                problems.append(f"SSH open to the whole internet: {rule!r}")
        elif "--source-tags raytrain" not in rule:
            problems.append(f"a rule without a source range or the cluster's tag: {rule!r}")
    return problems


def mlflow_internal_only(text: str) -> list[str]:
    """MLflow never listens on an external interface: no --host / MLFLOW_HOST of all
    interfaces or a looked-up external address (a GCE VM's external IP is not on its interface:
    `hostname -I` names the internal one)."""
    problems = []
    for cmd in all_commands(prepared(text)):
        if "mlflow" not in cmd.lower():
            continue
        for host in re.findall(r"(?:--host[= ]+|MLFLOW_HOST=)['\"]?([^\s'\"]+)", cmd):
            if host in ALL_INTERFACES:
                problems.append(f"MLflow bound to all interfaces ({host})")
        if re.search(r"external-ip|access-configs|ifconfig\.me|ipify", cmd):
            problems.append(f"MLflow's address looked up as an external one: {cmd!r}")
    return problems


def spot_workers(text: str) -> list[str]:
    """A GCP config has a spot worker type, declared the way each API reads it (Compute:
    scheduling object with provisioningModel SPOT, deleted when preempted; TPU:
    schedulingConfig.spot), and its header says what failure.max_failures to set."""
    if not list(gcp_node_types(text)):
        return []
    problems, spots = [], []
    for name, node, _ in gcp_node_types(text):
        scheduling = node.get("scheduling", {})
        if isinstance(scheduling, list):
            problems.append(f"{name}: scheduling is a list; the Compute API wants an object")
        elif scheduling.get("provisioningModel") == "SPOT":
            spots.append(name)
            if scheduling.get("instanceTerminationAction") != "DELETE":
                problems.append(f"{name}: a preempted spot VM is not deleted (left stopped)")
        if node.get("schedulingConfig", {}).get("spot") or node.get("schedulingConfig", {}).get(
            "preemptible"
        ):
            spots.append(name)
    if not spots:
        problems.append("no spot/preemptible worker type")
    if "failure: {max_failures:" not in text:
        problems.append("the header does not say which failure.max_failures to set")
    return problems


def header_block(text: str) -> list[str]:
    header = "\n".join(re.match(r"(?:#.*\n|\s*\n)*", text).group(0).splitlines()).upper()
    wanted = ("FILL IN", "COST", "TEAR DOWN")
    return [f"the top comment block does not say {w!r}" for w in wanted if w not in header]


RAY_UP_RULES: list[Rule] = [
    ray_schema, dashboard_local_only, token_auth, no_credentials, pinned_install, mlflow_on_head,
    gpu_terminate_on_maintenance, tpu_node_types, locality_everywhere, header_block,
    ulimit_never_blocks, workers_internal_only, head_account_least_privilege, firewall_ssh_only,
    mlflow_internal_only, spot_workers,
]  # fmt: skip


# ---- rules for Kubernetes manifests -------------------------------------------------------------

KINDS = {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim",
         "ServiceAccount", "NetworkPolicy", "Role", "RoleBinding"}  # fmt: skip
KUBERAY_SCHEMAS = ROOT / "tests" / "fixtures" / "kuberay-v1.7.0-schemas.yaml"


def kube_kinds(text: str) -> list[str]:
    problems = []
    for d in docs(text):
        if d.get("kind") not in KINDS:
            problems.append(f"unexpected kind {d.get('kind')!r} (allowed: {sorted(KINDS)})")
        elif d["kind"] in ("RayCluster", "RayJob") and d.get("apiVersion") != "ray.io/v1":
            problems.append(f"{d['kind']} with apiVersion {d.get('apiVersion')!r}, not ray.io/v1")
    for name, spec in ray_resources(docs(text)):
        head = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
        if not head.get("containers") or not spec.get("workerGroupSpecs"):
            problems.append(f"{name}: needs headGroupSpec with a container and workerGroupSpecs")
    return problems


def kube_ray_version(text: str) -> list[str]:
    return [
        f"{name}: rayVersion {spec.get('rayVersion')!r}, but constraints.txt pins ray {RAY_VERSION}"
        for name, spec in ray_resources(docs(text))
        if spec.get("rayVersion") != RAY_VERSION
    ]


def kube_images_pinned(text: str) -> list[str]:
    problems = []
    for container in containers(docs(text)):
        image = container.get("image", "")
        name, _, tag = image.rpartition("/")[2].partition(":")
        if not tag or tag == "latest":
            problems.append(f"image {image!r} is not pinned to a tag")
        elif name.startswith("raytrain") and tag != RAYTRAIN_VERSION:
            problems.append(f"image {image!r}: tag is not raytrain's version {RAYTRAIN_VERSION}")
    return problems


def kube_services_internal(text: str) -> list[str]:
    problems = [
        f"Service {d['metadata']['name']} is {d['spec']['type']}, not ClusterIP"
        for d in docs(text)
        if d.get("kind") == "Service" and d["spec"].get("type", "ClusterIP") != "ClusterIP"
    ]
    for name, spec in ray_resources(docs(text)):
        head = spec.get("headGroupSpec", {})
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append(
                f"{name}: head service {head.get('serviceType')} / ingress, not ClusterIP"
            )
    return problems


def kube_token_auth(text: str) -> list[str]:
    problems = [
        f"{name}: authOptions.mode is not token"
        for name, spec in ray_resources(docs(text))
        if spec.get("authOptions", {}).get("mode") != "token"
    ]
    for container in containers(docs(text)):
        for env in container.get("env", []):
            if env["name"] == "RAY_AUTH_MODE" and env.get("value") != "token":
                problems.append(f"container {container['name']}: RAY_AUTH_MODE={env.get('value')}")
    return problems


def kube_locality(text: str) -> list[str]:
    problems = []
    for name, spec in ray_resources(docs(text)):
        for group in ray_groups(spec):
            raw = group.get("rayStartParams", {}).get("resources", '""')
            if not LOCALITY & json.loads(json.loads(raw) or "{}").keys():
                problems.append(f"{name}/{group.get('groupName', 'head')}: no locality resource")
    return problems


def rayjob_entrypoint(text: str) -> list[str]:
    problems = []
    for d in docs(text):
        if d.get("kind") == "RayJob":
            found = re.match(r"raytrain run (\S+)", d["spec"].get("entrypoint", ""))
            # /app is the Dockerfile's WORKDIR, where it copies experiments/.
            if not found or not (ROOT / found.group(1).removeprefix("/app/")).is_file():
                entrypoint = d["spec"].get("entrypoint")
                problems.append(f"RayJob entrypoint does not run a repo experiment: {entrypoint!r}")
    return problems


def strict(schema: Any) -> Any:
    """The schema as `kubectl apply` applies it by default (strict field validation): an object
    with declared properties accepts no other field, unless it preserves unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        declared = "properties" in schema and "additionalProperties" not in schema
        if declared and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def kube_crd_schema(text: str) -> list[str]:
    """RayCluster and RayJob against KubeRay's schema (tests/fixtures: which release, and what
    was cut, is said there)."""
    import jsonschema

    schemas = yaml.safe_load(KUBERAY_SCHEMAS.read_text())
    problems = []
    for d in docs(text):
        if d.get("kind") in ("RayCluster", "RayJob"):
            schema = strict({**schemas[d["kind"]], "definitions": schemas["definitions"]})
            for error in jsonschema.Draft7Validator(schema).iter_errors(d):
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{d['kind']} {d['metadata']['name']}: {where}: {error.message}")
    return problems


def pod_templates(kind_docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every Ray group and Deployment."""
    for name, spec in ray_resources(kind_docs):
        for group in ray_groups(spec):
            yield f"{name}/{group.get('groupName', 'head')}", group.get("template", {})
    for d in kind_docs:
        if d.get("kind") == "Deployment":
            yield d["metadata"]["name"], d["spec"]["template"]


def container_hardened(where: str, context: dict[str, Any] | None) -> list[str]:
    context = context or {}
    problems = []
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        problems.append(f"{where}: capabilities do not drop ALL")
    if context.get("privileged"):
        problems.append(f"{where}: privileged")
    return problems


def kube_security_context(text: str) -> list[str]:
    """Every pod runs as a numeric non-root user (runAsNonRoot can only check a number), every
    container (KubeRay's autoscaler too) without privilege escalation or capabilities."""
    problems = []
    for where, template in pod_templates(docs(text)):
        spec = template.get("spec", {})
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            problems.append(f"{where}: pod securityContext lacks runAsNonRoot and a runAsUser")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            problems += container_hardened(f"{where}/{c['name']}", c.get("securityContext"))
    for name, spec in ray_resources(docs(text)):
        if spec.get("enableInTreeAutoscaling"):
            options = spec.get("autoscalerOptions", {})
            problems += container_hardened(f"{name}/autoscaler", options.get("securityContext"))
    return problems


KUBE_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def kube_service_accounts(text: str) -> list[str]:
    """Every pod runs as a ServiceAccount of its own, defined in the same file, and no container
    where jobs run holds a Kubernetes API token (a Ray token holder runs code there): only
    KubeRay's autoscaler, where there is one, mounts the head account's token, projected."""
    kind_docs = docs(text)
    accounts = {d["metadata"]["name"]: d for d in kind_docs if d.get("kind") == "ServiceAccount"}
    problems = []
    for where, template in pod_templates(kind_docs):
        spec = template.get("spec", {})
        name = spec.get("serviceAccountName", "default")
        if name not in accounts:
            problems.append(f"{where}: runs as ServiceAccount {name!r}, not one of this file's")
            continue
        mounted = spec.get(
            "automountServiceAccountToken", accounts[name].get("automountServiceAccountToken")
        )
        if mounted is not False:
            problems.append(f"{where}: its containers get a Kubernetes API token")
        for c in spec.get("containers", []):
            if any(m.get("mountPath") == KUBE_TOKEN_PATH for m in c.get("volumeMounts", [])):
                problems.append(f"{where}/{c['name']}: mounts a Kubernetes API token")
    for name, spec in ray_resources(kind_docs):
        head = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
        volumes = {v["name"]: v for v in head.get("volumes", [])}
        mounts = spec.get("autoscalerOptions", {}).get("volumeMounts", [])
        token = [m for m in mounts if m.get("mountPath") == KUBE_TOKEN_PATH]
        if spec.get("enableInTreeAutoscaling") and not token:
            problems.append(f"{name}/autoscaler: no token to scale the cluster with")
        for m in token:
            sources = volumes.get(m["name"], {}).get("projected", {}).get("sources", [])
            if not any("serviceAccountToken" in source for source in sources):
                problems.append(f"{name}/autoscaler: {m['name']} is no projected account token")
    return problems


# What Ray 2.60's KubeRay node provider calls with the autoscaler's token
# (ray/autoscaler/_private/kuberay/node_provider.py): GET pods/HEAD and pods?labelSelector=...,
# GET and PATCH rayclusters/NAME.
AUTOSCALER_RULES = {("", "pods"): {"get", "list"}, ("ray.io", "rayclusters"): {"get", "patch"}}


def kube_rbac(text: str) -> list[str]:
    """An autoscaling RayCluster's head account is bound to a Role of its own file, named like the
    cluster (KubeRay then makes none, whose rules are broader), that grants what the autoscaler
    calls and nothing else: pods get and list, this RayCluster (by name) get and patch. No other
    binding, no ClusterRole, no wildcard."""
    kind_docs = docs(text)
    roles = {d["metadata"]["name"]: d for d in kind_docs if d.get("kind") == "Role"}
    bindings = [d for d in kind_docs if d.get("kind") == "RoleBinding"]
    clusters = {
        name: spec for name, spec in ray_resources(kind_docs) if spec.get("enableInTreeAutoscaling")
    }
    problems = []
    for name, role in roles.items():
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    allowed = AUTOSCALER_RULES.get((group, resource), set())
                    extra = set(rule.get("verbs", [])) - allowed
                    if extra:
                        problems.append(f"Role {name}: {sorted(extra)} on {resource}")
                    if resource == "rayclusters" and rule.get("resourceNames") != [name]:
                        problems.append(f"Role {name}: rayclusters not kept to {name!r}")
    for binding in bindings:
        ref = binding.get("roleRef", {})
        if ref.get("kind") != "Role" or ref.get("name") not in roles:
            problems.append(f"RoleBinding {binding['metadata']['name']}: not this file's Role")
    for name, spec in clusters.items():
        head = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
        account = head.get("serviceAccountName")
        bound = [
            b
            for b in bindings
            if b.get("roleRef", {}).get("name") == name
            and {"kind": "ServiceAccount", "name": account} in b.get("subjects", [])
        ]
        if name not in roles or not bound:
            problems.append(f"{name}: the autoscaler's account {account} has no Role {name!r}")
    return problems


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}


def kube_network_policy(text: str) -> list[str]:
    """Each Ray cluster's pods (8265, 6379, every Ray port) and the MLflow pods (5000) sit behind
    a NetworkPolicy of the same file: Ray pods admit the same cluster's pods, and the KubeRay
    operator on 8265 only; MLflow admits Ray pods on 5000 only."""
    kind_docs = docs(text)
    policies = [d["spec"] for d in kind_docs if d.get("kind") == "NetworkPolicy"]
    problems = []
    for where, template in pod_templates(kind_docs):
        labels = template.get("metadata", {}).get("labels", {})
        mine = [p for p in policies if selects(p.get("podSelector", {}), labels)]
        mine = [p for p in mine if "Ingress" in p.get("policyTypes", ["Ingress"])]
        if not mine:
            problems.append(f"{where}: no NetworkPolicy selects its pods")
        mlflow = labels.get("app.kubernetes.io/name") == "raytrain-mlflow"
        for policy in mine:
            for rule in policy.get("ingress", []):
                ports = {p.get("port") for p in rule.get("ports", [])}
                for source in rule.get("from", []) or [{}]:
                    pods = source.get("podSelector")
                    if mlflow:
                        ok = pods == {"matchLabels": {"app.kubernetes.io/component": "ray"}}
                        ok = ok and "namespaceSelector" not in source and ports == {5000}
                    elif pods and source.get("namespaceSelector") is not None:
                        ok = pods.get("matchLabels") == OPERATOR and ports == {8265}
                    else:
                        ok = bool(pods) and selects(pods, labels) and pods.get("matchLabels")
                    if not ok:
                        problems.append(f"{where}: admits {source or 'anyone'} on {ports or 'all'}")
    return problems


KUBE_RULES: list[Rule] = [
    kube_kinds, kube_ray_version, kube_images_pinned, kube_services_internal, kube_token_auth,
    kube_locality, rayjob_entrypoint, no_credentials, header_block, kube_crd_schema,
    kube_security_context, kube_service_accounts, kube_network_policy, kube_rbac,
]  # fmt: skip


def dockerfile_pinned(text: str) -> list[str]:
    problems = [
        f"base image not pinned: {line!r}"
        for line in re.findall(r"(?m)^FROM\s+(\S+)", text)
        if ":" not in line.rpartition("/")[2] or line.endswith(":latest")
    ]
    return problems + [p for run in dockerfile_runs(text) for p in install_problems(run)]


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("rule", RAY_UP_RULES, ids=lambda r: r.__name__)
def test_ray_up_config_keeps_rule(rule: Rule, path: Path) -> None:
    assert rule(path.read_text()) == []


@pytest.mark.parametrize("path", KUBE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("rule", KUBE_RULES, ids=lambda r: r.__name__)
def test_kubernetes_manifest_keeps_rule(rule: Rule, path: Path) -> None:
    assert rule(path.read_text()) == []


@pytest.mark.parametrize("rule", [dockerfile_pinned, no_credentials], ids=lambda r: r.__name__)
def test_dockerfile_keeps_rule(rule: Rule) -> None:
    assert rule(DOCKERFILE.read_text()) == []


def test_the_expected_files_are_there() -> None:
    assert {p.name for p in RAY_UP_FILES} >= {"gcp.yaml", "gcp-tpu.yaml", "onprem.yaml"}
    kinds = {d["kind"] for p in KUBE_FILES for d in docs(p.read_text())}
    assert kinds >= {"RayCluster", "RayJob"}


# (rule, file, text to replace, its replacement, words the problem must contain)
# fmt: off
BROKEN = [
    (ray_schema, "gcp.yaml", "max_workers: 8", "max_worker: 8", "Ray rejects"),
    (dashboard_local_only, "gcp.yaml", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0",
     "bound to 0.0.0.0"),
    (token_auth, "onprem.yaml", "RAY_AUTH_MODE=token ray start --address", "ray start --address",
     "no RAY_AUTH_MODE=token"),
    (token_auth, "gcp.yaml", '"~/.ray/auth_token": "~/.ray/auth_token"', "", "auth_token"),
    (no_credentials, "gcp.yaml", "chmod 600 ~/.ray/auth_token",
     "echo '-----BEGIN OPENSSH PRIVATE KEY-----'", "a private key"),
    (no_credentials, "gcp.yaml", "chmod 600 ~/.ray/auth_token",
     "export GOOGLE_APPLICATION_CREDENTIALS=~/sa-key.json", "GOOGLE_APPLICATION_CREDENTIALS"),
    (no_credentials, "onprem.yaml", "RAY_AUTH_MODE=token ray start --head",
     "RAY_AUTH_TOKEN=3f9a1c77e0b24d5e RAY_AUTH_MODE=token ray start --head", "inline secret"),
    (no_credentials, "kuberay/raycluster.yaml", "apiVersion: ray.io/v1",
     "apiVersion: v1\nkind: Secret\nstringData: {auth_token: x}\n---\napiVersion: ray.io/v1",
     "Kubernetes Secret"),
    (pinned_install, "gcp.yaml", "--require-hashes -r requirements/nodes-gcp.txt",
     "-r requirements/nodes-gcp.txt", "without --require-hashes"),
    (pinned_install, "gcp.yaml", "-r requirements/nodes-gpu.txt", "-r requirements/nodes.txt",
     "not the `gpu` extra's lock"),
    (pinned_install, "onprem.yaml", "--no-deps --no-build-isolation -e .", "-e .",
     "raytrain is never installed"),
    (mlflow_on_head, "onprem.yaml", START_MLFLOW, "echo", "0 MLflow"),
    (mlflow_on_head, "gcp.yaml", MLFLOW_USER, "echo", "0 head_setup_commands"),
    (mlflow_on_head, "onprem.yaml", START_MLFLOW,
     "source ~/raytrain-venv/bin/activate && bash ~/raytrain/cluster_configs/start_mlflow.sh",
     "without its own user's wrapper"),
    (mlflow_on_head, "onprem.yaml", "    MLFLOW_TLS=1\n", "", "without TLS"),
    (mlflow_on_head, "onprem.yaml", ', "~/.mlflow/ca.pem"]', "]", "lacks ~/.mlflow/ca.pem"),
    (mlflow_on_head, "gcp.yaml", "postgresql://mlflow@CLOUD_SQL_IP",
     "postgresql://mlflow:pw@CLOUD_SQL_IP", "database password"),
    (mlflow_on_head, "gcp-tpu.yaml", 'cluster_synced_files: ["~/.mlflow/credentials"]', "",
     "cluster_synced_files"),
    (mlflow_on_head, "gcp.yaml", "  - ray stop\n",
     "  - ray stop\n  - mlflow server --host 0.0.0.0\n", "without its own user's wrapper"),
    (gpu_terminate_on_maintenance, "gcp.yaml", "onHostMaintenance: TERMINATE",
     "onHostMaintenance: MIGRATE", "onHostMaintenance TERMINATE"),
    (tpu_node_types, "gcp-tpu.yaml", "      acceleratorType: v4-8",
     "      machineType: n1-standard-8\n      acceleratorType: v4-8", "no machineType"),
    (tpu_node_types, "gcp-tpu.yaml", "runtimeVersion: tpu-ubuntu2204-base", "", "runtimeVersion"),
    (tpu_node_types, "gcp-tpu.yaml", "head_node_type: head", "head_node_type: tpu_worker",
     "is the head"),
    (locality_everywhere, "gcp.yaml", 'resources: {"CPU": 8, "gcp": 1}', 'resources: {"CPU": 8}',
     "node type cpu_worker"),
    (locality_everywhere, "onprem.yaml", "6379 --resources='{\"onprem\": 1}'", "6379",
     "without a locality resource"),
    (header_block, "gcp.yaml", "# TEAR DOWN", "# AFTERWARDS", "'TEAR DOWN'"),
    (ulimit_never_blocks, "gcp-tpu.yaml", '{ ulimit -n 65536 || ulimit -n "$(ulimit -Hn)"; }',
     "ulimit -n 65536", "not reached"),
    (workers_internal_only, "gcp.yaml", "      networkInterfaces: *internal_only\n", "",
     "without networkInterfaces"),
    (workers_internal_only, "gcp.yaml", "networkInterfaces: &internal_only\n",
     "networkInterfaces: &internal_only\n        - accessConfigs: [{type: ONE_TO_ONE_NAT}]\n",
     "worker node type gpu_worker has an external IP"),
    (workers_internal_only, "gcp-tpu.yaml", "enableExternalIps: false", "enableExternalIps: true",
     "enableExternalIps not false"),
    (head_account_least_privilege, "gcp.yaml", "email: raytrain-head@", "email: someone@",
     "not raytrain-head"),
    (head_account_least_privilege, "gcp.yaml", "--role projects/PROJECT_ID/roles/raytrainHead",
     "--role roles/compute.instanceAdmin.v1", "broad role"),
    (head_account_least_privilege, "gcp.yaml", "--role projects/PROJECT_ID/roles/raytrainHead",
     "--role roles/compute.admin", "broad role"),
    (head_account_least_privilege, "gcp.yaml", '.startsWith("ray-raytrain-") || resource',
     '.startsWith("ray-") || resource', "is not kept to the cluster's VMs and disks"),
    (head_account_least_privilege, "gcp.yaml", "compute.zoneOperations.get",
     "compute.zoneOperations.get,compute.firewalls.create",
     "holds compute.firewalls.create, which Ray never calls"),
    (head_account_least_privilege, "gcp-tpu.yaml", f"--role {TPU_HEAD_ROLE}",
     "--role roles/tpu.admin", "broad role"),
    (head_account_least_privilege, "gcp-tpu.yaml", "tpu.operations.get,",
     "tpu.operations.get,compute.instances.delete,",
     "holds compute.instances.delete, which Ray never calls"),
    (head_account_least_privilege, "gcp-tpu.yaml", f"--role {TPU_HEAD_ROLE}",
     "--role roles/storage.objectUser", "gets roles/storage.objectUser project-wide"),
    (kube_rbac, "kuberay/raycluster.yaml", "    verbs: [get, list]",
     "    verbs: [get, list, create]", "['create'] on pods"),
    (kube_rbac, "kuberay/raycluster.yaml", "    resourceNames: [raytrain]\n", "",
     "not kept to 'raytrain'"),
    (kube_rbac, "kuberay/raycluster.yaml", "  - {kind: ServiceAccount, name: raytrain-ray-head}",
     "  - {kind: ServiceAccount, name: someone}", "has no Role"),
    (firewall_ssh_only, "gcp.yaml", "--rules tcp:22", "--rules tcp:22,tcp:5000", "more than SSH"),
    (firewall_ssh_only, "gcp-tpu.yaml", "--source-ranges YOUR_CIDR", "--source-ranges 0.0.0.0/0",
     "whole internet"),
    (firewall_ssh_only, "gcp.yaml", "--source-tags raytrain", "", "without a source range"),
    (mlflow_internal_only, "gcp.yaml", START_MLFLOW, f"MLFLOW_HOST=0.0.0.0 {START_MLFLOW}",
     "all interfaces"),
    (mlflow_internal_only, "gcp-tpu.yaml", START_MLFLOW,
     f"MLFLOW_HOST=$(curl -s ifconfig.me) {START_MLFLOW}", "external one"),
    (spot_workers, "gcp.yaml", "instanceTerminationAction: DELETE",
     "instanceTerminationAction: STOP", "not deleted"),
    (spot_workers, "gcp.yaml", "scheduling: {onHostMaintenance: TERMINATE}",
     "scheduling: [{onHostMaintenance: TERMINATE}]", "is a list"),
    (spot_workers, "gcp-tpu.yaml", "schedulingConfig: {spot: true}", "", "no spot"),
    (pinned_install, "gcp-tpu.yaml", "-r requirements/nodes-tpu.txt", "-r requirements/nodes.txt",
     "not the `tpu` extra's lock"),
    (pinned_install, "gcp-tpu.yaml", "-r requirements/nodes-gcp.txt", "-r constraints.txt",
     "no lock in requirements/"),
    (kube_kinds, "kuberay/rayjob.yaml", "apiVersion: ray.io/v1", "apiVersion: ray.io/v1alpha1",
     "not ray.io/v1"),
    (kube_kinds, "kuberay/raycluster.yaml", "  workerGroupSpecs:", "  otherGroupSpecs:",
     "workerGroupSpecs"),
    (kube_ray_version, "kuberay/raycluster.yaml", f'rayVersion: "{RAY_VERSION}"',
     'rayVersion: "2.0.0"', "constraints.txt pins"),
    (kube_images_pinned, "kuberay/rayjob.yaml", f"raytrain:{RAYTRAIN_VERSION}", "raytrain:latest",
     "not pinned"),
    (kube_images_pinned, "kuberay/mlflow.yaml", f"raytrain:{RAYTRAIN_VERSION}", "raytrain:9.9.9",
     "raytrain's version"),
    (kube_services_internal, "kuberay/mlflow.yaml", "type: ClusterIP", "type: LoadBalancer",
     "not ClusterIP"),
    (kube_services_internal, "kuberay/raycluster.yaml", "serviceType: ClusterIP",
     "serviceType: NodePort", "not ClusterIP"),
    (kube_token_auth, "kuberay/rayjob.yaml", "mode: token", "mode: disabled", "not token"),
    (kube_locality, "kuberay/raycluster.yaml", "resources: '\"{\\\"onprem\\\": 1}\"'", "{}",
     "no locality resource"),
    (rayjob_entrypoint, "kuberay/rayjob.yaml", "experiments/quickstart.yaml",
     "experiments/missing.yaml", "does not run a repo experiment"),
    (kube_crd_schema, "kuberay/raycluster.yaml", "idleTimeoutSeconds: 600",
     "idleTimeoutSecond: 600", "'idleTimeoutSecond' was unexpected"),
    (kube_crd_schema, "kuberay/rayjob.yaml", "submissionMode: HTTPMode",
     "submissionMode: HttpMode", "'HttpMode' is not one of"),
    (kube_crd_schema, "kuberay/rayjob.yaml", "replicas: 1\n", "replicas: one\n",
     "'one' is not of type 'integer'"),
    (kube_security_context, "kuberay/raycluster.yaml", "runAsNonRoot: true",
     "runAsNonRoot: false", "runAsNonRoot"),
    (kube_security_context, "kuberay/mlflow.yaml", "allowPrivilegeEscalation: false",
     "allowPrivilegeEscalation: true", "mlflow: allowPrivilegeEscalation"),
    (kube_security_context, "kuberay/raycluster.yaml", "capabilities: {drop: [ALL]}",
     "capabilities: {drop: [NET_RAW]}", "raytrain/autoscaler: capabilities"),
    (kube_service_accounts, "kuberay/rayjob.yaml",
     "serviceAccountName: raytrain-quickstart-worker", "serviceAccountName: default",
     "not one of this file's"),
    (kube_service_accounts, "kuberay/raycluster.yaml", "automountServiceAccountToken: false\n",
     "", "raytrain/cpu: its containers get a Kubernetes API token"),
    (kube_service_accounts, "kuberay/raycluster.yaml",
     "        automountServiceAccountToken: false\n", "",
     "raytrain/head: its containers get a Kubernetes API token"),
    (kube_service_accounts, "kuberay/rayjob.yaml", "automountServiceAccountToken: false\n",
     "", "raytrain-quickstart/head: its containers get a Kubernetes API token"),
    (kube_service_accounts, "kuberay/raycluster.yaml", "    volumeMounts:\n", "    volumeMount:\n",
     "raytrain/autoscaler: no token to scale the cluster with"),
    (kube_service_accounts, "kuberay/raycluster.yaml", "- serviceAccountToken:", "- secret:",
     "kube-api-token is no projected account token"),
    (kube_network_policy, "kuberay/raycluster.yaml", "kind: NetworkPolicy", "kind: NetPolicy",
     "no NetworkPolicy"),
    (kube_network_policy, "kuberay/rayjob.yaml", "- {port: 8265, protocol: TCP}",
     "- {port: 6379, protocol: TCP}", "on {6379}"),
    (kube_network_policy, "kuberay/mlflow.yaml", "        - podSelector:\n",
     "        - namespaceSelector: {}\n          podSelector:\n", "admits"),
    (kube_network_policy, "kuberay/raycluster.yaml", "    - from:\n        - podSelector:\n"
     "            matchLabels: *cluster_pods\n", "    - {}\n", "admits anyone"),
    (dockerfile_pinned, "kuberay/Dockerfile", "\nFROM python:3.11-slim-bookworm\n",
     "\nFROM python:latest\n", "not pinned"),
    (dockerfile_pinned, "kuberay/Dockerfile", "pip install --no-cache-dir --require-hashes",
     "pip install --no-cache-dir", "without --require-hashes"),
    (dockerfile_pinned, "kuberay/Dockerfile", "--no-deps --no-build-isolation .",
     "--no-build-isolation .", "without --require-hashes"),
]
# fmt: on


@pytest.mark.parametrize(
    ("rule", "name", "old", "new", "words"),
    BROKEN,
    ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BROKEN)],
)
def test_rule_rejects_a_broken_file(rule: Rule, name: str, old: str, new: str, words: str) -> None:
    text = (CONFIGS / name).read_text()
    assert old in text, f"the breakage no longer applies to {name}: {old!r} is gone"
    problems = rule(text.replace(old, new, 1))
    assert any(words in p for p in problems), problems


# ---- the head's MLflow command, run ------------------------------------------------------------


def mlflow_command(path: Path) -> str:
    """The MLflow setup command of the head (mlflow_user.sh with the settings)."""
    return next(c for c in prepared(path.read_text())["head_setup_commands"] if MLFLOW_USER in c)


SETTING = re.compile(r"MLFLOW_\w+=\S+\s+")
# What the wrapper runs, as raytrain-mlflow, with the settings in its environment.
WRAPPED = "source ~/raytrain-venv/bin/activate && bash ~/raytrain/cluster_configs/start_mlflow.sh"


def test_every_config_starts_mlflow_the_same_way() -> None:
    """One setup command but for its settings (stores, address, TLS) and one start command, so
    that test_head_mlflow_command_runs covers every file."""
    commands = {SETTING.sub("", mlflow_command(p)) for p in RAY_UP_FILES}
    assert commands == {MLFLOW_USER}, commands
    starts = {
        c
        for p in RAY_UP_FILES
        for c in prepared(p.read_text())["head_start_ray_commands"]
        if "mlflow" in c
    }
    assert starts == {START_MLFLOW}, starts


def test_mlflow_user_script_allows_start_and_stop_only() -> None:
    """The sudoers rule mlflow_user.sh writes names the wrapper with `start` and with `stop`,
    nothing else (no wildcard, no other command, no SETENV), and is checked with visudo before
    it is installed; the wrapper takes its settings from a root-owned file, not the caller."""
    script = (CONFIGS / "mlflow_user.sh").read_text()
    rules = re.findall(r"(?m)^\$ray_user ALL=.*$", script)
    assert rules == [
        "$ray_user ALL=(root) NOPASSWD: $prefix/bin/$name start, $prefix/bin/$name stop"
    ]
    assert "visudo -cqf" in script
    assert "source $prefix/settings" in script
    for secret in ("/.pgpass", "/mlflow/admin_password"):
        assert f'move_secret "$ray_home{secret}"' in script


@pytest.mark.parametrize("ttl", ["1m", "-5", "60 s"])
def test_a_password_cache_time_that_is_not_whole_seconds_is_refused_in_one_line(
    tmp_path: Path, ttl: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"HOME": str(tmp_path), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_AUTH_CACHE_TTL_S": ttl}
    done = subprocess.run(
        ["bash", str(ROOT / "cluster_configs" / "start_mlflow.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "MLFLOW_AUTH_CACHE_TTL_S" in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.slow  # starts an MLflow server and waits for it
def test_head_mlflow_command_runs(tmp_path: Path) -> None:
    """gcp.yaml's command, on this machine, with its stores swapped for local ones: it returns
    once the server answers (pipes open, as over SSH), the server requires signing in, its
    secrets are private files, MLFLOW_HOST is honoured (default: the first address of
    `hostname -I`), and a second `ray up` starts no second server and keeps the passwords."""
    home, artifacts, port = tmp_path / "home", tmp_path / "artifacts", free_port()
    home.mkdir()
    (home / "raytrain").symlink_to(ROOT)  # the rsynced repository
    (home / "raytrain-venv").symlink_to(sys.prefix)  # the venv the command activates
    command = WRAPPED
    command = command.replace(
        "bash ", f"MLFLOW_ARTIFACTS_DESTINATION={artifacts} MLFLOW_PORT={port} bash ", 1
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"HOME": str(home), "MLFLOW_WORKERS": "1"}  # one server process: tests share 2 CPUs
    folder = home / "mlflow"
    try:
        # Another loopback address: the server must listen there, and only there.
        subprocess.run(
            ["bash", "-c", command],
            env={**env, "MLFLOW_HOST": "127.0.0.2"},
            check=True,
            timeout=300,
            capture_output=True,
        )
        server = MlflowServer(f"http://127.0.0.2:{port}", home)
        assert (folder / "tracking_uri").read_text().strip() == server.uri
        for secret in (folder / "admin_password", home / ".mlflow" / "credentials"):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        assert folder.stat().st_mode & 0o777 == 0o700
        passwords = [server.admin[1], server.jobs[1]]
        assert min(len(p) for p in passwords) >= 32
        assert not any(p in (folder / "basic_auth.ini").read_text() for p in passwords)
        # MLflow checks a password with scrypt on every request unless it caches the check.
        assert "auth_cache_ttl_seconds = 60\n" in (folder / "basic_auth.ini").read_text()

        assert server.create_experiment() == 401
        assert server.create_experiment(server.admin) == 200
        assert server.create_experiment((server.jobs[0], "not-the-password")) == 401
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        import mlflow

        with signed_in_as(server.jobs), pytest.MonkeyPatch.context() as patch:
            # A loaded machine's first write can outlast raytrain's 10 s, and MLflow's retry of
            # a create that went through fails with RESOURCE_ALREADY_EXISTS (seen in CI).
            patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
            client = mlflow.MlflowClient(tracking_uri=server.uri)
            run = client.create_run(client.create_experiment("cluster-config-check"))
            (tmp_path / "note.txt").write_text("hello")
            client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert list(artifacts.rglob("note.txt"))

        # Again, without MLFLOW_HOST: `hostname -I` (faked: a loopback address first) names it.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "hostname").write_text("#!/bin/sh\necho '127.0.0.2 10.9.9.9 '\n")
        (fake / "hostname").chmod(0o755)
        first_pid = (folder / "server.pid").read_text()
        again = subprocess.run(
            ["bash", "-c", command],
            env={**env, "PATH": f"{fake}{os.pathsep}{env['PATH']}"},
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert "already running at " + server.uri in again.stdout
        assert (folder / "server.pid").read_text() == first_pid
        assert [server.admin[1], server.jobs[1]] == passwords
    finally:
        stop_mlflow(home)


@pytest.mark.slow  # starts an MLflow server and waits for it
def test_head_mlflow_command_serves_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onprem.yaml's MLFLOW_TLS=1: the server answers HTTPS only, with a certificate of a CA made
    on its first start; the CA's certificate (never a key) is ~/.mlflow/ca.pem, which raytrain
    checks the server with and hands to Ray processes; a client that trusts only the system's
    CAs, or another CA, is refused; `stop` ends the server."""
    import pickle

    import requests

    from raytrain.tracking import check_reachable, credentials

    home, port = tmp_path / "home", free_port()
    home.mkdir()
    (home / "raytrain").symlink_to(ROOT)
    (home / "raytrain-venv").symlink_to(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"HOME": str(home), "MLFLOW_WORKERS": "1", "MLFLOW_TLS": "1"}
    env |= {"MLFLOW_HOST": "127.0.0.2", "MLFLOW_PORT": str(port)}
    uri = f"https://127.0.0.2:{port}"
    try:
        subprocess.run(
            ["bash", "-c", WRAPPED], env=env, check=True, timeout=300, capture_output=True
        )
        assert (home / "mlflow" / "tracking_uri").read_text().strip() == uri
        ca = home / ".mlflow" / "ca.pem"
        assert "BEGIN CERTIFICATE" in ca.read_text()
        assert "PRIVATE KEY" not in ca.read_text()
        tls = home / "mlflow" / "tls"
        for key in ("ca.key", "server.key"):
            assert (tls / key).stat().st_mode & 0o777 == 0o600, key
        server = MlflowServer(uri, home)
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, auth=server.admin, verify=ca, timeout=60).status_code == 200
        other = tmp_path / "other-ca.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=another CA", "-keyout", str(tmp_path / "k"),
             "-out", str(other)],
            check=True, capture_output=True,
        )  # fmt: skip
        for verify in (True, other):  # the system's CAs; another CA
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(search, auth=server.admin, verify=verify, timeout=60)
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP
            requests.get(search.replace("https:", "http:"), auth=server.admin, timeout=60)

        # raytrain on a node: ~/.mlflow/ca.pem found, set for MLflow's clients, sent along.
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv(credentials.CERT_ENV, raising=False)
        for name in (credentials.USER_ENV, credentials.PASSWORD_ENV):
            monkeypatch.delenv(name, raising=False)
        signed_in = credentials.current()
        assert signed_in is not None
        assert signed_in.server_cert == str(ca)
        assert os.environ[credentials.CERT_ENV] == str(ca)
        check_reachable(uri)
        monkeypatch.delenv(credentials.CERT_ENV)
        pickle.loads(pickle.dumps(signed_in)).use()  # a Ray process
        assert os.environ[credentials.CERT_ENV] == str(ca)
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        assert client.search_experiments(max_results=1) is not None
        monkeypatch.setenv(credentials.CERT_ENV, str(other))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)

        stopped = subprocess.run(
            ["bash", "-c", f"{WRAPPED} stop"], env=env, check=True, timeout=120, text=True,
            capture_output=True,
        )  # fmt: skip
        assert "MLflow stopped" in stopped.stdout
        assert not (home / "mlflow" / "server.pid").exists()
    finally:
        stop_mlflow(home)
