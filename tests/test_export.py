"""Edge export on a real model: a 53k-parameter CNN trained on digits, registered in a real MLflow
registry, exported in every quantization mode and run in LiteRT's interpreter."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from typer.testing import CliRunner

import raytrain  # noqa: F401  (tf.keras is tf_keras from here on)
from raytrain import tracking
from raytrain.cli import app
from raytrain.config.loader import load_experiment
from raytrain.config.schema import Experiment
from raytrain.data.dataset import Dataset, load_dataset
from raytrain.errors import (
    AliasNotFoundError,
    ExportError,
    ModelNotFoundError,
    RegistryError,
    SpecError,
    VersionNotFoundError,
)
from raytrain.export.report import ExportReport
from raytrain.export.tflite import evaluation_metric, export_model, score, to_tflite
from raytrain.orchestration.finish import export_registered
from raytrain.tracking import registry

from .conftest import write_yaml

NAME = "digits-cnn"
SPEC = {
    "name": NAME,
    "model": {"builder": "cnn", "params": {"filters": [32, 64], "dense_units": 128}},
    "train": {"epochs": 10, "batch_size": 64, "optimizer": {"learning_rate": 0.003}},
    "tracking": {"register_as": NAME},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A CNN trained in-process, logged and registered with raytrain's own tracking functions,
    with the alias ``champion``; the module runs in the store's folder (./mlruns, ./mlflow.db)."""
    import tensorflow as tf

    from raytrain.models import build_model

    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        spec = Experiment.model_validate(SPEC)
        data = load_dataset(spec.data, loss=spec.train.loss)
        tf.keras.utils.set_random_seed(0)
        model = build_model(spec.model, data.info, loss=spec.train.loss)
        model.compile(tf.keras.optimizers.Adam(spec.train.optimizer.learning_rate), spec.train.loss)
        train = spec.train
        model.fit(
            data.x_train, data.y_train, epochs=train.epochs, batch_size=train.batch_size, verbose=0
        )
        tree = spec.model_dump(mode="json")
        uri = tracking.absolute_tracking_uri("sqlite:///mlflow.db")
        run = tracking.start_run(
            uri=uri,
            experiment="digits",
            run_name="cnn",
            spec=tree,
            tags={},
            spec_file=None,
        )
        version = tracking.log_model(
            run, model, example=data.x_val[:5], metadata={}, register_as=NAME
        )
        assert version == "1"
        tracking.promote_champion(uri, NAME, version, metric="val_accuracy", mode="max", value=0.9)
        yield {"uri": uri, "run_id": run.run_id, "data": data, "folder": folder}


@pytest.fixture(scope="module")
def report(store: dict[str, Any]) -> ExportReport:
    """Every mode, through the default path: the experiment and data recorded with the run."""
    return export_model(NAME, tracking_uri=store["uri"], options={"quantize": ["all"]})


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_every_mode_runs_in_litert_within_the_size_and_accuracy_budget(
    report: ExportReport, store: dict[str, Any]
) -> None:
    data: Dataset = store["data"]
    modes = {m.mode: m for m in report.modes}
    assert list(modes) == ["none", "float16", "dynamic", "int8"]
    folder = Path(report.folder)
    assert folder == store["folder"] / "raytrain_results" / NAME / "export" / f"{NAME}-v1"
    assert (folder / "saved_model" / "saved_model.pb").is_file()
    for mode in modes.values():
        interpreter = Interpreter(model_path=str(folder / mode.file))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], data.x_val[:1])
        interpreter.invoke()
        probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert probabilities.shape == (1, 10)
        assert mode.latency_ms > 0
    float32 = (folder / "float32.tflite").stat().st_size
    assert (folder / "int8.tflite").stat().st_size <= 0.35 * float32
    assert report.metric_name == "accuracy"
    assert report.keras_metric >= 0.9
    assert modes["dynamic"].delta >= -0.01
    assert modes["int8"].delta >= -0.01
    assert report.keras_latency_ms > 0


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_the_report_holds_the_measured_numbers(report: ExportReport, store: dict[str, Any]) -> None:
    folder = Path(report.folder)
    saved = json.loads((folder / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_json()))
    data: Dataset = store["data"]
    # Recompute int8's accuracy independently, one example at a time.
    interpreter = Interpreter(model_path=str(folder / "int8.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    hits = 0
    for x, y in zip(data.x_val, data.y_val, strict=True):
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        hits += int(interpreter.get_tensor(out["index"]).argmax() == y)
    int8 = next(m for m in saved["modes"] if m["mode"] == "int8")
    assert int8["metric"] == pytest.approx(hits / len(data.x_val), abs=1e-12)
    assert int8["metric"] - int8["delta"] == pytest.approx(saved["keras_metric"])
    for mode in saved["modes"]:
        assert mode["bytes"] == (folder / mode["file"]).stat().st_size
    assert int8["ratio_to_float32"] == pytest.approx(int8["bytes"] / saved["modes"][0]["bytes"])
    markdown = (folder / "report.md").read_text()
    assert f"| int8 (int8.tflite) | {int8['bytes'] / 1024:,.1f} KiB |" in markdown
    logged = mlflow.MlflowClient(tracking_uri=store["uri"]).list_artifacts(
        store["run_id"], "export"
    )
    assert {a.path for a in logged} >= {
        "export/report.json",
        "export/report.md",
        "export/int8.tflite",
        "export/saved_model",
    }


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_int8_io_quantizes_inputs_with_the_input_scale(
    store: dict[str, Any], tmp_path: Path
) -> None:
    report = export_model(
        f"{NAME}/1",
        tracking_uri=store["uri"],
        options={"quantize": ["int8"], "int8_io": True, "out": str(tmp_path), "latency_runs": 10},
    )
    int8 = report.modes[-1]
    assert int8.input_dtype == "int8"
    interpreter = Interpreter(model_path=str(tmp_path / "int8.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    assert out["dtype"] == np.int8
    assert scale > 0
    data: Dataset = store["data"]
    hits = 0
    for x, y in zip(data.x_val, data.y_val, strict=True):
        q = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        hits += int(interpreter.get_tensor(out["index"]).argmax() == y)
    assert int8.metric == pytest.approx(hits / len(data.x_val), abs=1e-12)
    assert int8.delta >= -0.01


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_model_references_resolve_or_say_what_the_registry_holds(store: dict[str, Any]) -> None:
    uri = store["uri"]
    for reference, alias in [
        (NAME, "champion"),
        (f"{NAME}@champion", "champion"),
        (f"{NAME}/1", None),
    ]:
        model = registry.resolve(reference, tracking_uri=uri)
        assert (model.name, model.version, model.run_id, model.alias) == (
            NAME,
            "1",
            store["run_id"],
            alias,
        )
    assert registry.recorded_experiment(model).model.params == SPEC["model"]["params"]
    cases = [
        ("digits-cn", ModelNotFoundError, "did you mean 'digits-cnn'? registered: digits-cnn"),
        (f"{NAME}/7", VersionNotFoundError, "digits-cnn has no version 7; versions: 1"),
        (
            f"{NAME}@prod",
            AliasNotFoundError,
            "no alias 'prod' (aliases: champion -> 1; versions: 1)",
        ),
        (
            "a/b/c",
            RegistryError,
            "expected NAME (its 'champion' alias), NAME@ALIAS or NAME/VERSION",
        ),
    ]
    for reference, error, message in cases:
        with pytest.raises(error, match=re.escape(message)) as info:
            registry.resolve(reference, tracking_uri=uri)
        assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses Ray
    with pytest.raises(ModelNotFoundError, match=r"no MLflow database at .*missing\.db"):
        registry.resolve(NAME, tracking_uri="sqlite:///missing.db")


def test_an_op_the_converter_cannot_handle_is_named(tmp_path: Path) -> None:
    import tensorflow as tf

    class Inverse(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return tf.linalg.inv(x)

    tf.saved_model.save(Inverse(), str(tmp_path))
    with pytest.raises(ExportError, match=r"no builtin op for tf\.MatrixInverse \(mode dynamic\)"):
        to_tflite(tmp_path, "dynamic", representative=np.zeros((1, 3, 3), np.float32))


def test_regression_is_scored_with_the_experiments_metric() -> None:
    assert evaluation_metric("sparse_categorical_crossentropy", ["accuracy"]) == "accuracy"
    assert evaluation_metric("mean_squared_error", ["root_mean_squared_error"]) == (
        "root_mean_squared_error"
    )
    assert evaluation_metric("huber", []) == "mean_absolute_error"
    y, predicted = np.array([1.0, 2.0, 4.0]), np.array([[1.0], [3.0], [2.0]])
    assert score("mean_absolute_error", y, predicted) == pytest.approx(1.0)
    assert score("root_mean_squared_error", y, predicted) == pytest.approx(np.sqrt(5 / 3))
    assert score("accuracy", np.array([1, 0]), np.array([[0.8], [0.7]])) == 0.5  # sigmoid head


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_cli_prints_the_comparison_and_fails_in_one_line(
    store: dict[str, Any], tmp_path: Path
) -> None:
    uri = store["uri"]
    runner = CliRunner()
    args = ["export", f"{NAME}@champion", "--tracking-uri", uri, "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "-q", "dynamic"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "dynamic (dynamic.tflite)" in result.output
    assert "none (float32.tflite)" in result.output
    assert (tmp_path / "report.md").is_file()
    result = runner.invoke(app, ["export", "nope", "--tracking-uri", uri])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: no registered model 'nope' in {uri}; registered:")
    assert "Traceback" not in result.output
    result = runner.invoke(app, [*args, "-q", "int4"])
    assert result.exit_code == 2
    assert "--quantize int4: Input should be 'none', 'float16', 'dynamic' or 'int8'" in (
        result.output
    )


def test_export_section_needs_a_registered_model(tmp_path: Path) -> None:
    file = write_yaml(
        tmp_path,
        """
        name: t
        export: {quantize: [dynamic], int8_io: true}
        """,
    )
    with pytest.raises(SpecError) as info:
        load_experiment(file)
    assert info.value.problems == [
        f"{file}:2: export: the export reads the model from the MLflow registry: set "
        "tracking.register_as (with tracking.enabled: true), or drop export",
        f"{file}:2: export.int8_io: int8_io applies to the int8 mode, but export.quantize is "
        "['dynamic']; add int8 to export.quantize or drop int8_io",
    ]


@pytest.mark.slow  # the store fixture trains a CNN for 10 epochs (a minute)
def test_the_export_section_runs_once_a_version_is_registered(store: dict[str, Any]) -> None:
    """The hook run.py calls at the end of a run or sweep, given what they have then (no Ray)."""
    spec = Experiment.model_validate(
        {**SPEC, "export": {"quantize": ["dynamic"], "latency_runs": 10, "out": "after"}}
    )
    data = store["data"]
    assert export_registered(spec.model_copy(update={"export": None}), None, "1", data) is None
    tracked = tracking.TrackedRun(store["uri"], "digits", "1", store["run_id"])
    report = export_registered(spec, tracked, "1", data)
    assert [m.mode for m in report.modes] == ["none", "dynamic"]
    assert report.folder == str(store["folder"] / "after")
    with pytest.raises(
        ExportError,
        match=re.escape(
            "digits-cnn version 2 is registered, but its export failed: digits-cnn has no "
            "version 2; versions: 1 (retry with: raytrain export digits-cnn/2)"
        ),
    ):
        export_registered(spec, tracked, "2", data)
