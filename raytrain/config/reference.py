"""The experiment reference, generated from the schema: every section, every field, as Markdown.

The documentation site's reference page is this function's output (``docs/hooks.py`` fills it in
at build time), so the reference can never drift from ``schema.py``: to change what a field says,
change its ``Field(description=...)`` there.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from raytrain.config.schema import BUILTIN_BUILDERS, Experiment

__all__ = ["experiment_reference", "sections"]

# Constraint attributes of pydantic's field metadata, and how the reference writes each.
_CONSTRAINTS = {
    "gt": "> {}",
    "ge": "≥ {}",
    "lt": "< {}",
    "le": "≤ {}",
    "min_length": "at least {} item(s)",
    "max_length": "at most {} item(s)",
    "pattern": "matches `{}`",
}


def sections() -> Iterator[tuple[str, str, type[BaseModel]]]:
    """Every section of an experiment as ``(dotted path, description, model)``, depth first,
    with each built-in model builder's params right after ``model``."""
    yield from _walk(Experiment, "", Experiment.__doc__ or "")


def _walk(model: type[BaseModel], path: str, about: str) -> Iterator[tuple[str, str, type]]:
    yield path, about, model
    for name, info in model.model_fields.items():
        nested = _section(info.annotation)
        if nested is not None:
            yield from _walk(nested, _join(path, name), info.description or "")
    if path == "model":
        for builder, params in BUILTIN_BUILDERS.items():
            about = f"`model.params` when `model.builder` is `{builder}`."
            yield f"model.params ({builder})", about, params


def experiment_reference() -> str:
    """Markdown: one heading and one table (field, type, default, constraints, description) per
    section of the experiment schema, nested sections and built-in model params included."""
    out: list[str] = []
    for path, about, model in sections():
        out += [f"## `{path}`" if path else "## Top level", "", _cell(about), ""]
        out += ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
        prefix = path.split(" ")[0]  # "model.params (mlp)" -> fields model.params.<name>
        for name, info in model.model_fields.items():
            row = [
                f"`{_join(prefix, name)}`",
                f"`{_type(info.annotation)}`",
                _default(info),
                ", ".join(_constraints(info.metadata)),
                _cell(info.description or ""),
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section class inside ``annotation`` (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ():
        found = _section(arg)
        if found is not None:
            return found
    return None


def _type(annotation: Any) -> str:
    """A short YAML-minded name of a type: ``list[int]``, ``"min" | "max"``, ``float | null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin is Annotated:
        return " ".join([_type(args[0]), *_constraints(args[1:])])
    if origin in (Union, types.UnionType):
        return " | ".join(_type(arg) for arg in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type(arg) for arg in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if _section(annotation) is not None:
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(metadata: Iterable[object]) -> list[str]:
    found = []
    for item in metadata:
        for attribute, text in _CONSTRAINTS.items():
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(text.format(value))
    return found


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.get_default(call_default_factory=True, validated_data={})
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(section below)"
    if value is None and _section(info.annotation) is not None:
        return "absent"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell: one line, no HTML, no stray emphasis."""
    text = " ".join(text.split()).replace("<", "&lt;")
    return text.replace("*", "\\*").replace("|", "\\|")
