"""Ray's OptunaSearch with ``tune.constraints``: Optuna's TPE sampler steers away from trials
that miss a bound.

Ray's searcher knows no constraints. Optuna 5 samplers read a trial's constraint values from the
trial itself (``Trial.set_constraint``; its older ``constraints_func`` is deprecated), so the
searcher sets them from the trial's last result just before it tells the study the trial is
complete. TPE uses them (infeasible trials rank below every feasible one); CMA-ES and the random
sampler do not, so they are set for TPE only. Kept apart from ``search.py``: defining the class
imports Optuna, which a sweep loads only once it runs.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from raytrain.config.schema import ConstraintSpec
from raytrain.sweep.edge import violations

__all__ = ["ConstrainedSearch"]


class ConstrainedSearch(OptunaSearch):
    """OptunaSearch that also tells the study each trial's ``tune.constraints`` values, and a
    multi-objective trial lacking an objective (stopped before its edge metrics were measured)
    as pruned: Ray would tell Optuna a None among the values, which Optuna refuses."""

    def __init__(self, constraints: dict[str, ConstraintSpec], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.constraints = constraints

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and trial_id not in self._completed_trials:
            for key, value in violations(result, self.constraints).items():
                ot_trial.set_constraint(key, value)
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if not error and any(result.get(m) is None for m in metrics):
                result = None  # pruned
        super().on_trial_complete(trial_id, result, error)
