"""The two checks every shim makes when it is imported: the private name still exists, and the
library still calls the name a shim patches or overrides."""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Iterator
from typing import Any

from raytrain.errors import RaytrainError

__all__ = ["STRICT_ENV", "ShimError", "calls", "require", "strict"]

# Set (to 1) where a failed private call must fail loudly instead of being logged: the test suite.
STRICT_ENV = "RAYTRAIN_STRICT_SHIMS"


class ShimError(RaytrainError):
    """A private name a shim relies on is gone or no longer used: the installed version of the
    library is not one the shim was written for."""


def strict() -> bool:
    """Whether housekeeping that goes through a shim re-raises its failures (under test)."""
    return os.environ.get(STRICT_ENV) == "1"


def require(owner: Any, name: str, *, shim: str, written_for: str) -> Any:
    """``owner.name``; else a ``ShimError`` naming the shim and the versions it was written for."""
    try:
        return getattr(owner, name)
    except AttributeError:
        where = getattr(owner, "__name__", type(owner).__name__)
        raise ShimError(
            f"raytrain's shim {shim} (written for {written_for}) needs {where}.{name}, which "
            "the installed version no longer has: install the versions in constraints.txt"
        ) from None


def calls(owner: types.ModuleType | type, name: str, *, shim: str, written_for: str) -> None:
    """Raise ``ShimError`` unless some function defined in ``owner`` (a module or class) names
    ``name`` in its code: a patch of ``name`` would otherwise change nothing."""
    if not any(name in code.co_names for code in _code_objects(owner)):
        where = owner.__name__
        raise ShimError(
            f"raytrain's shim {shim} (written for {written_for}) replaces {name}, which "
            f"{where} no longer calls: install the versions in constraints.txt"
        )


def _code_objects(owner: types.ModuleType | type) -> Iterator[types.CodeType]:
    module = owner.__name__ if isinstance(owner, types.ModuleType) else owner.__module__
    pending: list[object] = [
        value
        for value in vars(owner).values()
        if inspect.isfunction(value) or inspect.isclass(value)
    ]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if inspect.isclass(item):
            if item.__module__ == module:
                members = [getattr(v, "__func__", v) for v in vars(item).values()]
                pending += [v for v in members if inspect.isfunction(v)]
        elif inspect.isfunction(item):
            # Decorated functions: the wrapper may be another module's, the original is ours.
            pending += [item.__wrapped__] if hasattr(item, "__wrapped__") else []
            if item.__module__ == module:
                pending.append(item.__code__)
        elif isinstance(item, types.CodeType):
            yield item
            pending += [c for c in item.co_consts if isinstance(c, types.CodeType)]
