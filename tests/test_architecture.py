"""The package's shape, read from its source with ``ast`` (nothing is imported but in the last
test): no import cycle between modules, every package imports only from the layers below it, and
one module answers for ``data.locality``.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``. An import
a function makes late is still a dependency, only one that fails later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "raytrain"

# Bottom to top. A module may import a package of a lower layer only; a package or module that is
# in no layer fails test_every_package_has_a_layer (place it before it lands).
LAYERS: list[set[str]] = [
    {"secrets"},  # secrets out of messages, MLflow and job metadata: errors mask their messages
    {"errors"},
    {"shims"},  # every use of a private Ray, TensorFlow or MLflow name
    {"storage"},
    {"config"},
    {"data", "tracking", "cluster"},
    {"models"},  # builds a model for the data it is given (data.DataInfo)
    {"train", "serve", "export"},  # the training loop; serving and exporting registered models
    {"sweep"},  # the search; a trial trains with train's loop
    {"orchestration", "plan"},  # an experiment end to end; its plan: time and cost before it
    {"past_runs"},
    {"display"},
    {"cli"},
    {"__main__"},
]
# (importer's package, imported package) -> why: imports between packages of one layer.
SAME_LAYER_ALLOWED: dict[tuple[str, str], str] = {
    ("orchestration", "plan"): "a run or sweep records its plan and actual time (calibration)",
}


MISSING = "?"  # marks the target of an import that names no module of the package


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _lazy_api(init: Path) -> dict[str, str]:
    """``raytrain/__init__.py``'s ``_API``: public name -> the module it is loaded from, by
    string (``from raytrain import run_sweep`` depends on raytrain.orchestration.sweep, not on
    raytrain)."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_API" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _imports(
    module: str, path: Path, modules: dict[str, Path], api: dict[str, str], text: str | None = None
) -> list[Edge]:
    """The raytrain modules ``module`` (at ``path``) imports, each with where;
    ``from raytrain.x import y`` is raytrain.x.y where that is a module, else raytrain.x."""
    is_package = path.name == "__init__.py"
    found: list[tuple[list[str], int]] = []  # the modules an import may name, best first
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [([alias.name], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its own package (a package's __init__ is one)
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if base == "raytrain" and alias.name in api:
                    found.append(([api[alias.name]], node.lineno))
                else:
                    found.append(([f"{base}.{alias.name}", base], node.lineno))
    where = path.relative_to(REPO)
    edges = []
    for names, line in sorted(found, key=lambda item: item[1]):
        if names[0].split(".")[0] != "raytrain":
            continue
        target = next((name for name in names if name in modules), MISSING + names[-1])
        if target == module:
            continue
        edges.append(Edge(module, target, f"{where}:{line}"))
        # Importing raytrain.a.b runs raytrain/a/__init__.py first, unless the importer is inside
        # raytrain.a itself (then that package is already being imported): a dependency too.
        ancestors = target.removeprefix(MISSING).split(".")[:-1]
        for depth in range(2, len(ancestors) + 1):
            package = ".".join(ancestors[:depth])
            if not (module == package or module.startswith(package + ".")):
                edges.append(Edge(module, package, f"{where}:{line} (runs {package}/__init__)"))
    return edges


def _all_edges() -> list[Edge]:
    modules = _modules()
    api = _lazy_api(modules["raytrain"])
    return [e for m, p in modules.items() for e in _imports(m, p, modules, api)]


def _graph() -> list[Edge]:
    return [e for e in _all_edges() if not e.target.startswith(MISSING)]


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _top(module: str) -> str | None:
    """The package (or top-level module) of raytrain that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: raytrain itself


def _layer(top: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_the_root_package_imports_nothing_of_its_own() -> None:
    """``import raytrain`` stays fast and sits in no cycle: its API loads by name, on first use."""
    assert [str(e) for e in _graph() if e.source == "raytrain"] == []


def test_every_import_of_raytrain_names_a_module() -> None:
    missing = [str(e) for e in _all_edges() if e.target.startswith(MISSING)]
    assert missing == [], "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycles() -> None:
    edges = _graph()
    cycles = _cycles(edges)
    report = []
    for component in cycles:
        members = set(component)
        inside = sorted(
            {str(e) for e in edges if e.source in members and e.target in members}, key=str
        )
        report.append(" <-> ".join(component) + "\n    " + "\n    ".join(inside))
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_every_package_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    tops = {_top(m) for m in _modules()} - {None}
    assert tops - layered == set(), "place these in LAYERS (tests/test_architecture.py)"


def test_packages_import_only_from_lower_layers() -> None:
    layered = set().union(*LAYERS)
    bad: dict[tuple[str, str, str], str] = {}  # one line per import statement and package pair
    for edge in _graph():
        source, target = _top(edge.source), _top(edge.target)
        if None in (source, target) or source == target:
            continue
        if source not in layered or target not in layered:
            continue  # test_every_package_has_a_layer says so
        upward = _layer(target) > _layer(source)
        sideways = _layer(target) == _layer(source)
        if upward or (sideways and (source, target) not in SAME_LAYER_ALLOWED):
            kind = "up" if upward else "same layer"
            key = (edge.where.split()[0], source, target)
            bad.setdefault(key, f"{edge} ({source} -> {target}: {kind})")
    assert not bad, "imports against the layering (LAYERS, bottom to top):\n" + "\n".join(
        sorted(bad.values())
    )


def test_the_graph_sees_every_kind_of_import() -> None:
    """The checks above are only as good as the graph: imports in functions and under
    TYPE_CHECKING, names of the lazy API, relative imports, and the package __init__ that
    importing a submodule runs."""
    names = ["raytrain", "raytrain.a", "raytrain.a.b", "raytrain.c", "raytrain.d", "raytrain.e"]
    modules = {name: PACKAGE / "x.py" for name in names}
    text = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from raytrain.a import b\n"
        "if TYPE_CHECKING:\n"
        "    from raytrain.c import Thing\n"
        "def f():\n"
        "    from raytrain import load, __version__\n"
        "    import raytrain.e\n"
        "from .d import other\n"
        "from raytrain.gone import thing\n"
    )
    path = PACKAGE / "f.py"
    edges = _imports("raytrain.f", path, modules, {"load": "raytrain.d"}, text=text)
    assert [(e.target, e.where) for e in edges] == [
        ("raytrain.a.b", "raytrain/f.py:3"),
        ("raytrain.a", "raytrain/f.py:3 (runs raytrain.a/__init__)"),
        ("raytrain.c", "raytrain/f.py:5"),
        ("raytrain.d", "raytrain/f.py:7"),
        ("raytrain", "raytrain/f.py:7"),
        ("raytrain.e", "raytrain/f.py:8"),
        ("raytrain.d", "raytrain/f.py:9"),
        ("?raytrain.gone", "raytrain/f.py:10"),
    ]
    # Inside raytrain.a, importing raytrain.a.b does not run raytrain.a's __init__ again.
    inside = _imports("raytrain.a.z", path, modules, {}, text="from raytrain.a.b import x\n")
    assert [e.target for e in inside] == ["raytrain.a.b"]
    cycle = [Edge("raytrain.a", "raytrain.a.b", ""), Edge("raytrain.a.b", "raytrain.a", "")]
    assert _cycles([*cycle, Edge("raytrain.c", "raytrain.a", "")]) == [
        ["raytrain.a", "raytrain.a.b"]
    ]


# data.locality's owner, and the schema that holds the field and hands the owner out.
LOCALITY_OWNERS = {"raytrain/config/locality.py", "raytrain/config/schema.py"}


def _reads_locality(tree: ast.AST) -> list[int]:
    """Lines that read a ``locality`` attribute: ``x.locality`` or ``getattr(x, "locality")``."""
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr == "locality")
        or (isinstance(node, ast.Constant) and node.value == "locality")
    )


def test_only_its_owner_reads_data_locality() -> None:
    """Every question about ``data.locality`` (the resources to request, which nodes may read
    the data, the messages) is answered by ``raytrain.config.locality``, through
    ``DataSpec.locality_rule``: a module that read the field would build an answer of its own."""
    reads = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(REPO).as_posix() not in LOCALITY_OWNERS
        for line in _reads_locality(ast.parse(path.read_text()))
    ]
    hint = "ask spec.data.locality_rule (raytrain/config/locality.py) instead:\n"
    assert reads == [], hint + "\n".join(reads)
    sample = 'a = spec.data.locality\nb = getattr(d, "locality")\nc = d.locality_rule.pinned\n'
    assert _reads_locality(ast.parse(sample)) == [1, 2]


def test_only_training_workers_import_tensorflow() -> None:
    """The modules that Ray Train's controller, a sweep trial's function and the driver load for
    a run import no TensorFlow (3-6 s of CPU per process on 2 cores): workers alone do, in
    ``train_loop``. Imports for real, in a fresh Python (the one test here that does)."""
    modules = [
        "raytrain.train.loop",
        "raytrain.orchestration.run",
        "raytrain.orchestration.sweep",
        "raytrain.cli",
    ]
    probe = "import sys, " + ", ".join(modules) + "; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
