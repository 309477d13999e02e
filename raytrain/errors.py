"""User-facing errors.

They cross Ray's process boundaries (raised in a worker, re-raised on the driver), so every one
keeps its state in ``args`` (and ``options`` in its ``__dict__``, which pickling restores) and
survives pickling unchanged.

A message names a setting the user can change by its Python name, written `name` (a parameter of
the function called, or a spec field), and lists it in ``options``: the library does not know
how its caller spells settings. ``spelled`` shows them the caller's way, e.g. the CLI's ``--name``.

A message is masked (``raytrain.secrets``) when the error is made: an error names URIs and
settings, and it is printed, logged and stored in MLflow run tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from raytrain.secrets import mask_text

__all__ = [
    "AliasNotFoundError",
    "ClusterError",
    "DataError",
    "ExportError",
    "ModelBuildError",
    "ModelNotFoundError",
    "RaytrainError",
    "RegistryError",
    "SpecError",
    "StorageError",
    "TrackingError",
    "TrainingError",
    "UntrustedModelError",
    "VersionNotFoundError",
    "find_user_error",
    "spell_options",
]


class RaytrainError(Exception):
    """A mistake the user can fix; the CLI prints it as one message, never a traceback.

    ``options``: the settings the message names, each written `name` in it (see the module's
    docstring); keyword-only, so ``type(exc)(*exc.args)`` still rebuilds any error.
    """

    def __init__(self, *args: object, options: Sequence[str] = ()) -> None:
        super().__init__(*(mask_text(a) if isinstance(a, str) else a for a in args))
        self.options = tuple(options)

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each setting it names as ``spell(name)`` (the CLI: its flag)."""
        return spell_options(str(self), self.options, spell)


class SpecError(RaytrainError):
    """The experiment file or its overrides are invalid; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str], *, options: Sequence[str] = ()) -> None:
        problems = [mask_text(p) for p in problems]
        super().__init__(problems, options=options)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class DataError(RaytrainError):
    """The data source cannot be read or does not fit the experiment."""


class ModelBuildError(RaytrainError):
    """The model builder could not be imported or did not return a Keras model."""


class StorageError(RaytrainError):
    """A storage location (a folder, ``gs://bucket/prefix``) that does not exist or cannot be
    reached."""


class ClusterError(RaytrainError):
    """The Ray cluster is unreachable or can never satisfy the requested resources."""


class TrainingError(RaytrainError):
    """Training itself went wrong in a way the user must act on (e.g. the loss diverged)."""


class TrackingError(RaytrainError):
    """The MLflow tracking store cannot be reached or written."""


class RegistryError(RaytrainError):
    """A model reference (``name``, ``name@alias``, ``name/version``) that does not resolve."""


class ModelNotFoundError(RegistryError):
    """No registered model has that name."""


class AliasNotFoundError(RegistryError):
    """The registered model has no such alias (``name`` alone means its ``champion``)."""


class VersionNotFoundError(RegistryError):
    """The registered model has no such version."""


class UntrustedModelError(RegistryError):
    """A model version holds files that would run code when loaded (pickled objects), and the
    caller did not say it trusts them."""


class ExportError(RaytrainError):
    """A model cannot be exported, e.g. the TFLite converter does not support one of its ops."""


def find_user_error(exc: BaseException) -> BaseException:
    """The user's own error if one caused the failure (it may be wrapped by Ray several times)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RaytrainError):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        stack += [
            e
            for e in getattr(current, "worker_failures", {}).values()
            if isinstance(e, BaseException)
        ]
    return TrainingError(f"training failed: {exc}")


def spell_options(text: str, options: Sequence[str], spell: Callable[[str], str]) -> str:
    """``text`` with each `name` of ``options`` replaced by ``spell(name)``."""
    for name in options:
        text = text.replace(f"`{name}`", spell(name))
    return text
