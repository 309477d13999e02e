"""Reading an experiment file into a validated ``Experiment``, with errors a user can act on.

Every problem is reported as ``FILE:LINE: dotted.path: message`` (or ``--set key=value: ...``
for command-line overrides), all of them in one pass, so one ``raytrain validate`` shows every
mistake instead of the first: schema errors do not hide the cross-field rules (they run on a copy
with each invalid field at its default), and a misspelled section's contents are checked as the
section it most likely means.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raytrain.config.problems import Problem
from raytrain.config.rules import check_rules
from raytrain.config.schema import REQUIRED, Experiment, suggested_key, unknown_key_message
from raytrain.errors import SpecError

__all__ = ["MOST_BYTES", "MOST_DEPTH", "MOST_VALUES", "LoadedExperiment", "load_experiment"]

Path_ = tuple[str | int, ...]
# Bounds of an experiment file: every one is answered in seconds. An experiment is a few KB,
# nests a few levels; aliases may repeat a section, not multiply one ("billion laughs").
MOST_BYTES = 256 * 1024
MOST_DEPTH = 32
MOST_VALUES = 100_000  # keys, items and scalars, each alias counted as what it repeats


@dataclass(frozen=True)
class LoadedExperiment:
    """A validated experiment and where it came from (its folder anchors relative data paths)."""

    spec: Experiment
    path: Path
    overrides: tuple[str, ...] = ()


def load_experiment(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> LoadedExperiment:
    """Load, override and validate an experiment; raise ``SpecError`` listing every problem."""
    file = Path(path)
    try:
        with file.open("rb") as stream:
            data = stream.read(MOST_BYTES + 1)
    except OSError as exc:
        raise SpecError([f"{file}: cannot read experiment file: {exc.strerror or exc}"]) from None
    if len(data) > MOST_BYTES:
        raise SpecError([f"{file}: the experiment file is over {MOST_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise SpecError(
            [f"{file}: not UTF-8: byte 0x{byte:02x} at offset {exc.start} ({exc.reason})"]
        ) from None
    where: dict[Path_, str] = {}
    raw = _parse_yaml(text, file, where)
    problems: list[str] = []
    overridden: set[Path_] = set()  # data paths given by --set: relative to the cwd
    for item, (key_path, value) in zip(
        overrides, _parse_override_items(overrides, problems), strict=True
    ):
        if not key_path:
            continue
        _set_path(raw, key_path, value, problems, label=f"--set {item}")
        for indexed in [p for p in where if p[: len(key_path)] == key_path]:
            del where[indexed]
        where[key_path] = f"--set {item}"
        overridden |= {p for p in _DATA_PATHS if p[: len(key_path)] == key_path[: len(p)]}
    if problems:
        raise SpecError(problems)
    _anchor_data_paths(raw, file.parent, overridden=overridden)
    spec, found = _validate(raw, base_dir=file.parent)
    if found:
        raise SpecError([_format(file, where, p) for p in found])
    assert spec is not None
    return LoadedExperiment(spec=spec, path=file, overrides=tuple(overrides))


_REPAIR_ROUNDS = 4  # a renamed section can hold errors of its own: a few rounds find them all
_REQUIRED_PATHS = {(key,) for key in REQUIRED}  # never dropped: no default to fall back to


def _validate(raw: dict[str, Any], *, base_dir: Path) -> tuple[Experiment | None, list[Problem]]:
    """The spec and every problem of ``raw``. After schema errors, validation goes on with a
    repaired copy (invalid fields dropped to their defaults, a misspelled key renamed to the one
    it most likely means) so that one pass also reports the rest: the renamed section's errors
    and the cross-field rules, less those about a dropped field's default."""
    draft, problems = copy.deepcopy(raw), []
    renamed: dict[Path_, Path_] = {}  # the key it means -> the misspelled key in the file
    dropped: list[Path_] = []
    for _ in range(_REPAIR_ROUNDS):
        try:
            spec = Experiment.model_validate(draft)
        except ValidationError as exc:
            found = [_in_file(p, renamed) for p in _pydantic_problems(exc)]
            new = [p for p in found if p not in problems and not _under(p.loc, dropped)]
            problems += new
            if not new or not _repair(draft, exc, renamed, dropped):
                return None, problems
            continue
        rules = [_in_file(p, renamed) for p in check_rules(spec, base_dir=base_dir)]
        return spec, problems + [p for p in rules if not _under(p.loc, dropped)]
    return None, problems


def _repair(
    draft: dict[str, Any], exc: ValidationError, renamed: dict[Path_, Path_], dropped: list[Path_]
) -> bool:
    """Rename each misspelled key to its suggestion, drop each invalid field; False if nothing
    could be changed (a required field is invalid, say)."""
    changed = False
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            parent, meant = _node(draft, loc[:-1]), suggested_key(loc)
            if isinstance(parent, dict) and loc[-1] in parent:
                value = parent.pop(loc[-1])
                if meant is not None and meant not in parent:
                    parent[meant] = value
                    renamed[(*_in_file_loc(loc[:-1], renamed), meant)] = _in_file_loc(loc, renamed)
                changed = True
            continue
        for end in range(len(loc), 0, -1):  # the deepest key of the file the error lies under
            parent = _node(draft, loc[: end - 1])
            if (
                isinstance(loc[end - 1], str)
                and isinstance(parent, dict)
                and loc[end - 1] in parent
            ):
                if loc[:end] not in _REQUIRED_PATHS:
                    del parent[loc[end - 1]]
                    dropped.append(_in_file_loc(loc[:end], renamed))
                    changed = True
                break
    return changed


def _node(data: Any, path: Path_) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _in_file_loc(loc: Path_, renamed: dict[Path_, Path_]) -> Path_:
    """``loc`` as the file spells it (under the misspelled key, not the one it means)."""
    for meant, written in renamed.items():
        if loc[: len(meant)] == meant:
            return (*written, *loc[len(meant) :])
    return loc


def _in_file(problem: Problem, renamed: dict[Path_, Path_]) -> Problem:
    return Problem(_in_file_loc(problem.loc, renamed), problem.message)


def _under(loc: Path_, paths: list[Path_]) -> bool:
    return any(loc[: len(path)] == path for path in paths)


def _parse_override_items(
    items: list[str] | tuple[str, ...], problems: list[str]
) -> list[tuple[Path_, Any]]:
    parsed: list[tuple[Path_, Any]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key_path: Path_ = tuple(part for part in key.strip().split(".") if part)
        if not sep or not key_path:
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. --set train.epochs=3")
            parsed.append(((), None))
            continue
        try:
            value = _load(text) if text.strip() else ""
        except (yaml.YAMLError, _TooBig) as exc:
            problems.append(f"--set {item}: value is not valid YAML: {_first_line(exc)}")
            value = None
        parsed.append((key_path, value))
    return parsed


def _parse_yaml(text: str, file: Path, where: dict[Path_, str]) -> dict[str, Any]:
    """Parse YAML and record the line of every key and list item in ``where``."""
    try:
        node, data = _compose(text)
    except _TooBig as exc:
        raise SpecError([f"{file}:{exc.line}: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{loc}: YAML syntax error: {problem}"]) from None
    if data is None:  # empty, or only comments: almost surely not what was meant
        raise SpecError(
            [
                f"{file}:1: the experiment is empty; an experiment needs at least "
                f"{', '.join(REQUIRED)} (e.g. `name: digits-mlp`): every other field has a "
                "default, and `data.source` defaults to builtin:digits"
            ]
        )
    if not isinstance(data, dict) or node is None:
        raise SpecError(
            [f"{file}:1: the experiment must be a mapping of sections (data:, model:, ...)"]
        )
    duplicates: list[str] = []
    _index_lines(node, (), file, where, duplicates)
    if duplicates:
        raise SpecError(duplicates)
    return data


class _TooBig(Exception):
    """YAML nested too deep, an alias inside itself, or too many values once aliases repeat."""

    def __init__(self, message: str, node_or_mark: Any) -> None:
        super().__init__(message)
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.line = mark.line + 1 if mark is not None else 1


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, nesting at most ``MOST_DEPTH`` levels: its composer recurses once
    per level, without a limit of its own."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.depth >= MOST_DEPTH and not self.check_event(yaml.AliasEvent):
            # types-PyYAML leaves peek_event unannotated.
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _TooBig(f"nested more than {MOST_DEPTH} levels deep", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node graph and its value, once the graph is known to be finite and
    small: an alias inside the value it names is a cycle, and aliases of aliases multiply."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _measure(node, 0, {}, set())
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def _load(text: str) -> Any:
    return _compose(text)[1]


def _measure(
    node: yaml.Node, depth: int, known: dict[int, tuple[int, int]], open_: set[int]
) -> tuple[int, int]:
    """(values, levels) below ``node`` with every alias expanded; each node is measured once,
    so an alias bomb costs its size in the file, not its expansion."""
    if id(node) in open_:
        raise _TooBig("an alias refers to a value that holds it", node)
    if depth > MOST_DEPTH:
        raise _TooBig(f"nested more than {MOST_DEPTH} levels deep once aliases are expanded", node)
    if id(node) not in known:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        open_.add(id(node))
        values, levels = 1, 1
        for child in children:
            size, height = _measure(child, depth + 1, known, open_)
            values, levels = values + size, max(levels, height + 1)
            if values > MOST_VALUES:
                raise _TooBig(f"more than {MOST_VALUES} values once aliases are expanded", node)
        open_.discard(id(node))
        known[id(node)] = (values, levels)
    values, levels = known[id(node)]
    if depth + levels > MOST_DEPTH + 1:
        raise _TooBig(f"nested more than {MOST_DEPTH} levels deep once aliases are expanded", node)
    return values, levels


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _index_lines(
    node: yaml.Node, path: Path_, file: Path, where: dict[Path_, str], duplicates: list[str]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if not isinstance(key_node, yaml.ScalarNode)
                else key_node.value
            )
            child = (*path, key)
            line = f"{file}:{key_node.start_mark.line + 1}"
            if key in seen:
                duplicates.append(
                    f"{line}: {_dotted(child)}: duplicate key (a later value would silently win)"
                )
            seen.add(key)
            where[child] = line
            _index_lines(value_node, child, file, where, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            where[child] = f"{file}:{item.start_mark.line + 1}"
            _index_lines(item, child, file, where, duplicates)


def _set_path(
    raw: dict[str, Any], key_path: Path_, value: Any, problems: list[str], *, label: str
) -> None:
    node: Any = raw
    for i, part in enumerate(key_path[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            problems.append(f"{label}: {_dotted(key_path[: i + 1])} is not a section")
            return
        node = nxt
    node[key_path[-1]] = value


_DATA_PATHS = (("data", "source"), ("data", "validation", "source"), ("data", "test", "source"))


def _anchor_data_paths(raw: dict[str, Any], base: Path, *, overridden: set[Path_]) -> None:
    """Relative data paths in a file are relative to that file; on ``--set``, to the cwd. A
    folder keeps its trailing / (it says: a folder of images)."""
    for key_path in _DATA_PATHS:
        node: Any = raw
        for key in key_path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        source = node.get(key_path[-1]) if isinstance(node, dict) else None
        if not isinstance(source, str) or not source:
            continue
        if source.startswith("builtin:") or "://" in source or os.path.isabs(source):
            continue
        anchor = Path.cwd() if key_path in overridden else base
        folder = "/" if source.endswith("/") else ""
        node[key_path[-1]] = str((anchor / source).resolve()) + folder


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(Problem(loc, unknown_key_message(loc)))
            continue
        message = err["msg"]
        if err["type"] == "missing" and loc == ("name",):
            message = "required: it names the experiment's storage folder and MLflow experiment"
        if err["type"] not in ("missing",) and not isinstance(err.get("input"), (dict, list)):
            message += f" (got {err.get('input')!r})"
        problems.append(Problem(loc, message))
    return problems


def _format(file: Path, where: dict[Path_, str], problem: Problem) -> str:
    loc = problem.loc
    for end in range(len(loc), -1, -1):
        if loc[:end] in where:
            origin = where[loc[:end]]
            break
    else:
        origin = f"{file}:1"
    return f"{origin}: {_dotted(loc) or '(top level)'}: {problem.message}"


def _dotted(loc: Path_) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or "." in str(part):  # list index, or a dotted key of tune.space
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out
