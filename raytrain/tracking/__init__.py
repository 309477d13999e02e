"""MLflow: runs, metrics and models (``runs.py``), the model registry and its aliases
(``registry.py``), and the names of every tag and artifact raytrain writes (``names.py``)."""

from raytrain.tracking.runs import (
    CLIENT_ENV,
    EpochLogger,
    TrackedRun,
    absolute_tracking_uri,
    bound_client,
    check_reachable,
    child_runs,
    end_run,
    flatten,
    log_metrics,
    log_missing_epochs,
    log_model,
    promote_champion,
    reopen_run,
    start_run,
    tag_run,
    ui_command,
)

__all__ = [
    "CLIENT_ENV",
    "EpochLogger",
    "TrackedRun",
    "absolute_tracking_uri",
    "bound_client",
    "check_reachable",
    "child_runs",
    "end_run",
    "flatten",
    "log_metrics",
    "log_missing_epochs",
    "log_model",
    "promote_champion",
    "reopen_run",
    "start_run",
    "tag_run",
    "ui_command",
]
