"""The experiment: its schema (``schema.py``), reading a YAML file into it with line-numbered
errors and ``--set`` overrides (``loader.py``), and the rules that span several fields
(``rules.py``). Every YAML field's meaning is defined in ``schema.py``."""

from raytrain.config.loader import LoadedExperiment, load_experiment
from raytrain.config.schema import Experiment

__all__ = ["Experiment", "LoadedExperiment", "load_experiment"]
