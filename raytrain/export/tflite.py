"""Edge export: a registered model -> SavedModel -> one TFLite file per quantization mode, measured.

Each mode is measured the same way against the Keras model it came from, on the validation split
of the experiment that trained it: file size (and its ratio to float32), the experiment's metric
(accuracy, or e.g. mean absolute error for regression) with the file running in LiteRT's
interpreter, and batch-1 latency on this CPU. The files and the report (JSON and Markdown) go to
one folder and, as artifacts, to the MLflow run that trained the model.

Import this module only after ``raytrain`` (it sets TF_USE_LEGACY_KERAS): the model is tf_keras.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydantic import ValidationError

from raytrain.config.rules import export_problems
from raytrain.config.schema import (
    CLASSIFICATION_LOSSES,
    DEFAULT_STORAGE,
    EXPORT_MODES,
    Experiment,
    ExportSpec,
)
from raytrain.data.dataset import Dataset, load_dataset
from raytrain.errors import DataError, ExportError, RaytrainError, SpecError, TrackingError
from raytrain.export.destination import check_destination, publish
from raytrain.export.report import WARMUP_RUNS, ExportReport, ModeResult
from raytrain.storage import is_gcs, join
from raytrain.tracking import registry

__all__ = [
    "ExportReport",
    "Measured",
    "ModeResult",
    "evaluation_metric",
    "export_after_training",
    "export_model",
    "export_settings",
    "measure_mode",
    "save_saved_model",
    "score",
    "tflite_predict",
    "to_tflite",
]

FILE_NAMES = {
    "none": "float32.tflite",
    "float16": "float16.tflite",
    "dynamic": "dynamic.tflite",
    "int8": "int8.tflite",
}
REGRESSION_METRICS = ("mean_absolute_error", "mean_squared_error", "root_mean_squared_error")
EVAL_BATCH = 256
OPS_HELP = "https://ai.google.dev/edge/litert/models/ops_compatibility"


def export_model(
    reference: str,
    *,
    tracking_uri: str,
    experiment: Experiment | None = None,
    options: dict[str, Any] | None = None,
    data: Dataset | None = None,
) -> ExportReport:
    """Export the registered model ``reference`` (``name``, ``name@alias``, ``name/version``).

    ``experiment`` gives the data (validation split, int8 calibration) and the ``export:``
    settings; by default it is the one recorded with the model's run. ``options`` overrides
    settings by field name, as ``raytrain export`` does with its options.
    A version holding pickled objects (code) loads only with ``trust_pickled_models`` in
    ``options`` or ``experiment``, never in the experiment recorded in MLflow; nor is the
    destination ever taken from it (its ``export.out`` and ``storage``): whoever can write the
    registry must not choose which folder, or bucket, an export writes to and replaces files in.
    """
    model = registry.resolve(reference, tracking_uri=tracking_uri)
    spec = experiment or registry.recorded_experiment(model)
    base = spec.export
    if experiment is None and base is not None:  # the registry's writers may not trust them
        base = base.model_copy(update={"trust_pickled_models": False, "out": None})
    settings = _settings(base, options or {})
    data = data or _load_data(spec, model)
    keras_model = registry.load_keras(model, trust_pickled_models=settings.trust_pickled_models)
    if tuple(keras_model.input_shape[1:]) != data.info.input_shape:
        raise ExportError(
            f"{model} takes examples of shape {tuple(keras_model.input_shape[1:])}, but "
            f"{spec.data.source} has {data.info.input_shape}; pass `experiment` with the "
            "experiment it was trained on",
            options=("experiment",),
        )
    storage = spec.storage if experiment is not None else DEFAULT_STORAGE
    destination = _destination(settings, storage, spec.name, model)
    check_destination(destination)  # before minutes of converting, not after
    # TensorFlow's savers and the TFLite converter want local paths: the files are written to a
    # local folder first, then published to the destination (a folder or gs://).
    folder = Path(tempfile.mkdtemp(prefix="raytrain-export-"))
    saved_model = save_saved_model(keras_model, folder)
    metric = evaluation_metric(spec.train.loss, spec.train.metrics)
    keras_value = score(
        metric, data.y_val, keras_model.predict(data.x_val, batch_size=EVAL_BATCH, verbose=0)
    )
    keras_latency, _ = _latency_ms(_keras_call(keras_model), data.x_val, runs=settings.latency_runs)
    results: list[ModeResult] = []
    for mode in dict.fromkeys(["none", *settings.quantize]):  # float32 first: the ratios' base
        measured = measure_mode(saved_model, mode, data=data, metric=metric, settings=settings)
        (folder / FILE_NAMES[mode]).write_bytes(measured.content)
        float32_bytes = results[0].bytes if results else len(measured.content)
        results.append(
            ModeResult(
                mode=mode,
                file=FILE_NAMES[mode],
                bytes=len(measured.content),
                ratio_to_float32=len(measured.content) / float32_bytes,
                metric=measured.metric,
                delta=measured.metric - keras_value,
                latency_ms=measured.latency_ms,
                latency_spread_ms=measured.latency_spread_ms,
                input_dtype=measured.input_dtype,
            )
        )
    report = ExportReport(
        model=model.name,
        version=model.version,
        run_id=model.run_id,
        folder=destination,
        metric_name=metric,
        validation_examples=len(data.x_val),
        keras_metric=keras_value,
        keras_latency_ms=keras_latency,
        saved_model_bytes=sum(f.stat().st_size for f in saved_model.rglob("*") if f.is_file()),
        settings=settings.model_dump(mode="json"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        modes=results,
    )
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    (folder / "report.md").write_text(report.to_markdown())
    _log_to_run(model, folder)
    _publish(folder, destination)
    return report


def export_after_training(
    spec: Experiment, *, tracking_uri: str, version: str, data: Dataset
) -> ExportReport:
    """The ``export:`` section's export of the version a run or sweep has just registered."""
    reference = f"{spec.tracking.register_as}/{version}"
    try:
        return export_model(reference, tracking_uri=tracking_uri, experiment=spec, data=data)
    except RaytrainError as exc:
        raise ExportError(
            f"{spec.tracking.register_as} version {version} is registered, but its export "
            f"failed: {exc} (retry with: raytrain export {reference})",
            options=exc.options,
        ) from None


@dataclass(frozen=True)
class Measured:
    """One mode's file and what it measured (``ModeResult`` without the comparisons)."""

    content: bytes
    metric: float
    latency_ms: float
    latency_spread_ms: float
    input_dtype: str


def export_settings(spec: Experiment) -> ExportSpec:
    """The ``export:`` settings an export of this experiment's model uses (defaults without)."""
    return _settings(spec.export, {})


def save_saved_model(keras_model: Any, folder: Path) -> Path:
    """The SavedModel every TFLite file is converted from, in ``folder``."""
    saved_model = folder / "saved_model"
    keras_model.save(str(saved_model), save_format="tf")
    return saved_model


def measure_mode(
    saved_model: Path, mode: str, *, data: Dataset, metric: str, settings: ExportSpec
) -> Measured:
    """Convert to one mode and measure the file: ``metric`` on the validation split and batch-1
    latency, LiteRT with ``settings.num_threads``. A sweep's edge metrics come from here too, so
    that an export of its champion reproduces them."""
    # The training split is already shuffled: its first examples are a random sample of it.
    representative = data.x_train[: settings.representative_examples]
    content = to_tflite(saved_model, mode, representative=representative, int8_io=settings.int8_io)
    value = score(
        metric, data.y_val, tflite_predict(content, data.x_val, threads=settings.num_threads)
    )
    interpreter = _interpreter(content, settings.num_threads)
    latency, spread = _latency_ms(_tflite_call(interpreter), data.x_val, runs=settings.latency_runs)
    return Measured(
        content=content,
        metric=value,
        latency_ms=latency,
        latency_spread_ms=spread,
        input_dtype=np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
    )


def to_tflite(
    saved_model: Path, mode: str, *, representative: np.ndarray, int8_io: bool = False
) -> bytes:
    """Convert a SavedModel to TFLite in one of ``EXPORT_MODES``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: int8 weights ("dynamic")
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        # Full integer: activation ranges are calibrated on real examples; no float op may stay.
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = converter.inference_output_type = tf.int8
    try:
        return cast(bytes, converter.convert())
    except Exception as exc:  # ConverterError, or anything the MLIR passes raise
        raise ExportError(_converter_message(exc, mode)) from None


def tflite_predict(content: bytes, x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """A .tflite model's float outputs on ``x``: int8 inputs are quantized with the input's scale
    and zero point and int8 outputs dequantized, as an app must do."""
    interpreter = _interpreter(content, threads)
    index = interpreter.get_input_details()[0]["index"]
    outputs = []
    for start in range(0, len(x), EVAL_BATCH):
        chunk = x[start : start + EVAL_BATCH]
        interpreter.resize_tensor_input(index, list(chunk.shape))
        interpreter.allocate_tensors()
        outputs.append(_tflite_call(interpreter)(chunk))
    return np.concatenate(outputs)


def evaluation_metric(loss: str, metrics: Sequence[str]) -> str:
    """accuracy for a classifier; for a regressor, the experiment's error metric (else MAE)."""
    if loss in CLASSIFICATION_LOSSES:
        return "accuracy"
    return next((m for m in metrics if m in REGRESSION_METRICS), "mean_absolute_error")


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``metric`` of predictions, computed the same way for the Keras model and every file."""
    if metric == "accuracy":
        predicted = (y_pred[:, 0] > 0.5) if y_pred.shape[-1] == 1 else y_pred.argmax(axis=-1)
        truth = y_true.argmax(axis=-1) if y_true.ndim > 1 else y_true
        return float(np.mean(predicted.astype(int) == truth))
    error = y_pred.reshape(y_true.shape) - y_true
    if metric == "mean_absolute_error":
        return float(np.mean(np.abs(error)))
    mse = float(np.mean(np.square(error)))
    return mse if metric == "mean_squared_error" else float(np.sqrt(mse))


def _settings(base: ExportSpec | None, options: dict[str, Any]) -> ExportSpec:
    """``base`` (the experiment's ``export:`` or the defaults) with ``options`` set; quantize
    takes comma-separated modes and ``all``. Bad values raise ``SpecError`` naming the option as
    `field`, listed in its ``options``."""
    given = {k: v for k, v in options.items() if v is not None}
    if "quantize" in given:
        modes = [m.strip() for value in given["quantize"] for m in value.split(",") if m.strip()]
        given["quantize"] = list(EXPORT_MODES) if "all" in modes else modes
    try:
        settings = ExportSpec.model_validate({**(base or ExportSpec()).model_dump(), **given})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise SpecError(
            [f"`{e['loc'][0]}` {e['input']}: {e['msg']}" for e in errors],
            options=[str(e["loc"][0]) for e in errors],
        ) from None
    problems = export_problems(settings)
    if problems:
        raise SpecError([p.message for p in problems])
    return settings


def _load_data(spec: Experiment, model: registry.RegisteredModel) -> Dataset:
    try:
        return load_dataset(spec.data, loss=spec.train.loss)
    except DataError as exc:
        raise DataError(
            f"cannot read the data {model} was trained on ({exc}); pass `experiment` "
            "with the same data where it can be read",
            options=("experiment",),
        ) from None


def _destination(
    settings: ExportSpec, storage: str, name: str, model: registry.RegisteredModel
) -> str:
    """Where the files end up: ``out``, else under ``storage`` (gs:// too)."""
    where = settings.out or join(storage, name, "export", f"{model.name}-v{model.version}")
    return where if is_gcs(where) else str(Path(where).expanduser().resolve())


def _interpreter(content: bytes, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _tflite_call(interpreter: Any) -> Callable[[np.ndarray], np.ndarray]:
    """One inference as an app runs it: quantize the input, invoke, dequantize the output."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], _quantize(x, inp))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(out["index"]), out)

    return call


def _keras_call(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model's fastest batch-1 path: one traced graph, no ``predict`` overhead."""
    import tensorflow as tf

    signature = [tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)]
    graph = tf.function(lambda x: model(x, training=False), input_signature=signature)
    return lambda x: graph(x).numpy()


def _latency_ms(
    call: Callable[[np.ndarray], Any], x: np.ndarray, *, runs: int
) -> tuple[float, float]:
    """Median milliseconds of ``call`` on one example at a time, after warm-up runs (the first
    calls trace graphs, allocate buffers and fill caches), and the spread of the runs: their 10th
    to 90th percentile, wide enough that another process's median of the same file lands in it
    (an interquartile range is not, for files of a few microseconds: benchmarks/README.md)."""
    examples = [x[i : i + 1] for i in range(min(len(x), runs))]
    for i in range(WARMUP_RUNS):
        call(examples[i % len(examples)])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        call(examples[i % len(examples)])
        times.append(time.perf_counter() - start)
    deciles = statistics.quantiles(times, n=10)
    return 1000 * statistics.median(times), 1000 * (deciles[8] - deciles[0])


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"], copy=False)
    limits = np.iinfo(detail["dtype"])
    q = np.clip(np.round(x / scale + zero_point), limits.min, limits.max)
    return cast(np.ndarray, q.astype(detail["dtype"]))


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale if scale else y


def _converter_message(exc: Exception, mode: str) -> str:
    ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(exc))))
    if ops:
        return (
            f"the TFLite converter has no builtin op for {', '.join(ops)} (mode {mode}); build "
            f"the model from ops LiteRT supports ({OPS_HELP})"
        )
    return f"the TFLite converter failed (mode {mode}): {_first_line(exc)}"


def _publish(folder: Path, destination: str) -> None:
    try:
        publish(folder, destination)
    except OSError as exc:  # the files are written: say where, in one line
        raise ExportError(
            f"the export is in {folder}, but uploading it to {destination} failed: "
            f"{_first_line(exc)}"
        ) from None
    shutil.rmtree(folder)


def _log_to_run(model: registry.RegisteredModel, folder: Path) -> None:
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=model.tracking_uri).log_artifacts(
            model.run_id, str(folder), "export"
        )
    except Exception as exc:  # the files are written: say where, in one line
        raise TrackingError(
            f"the export is in {folder}, but logging it to MLflow run {model.run_id} failed: "
            f"{_first_line(exc)}"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
