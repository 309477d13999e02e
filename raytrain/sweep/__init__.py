"""Hyperparameter sweeps on Ray Tune, every trial a data-parallel run: the search space and
search (``space.py``, ``tuner.py``), what MLflow and the user see (``callbacks.py``), the state a
resume reads (``state.py``) and the sweep end to end (``run.py``)."""

from raytrain.sweep.run import SweepSummary, resume_sweep, run_sweep

__all__ = ["SweepSummary", "resume_sweep", "run_sweep"]
