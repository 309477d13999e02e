"""Hyperparameter search on Ray Tune: the search space and search (``space.py``, ``search.py``,
``tuner.py``), what MLflow and the user see of trials (``callbacks.py``, ``results.py``) and the
state a resume reads (``state.py``). Running a sweep end to end is ``raytrain.orchestration``'s."""
