"""One data-parallel training run: the per-worker loop on Ray Train (``loop.py``), the checkpoint
format (``checkpoint.py``) and the run end to end, tracked in MLflow (``run.py``)."""

from raytrain.train.run import RunSummary, run_experiment

__all__ = ["RunSummary", "run_experiment"]
