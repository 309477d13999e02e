"""A training run's own state, beside Ray Train's in its storage folder: what ``raytrain resume``
reads back after the driver was lost (Ctrl-C, a dropped SSH session, a killed job) or MLflow was.

Ray Train's snapshot knows the checkpoints, and the latest checkpoint the metrics of every epoch
(``checkpoint.read_history``); this file knows the run: the experiment, where it runs, its MLflow
run and how far its logging got. The driver alone writes it: at the start, when training ends,
and as each part of the run's end reaches MLflow.
"""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import Field

from raytrain.config.schema import DEFAULT_STORAGE, Experiment
from raytrain.errors import RaytrainError
from raytrain.storage import StoredState, check_location, exists, glob, is_gcs, join
from raytrain.tracking.runs import TrackedRun

__all__ = ["STATE_FILE", "ExperimentState", "RunState", "find_run"]

STATE_FILE = "raytrain_run.json"


class ExperimentState(StoredState):
    """What a run and a sweep both know of themselves: the experiment, where, which MLflow run."""

    spec: Experiment = Field(description="The validated experiment it runs.")
    spec_file: str = Field(description="The experiment file it was loaded from.")
    base_dir: str = Field(description="The experiment file's folder (user model code).")
    storage_root: str = Field(description="<storage>/<experiment name>: its folder's parent.")
    tracked: TrackedRun | None = Field(
        None, alias="tracking", description="The MLflow run (a sweep's parent); None untracked."
    )
    created: float = Field(default_factory=time.time, description="Seconds since the epoch.")


class RunState(ExperimentState):
    """One training run: its experiment, places and MLflow run, and what of it is done."""

    FILE: ClassVar[str] = STATE_FILE
    KIND: ClassVar[str] = "run"

    run_name: str = Field(description="The run's name: its folder and Ray Train run's name.")
    address: str | None = Field(None, description="The Ray cluster it was started on, if given.")
    trained: bool = Field(False, description="Every epoch is trained and checkpointed.")
    model_logged: bool = Field(False, description="The best checkpoint's model is in MLflow.")
    registered_version: str | None = Field(None, description="Its registered model version.")
    logged: bool = Field(False, description="MLflow has it all and marks the run FINISHED.")

    @property
    def folder(self) -> str:
        return join(self.storage_root, self.run_name)

    @property
    def resume_command(self) -> str:
        """What continues this run, from any directory."""
        where = f" --address {self.address}" if self.address else ""
        return f"raytrain resume {self.folder}{where}"


def find_run(name: str, storage: str = DEFAULT_STORAGE) -> RunState | None:
    """The run ``name`` means: its folder, or its name or MLflow run id in ``storage``
    (``<storage>/<experiment>/<run>``); None if it is no run (it may be a sweep)."""
    check_location(name if is_gcs(name) else storage, what="the run's or sweep's storage")
    if exists(join(name, STATE_FILE)):
        return RunState.load(name)
    if "/" in name:
        return None
    by_name = glob(join(storage, "*", name, STATE_FILE))
    if by_name:
        return RunState.load(by_name[0].removesuffix(STATE_FILE).rstrip("/"))
    for state_file in glob(join(storage, "*", "*", STATE_FILE)):
        try:
            state = RunState.load(state_file.removesuffix(STATE_FILE).rstrip("/"))
        except RaytrainError:  # another raytrain's file: not the run asked for
            continue
        if state.tracked and state.tracked.run_id == name:
            return state
    return None
