"""A sweep's own state, beside Tune's in its storage folder: what ``raytrain resume`` and
``raytrain list`` read back.

Tune's state (pickled, restored by ``Tuner.restore``) knows trials; this file knows the sweep:
the experiment it runs, where, under which MLflow parent run, which Tune experiments ("rounds")
it is made of and which of them finished, and the model version registered for a trial. It is
read and written only here, as JSON validated by this model.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from raytrain.errors import RaytrainError
from raytrain.storage import is_gcs, join
from raytrain.train.state import ExperimentState

__all__ = ["STATE_FILE", "SweepState", "check_private"]

STATE_FILE = "raytrain_sweep.json"


class SweepState(ExperimentState):
    """One sweep: its experiment and places, and what its rounds have done so far."""

    FILE: ClassVar[str] = STATE_FILE
    KIND: ClassVar[str] = "sweep"

    sweep_name: str = Field(description="The sweep's name: its folder and its first round.")
    extensions: list[str] = Field(
        default_factory=list, description="Rounds that extended the sweep, in order."
    )
    finished: list[str] = Field(default_factory=list, description="Rounds that ran to their end.")
    registered: dict[str, str] = Field(
        default_factory=dict, description="Trial id -> the model version registered for it."
    )

    @property
    def folder(self) -> str:
        return join(self.storage_root, self.sweep_name)

    @property
    def rounds(self) -> list[str]:
        """The Tune experiments the sweep is made of: its first, then each extension."""
        return [self.sweep_name, *self.extensions]


def check_private(state: SweepState) -> None:
    """Refuse to resume from a local sweep folder that someone else could have written: Tune's
    state there is pickled, and restoring it runs whatever code it holds. The state file, each
    round's folder and the pickles in them must be this user's and not writable by every user.
    (Who can write a gs:// bucket is its IAM policy's business, not checked here.)"""
    rounds = [join(state.storage_root, name) for name in state.rounds]
    for root in [join(state.folder, STATE_FILE), *rounds]:
        if is_gcs(root) or not os.path.exists(root):
            continue
        top = Path(root)
        for path in [top, *(sorted(top.rglob("*.pkl")) if top.is_dir() else [])]:
            info = path.lstat()
            problem = None
            if info.st_uid != os.geteuid():
                problem = f"owned by another user (uid {info.st_uid})"
            elif info.st_mode & stat.S_IWOTH and not stat.S_ISLNK(info.st_mode):
                problem = "writable by every user"
            if problem:
                raise RaytrainError(
                    f"refused to resume from {path}: it is {problem}, and a sweep's Tune state "
                    "is pickled (restoring it runs code); resume only from storage that no one "
                    "else can write"
                )
