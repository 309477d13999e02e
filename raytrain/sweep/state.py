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
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raytrain.config.schema import Experiment
from raytrain.errors import RaytrainError
from raytrain.storage import is_gcs, join, read_text, write_text
from raytrain.tracking.runs import TrackedRun

__all__ = ["STATE_FILE", "SweepState", "check_private"]

STATE_FILE = "raytrain_sweep.json"


class SweepState(BaseModel):
    """One sweep: its experiment and places, and what its rounds have done so far."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    spec: Experiment = Field(description="The validated experiment the sweep runs.")
    spec_file: str = Field(description="The experiment file it was loaded from.")
    base_dir: str = Field(description="The experiment file's folder (user model code).")
    storage_root: str = Field(description="<storage>/<experiment name>: the sweep's parent.")
    sweep_name: str = Field(description="The sweep's name: its folder and its first round.")
    tracked: TrackedRun | None = Field(
        None, alias="tracking", description="The MLflow parent run; None with tracking off."
    )
    created: float = Field(default_factory=time.time, description="Seconds since the epoch.")
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

    def save(self) -> None:
        text = self.model_dump_json(by_alias=True, indent=2)
        write_text(join(self.folder, STATE_FILE), text)

    def update(self, **changes: object) -> SweepState:
        """This state with ``changes``, saved."""
        state = self.model_copy(update=changes)
        state.save()
        return state

    @classmethod
    def load(cls, folder: str) -> SweepState:
        """The state of the sweep in ``folder`` (local or gs://)."""
        path = join(folder, STATE_FILE)
        try:
            return cls.model_validate_json(read_text(path))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RaytrainError(
                f"{path} is not a sweep state this raytrain can read ({where}: {first['msg']})"
            ) from None


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
