"""The documentation: the generated experiment reference covers the whole schema, and the site's
navigation and the README's links point at pages that exist (no Ray, no mkdocs build)."""

from __future__ import annotations

import html
import importlib.util
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.config.loader import load_experiment
from raytrain.config.reference import experiment_reference
from raytrain.config.schema import BUILTIN_BUILDERS, Experiment
from raytrain.errors import SpecError

from .conftest import REPO
from .docs_blocks import Block, all_blocks

DOCS = REPO / "docs"


def _section_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, description) of every field, nested sections included."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, info.description or ""
        nested = _section_of(info.annotation)
        if nested is not None:
            yield from _fields(nested, f"{path}.")


def _all_fields() -> list[tuple[str, str]]:
    found = list(_fields(Experiment))
    for params in BUILTIN_BUILDERS.values():
        found += list(_fields(params, "model.params."))
    return found


@pytest.fixture(scope="module")
def reference() -> str:
    text = experiment_reference()
    # Undo the Markdown escaping, so that descriptions compare as written in the schema.
    return html.unescape(text).replace("\\*", "*").replace("\\|", "|")


def test_schema_walk_finds_the_nested_sections() -> None:
    paths = {path for path, _ in _all_fields()}
    for expected in [
        "data.locality",
        "train.optimizer.learning_rate",
        "tune.search.algorithm",
        "tune.scheduler.grace_period",
        "serve.autoscaling.max_replicas",
        "model.params.hidden_units",  # mlp
        "model.params.kernel_size",  # cnn
    ]:
        assert expected in paths


@pytest.mark.parametrize(
    ("path", "description"), _all_fields(), ids=[path for path, _ in _all_fields()]
)
def test_reference_names_every_field_and_its_description(
    reference: str, path: str, description: str
) -> None:
    assert f"| `{path}` |" in reference
    assert description, f"{path} has no Field(description=...)"
    assert " ".join(description.split()) in reference


def test_reference_has_a_heading_per_section(reference: str) -> None:
    for path, _ in _all_fields():
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent and not parent.startswith("model.params"):
            assert f"## `{parent}`" in reference
    for builder in BUILTIN_BUILDERS:
        assert f"## `model.params ({builder})`" in reference


def _nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = list(_nav_pages(config["nav"]))
    assert pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    found = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    orphans = {page for page in found if not page.startswith("_snippets/")} - set(pages)
    assert not orphans, f"pages missing from mkdocs.yml nav: {sorted(orphans)}"


@pytest.fixture(scope="module")
def hooks() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_keep_their_markers(hooks: types.ModuleType) -> None:
    for page, marker in hooks.MARKERS.items():
        assert marker in (DOCS / page).read_text(), f"docs/{page} lost its marker {marker}"


def test_readme_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    broken = [link for link in local if not (REPO / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    assert len(text.splitlines()) <= 300


def test_the_command_reference_has_every_command_and_option(hooks: types.ModuleType) -> None:
    """What `raytrain --help` and each `raytrain COMMAND --help` list, the page lists too."""
    page = hooks.cli_reference()
    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    commands = re.findall(r"^│ (\w+) ", help_text, flags=re.MULTILINE)
    assert {"validate", "run", "resume", "serve", "export", "submit"} <= set(commands)
    for command in commands:
        assert f"## `raytrain {command}`" in page
        usage = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for option in set(re.findall(r"^│ \*? *(--[a-z][a-z0-9-]+)", usage, flags=re.MULTILINE)) - {
            "--help"
        }:
            assert f"`{option}`" in page, f"raytrain {command} {option} is not on the CLI page"
    assert "| `--version` | off |" in page
    assert "| `--tracking-uri` | `sqlite:///mlflow.db` | MLflow tracking URI. |" in page


def test_the_license_is_apache_2() -> None:
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "Apache-2.0" in (REPO / "pyproject.toml").read_text()


def test_prerequisites_are_stated_where_the_make_commands_are() -> None:
    """One text, docs/_snippets/prerequisites.md: included by the site's pages, copied in the
    README (GitHub does not include files)."""
    snippet = (DOCS / "_snippets" / "prerequisites.md").read_text().strip()
    assert snippet in (REPO / "README.md").read_text()
    for page in ["index.md", "tutorials/quickstart.md", "tutorials/first-model.md"]:
        text = (DOCS / page).read_text()
        assert "make run" in text or "make install-run" in text
        assert '--8<-- "docs/_snippets/prerequisites.md"' in text, page


def test_make_run_installs_no_development_tools() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: install-run$", makefile, flags=re.MULTILINE)
    recipe = makefile.split("$(VENV)/.installed-run:", 1)[1].split("\n\n", 1)[0]
    assert "-c constraints.txt -e .\n" in recipe
    assert "dev" not in recipe


# Each figure the pages quote, its one value, and a pattern that finds every quote of it.
FIGURES = [
    (
        "the quick start's time on 2 cores",
        "34 s",
        r"(?:Ray instance|starts itself)[\s\S]{0,30}?(~?[\d.]+ (?:s|seconds?|minutes?)) on 2 cores",
    ),
    ("the wheelhouse's size", "0.9 GB", r"wheelhouse\b[^.]{0,80}?~([\d.]+ GB)"),
    ("the Cloud SQL instance's cost", "$55/month", r"Cloud SQL[^$]{0,60}?~(\$\d+/month)"),
]
QUOTING = ["README.md", "Makefile", "docs", "experiments", "cluster_configs", "benchmarks"]


def _quoting_files() -> Iterator[Path]:
    for name in QUOTING:
        path = REPO / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in path.rglob("*") if p.suffix in {".md", ".yaml", ".py", ".svg"})


@pytest.mark.parametrize(("what", "value", "pattern"), FIGURES, ids=[f[0] for f in FIGURES])
def test_every_quote_of_a_figure_agrees(what: str, value: str, pattern: str) -> None:
    quotes = {
        f"{path.relative_to(REPO)}: {found}"
        for path in _quoting_files()
        for found in re.findall(pattern, re.sub(r"\n# ?", " ", path.read_text()))
    }
    assert len(quotes) >= 2, f"{what}: quoted in fewer than two places: {quotes}"
    wrong = sorted(quote for quote in quotes if not quote.endswith(f": {value}"))
    assert not wrong, f"{what} is {value}, but: {wrong}"


# Every YAML block of the pages is a whole experiment, a fragment of one (marked
# `<!-- yaml: fragment -->`, validated inside a whole one) or marked as not an experiment.
YAML_BLOCKS = [b for b in all_blocks() if b.language == "yaml"]
# What a block cannot show in the docs' own folder: its data files, its model module, a bucket,
# the secrets its ${file:...} and ${env:...} references name.
ELSEWHERE = re.compile(
    r"^(data\.(source|validation\.source|test\.source)|model\.builder|storage|export\.out): .*"
    r"(does not exist|no file matches|cannot import|is not a folder|gs://|bucket)"
    r"|^[\w.]+: (\w+: )?\$\{(file|env):[^}]*\}: (cannot read|\w+ is not set)"
)


def test_yaml_blocks_are_found_and_marked() -> None:
    assert len(YAML_BLOCKS) >= 10
    for block in YAML_BLOCKS:
        if block.mark.startswith("yaml:"):
            assert block.mark in {"yaml: fragment"} or block.mark.startswith(
                "yaml: not an experiment ("
            ), f"{block.where}: unknown mark {block.mark!r}"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.where for b in YAML_BLOCKS])
def test_every_yaml_block_validates(block: Block, tmp_path: Path) -> None:
    if block.mark.startswith("yaml: not an experiment"):
        return
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), block.where
    if block.mark == "yaml: fragment":
        assert "name" not in data, f"{block.where}: a whole experiment, not a fragment"
        data = _merged(FRAGMENT_BASE, data)
        if isinstance(data.get("tune"), dict):  # a tune: fragment about something else
            data["tune"].setdefault("space", FRAGMENT_SPACE)
    else:
        assert "name" in data, f"{block.where}: a fragment: mark it <!-- yaml: fragment -->"
    for name, text in _files_beside(block).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        load_experiment(path)
    except SpecError as exc:
        problems = [p.split(": ", 1)[1] for p in exc.problems if ": " in p]
        wrong = [p for p in problems if not ELSEWHERE.match(p)]
        assert not wrong, f"{block.where}:\n" + "\n".join(wrong)


# The whole experiment a fragment is validated in: what the smallest experiment says, a
# registered model (what an `export:` section needs) and, for a `tune:` section without one, a
# search space.
FRAGMENT_BASE = {"name": "docs-fragment", "tracking": {"register_as": "docs-fragment"}}
FRAGMENT_SPACE = {"train.optimizer.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]}}


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _files_beside(block: Block) -> dict[str, str]:
    """The files a page's own blocks write beside the experiment (the tutorial's CSV comes from
    a command: a small stand-in with its columns)."""
    if block.page != "tutorials/first-model.md":
        return {}
    header = ",".join([f"pixel{i}" for i in range(64)] + ["digit"])
    rows = [",".join(["0"] * 64 + [str(i % 10)]) for i in range(20)]
    return {"data/digits.csv": "\n".join([header, *rows]) + "\n"}
