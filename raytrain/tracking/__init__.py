"""MLflow: runs, metrics and models (``runs.py``), the model registry and its aliases
(``registry.py``), and the names of every tag and artifact raytrain writes (``names.py``)."""

from raytrain.tracking.runs import (
    EpochLogger,
    TrackedRun,
    absolute_tracking_uri,
    check_reachable,
    child_runs,
    end_run,
    flatten,
    log_metrics,
    log_model,
    promote_champion,
    reopen_run,
    start_run,
    ui_command,
)

__all__ = [
    "EpochLogger",
    "TrackedRun",
    "absolute_tracking_uri",
    "check_reachable",
    "child_runs",
    "end_run",
    "flatten",
    "log_metrics",
    "log_model",
    "promote_champion",
    "reopen_run",
    "start_run",
    "ui_command",
]
