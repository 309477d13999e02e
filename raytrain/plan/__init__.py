"""How long and how much an experiment or sweep will cost, before it starts (``raytrain plan``):
``profile.py`` trains a few real steps where it would run, ``estimate.py`` turns that and the
experiment's structure (epochs, trials, ASHA's rungs, concurrency) into wall time, node-hours and
cost per cluster config (``clusters.py``: node types and their declared prices),
``calibration.py`` records plan and actual on every run, ``planner.py`` puts them together."""

from raytrain.plan.planner import make_plan

__all__ = ["make_plan"]
