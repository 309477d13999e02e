"""A sweep's own state, beside Tune's in its storage folder: what ``raytrain resume`` and
``raytrain list`` read back.

Tune's state (pickled, restored by ``Tuner.restore``) knows trials; this file knows the sweep:
the experiment it runs, where, under which MLflow parent run, which Tune experiments ("rounds")
it is made of and which of them finished, and the model version registered for a trial. It is
read and written only here, as JSON validated by this model.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from raytrain.storage import join
from raytrain.train.state import ExperimentState

__all__ = ["STATE_FILE", "SweepState"]

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
