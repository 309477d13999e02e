"""Secrets by reference: ``${env:NAME}`` and ``${file:PATH}`` in an experiment's values.

An experiment file is uploaded with every submitted job, where each user of the cluster can read
it, and is logged to MLflow: it holds where a secret is, never the secret. A reference is
replaced when the experiment is loaded, on the machine that loads it (for ``raytrain submit``,
the node that runs the job), by that environment variable or by that file's text (one trailing
newline dropped); the file's path is absolute (``~`` allowed), so that it is never a file of the
uploaded folder.

A reference stands only where what it becomes is masked (``raytrain.secrets``): under a key that
names a secret (``password: ${env:DB_PASSWORD}``) or as the password of a URI
(``http://raytrain:${file:~/.secrets/mlflow}@head:5000``); elsewhere its secret would be shown
in plain text, so it is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from raytrain.secrets import MASK, is_secret_key, mask_text

__all__ = ["REFERENCE", "ReferenceProblem", "deferred", "literal_secrets", "resolve_references"]

REFERENCE = re.compile(r"\$\{(?P<kind>env|file):(?P<target>[^}]*)\}")
_PLACEHOLDER = "RaytrainReference"  # what a reference stands for when its place is checked
_deferred: ContextVar[bool] = ContextVar("raytrain_references_deferred", default=False)


class ReferenceProblem(ValueError):
    """A reference that cannot be resolved or stands where its secret would be shown."""


@contextmanager
def deferred() -> Iterator[None]:
    """Check references without resolving them: ``raytrain submit`` validates the experiment on
    this machine, and the job resolves them on its node."""
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)


def resolve_references(value: Any, *, secret: bool, key: str = "") -> Any:
    """A field's ``value`` with every reference replaced (dicts and lists walked; ``key``: where
    in them); ``secret``: it lies under a key that names a secret."""
    if isinstance(value, dict):
        return {
            k: resolve_references(v, key=_join(key, k), secret=secret or is_secret_key(str(k)))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            resolve_references(v, key=_join(key, i), secret=secret) for i, v in enumerate(value)
        ]
    if not isinstance(value, str) or not REFERENCE.search(value):
        return value
    if not secret and _PLACEHOLDER in mask_text(REFERENCE.sub(_PLACEHOLDER, value)):
        raise ReferenceProblem(
            f"{_where(key)}a ${{env:...}} or ${{file:...}} reference holds a secret, and here "
            "it would be shown in plain text: use it under a key that names a secret (password, "
            "token, api_key, ...) or as a URI's password"
        )
    for match in REFERENCE.finditer(value):
        _check(match, key)
    if _deferred.get():
        return value
    return REFERENCE.sub(lambda m: _read(m, key), value)


def literal_secrets(tree: Any, prefix: str = "", *, secret: bool = False) -> list[str]:
    """The dotted paths of ``tree`` that hold a secret written as text, not as a reference."""
    if isinstance(tree, dict):
        return [
            path
            for k, v in tree.items()
            for path in literal_secrets(v, f"{prefix}{k}.", secret=secret or is_secret_key(str(k)))
        ]
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree) for p in literal_secrets(v, f"{prefix}{i}.")]
    if secret and tree not in (None, ""):
        literal = not isinstance(tree, str) or REFERENCE.sub("", tree) != ""
    else:
        text = REFERENCE.sub(MASK, tree) if isinstance(tree, str) else ""
        literal = mask_text(text) != text
    return [prefix.rstrip(".")] if literal else []


def _join(key: str, part: object) -> str:
    return f"{key}.{part}" if key else str(part)


def _where(key: str) -> str:
    """A message's start: where in its field the reference is (the field itself: nothing)."""
    return f"{key}: " if key else ""


def _check(match: re.Match[str], key: str) -> None:
    target = match["target"]
    if not target:
        raise ReferenceProblem(f"{_where(key)}{match[0]} names no {match['kind']}")
    if match["kind"] == "file" and not Path(target).expanduser().is_absolute():
        raise ReferenceProblem(
            f"{_where(key)}{match[0]}: give the file's absolute path (or ~/...) on the machine "
            "that runs the experiment; a file beside the experiment would be uploaded with it"
        )


def _read(match: re.Match[str], key: str) -> str:
    target = match["target"]
    if match["kind"] == "env":
        found = os.environ.get(target, "")
        if not found:
            raise ReferenceProblem(f"{_where(key)}{match[0]}: {target} is not set (or empty) here")
        return found
    path = Path(target).expanduser()
    try:
        found = path.read_text().removesuffix("\n")
    except OSError as exc:
        raise ReferenceProblem(
            f"{_where(key)}{match[0]}: cannot read {path}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ReferenceProblem(f"{_where(key)}{match[0]}: {path} is not UTF-8 text") from None
    if not found:
        raise ReferenceProblem(f"{_where(key)}{match[0]}: {path} is empty")
    return found
