"""An edge sweep's Pareto front: the trials no other trial beats on every objective (the sweep's
metrics and its constrained metrics), as a table and a plot on the sweep's parent run.

The champion is picked among the trials that satisfy ``tune.constraints``; the front shows every
trial's trade-off, so that a bound can be moved knowingly.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any, cast

from raytrain import tracking
from raytrain.config.schema import TuneSpec
from raytrain.secrets import mask_tree
from raytrain.sweep.edge import satisfies, value_of
from raytrain.sweep.results import pareto_front
from raytrain.tracking import names

__all__ = ["edge_front", "front_objectives", "log_front"]


def front_objectives(tune_spec: TuneSpec) -> list[tuple[str, str]]:
    """(metric, min|max): the sweep's metrics, then each constrained metric, minimized under a
    ``max`` bound and maximized under a ``min`` one."""
    found = dict(zip(tune_spec.metrics, tune_spec.modes, strict=True))
    for metric, bound in tune_spec.constraints.items():
        found.setdefault(metric, "min" if bound.max is not None else "max")
    return list(found.items())


def edge_front(tune_spec: TuneSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial on the front, best first by the first metric: its id, its objectives'
    values, whether it satisfies the constraints, and its configuration."""
    objectives = front_objectives(tune_spec)
    judged = [
        {"trial_id": r["trial_id"], **{m: value_of(r, m) for m, _ in objectives}, "row": r}
        for r in rows
    ]
    front = pareto_front(judged, [m for m, _ in objectives], [mode for _, mode in objectives])
    first, mode = objectives[0]
    front.sort(key=lambda p: p[first], reverse=mode == "max")
    return [
        {
            "trial_id": p["trial_id"],
            **{m: p[m] for m, _ in objectives},
            "satisfies": satisfies(p["row"], tune_spec.constraints),
            **{k: p["row"].get(k) for k in tune_spec.space},
        }
        for p in front
    ]


def log_front(
    parent: tracking.TrackedRun,
    tune_spec: TuneSpec,
    rows: list[dict[str, Any]],
    front: list[dict[str, Any]],
) -> None:
    """``pareto_front.csv`` and ``plots/pareto_front.html`` / ``.png`` on the parent run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    table = mask_tree(front)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["trial_id"])
    writer.writeheader()
    writer.writerows(table)
    client.log_text(parent.run_id, out.getvalue(), f"{names.EDGE_FRONT_ARTIFACT}.csv")
    objectives = front_objectives(tune_spec)
    if len(objectives) < 2:
        return
    y, x = objectives[0][0], objectives[1][0]  # e.g. accuracy against latency
    points = [r for r in rows if all(isinstance(value_of(r, m), int | float) for m in (x, y))]
    on_front = {p["trial_id"] for p in front}
    client.log_text(
        parent.run_id,
        _html(points, on_front, x, y, tune_spec),
        f"{names.PLOTS_FOLDER}/{names.EDGE_FRONT_ARTIFACT}.html",
    )
    with tempfile.TemporaryDirectory(prefix="raytrain-front-") as folder:
        png = Path(folder, f"{names.EDGE_FRONT_ARTIFACT}.png")
        _png(points, on_front, x, y, png)
        client.log_artifact(parent.run_id, str(png), names.PLOTS_FOLDER)


def _label(row: dict[str, Any], tune_spec: TuneSpec) -> str:
    config = mask_tree({k: row.get(k) for k in tune_spec.space})
    return f"trial {row['trial_id']}: " + ", ".join(f"{k}={v}" for k, v in config.items())


def _html(
    points: list[dict[str, Any]], on_front: set[str], x: str, y: str, tune_spec: TuneSpec
) -> str:
    import plotly.graph_objects as go

    figure = go.Figure()
    for front, name in ((False, "other trials"), (True, "Pareto front")):
        chosen = [p for p in points if (p["trial_id"] in on_front) == front]
        figure.add_trace(
            go.Scatter(
                x=[value_of(p, x) for p in chosen],
                y=[value_of(p, y) for p in chosen],
                mode="markers+text" if front else "markers",
                text=[str(p["trial_id"]) for p in chosen] if front else None,
                textposition="top center",
                hovertext=[_label(p, tune_spec) for p in chosen],
                name=name,
            )
        )
    figure.update_layout(title=f"{y} against {x}", xaxis_title=x, yaxis_title=y)
    return cast(str, figure.to_html(include_plotlyjs="cdn"))


def _png(points: list[dict[str, Any]], on_front: set[str], x: str, y: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    styles: tuple[tuple[bool, dict[str, Any]], ...] = (
        (False, {"color": "0.6"}),
        (True, {"color": "C0"}),
    )
    for front, style in styles:
        chosen = [p for p in points if (p["trial_id"] in on_front) == front]
        axes.scatter([value_of(p, x) for p in chosen], [value_of(p, y) for p in chosen], **style)
        if front:
            for p in chosen:
                axes.annotate(str(p["trial_id"]), (value_of(p, x), value_of(p, y)), fontsize=7)
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(f"{y} against {x} (blue: Pareto front)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
