"""mkdocs hooks: the pages generated from the code, filled in at build time.

- ``reference/experiment.md``: the experiment reference, from the pydantic schema
  (``raytrain.config.reference.experiment_reference``);
- ``reference/api.md``: the public Python API, from ``raytrain.__all__`` (signatures and
  docstrings);
- ``reference/cli.md``: the ``raytrain`` command, from its typer app (every command, argument
  and option).

Each page holds a marker comment that is replaced; a missing marker fails the build.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

MARKERS = {
    "reference/experiment.md": "<!-- experiment-reference -->",
    "reference/api.md": "<!-- python-api -->",
    "reference/cli.md": "<!-- cli-reference -->",
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    marker = MARKERS.get(page.file.src_uri)
    if marker is None:
        return markdown
    if marker not in markdown:
        raise ValueError(f"{page.file.src_uri}: the marker {marker} is missing")
    if page.file.src_uri == "reference/experiment.md":
        from raytrain.config.reference import experiment_reference

        return markdown.replace(marker, experiment_reference())
    if page.file.src_uri == "reference/cli.md":
        return markdown.replace(marker, cli_reference())
    return markdown.replace(marker, python_api())


def cli_reference() -> str:
    """Every ``raytrain`` command as Markdown: its usage, its help, a table of its arguments and
    options with their defaults, read from the click command typer builds from ``raytrain.cli``."""
    import click
    import typer.main

    from raytrain.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="raytrain")
    out = ["## `raytrain`", "", *_cli_command(group, root)]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        assert command is not None
        out += [f"## `raytrain {name}`", ""]
        out += _cli_command(command, click.Context(command, info_name=name, parent=root))
    return "\n".join(out)


def _cli_command(command: Any, context: Any) -> list[str]:
    usage = " ".join(
        ["raytrain", *context.command_path.split()[1:], *_usage_pieces(command, context)]
    )
    out = ["```text", usage, "```", "", inspect.cleandoc(command.help or ""), ""]
    rows = [_cli_param(param) for param in command.get_params(context) if param.name != "help"]
    if rows:
        out += ["| argument or option | default | description |", "|---|---|---|", *rows, ""]
    return out


def _usage_pieces(command: Any, context: Any) -> list[str]:
    """click's usage words; arguments in capitals, as the tables name them (``FILE``)."""
    pieces = command.collect_usage_pieces(context)
    return [piece.strip("{}").upper() if piece.islower() else piece for piece in pieces]


def _cli_param(param: Any) -> str:
    names = [*param.opts, *param.secondary_opts]
    label = (
        " / ".join(f"`{name}`" for name in names)
        if names[0].startswith("-")
        else f"`{param.name.upper()}`"
    )
    if param.required:
        default = "required"
    elif param.default is None or param.default == []:
        default = ""
    elif param.default is False:
        default = "off"
    else:
        default = f"`{param.default}`"
    help_text = " ".join((param.help or "").split()).replace("|", "\\|").replace("<", "&lt;")
    return f"| {label} | {default} | {help_text} |"


def python_api() -> str:
    """The public names of ``raytrain``, functions first, then classes, then exceptions: each
    with its signature and docstring."""
    import raytrain

    # In the order of raytrain's own table of names (by module: load, run, sweep, serve, ...).
    order = list(getattr(raytrain, "_API", {}))
    names = sorted(raytrain.__all__, key=lambda n: order.index(n) if n in order else len(order))
    public = {name: getattr(raytrain, name) for name in names if name[0] != "_"}
    groups = {
        "Functions": [n for n, obj in public.items() if not inspect.isclass(obj)],
        "Classes": [
            n for n, obj in public.items() if inspect.isclass(obj) and not _is_exception(obj)
        ],
        "Exceptions": [n for n, obj in public.items() if _is_exception(obj)],
    }
    out: list[str] = []
    for title, names in groups.items():
        out += [f"## {title}", ""]
        for name in names:
            obj = public[name]
            kind = "class" if inspect.isclass(obj) and not _is_exception(obj) else ""
            out += [f"### `{name}`", "", "```python", _signature(name, obj, kind), "```", ""]
            out += [_docstring(obj), ""]
            if hasattr(obj, "model_fields"):
                out += ["Every field is listed in the [experiment reference](experiment.md).", ""]
            elif dataclasses.is_dataclass(obj):
                out += ["A dataclass: its fields are the arguments above.", ""]
    return "\n".join(out)


def _is_exception(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)


def _signature(name: str, obj: Any, kind: str) -> str:
    head = f"{kind} raytrain.{name}" if kind else f"raytrain.{name}"
    if _is_exception(obj):
        bases = ", ".join(base.__name__ for base in obj.__bases__)
        own_init = "__init__" in vars(obj)
        init = (
            f"\n    def __init__(self, {_params(obj.__init__, skip_self=True)})" if own_init else ""
        )
        return f"class raytrain.{name}({bases}):{init or ' ...'}"
    if hasattr(obj, "model_fields"):  # a pydantic model: its fields are the reference's
        return f"{head}(**fields)"
    return f"{head}({_params(obj, skip_self=False)})" + _returns(obj)


def _params(obj: Any, *, skip_self: bool) -> str:
    parameters = list(inspect.signature(obj).parameters.values())[1 if skip_self else 0 :]
    text, star_done = [], False
    for param in parameters:
        if param.kind is param.KEYWORD_ONLY and not star_done:
            text.append("*")
        star_done = star_done or param.kind in (param.KEYWORD_ONLY, param.VAR_POSITIONAL)
        part = param.name
        if param.annotation is not param.empty:
            part += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            default = "<factory>" if "factory" in repr(param.default) else repr(param.default)
            part += f" = {default}" if param.annotation is not param.empty else f"={default}"
        text.append(part)
    one_line = ", ".join(text)
    return one_line if len(one_line) < 70 else "\n    " + ",\n    ".join(text) + ",\n"


def _returns(obj: Any) -> str:
    if inspect.isclass(obj):
        return ""
    annotation = inspect.signature(obj).return_annotation
    return "" if annotation is inspect.Signature.empty else f" -> {_annotation(annotation)}"


def _annotation(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Za-z_])", "", text)  # module paths


def _docstring(obj: Any) -> str:
    """The docstring as Markdown: reST's ``code`` is Markdown too; ``::`` blocks become code."""
    doc = inspect.getdoc(obj) or ""
    if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        doc = ""  # the generated one repeats the signature
    return re.sub(r"::\n\n((?:    .*\n?|\n)+)", _code_block, doc)


def _code_block(match: re.Match[str]) -> str:
    return ":\n\n```python\n" + inspect.cleandoc(match.group(1)) + "\n```\n"
