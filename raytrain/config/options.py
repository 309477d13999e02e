"""Command-line options generated from the spec models: one flag per field, ``--field-name``.

``raytrain serve`` and ``raytrain export`` take every field of ``ServeSpec`` / ``ExportSpec`` as
an option built here, its help text the field's description, so a new field is a new flag with
no change to the CLI and the two never disagree on names or meaning. The same spelling rebuilds
a command line from settings (``as_args``: a detached server is started from its resolved
settings) and shows the settings an error names (``flag``, see ``raytrain.errors``).

Importing this module is cheap (no typer, TensorFlow or Ray): the library uses ``as_args``.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["as_args", "fields", "flag", "spec_options"]


def flag(name: str) -> str:
    """The command-line spelling of a setting: ``max_batch_size`` -> ``--max-batch-size``."""
    return "--" + name.replace("_", "-")


def fields(model: type[BaseModel]) -> Iterator[tuple[str | None, str, FieldInfo]]:
    """``(section, name, field)`` per setting: a field that is itself a model (``autoscaling``)
    gives its own fields, flat (``--min-replicas``), with ``section`` naming it."""
    for name, field in model.model_fields.items():
        nested = _model_in(field.annotation)
        if nested is None:
            yield None, name, field
        else:
            yield from ((name, sub, f) for _, sub, f in fields(nested))


def spec_options(
    model: type[BaseModel],
    *,
    into: str,
    aliases: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace the command's parameter ``into`` with one typer option per setting of ``model``.

    Typer reads a command's parameters with ``inspect.signature``: the wrapper's
    ``__signature__`` lists the generated options where ``into`` was, and the command receives
    them as one dict under ``into``, shaped like the model (``{"autoscaling": {...}}``), every
    value ``None`` unless given, so the model validates them over the experiment's settings.
    ``aliases`` adds a short flag (``{"quantize": "-q"}``); ``notes`` extends a help text.
    """
    aliases, notes = aliases or {}, notes or {}
    generated = [
        _parameter(name, field, aliases.get(name), notes.get(name))
        for _, name, field in fields(model)
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            params += generated if param.name == into else [param]
        taken = [p.name for p in params]
        if into not in signature.parameters or len(taken) != len(set(taken)):
            raise TypeError(f"{command.__name__}: no parameter '{into}', or a setting's name taken")

        @functools.wraps(command)
        def wrapper(**given: Any) -> Any:
            settings: dict[str, Any] = {}
            for section, name, _ in fields(model):
                (settings.setdefault(section, {}) if section else settings)[name] = given.pop(name)
            return command(**given, **{into: settings})

        # What inspect (and so typer) reads; typeshed's functions do not declare it.
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def as_args(spec: BaseModel) -> list[str]:
    """The options that ``spec_options`` parses back into ``spec``'s values (unset ones left
    out): a background server is started with exactly the settings it was resolved to."""
    args: list[str] = []
    for section, name, _ in fields(type(spec)):
        owner = getattr(spec, section) if section else spec
        value = None if owner is None else getattr(owner, name)
        if isinstance(value, bool):
            args.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, list):
            args += [part for item in value for part in (flag(name), str(item))]
        elif value is not None:
            args += [flag(name), str(value)]
    return args


def _parameter(
    name: str, field: FieldInfo, alias: str | None, note: str | None
) -> inspect.Parameter:
    import typer
    from rich.markup import escape

    kind = _value_type(field.annotation)
    names = [f"{flag(name)}/--no-{flag(name)[2:]}" if kind is bool else flag(name)]
    help_text = escape(" ".join(t for t in (field.description, note) if t))  # rich markup
    option = typer.Option(*names, *([alias] if alias else []), help=help_text, show_default=False)
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _value_type(annotation: Any) -> Any:
    """What the command line parses: a list's items are strings (the model checks them, and
    may split them), a Literal is a string, ``X | None`` is ``X``."""
    inner = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType):
        return _value_type(inner[0])
    if get_origin(annotation) is list:
        return list[str]
    if get_origin(annotation) is Literal:
        return str
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    candidates = get_args(annotation) if get_origin(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
