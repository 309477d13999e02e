"""The ``raytrain`` command: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from raytrain.errors import RaytrainError, SpecError

if TYPE_CHECKING:
    from raytrain.config.loader import LoadedExperiment
    from raytrain.train.run import RunSummary

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
        f"  data      {spec.data.source} (validation {spec.data.validation_split:.0%})"
        f"{', streamed with Ray Data' if spec.data.streaming else ''}"
        f"{f', read only on nodes with {spec.data.locality!r}' if spec.data.locality else ''}\n"
        f"  model     {spec.model.builder} {json.dumps(spec.model.params)}\n"
        f"  train     {spec.train.epochs} epochs, global batch {spec.train.batch_size} "
        f"({spec.per_worker_batch_size} per worker), {spec.train.optimizer.name} "
        f"lr={spec.train.optimizer.learning_rate:g}\n"
        f"  scaling   {spec.scaling.num_workers} worker(s) x {spec.worker_resources()}\n"
        f"  storage   {spec.storage}\n"
        f"  tracking  {spec.tracking.uri if spec.tracking.enabled else 'off'}"
        f" (experiment '{spec.experiment_name}')"
    )
    if spec.tune is not None:
        tune = spec.tune
        out.print(
            f"  sweep     {tune.trial_count} trial(s), {tune.search.algorithm} search, "
            f"{tune.scheduler.name} scheduler, {' '.join(tune.modes)} {', '.join(tune.metrics)} "
            f"over {', '.join(tune.space)}",
            soft_wrap=True,
        )
    if spec.export is not None:
        out.print(f"  export    {spec.export.format}: {', '.join(spec.export.quantize)}")


@app.command()
def schema() -> None:
    """Print the experiment JSON Schema (for editors and CI checks)."""
    from raytrain.config.schema import Experiment

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
    from raytrain.train.run import run_experiment

    spec = loaded.spec
    if spec.tune is not None:
        _sweep(loaded, address=address, verbose=verbose)
        return
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


@app.command()
def resume(
    sweep: Annotated[
        str, typer.Argument(help="The sweep's folder (local or gs://), or its name in --storage.")
    ],
    num_samples: Annotated[
        int | None,
        typer.Option(min=1, help="Grow the sweep to this many trials in all (same search)."),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray/TF logs.")] = False,
    storage: Annotated[
        str, typer.Option(help="Where a sweep given by name is: a folder or gs://bucket/prefix.")
    ] = "./raytrain_results",
) -> None:
    """Continue an interrupted sweep (finished trials stay, unfinished ones resume), or run
    more trials of a finished one with --num-samples."""
    if not verbose:
        _import_tensorflow_quietly()
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from raytrain.sweep.run import resume_sweep

    _report_sweep(
        lambda on_event: resume_sweep(
            sweep,
            num_samples=num_samples,
            address=address,
            verbose=verbose,
            on_event=on_event,
            storage=storage,
        )
    )


def _sweep(loaded: LoadedExperiment, *, address: str | None, verbose: bool) -> None:
    from raytrain.sweep.run import run_sweep

    spec = loaded.spec
    assert spec.tune is not None
    out.print(
        f"[bold]{spec.name}[/bold]: sweep of {len(spec.tune.space)} value(s), "
        f"{spec.tune.search.algorithm} search, {spec.tune.scheduler.name} scheduler, "
        f"{spec.tune.trial_count} trial(s) x {spec.scaling.num_workers} worker(s)"
    )
    _report_sweep(
        lambda on_event: run_sweep(loaded, address=address, verbose=verbose, on_event=on_event)
    )


def _report_sweep(start: Any) -> None:
    try:
        with _SweepProgress() as progress:
            summary = start(progress)
    except RaytrainError as exc:
        _fail(exc, status=1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: continue with `raytrain resume SWEEP`")
        raise typer.Exit(130) from None
    _print_sweep(summary)


class _SweepProgress:
    """Trials running / finished / stopped early / failed, and the best value so far."""

    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out
        )
        self.task = self.progress.add_task("starting trials...", total=None)

    def __enter__(self) -> _SweepProgress:
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


def _print_sweep(summary: Any) -> None:
    rows = summary.rows
    table = Table(title=f"{len(rows)} trial(s)", title_justify="left")
    hidden = ("error", "checkpoint")
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in hidden]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)
    for row in rows:
        if row.get("error"):
            out.print(f"trial {row['trial_id']} failed: {row['error']}", markup=False)
    where: list[tuple[str, str]] = []
    if summary.best:
        where.append(("best trial", f"{summary.best['trial_id']}"))
        where += [(f"  {k}", _cell(v)) for k, v in summary.best.items() if "." in k]
        where.append(("  checkpoint", summary.best.get("checkpoint") or "(none)"))
    if summary.pareto:
        where.append(("Pareto front", ", ".join(str(r["trial_id"]) for r in summary.pareto)))
    if summary.tracking:
        where.append(("MLflow experiment", summary.tracking.experiment_name))
        where.append(("MLflow sweep run", summary.tracking.run_id))
    if summary.champion:
        where.append(("model registry", summary.champion))
    where.append(("sweep storage", summary.storage_path))
    if summary.ui_command:
        where.append(("open the MLflow UI", summary.ui_command))
    _print_where(where)
    if summary.export:
        _print_export(summary.export)


def _print_where(where: list[tuple[str, str]]) -> None:
    """Label/value lines, never cut: paths and commands are copied from here."""
    width = max(len(label) for label, _ in where) + 2
    for label, value in where:
        out.print(f"[bold]{label:<{width}}[/bold]{value}", soft_wrap=True, highlight=False)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


TrackingOpt = Annotated[str, typer.Option(help="MLflow tracking URI.")]


@app.command("list")
def list_(
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    storage: Annotated[
        str, typer.Option(help="Storage folder or gs://bucket/prefix.")
    ] = "./raytrain_results",
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
) -> None:
    """Past runs and sweeps, newest first, with their best results."""
    from raytrain.history import list_runs

    try:
        records = list_runs(tracking_uri=tracking_uri, storage=storage, limit=limit)
    except RaytrainError as exc:
        _fail(exc, status=1)
    if not records:
        out.print(f"no runs in {tracking_uri} or {storage}")
        return
    table = Table()
    for column in ("name", "kind", "status", "started", "best", "run id"):
        table.add_column(column, overflow="fold")
    for r in records:
        best = "  ".join(
            f"{k.removeprefix('best_')} {v:.4g}"
            for k, v in sorted(r.best.items())
            if k.removeprefix("best_").startswith("val_")
        )
        table.add_row(r.name, r.kind, r.status, r.started, best, r.run_id or "")
    out.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Run or sweep name, or MLflow run id.")],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """One run or sweep: its values, best metrics, trials and where its files are."""
    from raytrain.history import show_run

    try:
        record = show_run(name, tracking_uri=tracking_uri)
    except RaytrainError as exc:
        _fail(exc, status=1)
    where = [
        ("name", record.name),
        ("kind", record.kind),
        ("status", record.status),
        ("started", record.started),
        ("MLflow run id", record.run_id or ""),
    ]
    where += [(k, f"{v:.4g}") for k, v in sorted(record.best.items())]
    shown = [k for k in record.params if k.startswith(("model.", "train.", "scaling.num_workers"))]
    where += [(k, record.params[k]) for k in shown]
    where += [(k, v) for k, v in sorted(record.tags.items())]
    _print_where(where)
    if record.trials:
        table = Table(title=f"{len(record.trials)} trial(s)", title_justify="left")
        columns = list(dict.fromkeys(k for t in record.trials for k in t))
        for column in columns:
            table.add_column(column, overflow="fold")
        for trial in record.trials:
            table.add_row(*(_cell(trial.get(c)) for c in columns))
        out.print(table)


@app.command()
def export(
    model: Annotated[
        str, typer.Argument(help="NAME (its champion alias), NAME@ALIAS or NAME/VERSION.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "tflite",
    quantize: Annotated[
        list[str] | None,
        typer.Option(
            "--quantize",
            "-q",
            help="none, float16, dynamic, int8 or all; repeat or comma-separate. "
            "Default: the experiment's export.quantize, else all.",
        ),
    ] = None,
    out_dir: Annotated[
        str | None,
        typer.Option(
            "--out", help="Folder or gs://bucket/prefix for the files (default: under storage)."
        ),
    ] = None,
    int8_io: Annotated[
        bool, typer.Option("--int8-io", help="int8 mode: int8 input and output tensors too.")
    ] = False,
    representative_examples: Annotated[
        int | None, typer.Option(help="Training examples that calibrate int8.")
    ] = None,
    experiment: Annotated[
        Path | None,
        typer.Option(
            help="Experiment file for the data and export: settings, instead of the one "
            "recorded with the model's run."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI [default: the experiment's, else sqlite:///mlflow.db]."
        ),
    ] = None,
) -> None:
    """Export a registered model to TFLite and compare each quantization mode with the original."""
    _import_tensorflow_quietly()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from raytrain.export.edge import export_model

    spec = _load(experiment, None).spec if experiment else None
    options = {
        "format": fmt,
        "quantize": quantize,
        "out": out_dir,
        "int8_io": int8_io or None,
        "representative_examples": representative_examples,
    }
    uri = tracking_uri or (spec.tracking.uri if spec else "sqlite:///mlflow.db")
    try:
        report = export_model(model, tracking_uri=uri, experiment=spec, options=options)
    except RaytrainError as exc:
        _fail(exc, status=2 if isinstance(exc, SpecError) else 1)
    _print_export(report)


def _print_export(report: Any) -> None:
    table = Table(title=f"{report.model} version {report.version} for edge", title_justify="left")
    rows = report.table()
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*row.values())
    out.print(table)
    runs, threads = report.settings["latency_runs"], report.settings["num_threads"]
    _print_where(
        [
            (
                "metric",
                f"{report.metric_name} on {report.validation_examples} validation "
                "examples; delta: against the Keras model",
            ),
            ("latency", f"batch 1, median of {runs} runs, LiteRT with {threads} thread(s)"),
            ("export folder", report.folder),
            ("report", f"{report.folder}/report.md, also in MLflow run {report.run_id}"),
        ]
    )


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


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Argument(help="NAME (its champion alias), NAME@ALIAS or NAME/VERSION."),
    ] = None,
    experiment: Annotated[
        Path | None,
        typer.Option(help="Serve this experiment's register_as, with its serve: settings."),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the experiment's).")
    ] = None,
    canary: Annotated[
        str | None, typer.Option(help="A second version taking --canary-percent of requests.")
    ] = None,
    canary_percent: Annotated[float, typer.Option(help="Share of requests for --canary.")] = 10.0,
    num_replicas: Annotated[int | None, typer.Option(help="Fixed number of replicas.")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="Autoscaling: at least.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Autoscaling: at most.")] = None,
    target_ongoing_requests: Annotated[
        float | None, typer.Option(help="Autoscaling: requests in flight per replica to aim at.")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Requests per model call.")] = None,
    batch_wait_timeout_s: Annotated[
        float | None, typer.Option(help="How long a batch waits to fill.")
    ] = None,
    num_cpus: Annotated[float | None, typer.Option(help="CPUs per replica.")] = None,
    num_gpus: Annotated[float | None, typer.Option(help="GPUs per replica.")] = None,
    max_ongoing_requests: Annotated[
        int | None, typer.Option(help="Requests a replica takes at once (keep > batch size).")
    ] = None,
    max_instances_per_request: Annotated[
        int | None, typer.Option(help="More instances in one request get a 413.")
    ] = None,
    max_body_mb: Annotated[
        float | None, typer.Option(help="Larger request bodies get a 413.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (0.0.0.0 exposes it).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join.")] = None,
    detach: Annotated[bool, typer.Option(help="Keep serving in the background.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="End a --detach'ed server.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray/TF logs.")] = False,
) -> None:
    """Serve a registered model over HTTP with Ray Serve until Ctrl-C (or --detach)."""
    from raytrain.serve import lifecycle as daemon
    from raytrain.serve.app import serve_settings

    if stop:
        try:
            out.print(daemon.stop_server(port or 8000), highlight=False)
        except RaytrainError as exc:
            _fail(exc, status=1)
        return
    flags = {
        "num_replicas": num_replicas,
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "max_ongoing_requests": max_ongoing_requests,
        "max_instances_per_request": max_instances_per_request,
        "max_body_mb": max_body_mb,
        "host": host,
        "port": port,
    }
    scaling = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
    }
    try:
        reference, uri, spec = serve_settings(
            model,
            experiment=_load(experiment, None).spec if experiment else None,
            tracking_uri=tracking_uri,
            flags=flags,
            autoscaling=scaling,
        )
        current = daemon.running(spec.port)
        if detach and current is None:
            deployed = daemon.start_server(spec.port, spec.host, _without_detach())
            out.print(deployed, highlight=False, soft_wrap=True)
            return
        if current is not None and address is None:
            address = current["ray_address"]  # update that server in place
        if not verbose:
            _import_tensorflow_quietly()
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        from raytrain.serve.app import METRICS_PORT, serve_model
        from raytrain.serve.app import stop as stop_app

        with out.status(f"deploying {reference} on Ray Serve..."):
            deployment = serve_model(
                reference,
                tracking_uri=uri,
                spec=spec,
                canary=canary,
                canary_percent=canary_percent,
                address=address,
                verbose=verbose,
            )
    except RaytrainError as exc:
        _fail(exc, status=1)
    where = [("serving", f"{deployment.primary} (run {deployment.primary.run_id})")]
    if deployment.canary:
        where.append(
            ("canary", f"{deployment.canary} ({deployment.canary_percent:g}% of requests)")
        )
    where += [
        ("predict", f"POST {deployment.predict_url}"),
        ("model info", f"GET {deployment.url}/v1/models/{deployment.primary.name}"),
        ("API docs", deployment.docs_url),
        ("metrics", f"http://127.0.0.1:{METRICS_PORT}/metrics (when raytrain started Ray)"),
    ]
    _print_where(where)
    if current is not None:
        out.print(f"updated the server on port {spec.port} (pid {current['pid']}) in place")
        return
    daemon.record(spec.port, deployment.url, deployment.ray_address)
    out.print("Ctrl-C stops the server.")
    try:
        daemon.wait_for_signal()
    finally:
        stop_app()
        daemon.forget(spec.port)
        out.print("stopped")


def _without_detach() -> list[str]:
    """This command's own arguments, for the background copy of it."""
    import sys

    args = sys.argv[1:]
    return [a for a in args[args.index("serve") + 1 :] if a != "--detach"]


AddressOpt = Annotated[
    str | None,
    typer.Option(help="The head node's dashboard URL, http://HEAD:8265 (default: $RAY_ADDRESS)."),
]
JobArg = Annotated[str, typer.Argument(help="Job id, as `raytrain submit` printed it.")]


@app.command()
def submit(
    file: FileArg,
    overrides: SetOpt = None,
    address: AddressOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return once the cluster has accepted the job.")
    ] = False,
) -> None:
    """Run an experiment on a remote Ray cluster through its Jobs API, streaming its logs.

    The experiment's folder (the YAML and the model code beside it, without raytrain_results/,
    mlruns/, mlflow.db, .git, .venv) is uploaded and the job runs `python -m raytrain run FILE
    --set ...` with the nodes' own Python: every node needs raytrain installed (the cluster
    configs install it). Ray's auth token is read from $RAY_AUTH_TOKEN, the file
    $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. Exit status 0 only if the job succeeded;
    Ctrl-C stops following, not the job.
    """
    from raytrain.cluster.jobs import submit as submit_job

    loaded = _load(file, overrides)
    _quiet_job_client()
    try:
        job = submit_job(loaded, address=address)
    except RaytrainError as exc:
        _fail(exc, status=1)
    for warning in job.warnings:
        err.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    out.print(f"submitted job {job.job_id} to {job.address}", highlight=False, soft_wrap=True)
    out.print(
        f"  {job.entrypoint}\n  in {loaded.path.parent.resolve()} "
        f"({job.upload_bytes / 2**20:.1f} MiB uploaded)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if no_wait:
        out.print(
            f"follow it: raytrain logs {job.job_id} --follow --address {job.address}",
            highlight=False,
            soft_wrap=True,
        )
        return
    _follow_job(job.job_id, job.address)


@app.command()
def jobs(address: AddressOpt = None) -> None:
    """Jobs submitted to the cluster, newest first."""
    import time

    from raytrain.cluster.jobs import list_jobs

    try:
        records = list_jobs(address=address)
    except RaytrainError as exc:
        _fail(exc, status=1)
    if not records:
        out.print("no jobs")
        return
    table = Table()
    for column in ("job id", "status", "experiment", "started", "duration"):
        table.add_column(column, no_wrap=column != "experiment", overflow="fold")
    for r in records:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.start_time or 0))
        minutes, seconds = divmod(int(r.duration_s or 0), 60)
        duration = f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
        table.add_row(r.job_id, r.status, r.experiment or r.entrypoint, started, duration)
    out.print(table)


@app.command()
def logs(
    job_id: JobArg,
    address: AddressOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")
    ] = False,
) -> None:
    """A job's output: what `raytrain run` printed on the cluster."""
    import sys

    from raytrain.cluster.jobs import job_logs

    if follow:
        _follow_job(job_id, address)
        return
    try:
        text = job_logs(job_id, address=address)
    except RaytrainError as exc:
        _fail(exc, status=1)
    sys.stdout.write(text)


@app.command("stop")
def stop_(job_id: JobArg, address: AddressOpt = None) -> None:
    """Stop a submitted job (Ray sends it SIGTERM, then SIGKILL) and wait until it has ended."""
    from raytrain.cluster.jobs import stop_job

    try:
        status = stop_job(job_id, address=address)
    except RaytrainError as exc:
        _fail(exc, status=1)
    out.print(f"job {job_id} {status}", highlight=False)


def _quiet_job_client() -> None:
    """Ray's job client logs each upload and closed log stream at INFO, on loggers whose level
    it sets when imported: lower them after that."""
    import ray.job_submission  # noqa: F401

    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def _follow_job(job_id: str, address: str | None) -> None:
    """Stream the job's logs; exit 0 if it succeeded, 1 if not, 130 on Ctrl-C (it goes on)."""
    import sys

    from raytrain.cluster.jobs import follow

    _quiet_job_client()

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        status = follow(job_id, address=address, write=write)
    except RaytrainError as exc:
        _fail(exc, status=1)
    except KeyboardInterrupt:
        where = f" --address {address}" if address else ""
        err.print(
            f"detached: job {job_id} keeps running on the cluster; `raytrain logs {job_id} "
            f"--follow{where}` follows it again, `raytrain stop {job_id}{where}` stops it",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    out.print(f"job {job_id} {status}", style="green" if status == "SUCCEEDED" else "red")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


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
    _print_where(where)
    if summary.export:
        _print_export(summary.export)


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
    from raytrain.config.loader import load_experiment

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
