"""User-facing errors.

They cross Ray's process boundaries (raised in a worker, re-raised on the driver), so every one
keeps its state in ``args`` and survives pickling unchanged.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "DataError",
    "ModelBuildError",
    "RaytrainError",
    "SpecError",
    "TrackingError",
    "TrainingError",
]


class RaytrainError(Exception):
    """A mistake the user can fix; the CLI prints it as one message, never a traceback."""


class SpecError(RaytrainError):
    """The experiment file or its overrides are invalid; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class DataError(RaytrainError):
    """The data source cannot be read or does not fit the experiment."""


class ModelBuildError(RaytrainError):
    """The model builder could not be imported or did not return a Keras model."""


class ClusterError(RaytrainError):
    """The Ray cluster is unreachable or can never satisfy the requested resources."""


class TrainingError(RaytrainError):
    """Training itself went wrong in a way the user must act on (e.g. the loss diverged)."""


class TrackingError(RaytrainError):
    """The MLflow tracking store cannot be reached or written."""
