"""Rich renderings for the terminal, for the CLI and for notebooks alike.

``results`` prints what the library returns (a run's, a sweep's, an export's, a deployment's
summary, the run history, cluster jobs); ``live`` holds the progress displays that are the
library's ``on_epoch`` / ``on_event`` callbacks. Keeping them out of ``cli.py`` leaves it to
parsing, and lets a notebook show a result exactly as the command line does.
"""

from raytrain.display.live import (
    EpochProgress,
    ServeProgress,
    SweepProgress,
    native_logs_muted,
    quiet_tensorflow,
)
from raytrain.display.summaries import (
    experiment_summary,
    headline,
    print_deployment,
    print_export,
    print_jobs,
    print_record,
    print_records,
    print_run,
    print_submitted,
    print_sweep,
    print_where,
)

__all__ = [
    "EpochProgress",
    "ServeProgress",
    "SweepProgress",
    "experiment_summary",
    "headline",
    "native_logs_muted",
    "print_deployment",
    "print_export",
    "print_jobs",
    "print_record",
    "print_records",
    "print_run",
    "print_submitted",
    "print_sweep",
    "print_where",
    "quiet_tensorflow",
]
