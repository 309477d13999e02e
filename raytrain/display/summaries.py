"""Rich renderings of what the library returns: the same tables and lines in the CLI and in a
notebook. Label/value lines are never cut: paths and commands are copied from them."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, JustifyMethod
from rich.table import Table

from raytrain.secrets import mask_text, mask_tree

if TYPE_CHECKING:
    from raytrain.cluster.jobs import JobRecord, Submitted
    from raytrain.config.schema import Experiment
    from raytrain.export.report import ExportReport
    from raytrain.orchestration.run import RunSummary
    from raytrain.orchestration.sweep import SweepSummary
    from raytrain.past_runs import RunRecord
    from raytrain.serve.deployment import Deployment

__all__ = [
    "experiment_summary",
    "headline",
    "print_deployment",
    "print_export",
    "print_jobs",
    "print_record",
    "print_records",
    "print_run",
    "print_submitted",
    "print_sweep",
    "print_where",
]


def experiment_summary(spec: Experiment) -> str:
    """What an experiment will do, in a few lines: data, model, training, scale, where to."""
    data, train = spec.data, spec.train
    validation = (
        f"validation {data.validation.source}"
        if data.validation
        else f"validation {data.validation_split:.0%}"
    )
    test = f", test {data.test.source}" if data.test else ""
    where = data.locality_rule.describe()
    lines = [
        f"  data      {data.source} ({validation}{test})"
        f"{', streamed with Ray Data' if data.streaming else ''}"
        f"{f', {where}' if where else ''}",
        f"  model     {spec.model.builder} {json.dumps(mask_tree(spec.model.params))}",
        f"  train     {train.epochs} epochs, global batch {train.batch_size} "
        f"({spec.per_worker_batch_size} per worker), {train.optimizer.name} "
        f"lr={train.optimizer.learning_rate:g}",
        f"  scaling   {spec.scaling.num_workers} worker(s) x {spec.worker_resources()}",
        f"  storage   {spec.storage}",
        f"  tracking  {spec.tracking.uri if spec.tracking.enabled else 'off'}"
        f" (experiment '{spec.experiment_name}')",
    ]
    if spec.tune is not None:
        tune = spec.tune
        lines.append(
            f"  sweep     {tune.trial_count} trial(s), {tune.search.algorithm} search, "
            f"{tune.scheduler.name} scheduler, {' '.join(tune.modes)} {', '.join(tune.metrics)} "
            f"over {', '.join(tune.space)}"
        )
    if spec.export is not None:
        lines.append(f"  export    {spec.export.format}: {', '.join(spec.export.quantize)}")
    return mask_text("\n".join(lines))


def headline(spec: Experiment) -> str:
    """One line (rich markup) on what ``run`` starts: a training run, or a sweep."""
    workers = f"{spec.scaling.num_workers} worker(s)"
    if spec.tune is None:
        return (
            f"[bold]{spec.name}[/bold]: {spec.model.builder} on {spec.data.source}, "
            f"{workers}, {spec.train.epochs} epochs"
        )
    tune = spec.tune
    return (
        f"[bold]{spec.name}[/bold]: sweep of {len(tune.space)} value(s), "
        f"{tune.search.algorithm} search, {tune.scheduler.name} scheduler, "
        f"{tune.trial_count} trial(s) x {workers}"
    )


def print_where(where: list[tuple[str, str]], console: Console | None = None) -> None:
    """Label/value lines, never cut: paths and commands are copied from here (secrets masked)."""
    console = console or Console()
    width = max(len(label) for label, _ in where) + 2
    for label, value in where:
        line = f"[bold]{label:<{width}}[/bold]{mask_text(str(value))}"
        console.print(line, soft_wrap=True, highlight=False)


def print_run(summary: RunSummary, spec: Experiment, console: Console | None = None) -> None:
    """A training run: best and last value of each metric, then where its results are."""
    console = console or Console()
    table = Table(title=f"best checkpoint by {spec.checkpoint.score}", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("metric", "left"),
        ("best", "right"),
        ("last epoch", "right"),
    ]
    tested = summary.test_metrics
    if tested:  # the best checkpoint's, on data.test
        columns.append(("test", "right"))
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for key in sorted(summary.best_metrics):
        last = summary.final_metrics.get(key)
        cells = [key, f"{summary.best_metrics[key]:.4g}", _number(last)]
        table.add_row(*cells, *([_number(tested.get(f"test_{key}"))] if tested else []))
    console.print(table)
    where: list[tuple[str, str]] = []
    tracked = summary.tracking
    if tracked:
        experiment = f"{tracked.experiment_name} (id {tracked.experiment_id})"
        where += [("MLflow experiment", experiment), ("MLflow run id", tracked.run_id)]
    where.append(("best checkpoint", summary.best_checkpoint or "(none)"))
    if summary.registered_version:
        name = spec.tracking.register_as
        where.append(("registered model", f"{name} version {summary.registered_version}"))
    if summary.ui_command:
        where.append(("open the MLflow UI", summary.ui_command))
    print_where(where, console)
    if summary.unlogged:
        console.print(f"warning: {summary.unlogged}", style="yellow", markup=False, soft_wrap=True)
    if summary.export:
        print_export(summary.export, console)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float | int) else ""


def print_sweep(summary: SweepSummary, console: Console | None = None) -> None:
    """A sweep: one row per trial, failures, the best trial (or Pareto front) and where."""
    console = console or Console()
    rows = summary.rows
    hidden = ("error", "checkpoint")
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in hidden]
    console.print(_table(f"{len(rows)} trial(s)", columns, rows))
    for row in rows:
        if row.get("error"):
            reason = mask_text(str(row["error"]))
            console.print(f"trial {row['trial_id']} failed: {reason}", markup=False)
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
    print_where(where, console)
    if summary.edge_front:
        title = f"Pareto front ({len(summary.edge_front)} of {len(rows)} trials)"
        console.print(_table(title, list(summary.edge_front[0]), summary.edge_front))
    if summary.unmet_constraints:
        console.print(f"warning: {summary.unmet_constraints}", style="yellow", markup=False)
    if summary.export:
        print_export(summary.export, console)


def print_export(report: ExportReport, console: Console | None = None) -> None:
    """An edge export: size, metric and latency per quantization mode, and where the files are."""
    console = console or Console()
    table = Table(title=f"{report.model} version {report.version} for edge", title_justify="left")
    rows = report.table()
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    runs, threads = report.settings["latency_runs"], report.settings["num_threads"]
    metric = (
        f"{report.metric_name} on {report.validation_examples} validation examples; "
        "delta: against the Keras model"
    )
    print_where(
        [
            ("metric", metric),
            (
                "latency",
                f"batch 1, median of {runs} runs (spread: 10th to 90th percentile), LiteRT "
                f"with {threads} thread(s)",
            ),
            ("export folder", report.folder),
            ("report", f"{report.folder}/report.md, also in MLflow run {report.run_id}"),
        ],
        console,
    )


def print_deployment(
    deployment: Deployment, metrics_port: int, console: Console | None = None
) -> None:
    """What a served model answers on: predict, model info, API docs, Prometheus metrics."""
    where = [("serving", f"{deployment.primary} (run {deployment.primary.run_id})")]
    if deployment.canary:
        share = f"{deployment.canary} ({deployment.canary_percent:g}% of requests)"
        where.append(("canary", share))
    where += [
        ("predict", f"POST {deployment.predict_url}"),
        ("model info", f"GET {deployment.url}/v1/models/{deployment.primary.name}"),
        ("API docs", deployment.docs_url),
        ("metrics", f"http://127.0.0.1:{metrics_port}/metrics (when raytrain started Ray)"),
    ]
    print_where(where, console)


def print_records(
    records: list[RunRecord], console: Console | None = None, *, empty: str = "no runs"
) -> None:
    """Past runs and sweeps, one row each, with their best validation metrics (or ``empty``)."""
    console = console or Console()
    if not records:
        console.print(empty)
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
    console.print(table)


def print_record(record: RunRecord, console: Console | None = None) -> None:
    """One run or sweep: its values, best metrics, main parameters, tags and trials."""
    console = console or Console()
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
    if record.plan_vs_actual:
        where.append(("plan vs actual", record.plan_vs_actual))
    print_where(where, console)
    if record.trials:
        columns = list(dict.fromkeys(k for t in record.trials for k in t))
        console.print(_table(f"{len(record.trials)} trial(s)", columns, record.trials))


def print_submitted(job: Submitted, folder: str, console: Console | None = None) -> None:
    """A job the cluster accepted: its warnings (on stderr), id, command and upload."""
    console = console or Console()
    plain: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}
    for warning in job.warnings:
        Console(stderr=True).print(f"warning: {warning}", style="yellow", **plain)
    console.print(f"submitted job {job.job_id} to {job.address}", **plain)
    console.print(
        f"  {job.entrypoint}\n  in {folder} ({job.upload_bytes / 2**20:.1f} MiB uploaded)", **plain
    )


def print_jobs(records: list[JobRecord], console: Console | None = None) -> None:
    """Jobs on a cluster: id, status, experiment, local start time, duration; or "no jobs"."""
    console = console or Console()
    if not records:
        console.print("no jobs")
        return
    table = Table()
    for column in ("job id", "status", "experiment", "started", "duration"):
        table.add_column(column, no_wrap=column != "experiment", overflow="fold")
    for r in records:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.start_time or 0))
        minutes, seconds = divmod(int(r.duration_s or 0), 60)
        duration = f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
        table.add_row(r.job_id, r.status, r.experiment or r.entrypoint, started, duration)
    console.print(table)


def _table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
