"""The ``raytrain`` command: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from raytrain.errors import RaytrainError, SpecError

if TYPE_CHECKING:
    from raytrain.run import RunSummary
    from raytrain.specfile import LoadedExperiment

app = typer.Typer(
    help="Distributed TensorFlow training on Ray, from one experiment YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

FileArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a field: --set train.epochs=3 (repeatable)."),
]


@app.command()
def validate(file: FileArg, overrides: SetOpt = None) -> None:
    """Check an experiment file; print a summary, or every problem with its line."""
    loaded = _load(file, overrides)
    spec = loaded.spec
    out.print(f"[green]OK[/green] {file}: experiment '{spec.name}'")
    out.print(
        f"  data      {spec.data.source} (validation {spec.data.validation_split:.0%})\n"
        f"  model     {spec.model.builder} {json.dumps(spec.model.params)}\n"
        f"  train     {spec.train.epochs} epochs, global batch {spec.train.batch_size} "
        f"({spec.per_worker_batch_size} per worker), {spec.train.optimizer.name} "
        f"lr={spec.train.optimizer.learning_rate:g}\n"
        f"  scaling   {spec.scaling.num_workers} worker(s) x {spec.worker_resources()}\n"
        f"  storage   {spec.storage}\n"
        f"  tracking  {spec.tracking.uri if spec.tracking.enabled else 'off'}"
        f" (experiment '{spec.experiment_name}')"
    )


@app.command()
def schema() -> None:
    """Print the experiment JSON Schema (for editors and CI checks)."""
    from raytrain.spec import Experiment

    out.print_json(json.dumps(Experiment.model_json_schema()))


@app.command()
def run(
    file: FileArg,
    overrides: SetOpt = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray/TF logs.")] = False,
) -> None:
    """Train an experiment on Ray and track it in MLflow."""
    loaded = _load(file, overrides)
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        _import_tensorflow_quietly()
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    from raytrain.run import run_experiment

    spec = loaded.spec
    out.print(
        f"[bold]{spec.name}[/bold]: {spec.model.builder} on {spec.data.source}, "
        f"{spec.scaling.num_workers} worker(s), {spec.train.epochs} epochs"
    )
    try:
        with _EpochProgress(spec.train.epochs, spec.checkpoint.score) as progress:
            summary = run_experiment(loaded, address=address, verbose=verbose, on_epoch=progress)
    except RaytrainError as exc:
        _fail(exc, status=1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: the MLflow run is marked KILLED")
        raise typer.Exit(130) from None
    _print_summary(summary, loaded)


class _EpochProgress:
    """A rich progress bar over epochs that shows the latest metrics."""

    def __init__(self, epochs: int, score: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.score = score
        self.progress = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=out,
            transient=False,
        )
        self.task = self.progress.add_task("starting workers...", total=epochs)

    def __enter__(self) -> _EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, float]) -> None:
        shown = [k for k in (self.score, "loss") if k in event]
        text = "  ".join(f"{k} {event[k]:.4f}" for k in dict.fromkeys(shown))
        text += f"  {event.get('samples_per_s', 0):,.0f}/s"
        self.progress.update(self.task, completed=int(event["epoch"]), description=text)


def _print_summary(summary: RunSummary, loaded: LoadedExperiment) -> None:
    table = Table(title=f"best checkpoint by {loaded.spec.checkpoint.score}", title_justify="left")
    table.add_column("metric")
    table.add_column("best", justify="right")
    table.add_column("last epoch", justify="right")
    for key in sorted(summary.best_metrics):
        best = summary.best_metrics[key]
        last = summary.final_metrics.get(key)
        table.add_row(key, f"{best:.4g}", f"{last:.4g}" if isinstance(last, float | int) else "")
    out.print(table)
    where: list[tuple[str, str]] = []
    tracked = summary.tracking
    if tracked:
        experiment = f"{tracked.experiment_name} (id {tracked.experiment_id})"
        where += [("MLflow experiment", experiment), ("MLflow run id", tracked.run_id)]
    where.append(("best checkpoint", summary.best_checkpoint or "(none)"))
    if summary.registered_version:
        name = loaded.spec.tracking.register_as
        where.append(("registered model", f"{name} version {summary.registered_version}"))
    if summary.ui_command:
        where.append(("open the MLflow UI", summary.ui_command))
    for label, value in where:  # whole lines, never cut: paths and commands are copied from here
        out.print(f"[bold]{label:<19}[/bold]{value}", soft_wrap=True, highlight=False)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted.

    Its native libraries log CUDA probes and CPU features while loading, before any log level
    applies (TF_CPP_MIN_LOG_LEVEL does not stop them). An import error still raises as usual.
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load(file: Path, overrides: list[str] | None) -> LoadedExperiment:
    from raytrain.specfile import load_experiment

    try:
        return load_experiment(file, overrides or [])
    except SpecError as exc:
        _fail(exc, status=2)


def _fail(exc: RaytrainError, *, status: int) -> NoReturn:
    lines = exc.problems if isinstance(exc, SpecError) else [f"error: {exc}"]
    for line in lines:
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if isinstance(exc, SpecError):
        err.print(f"{len(lines)} problem(s) found", style="red")
    raise typer.Exit(status)
