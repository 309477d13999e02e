"""How a run or sweep ends: the best checkpoint's model logged and registered, its test metrics
on the version, and the edge export the experiment asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import ray

from raytrain import tracking
from raytrain.config.schema import Experiment
from raytrain.orchestration.prepare import PreparedData
from raytrain.tracking import names
from raytrain.train import checkpoint

if TYPE_CHECKING:
    from raytrain.export.report import ExportReport

__all__ = ["export_registered", "log_best_model", "record_test_metrics"]


def log_best_model(
    run: tracking.TrackedRun,
    checkpoint_path: str | None,
    *,
    data: PreparedData,
    loss: str,
    register_as: str | None,
    trainer: Any = None,
) -> str | None:
    """Log the model of a checkpoint on ``run``, with what serving and export must know about
    its input (shape, classes, label names); register it if asked; return the version.

    ``trainer`` (``Trained.trainer``), when given and still up, logs it: this process then never
    imports TensorFlow (~3 s of CPU in a 1-worker run)."""
    if checkpoint_path is None:
        return None
    info = data.info
    metadata = {
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "label_names": info.label_names,
        "feature_names": info.feature_names[:1000],
        "loss": loss,
        "checkpoint": checkpoint_path,
    }
    example = data.x_val[:5]
    if trainer is not None:
        try:
            logged = trainer.log_model.remote(
                run, checkpoint_path, example=example, metadata=metadata, register_as=register_as
            )
            return cast("str | None", ray.get(logged))
        except ray.exceptions.RayActorError:  # its process is gone: log it here
            pass
    return checkpoint.log_model(
        run, checkpoint_path, example=example, metadata=metadata, register_as=register_as
    )


def record_test_metrics(
    uri: str, name: str | None, version: str | None, tested: dict[str, float]
) -> None:
    """Copy the test metrics to the registered version's tags (``raytrain.test_<metric>``)."""
    if name and version and tested:
        from raytrain.tracking.registry import tag_version

        tag_version(
            uri, name, version, {names.metric_tag(k): f"{v:.6g}" for k, v in tested.items()}
        )


def export_registered(
    spec: Experiment,
    tracked: tracking.TrackedRun | None,
    version: str | None,
    data: PreparedData,
) -> ExportReport | None:
    """The ``export:`` section's edge export, once a model version is registered."""
    if spec.export is None or tracked is None or not version:
        return None
    from raytrain.export.tflite import export_after_training

    return export_after_training(spec, tracking_uri=tracked.uri, version=version, data=data)
