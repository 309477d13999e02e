"""Training: the per-worker loop on Ray Train (``loop.py``) and its TensorFlow parts
(``worker.py``), the checkpoint format (``checkpoint.py``), which failures are retried
(``failures.py``) and the state a run's resume reads (``state.py``). Running a whole experiment
is ``raytrain.orchestration``'s."""
