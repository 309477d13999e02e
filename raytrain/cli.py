"""The ``raytrain`` command: parses, calls the library, prints (``raytrain.display``).

Serve and export options are generated from their spec models (``raytrain.config.options``);
library errors reach the user through ``reported``; TensorFlow and Ray load only in the commands
that need them, so ``--help`` and ``validate`` start in a moment."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from raytrain import display
from raytrain.config.options import flag, spec_options
from raytrain.config.schema import DEFAULT_STORAGE as STORAGE
from raytrain.config.schema import DEFAULT_TRACKING_URI as DB
from raytrain.config.schema import Experiment, ExportSpec, ServeSpec
from raytrain.errors import RaytrainError, SpecError, spell_options

if TYPE_CHECKING:
    from raytrain.config.loader import LoadedExperiment

app = typer.Typer(
    help="Distributed TensorFlow training on Ray, from one experiment YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@contextmanager
def reported(interrupted: str | Text | None = None) -> Iterator[None]:
    """The one place library errors become output: a ``SpecError``'s problems and their count,
    exit 2; another ``RaytrainError`` as one ``error:`` line, exit 1; settings an error names
    (`name`) as flags. ``interrupted``: what Ctrl-C prints (exit 130). ``command`` wraps each."""
    try:
        yield
    except RaytrainError as exc:
        problems = exc.problems if isinstance(exc, SpecError) else None
        for line in [f"error: {exc}"] if problems is None else problems:
            shown = spell_options(line, exc.options, flag)
            err.print(shown, markup=False, highlight=False, soft_wrap=True)
        if problems is not None:
            err.print(f"{len(problems)} problem(s) found", style="red")
        raise typer.Exit(1 if problems is None else 2) from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        err.print(interrupted, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """``app.command``, with the command's library errors ``reported``."""
    return lambda function: app.command(name)(reported()(function))


def opt(help: str, *names: str, **settings: Any) -> Any:
    """``typer.Option`` with its help text first: one option, one line."""
    return typer.Option(*names, help=help, **settings)


def arg(help: str) -> Any:
    """``typer.Argument`` with its help text."""
    return typer.Argument(help=help, show_default=False)


FileArg = Annotated[Path, arg("Experiment YAML file.")]
SetOpt = Annotated[
    list[str] | None, opt("Override a field: --set train.epochs=3 (repeatable).", "--set", "-s")
]
VerboseOpt = Annotated[bool, opt("Show Ray/TF logs.", "--verbose", "-v")]
MODEL = "NAME (its champion alias), NAME@ALIAS or NAME/VERSION."
URI = "MLflow tracking URI"
TrackingOpt = Annotated[str, opt(f"{URI}.")]
AddressOpt = Annotated[
    str | None, opt("The head node's dashboard URL, http://HEAD:8265 (default: $RAY_ADDRESS).")
]
JobArg = Annotated[str, arg("Job id, as `raytrain submit` printed it.")]
QUANTIZE_NOTE = {"quantize": "Repeat or comma-separate; all: every mode."}
EXPORT_EXPERIMENT = (
    "Experiment file for the data and export: settings, instead of the one recorded with the "
    "model's run."
)


# What --version reports beside raytrain: (label, its distributions, the first installed wins).
_VERSIONED = [
    ("Ray", "ray"),
    ("TensorFlow", "tensorflow", "tensorflow-cpu", "tensorflow-tpu"),
    ("MLflow", "mlflow"),
]


def _print_version(show: bool) -> None:
    """``--version``: raytrain's and the versions a bug report needs, without importing them."""
    if not show:
        return
    from importlib.metadata import PackageNotFoundError, version

    import raytrain

    found = []
    for label, *distributions in _VERSIONED:
        for distribution in distributions:
            try:
                found.append(f"{label} {version(distribution)}")
                break
            except PackageNotFoundError:
                continue
    runtime = f"Python {sys.version.split()[0]}"
    out.print(f"raytrain {raytrain.__version__} ({', '.join([*found, runtime])})", highlight=False)
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        opt(
            "Print the versions of raytrain, Ray, TensorFlow, MLflow and Python, then exit.",
            "--version",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Distributed TensorFlow training on Ray, from one experiment YAML."""


@command()
def validate(file: FileArg, overrides: SetOpt = None) -> None:
    """Check an experiment file; print a summary, or every problem with its line."""
    spec = _load(file, overrides).spec
    out.print(f"[green]OK[/green] {file}: experiment '{spec.name}'")
    out.print(display.experiment_summary(spec), soft_wrap=True)


@command()
def schema() -> None:
    """Print the experiment JSON Schema (for editors and CI checks)."""
    out.print_json(json.dumps(Experiment.model_json_schema()))


@command()
def run(
    file: FileArg,
    overrides: SetOpt = None,
    address: Annotated[
        str | None, opt("Ray to join (default: $RAY_ADDRESS, a local `ray start`, else a new one).")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train an experiment on Ray and track it in MLflow."""
    spec = (loaded := _load(file, overrides, quiet=not verbose)).spec
    display.quiet_tensorflow(not verbose)
    out.print(display.headline(spec))
    if spec.tune is not None:
        from raytrain.orchestration.sweep import run_sweep

        return _report_sweep(functools.partial(run_sweep, loaded), address=address, verbose=verbose)
    from raytrain.orchestration.run import run_experiment

    _report_run(functools.partial(run_experiment, loaded), spec, address=address, verbose=verbose)


@command()
def resume(
    target: Annotated[str, arg("A run's or sweep's folder or name, or a run's MLflow id.")],
    num_samples: Annotated[int | None, opt("Grow a sweep to N trials in all.", min=1)] = None,
    address: Annotated[str | None, opt("Ray cluster to join (default: the run's).")] = None,
    verbose: VerboseOpt = False,
    storage: Annotated[str, opt("Where a run or sweep given by name is.")] = STORAGE,
) -> None:
    """Continue an interrupted run (in the same MLflow run) or sweep, or log what MLflow missed of a
    run while it was down; run more trials of a finished sweep with --num-samples."""
    display.quiet_tensorflow(not verbose)
    from raytrain.orchestration.run import find_run, resume_run
    from raytrain.orchestration.sweep import resume_sweep

    settings = {"num_samples": num_samples, "address": address, "verbose": verbose}
    if (state := find_run(target, storage)) is None:
        return _report_sweep(functools.partial(resume_sweep, target, storage=storage), **settings)
    _report_run(functools.partial(resume_run, state), state.spec, **settings)


def _report_run(start: Callable[..., Any], spec: Experiment, **settings: Any) -> None:
    """``start(on_epoch=, on_start=, on_notice=, **settings)`` under a progress display, then
    its summary."""
    progress = display.EpochProgress(spec.train.epochs, spec.checkpoint.score, out)
    with reported(progress.interrupted), progress:
        callbacks = {"on_start": progress.started, "on_notice": progress.notice}
        summary = start(on_epoch=progress, **callbacks, **settings)
    display.print_run(summary, spec, out)


def _report_sweep(start: Callable[..., Any], **settings: Any) -> None:
    """``start(on_event=..., **settings)`` under a progress display, then its summary."""
    interrupted = "[yellow]interrupted[/yellow]: continue with `raytrain resume SWEEP`"
    with reported(interrupted), display.SweepProgress(out) as progress:
        summary = start(on_event=progress, **settings)
    display.print_sweep(summary, out)


@command()
def plan(
    file: FileArg,
    overrides: SetOpt = None,
    cluster: Annotated[
        list[Path] | None,
        opt("A cluster config to price (repeatable; default: every one in cluster_configs/)."),
    ] = None,
    address: Annotated[str | None, opt("Ray to profile on (default: as `raytrain run`).")] = None,
    as_json: Annotated[bool, opt("Print the plan as one JSON object.", "--json")] = False,
) -> None:
    """How long and how much the experiment or sweep will cost, before it starts.

    Trains a few steps of the real model and data where it would run, then prints the time per
    epoch and trial, the trials and epochs the search and ASHA will run, the expected wall time,
    and node-hours and cost (on demand, spot) per cluster config, from the prices in
    cluster_configs/prices/. A price or a hardware kind it cannot know is said, never guessed."""
    loaded = _load(file, overrides)
    display.quiet_tensorflow()
    from raytrain.display.plan import print_plan
    from raytrain.plan import make_plan

    found = make_plan(loaded, address=address, clusters=cluster)
    if as_json:
        sys.stdout.write(json.dumps(found) + "\n")
    else:
        print_plan(found, out)


@command("list")
def list_(
    tracking_uri: TrackingOpt = DB,
    storage: Annotated[str, opt("Storage folder or gs://bucket/prefix.")] = STORAGE,
    limit: Annotated[int, opt("At most this many runs.")] = 50,
) -> None:
    """Past runs and sweeps, newest first, with their best results."""
    from raytrain.past_runs import list_runs

    records = list_runs(tracking_uri=tracking_uri, storage=storage, limit=limit)
    display.print_records(records, out, empty=f"no runs in {tracking_uri} or {storage}")


@command()
def show(
    name: Annotated[str, arg("Run or sweep name, or MLflow run id.")],
    tracking_uri: TrackingOpt = DB,
) -> None:
    """One run or sweep: its values, best metrics, trials and where its files are."""
    from raytrain.past_runs import show_run

    display.print_record(show_run(name, tracking_uri=tracking_uri), out)


@command()
@spec_options(ExportSpec, into="settings", aliases={"quantize": "-q"}, notes=QUANTIZE_NOTE)
def export(
    model: Annotated[str, arg(MODEL)],
    settings: dict[str, Any] | None = None,
    experiment: Annotated[Path | None, opt(EXPORT_EXPERIMENT)] = None,
    tracking_uri: Annotated[
        str | None, opt(f"{URI} (default: the experiment's, else {DB}).")
    ] = None,
) -> None:
    """Export a registered model to TFLite and compare each quantization mode with the original.

    Unset options keep the experiment's export: settings, else the defaults."""
    display.quiet_tensorflow()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from raytrain.export.tflite import export_model

    spec = _load(experiment).spec if experiment else None
    uri = tracking_uri or (spec.tracking.uri if spec else DB)
    report = export_model(model, tracking_uri=uri, experiment=spec, options=settings)
    display.print_export(report, out)


@command()
@spec_options(ServeSpec, into="settings")
def serve(
    model: Annotated[str | None, arg(MODEL)] = None,
    experiment: Annotated[
        Path | None, opt("Serve this experiment's register_as, with its serve: settings.")
    ] = None,
    tracking_uri: Annotated[str | None, opt(f"{URI} (default: the experiment's).")] = None,
    canary: Annotated[
        str | None, opt("A second version taking --canary-percent of requests.")
    ] = None,
    canary_percent: Annotated[float, opt("Share of requests for --canary.")] = 10.0,
    settings: Any = None,
    address: Annotated[str | None, opt("Ray cluster to join.")] = None,
    detach: Annotated[bool, opt("Keep serving in the background.")] = False,
    stop: Annotated[bool, opt("End a --detach'ed server.", "--stop")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve a registered model over HTTP with Ray Serve until Ctrl-C (or --detach).

    Unset options keep the experiment's serve: settings, else the defaults (port 8000)."""
    from raytrain.serve import lifecycle

    if stop:
        out.print(lifecycle.stop_server(settings["port"] or 8000), highlight=False)
        return
    with display.ServeProgress(out, quiet=not verbose) as progress:
        served = lifecycle.run_server(
            model,
            experiment=_load(experiment).spec if experiment else None,
            tracking_uri=tracking_uri,
            settings=settings,
            canary=canary,
            canary_percent=canary_percent,
            address=address,
            verbose=verbose,
            detach=detach,
            on_event=progress,
        )
    if served.detached:
        out.print(served.detached, highlight=False, soft_wrap=True)
    elif served.updated_pid:
        out.print(f"updated the server on port {served.port} (pid {served.updated_pid}) in place")


@command()
def submit(
    file: FileArg,
    overrides: SetOpt = None,
    address: AddressOpt = None,
    no_wait: Annotated[
        bool, opt("Return once the cluster has accepted the job.", "--no-wait")
    ] = False,
) -> None:
    """Run an experiment on a remote Ray cluster through its Jobs API, streaming its logs.

    The experiment's folder (the YAML and the model code beside it, without raytrain_results/,
    mlruns/, mlflow.db, .git, .venv) is uploaded and the job runs `python -m raytrain run FILE
    --set ...` with the nodes' own Python: every node needs raytrain installed (the cluster
    configs install it). Every job can read the uploaded folder: secrets are never written in
    the experiment, only referenced as ${env:NAME} or ${file:PATH}, which the job resolves on
    its node. Ray's auth token is read from $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token. Exit status 0 only if the job succeeded; Ctrl-C stops following, not the
    job.
    """
    from raytrain.cluster.jobs import quiet_client_logs
    from raytrain.cluster.jobs import submit as submit_job
    from raytrain.config.references import deferred

    with deferred():  # resolved by the job, on its node
        loaded = _load(file, overrides)
    quiet_client_logs()
    job = submit_job(loaded, address=address)
    display.print_submitted(job, str(loaded.path.parent.resolve()), out)
    if no_wait:
        follow = f"raytrain logs {job.job_id} --follow --address {job.address}"
        out.print(f"follow it: {follow}", markup=False, highlight=False, soft_wrap=True)
    else:
        _follow_job(job.job_id, job.address)


@command()
def jobs(address: AddressOpt = None) -> None:
    """Jobs submitted to the cluster, newest first."""
    from raytrain.cluster.jobs import list_jobs

    display.print_jobs(list_jobs(address=address), out)


@command()
def logs(
    job_id: JobArg,
    address: AddressOpt = None,
    follow: Annotated[bool, opt("Keep streaming until the job ends.", "--follow", "-f")] = False,
) -> None:
    """A job's output: what `raytrain run` printed on the cluster."""
    from raytrain.cluster.jobs import job_logs

    if follow:
        _follow_job(job_id, address)
    else:
        sys.stdout.write(job_logs(job_id, address=address))


@command("stop")
def stop_(job_id: JobArg, address: AddressOpt = None) -> None:
    """Stop a submitted job (Ray sends it SIGTERM, then SIGKILL) and wait until it has ended."""
    from raytrain.cluster.jobs import stop_job

    status = stop_job(job_id, address=address)
    out.print(f"job {job_id} {status}", highlight=False)


def _follow_job(job_id: str, address: str | None) -> None:
    """Stream the job's logs; exit 0 if it succeeded, 1 if not, 130 on Ctrl-C (it goes on)."""
    from raytrain.cluster.jobs import follow, quiet_client_logs

    quiet_client_logs()
    write = functools.partial(print, end="", flush=True)
    where = f" --address {address}" if address else ""
    detached = Text(
        f"detached: job {job_id} keeps running on the cluster; `raytrain logs {job_id} "
        f"--follow{where}` follows it again, `raytrain stop {job_id}{where}` stops it"
    )
    with reported(detached):
        status = follow(job_id, address=address, write=write)
    out.print(f"job {job_id} {status}", style="green" if status == "SUCCEEDED" else "red")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def _load(file: Path, overrides: list[str] | None = None, quiet: bool = True) -> LoadedExperiment:
    """The validated experiment; a model builder's module imported for the checks may load
    TensorFlow, whose native start-up lines stay hidden unless ``quiet`` is false."""
    from raytrain.config.loader import load_experiment

    with display.native_logs_muted(quiet):
        return load_experiment(file, overrides or [])
