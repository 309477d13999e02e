"""Running an experiment: prepare (checks, data, Ray, MLflow), train once or sweep, finish
(register, export) and resume. The layer above ``train/`` (the training loop and checkpoints)
and ``sweep/`` (the search): ``prepare.py``, ``run.py`` (one run), ``sweep.py`` (a sweep),
``finish.py`` (what both end with)."""

from raytrain.orchestration.run import RunSummary, resume_run, run_experiment
from raytrain.orchestration.sweep import SweepSummary, resume_sweep, run_sweep

__all__ = [
    "RunSummary",
    "SweepSummary",
    "resume_run",
    "resume_sweep",
    "run_experiment",
    "run_sweep",
]
