"""What the terminal shows while work runs: progress displays that are the library's
``on_epoch`` / ``on_event`` callbacks, and the start-up chatter of TensorFlow and Ray Serve kept
off it unless the user asks for it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from raytrain.display.summaries import print_deployment

if TYPE_CHECKING:
    from raytrain.train.state import RunState

__all__ = [
    "EpochProgress",
    "ServeProgress",
    "SweepProgress",
    "native_logs_muted",
    "quiet_tensorflow",
]


def quiet_tensorflow(quiet: bool = True) -> None:
    """Keep MLflow to warnings, and TensorFlow's native start-up logs off the terminal whenever
    this process imports TensorFlow; with ``quiet`` false (``--verbose``), let them through.

    TensorFlow's native libraries log CUDA probes and CPU features while loading, before any log
    level applies (TF_CPP_MIN_LOG_LEVEL does not stop them). Nothing is imported here: a driver
    that never needs TensorFlow (a 1-worker run logs its model in its training process) saves
    its import, ~3 s of CPU. An import error still raises. MLflow reads its level when imported.
    """
    if not quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _MutedTensorFlowImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _MutedTensorFlowImport())


class _MutedTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as Python would, once, and runs its import with file descriptor 2
    muted (``native_logs_muted``), in whichever module or thread first imports it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec else None
        if loader is not None:
            execute = loader.exec_module

            def exec_muted(module: ModuleType) -> None:
                with native_logs_muted():
                    execute(module)

            loader.exec_module = exec_muted  # type: ignore[method-assign]  # this import only
        return spec


@contextmanager
def native_logs_muted(quiet: bool = True) -> Iterator[None]:
    """File descriptor 2 on /dev/null while ``quiet``: what native libraries print as they load
    (TensorFlow, imported by a model builder's module while an experiment is validated) comes
    before any log level applies. Exceptions still propagate, and are printed after."""
    if not quiet:
        yield
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class EpochProgress:
    """A progress bar over epochs showing the latest score, loss and throughput: pass it as
    ``run_experiment(..., on_epoch=..., on_start=.started)`` inside ``with``. ``interrupted``:
    what Ctrl-C should print, the command that resumes the run once it has one."""

    def __init__(self, epochs: int, score: str, console: Console | None = None) -> None:
        self.score = score
        self.interrupted = Text("interrupted", style="yellow")
        self.progress = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console or Console(),
        )
        self.task = self.progress.add_task("starting workers...", total=epochs)

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def notice(self, line: str) -> None:
        """``run_experiment``'s ``on_notice``: a line above the bar (a lost worker, say), never
        wrapped: a job's log (no terminal, 80 columns) keeps it one line to grep."""
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def started(self, state: RunState) -> None:
        """Say where the run lives and how to continue it if its driver is lost."""
        self.progress.console.print(
            f"run {state.run_name} in {state.folder}\n(if it is interrupted: "
            f"{state.resume_command})",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        self.interrupted.append(f": continue with `{state.resume_command}`", style="")

    def __call__(self, event: dict[str, float]) -> None:
        shown = [k for k in (self.score, "loss") if k in event]
        text = "  ".join(f"{k} {event[k]:.4f}" for k in dict.fromkeys(shown))
        text += f"  {event.get('samples_per_s', 0):,.0f}/s"
        self.progress.update(self.task, completed=int(event["epoch"]), description=text)


class ServeProgress:
    """``run_server``'s ``on_event``, inside ``with``: a spinner while the model deploys, then
    where it answers; ``quiet``: TensorFlow and Ray Serve's INFO logs kept off the terminal
    once deploying starts (not before: a detached server needs neither). A background server's
    lines from "serving" up to "Ctrl-C stops" are read from its log: keep those words."""

    def __init__(self, console: Console | None = None, *, quiet: bool = True) -> None:
        self.console = console or Console()
        self.status = self.console.status("deploying on Ray Serve...")
        self.quiet = quiet

    def __enter__(self) -> ServeProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        if event["kind"] == "deploying":
            if self.quiet:
                quiet_tensorflow()
                logging.getLogger("ray.serve").setLevel(logging.WARNING)
            self.status.update(f"deploying {event['reference']} on Ray Serve...")
            self.status.start()
        elif event["kind"] == "deployed":
            self.status.stop()
            print_deployment(event["deployment"], event["metrics_port"], self.console)
        else:
            self.console.print(
                "Ctrl-C stops the server." if event["kind"] == "waiting" else "stopped"
            )


class SweepProgress:
    """Trials running / finished / stopped early / failed and the best value so far: pass it as
    a sweep's ``on_event`` inside ``with``."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console or Console(),
        )
        self.task = self.progress.add_task("starting trials...", total=None)

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        if event["kind"] == "sweep_started":
            self.progress.console.print(
                f"sweep {event['sweep']} in {event['storage']}\n"
                f"(if it is interrupted: raytrain resume {event['sweep']})",
                soft_wrap=True,
                highlight=False,
            )
            return
        best = f"{event['metric']} {event['best']:.4f}" if event.get("best") is not None else "-"
        self.progress.update(
            self.task,
            description=f"running {event['running']}  finished {event['finished']}  "
            f"stopped early {event['stopped_early']}  failed {event['failed']}  best {best}",
        )
