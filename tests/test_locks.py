"""The cluster nodes' hash-pinned locks (requirements/, `make locks`) and the commands that install
them: every locked file carries its sha256, every version is the one CI tests (constraints.txt, or
constraints-tpu.txt on TPU hosts), libtpu and TensorFlow's CUDA wheels are among them, and every
`pip install` in cluster_configs/ installs a lock with --require-hashes, or raytrain itself with
nothing else. Offline: nothing is downloaded or installed (`make locks` needs the index; the
two-machine test, tests/test_onprem_cluster.py, installs a node from the lock).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
CONFIGS = ROOT / "cluster_configs"
DOCKERFILE = CONFIGS / "kuberay" / "Dockerfile"
LOCKS = sorted(REQUIREMENTS.glob("*.txt"))
# The Dockerfile's EXTRAS build argument: none, or the `gpu` extra (its header).
DOCKER_EXTRAS = ("", "gpu")


def normalized(name: str) -> str:
    """A distribution's name as package indexes compare it (PEP 503): tf_keras is tf-keras."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, _, version = line.partition("==")
        if version and not name.startswith("#"):
            pins[normalized(name.strip())] = version.strip()
    return pins


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    hashes: tuple[str, ...]


def requirements(text: str) -> list[str]:
    """A requirements file's requirements, each on one line: comments dropped, continued lines
    joined."""
    joined = re.sub(r"\\\n", " ", text)
    lines = (line.split(" #", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def locked(text: str) -> tuple[list[Locked], list[str]]:
    """A lock's pinned requirements, and the problems of the lines that are not pinned with
    a hash (pip's --require-hashes refuses those too, but only on the node)."""
    found, problems = [], []
    for line in requirements(text):
        m = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line
        )
        if not m:
            problems.append(f"not name==version with sha256 hashes: {line[:120]!r}")
            continue
        hashes = tuple(re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
        if not hashes:
            problems.append(f"{m.group(1)}=={m.group(2)} has no hash")
        found.append(Locked(normalized(m.group(1)), m.group(2), hashes))
    return found, problems


def lock(name: str) -> dict[str, Locked]:
    found, _ = locked((REQUIREMENTS / name).read_text())
    return {r.name: r for r in found}


def pins_for(lock_path: Path) -> Path:
    """TPU hosts' locks are made under constraints-tpu.txt, every other under constraints.txt."""
    return ROOT / ("constraints-tpu.txt" if "tpu" in lock_path.name else "constraints.txt")


# ---- the install commands -----------------------------------------------------------------------


def pip_installs(command: str) -> list[str]:
    """Each `pip install` of a shell command, with a PIP="..." variable spelled out."""
    for name, value in re.findall(r'\b(\w+)="([^"]*\bpip install\b[^"]*)"', command):
        command = command.replace(f"${name}", value)
    steps = re.split(r"&&|\|\||;|\n|\b(?:then|else|fi)\b", command)
    return [
        " ".join(s.split())
        for s in steps
        if re.search(r"\bpip install\b", s) and not re.match(r"\s*\w+=", s)
    ]


def lock_paths(install: str, command: str) -> list[str]:
    """The files an install's -r names: a $VAR is each value the command gives it, the
    Dockerfile's ${EXTRAS:+-$EXTRAS} each of its EXTRAS."""
    paths = []
    for arg in re.findall(r"(?:^|\s)-r\s+(\S+)", install):
        arg = arg.strip("'\"")
        if re.fullmatch(r"\$\w+", arg):
            paths += re.findall(rf"\b{arg[1:]}=([^\s;&|]+)", command)
        elif "${EXTRAS:+-$EXTRAS}" in arg:
            paths += [arg.replace("${EXTRAS:+-$EXTRAS}", e and f"-{e}") for e in DOCKER_EXTRAS]
        else:
            paths.append(arg)
    return [p.strip("'\"") for p in paths]


def raytrain_itself(install: str) -> bool:
    """raytrain from the checkout and nothing else, built with the lock's setuptools."""
    return bool(re.search(r"\s--no-deps\b.*\s--no-build-isolation\s+(-e\s+)?\.$", install))


def install_problems(command: str) -> list[str]:
    """The pip installs of a command that are neither a lock with --require-hashes nor raytrain
    itself with --no-deps."""
    problems = []
    for install in pip_installs(command):
        if raytrain_itself(install):
            continue
        paths = lock_paths(install, command)
        if "--require-hashes" not in install:
            problems.append(f"pip install without --require-hashes: {install!r}")
        elif not paths:
            problems.append(f"pip install of no lock (-r requirements/...): {install!r}")
        for path in paths:
            if not (path.startswith("requirements/") and (ROOT / path).is_file()):
                problems.append(f"pip install of {path}, which is no lock in requirements/")
    return problems


def strings(node: Any) -> list[str]:
    """Every string of a parsed YAML document (comments are not in it)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def dockerfile_runs(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return re.findall(r"(?m)^RUN\s+(.*)$", joined)


def config_commands() -> list[tuple[str, str]]:
    """(file, command) for every string of the ray-up configs and KubeRay manifests that runs pip,
    and every RUN of the Dockerfile."""
    found = [
        (path.name, s)
        for path in sorted(CONFIGS.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        for s in strings(doc)
        if "pip" in s
    ]
    return found + [("kuberay/Dockerfile", run) for run in dockerfile_runs(DOCKERFILE.read_text())]


# ---- tests --------------------------------------------------------------------------------------


def test_the_locks_are_there() -> None:
    assert {p.name for p in LOCKS} == {
        "nodes.txt",  # CPU nodes
        "nodes-gpu.txt",  # the `gpu` extra: TensorFlow's CUDA wheels
        "nodes-gcp.txt",  # a GCP head: the `gcp` extra
        "nodes-tpu.txt",  # TPU hosts: tensorflow-tpu and libtpu
        "tensorflow-tpu.txt",  # tensorflow-tpu alone, reinstalled last on TPU hosts
        "mlflow-server.txt",  # the head's MLflow server, in its own venv
    }


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.name)
def test_every_line_is_pinned_with_its_hashes(path: Path) -> None:
    found, problems = locked(path.read_text())
    assert found
    assert problems == []


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.name)
def test_every_version_is_the_one_ci_tests(path: Path) -> None:
    pins = constraint_pins(pins_for(path))
    found, _ = locked(path.read_text())
    wrong = {
        r.name: f"{r.version} (pinned: {pins.get(r.name, 'nothing')})"
        for r in found
        if pins.get(r.name) != r.version
    }
    assert wrong == {}, f"{path.name} against {pins_for(path).name}; run `make lock`"


def test_libtpu_and_tensorflows_tpu_build_are_pinned() -> None:
    tpu = lock("nodes-tpu.txt")
    tpu_pins = constraint_pins(ROOT / "constraints-tpu.txt")
    for name in ("libtpu", "tensorflow-tpu", "tensorflow"):
        assert tpu[name].hashes, name
        assert tpu[name].version == tpu_pins[name], name
    # The reinstall that makes the TPU build's files win is the same file, the same hashes.
    assert lock("tensorflow-tpu.txt") == {"tensorflow-tpu": tpu["tensorflow-tpu"]}
    for name in ("nodes.txt", "nodes-gpu.txt", "nodes-gcp.txt"):
        assert not {"libtpu", "tensorflow-tpu"} & lock(name).keys(), name


def cuda_wheels() -> set[str]:
    """The distributions TensorFlow's `and-cuda` extra names (the `gpu` extra asks for it)."""
    requires = importlib.metadata.requires("tensorflow") or []
    return {
        normalized(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0])
        for r in requires
        if 'extra == "and-cuda"' in r
    }


def test_tensorflows_cuda_wheels_are_pinned_on_gpu_nodes_only() -> None:
    wheels = cuda_wheels()
    assert len(wheels) >= 10, wheels
    assert all(w.startswith("nvidia-") for w in wheels), wheels
    gpu = lock("nodes-gpu.txt")
    pins = constraint_pins(ROOT / "constraints.txt")
    for name in wheels | {"nvidia-ml-py"}:
        assert gpu[name].hashes, name
        assert gpu[name].version == pins[name], name
    for name in ("nodes.txt", "nodes-gcp.txt", "nodes-tpu.txt"):
        assert not [n for n in lock(name) if n.startswith("nvidia-")], name


@pytest.mark.parametrize("name", ["nodes.txt", "nodes-gpu.txt", "nodes-gcp.txt", "nodes-tpu.txt"])
def test_raytrains_build_backend_is_locked(name: str) -> None:
    """Nodes build raytrain with --no-build-isolation: its build-system.requires are the lock's."""
    assert {"setuptools", "wheel"} <= lock(name).keys()


def test_every_install_in_cluster_configs_is_a_lock_with_hashes() -> None:
    commands = config_commands()
    assert len([c for _, c in commands if "--require-hashes" in c]) >= 6
    problems = [f"{name}: {p}" for name, c in commands for p in install_problems(c)]
    assert problems == []


def test_the_heads_mlflow_venv_installs_its_lock_with_hashes() -> None:
    """mlflow_user.sh's venv (root's, for MLflow's own user) takes nothing but its lock, whose
    every package a node's lock holds too (so an on-prem wheelhouse serves it)."""
    script = (CONFIGS / "mlflow_user.sh").read_text()
    (install,) = re.findall(r"pip=\((.*?)\)", script, re.S)
    assert "--require-hashes" in install
    assert re.search(r'-r "\$repo/requirements/mlflow-server.txt"', install), install
    assert '"${pip[@]}"\n' in script  # nothing named beside the lock
    assert lock("mlflow-server.txt").keys() <= lock("nodes.txt").keys()


# The rules, fed what they must refuse.
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ray==2.60.0\n", "ray==2.60.0 has no hash"),
        ("ray>=2.60 \\\n    --hash=sha256:" + "0" * 64 + "\n", "not name==version"),
        ("-e .\n", "not name==version"),
    ],
)
def test_an_unhashed_or_unpinned_line_is_a_problem(text: str, words: str) -> None:
    _, problems = locked(text)
    assert len(problems) == 1, problems
    assert words in problems[0]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("cd ~/raytrain && pip install -q -c constraints.txt -e '.[gpu]'", "--require-hashes"),
        ("pip install -q -r requirements/nodes.txt", "without --require-hashes"),
        ("pip install --require-hashes -r requirements/nodes-cuda.txt", "no lock in"),
        ("pip install --require-hashes -r constraints.txt", "no lock in"),
        ("pip install --require-hashes tensorflow==2.21.0", "of no lock"),
        ("pip install --no-deps -e .", "without --require-hashes"),  # setuptools of pip's choice
        ('PIP="pip install -q" && $PIP -e .', "without --require-hashes"),
        ("L=requirements/x.txt; pip install --require-hashes -r $L", "requirements/x.txt"),
        ("pip install --require-hashes -r requirements/nodes.txt && pip install ray", "'pip"),
    ],
)
def test_an_unlocked_install_is_a_problem(command: str, words: str) -> None:
    problems = install_problems(command)
    assert len(problems) == 1, problems
    assert words in problems[0]


def test_the_dockerfiles_extras_each_name_a_lock() -> None:
    (run,) = [r for r in dockerfile_runs(DOCKERFILE.read_text()) if "--require-hashes" in r]
    (install, _) = pip_installs(run)
    assert lock_paths(install, run) == ["requirements/nodes.txt", "requirements/nodes-gpu.txt"]
