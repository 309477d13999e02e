"""What the registry and an export folder hold is data: never code that runs, never a path
outside the export.

A real sqlite MLflow registry (no Ray) holds raytrain's own small digits model and what someone
who can write to the registry plants beside it: the same version with its ``data/model.keras``
replaced by an HDF5 file, or a zip, holding a ``Lambda`` whose code writes a marker file.
Serving and export refuse both before deserializing anything, and the marker is never written.
An export folder's manifest naming files outside the folder deletes nothing, and ``raytrain
export NAME`` writes where its user says, never where the recorded experiment says.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from typer.testing import CliRunner

import raytrain  # noqa: F401  (tf.keras is tf_keras from here on)
from raytrain import tracking
from raytrain.cli import app
from raytrain.config.schema import Experiment
from raytrain.data.dataset import load_dataset
from raytrain.errors import ExportError, ModelBuildError, UntrustedModelError
from raytrain.export.destination import MANIFEST, publish
from raytrain.models import build_model
from raytrain.tracking.keras_file import check_keras_file
from raytrain.tracking.registry import download, load_keras, resolve

HONEST, PLANTED_H5, PLANTED_ZIP = "honest", "planted-h5", "planted-zip"
DIGITS = {"model": {"builder": "mlp", "params": {"hidden_units": [8]}}}


@dataclass(frozen=True)
class Registry:
    uri: str
    marker: Path  # what the planted Lambda writes when it runs
    theirs: Path  # where the recorded experiment's storage and export.out point


def _lambda_model(marker: Path) -> Any:
    """A digits model whose Lambda layer writes ``marker`` whenever it runs (building the model
    runs it once)."""
    import tensorflow as tf

    payload = eval(f"lambda x: __import__('pathlib').Path({str(marker)!r}).touch() or x")
    return tf.keras.Sequential(
        [
            tf.keras.layers.Input((8, 8, 1)),
            tf.keras.layers.Lambda(payload),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )


def _plant(client: Any, name: str, honest: Path, model_file: Path, folder: Path, run: str) -> None:
    """Register ``honest``'s files with ``model_file`` as their data/model.keras."""
    files = folder / name
    shutil.copytree(honest, files)
    shutil.copy(model_file, files / "data" / "model.keras")
    client.create_registered_model(name)
    client.create_model_version(name, str(files), run_id=run)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("untrusted")
    theirs = folder / "theirs"
    spec = Experiment.model_validate(
        {
            "name": "digits-mlp",
            **DIGITS,
            "storage": str(theirs / "storage"),
            "export": {"out": str(theirs / "out")},
            "tracking": {"register_as": HONEST},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's artifacts go to ./mlruns
        data = load_dataset(spec.data, loss=spec.train.loss)
        uri = tracking.absolute_tracking_uri("sqlite:///mlflow.db")
        run = tracking.start_run(
            uri=uri,
            experiment="untrusted",
            run_name="honest",
            spec=spec.model_dump(mode="json"),
            tags={},
            spec_file=None,
        )
        model = build_model(spec.model, data.info, loss=spec.train.loss)
        metadata = {"input_shape": list(data.info.input_shape), "num_classes": 10}
        tracking.log_model(
            run, model, example=data.x_val[:5], metadata=metadata, register_as=HONEST
        )
        honest = Path(download(resolve(f"{HONEST}/1", tracking_uri=uri)))
        marker = folder / "lambda-ran"
        planted = _lambda_model(marker)
        assert marker.exists()  # the payload works: building the model ran it
        marker.unlink()
        planted.save(folder / "lambda.h5")  # HDF5, as tf_keras' legacy format writes it
        planted.save(folder / "lambda.keras")  # zip
        client = mlflow.MlflowClient(tracking_uri=uri)
        _plant(client, PLANTED_H5, honest, folder / "lambda.h5", folder, run.run_id)
        _plant(client, PLANTED_ZIP, honest, folder / "lambda.keras", folder, run.run_id)
        assert not marker.exists()
        yield Registry(uri, marker, theirs)


def test_a_planted_hdf5_lambda_is_refused_by_serve_and_export(
    registry: Registry, workdir: Path
) -> None:
    from raytrain.export.tflite import export_model
    from raytrain.serve import describe
    from raytrain.serve.deployment import serve_model

    uri = registry.uri
    refused = (
        r"^refused to load planted-h5 version 1: its data/model\.keras is an HDF5 file, which "
        r"tf_keras loads without safe mode \(running Lambda layers' code\); raytrain loads only "
        r"zip-format Keras files that name no Python code; pass `trust_pickled_models` only if"
    )
    with pytest.raises(UntrustedModelError, match=refused):
        describe(f"{PLANTED_H5}/1", tracking_uri=uri)
    with pytest.raises(UntrustedModelError, match=refused):
        serve_model(f"{PLANTED_H5}/1", tracking_uri=uri)  # before Ray: no replica starts
    with pytest.raises(UntrustedModelError, match=refused):
        load_keras(resolve(f"{PLANTED_H5}/1", tracking_uri=uri))  # what a replica loads with
    with pytest.raises(UntrustedModelError, match=refused):
        export_model(f"{PLANTED_H5}/1", tracking_uri=uri, options={"quantize": ["none"]})
    result = CliRunner().invoke(app, ["export", f"{PLANTED_H5}/1", "--tracking-uri", uri])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("error: refused to load planted-h5 version 1: its data/model.keras")
    assert "pass --trust-pickled-models only if you trust everyone" in line
    assert not registry.marker.exists()
    assert not list(workdir.iterdir())  # nothing exported


def test_a_zip_keras_file_with_a_lambda_is_refused(registry: Registry) -> None:
    from raytrain.serve import describe

    refused = (
        r"^refused to load planted-zip version 1: its data/model\.keras names Python code "
        r"\('lambda(_\d+)?' is a Lambda layer\)"
    )
    with pytest.raises(UntrustedModelError, match=refused):
        describe(f"{PLANTED_ZIP}/1", tracking_uri=registry.uri)
    with pytest.raises(UntrustedModelError, match=refused):
        load_keras(resolve(f"{PLANTED_ZIP}/1", tracking_uri=registry.uri))
    assert not registry.marker.exists()
    # raytrain's own model still loads, and trusting the registry loads the planted one.
    assert describe(f"{HONEST}/1", tracking_uri=registry.uri).input_shape == [8, 8, 1]
    assert load_keras(resolve(f"{HONEST}/1", tracking_uri=registry.uri)).input_shape[1:] == (
        8,
        8,
        1,
    )


def _zip(path: Path, config: Any) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
    return path


def test_the_gate_lets_keras_own_layers_through_and_nothing_that_names_code(
    tmp_path: Path,
) -> None:
    import tensorflow as tf

    spec = Experiment.model_validate({"name": "x", "model": {"builder": "cnn"}})
    data = load_dataset(spec.data, loss=spec.train.loss)
    own = build_model(spec.model, data.info, loss=spec.train.loss)
    own.compile("adam", loss=tf.keras.losses.sparse_categorical_crossentropy, metrics=["accuracy"])
    own.save(tmp_path / "own.keras")  # compiled: its config names a loss function too
    check_keras_file(tmp_path / "own.keras", what="own", name="own.keras")

    inputs = tf.keras.layers.Input((3,))  # tensor math on Keras tensors: op layers of math
    tf.keras.Model(inputs, tf.nn.relu(inputs) + inputs[:, :1]).save(tmp_path / "math.keras")
    check_keras_file(tmp_path / "math.keras", what="math", name="math.keras")

    (tmp_path / "bytes.keras").write_bytes(b"\x00" * 64)
    (tmp_path / "folder.keras").mkdir()
    function = {"module": "os", "class_name": "function", "config": "system"}
    layer = {"module": "my_pkg.layers", "class_name": "Evil", "config": {"name": "evil"}}
    write = {"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}
    cases = {
        _zip(tmp_path / "op.keras", {"layers": [write]}).name: (
            r"names Python code \('w' calls a TensorFlow function that is not math\)"
        ),
        "bytes.keras": r"is not a zip archive, which tf_keras loads without safe mode",
        "folder.keras": r"is a folder \(a SavedModel\?\), not a zip-format Keras file",
        "missing.keras": r"is missing",
        _zip(tmp_path / "os.keras", {"activation": function}).name: (
            r"names Python code \(function 'system' of module 'os'\)"
        ),
        _zip(tmp_path / "custom.keras", {"layers": [layer]}).name: (
            r"names Python code \('evil' is from module 'my_pkg\.layers'\)"
        ),
        _zip(tmp_path / "deep.keras", "[" * 100_000 + "]" * 100_000).name: (
            r"has an unreadable config\.json \(RecursionError\)"
        ),
    }
    for name, why in cases.items():
        with pytest.raises(UntrustedModelError, match=rf"^refused to load it: its {name} {why}"):
            check_keras_file(tmp_path / name, what="it", name=name)


def test_a_checkpoint_and_a_builder_are_held_to_the_same_gate(tmp_path: Path) -> None:
    from raytrain.train.checkpoint import MODEL_FILE, load_model

    _lambda_model(tmp_path / "built").save(tmp_path / "lambda.h5")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    shutil.copy(tmp_path / "lambda.h5", checkpoint / MODEL_FILE)
    (tmp_path / "built").unlink()
    with pytest.raises(
        UntrustedModelError,
        match=rf"^refused to load the checkpoint at {checkpoint}: its model\.keras is an HDF5",
    ):
        load_model(str(checkpoint))
    assert not (tmp_path / "built").exists()

    (tmp_path / "lambdas.py").write_text(
        "import tensorflow as tf\n"
        "def build(*, input_shape, num_outputs, output_activation):\n"
        "    return tf.keras.Sequential([tf.keras.layers.Input(input_shape),\n"
        "        tf.keras.layers.Lambda(lambda x: x), tf.keras.layers.Flatten(),\n"
        "        tf.keras.layers.Dense(num_outputs, activation=output_activation)])\n"
    )
    spec = Experiment.model_validate({"name": "x", "model": {"builder": "lambdas:build"}})
    data = load_dataset(spec.data, loss=spec.train.loss)
    with pytest.raises(
        ModelBuildError,
        match=r"^model builder 'lambdas:build' made a model whose config names Python code "
        r"\('lambda(_\d+)?' is a Lambda layer\), which raytrain never loads",
    ):
        build_model(spec.model, data.info, loss=spec.train.loss, base_dir=tmp_path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    precious = tmp_path / "victim" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    return precious


@pytest.mark.parametrize(
    "entry",
    [
        "../victim/precious.txt",
        "sub/../../victim/precious.txt",
        "{victim}",  # absolute
        "..\\victim\\precious.txt",
        "./report.md",
        "",
    ],
)
def test_a_manifest_naming_files_outside_its_folder_deletes_nothing(
    tmp_path: Path, victim: Path, entry: str
) -> None:
    entry = entry.format(victim=victim)
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / MANIFEST).write_text(json.dumps({"files": ["report.md", entry]}))
    (destination / "report.md").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "report.md").write_text("new")
    manifest = destination / MANIFEST
    with pytest.raises(
        ExportError,
        match=rf"^the export manifest {manifest} names '{re.escape(entry)}', which is not a "
        rf"plain path inside the export destination {destination} \(no '\.\.', absolute path, "
        r"backslash or symbolic link\); raytrain deletes nothing there",
    ):
        publish(new, str(destination))
    assert victim.read_text() == "keep me"
    assert (destination / "report.md").read_text() == "old"


def test_no_symbolic_link_leads_an_export_out_of_its_folder(tmp_path: Path, victim: Path) -> None:
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / "link").symlink_to(victim.parent)
    (destination / MANIFEST).write_text(json.dumps({"files": ["link/precious.txt"]}))
    new = tmp_path / "new"
    new.mkdir()
    (new / "report.md").write_text("new")
    with pytest.raises(ExportError, match=r"names 'link/precious\.txt', which is not a plain"):
        publish(new, str(destination))
    assert victim.read_text() == "keep me"
    # A link where the new export writes would be followed too: refused, nothing written.
    (destination / MANIFEST).write_text(json.dumps({"files": []}))
    (destination / "link").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (destination / "saved_model").symlink_to(elsewhere)  # empty: no file raytrain did not write
    (new / "saved_model").mkdir()
    (new / "saved_model" / "saved_model.pb").write_text("new")
    with pytest.raises(
        ExportError, match=r"^the new export names 'saved_model/saved_model\.pb', which is not"
    ):
        publish(new, str(destination))
    assert not list(elsewhere.iterdir())
    (destination / MANIFEST).write_text("{")  # cut short: refused in one line, not a traceback
    with pytest.raises(ExportError, match=r"raytrain_export\.json is not one raytrain wrote"):
        publish(new, str(destination))


def test_export_takes_no_destination_from_the_registry(registry: Registry, workdir: Path) -> None:
    """The recorded experiment's ``export.out`` and ``storage`` point elsewhere: unused."""
    args = ["export", f"{HONEST}/1", "--tracking-uri", registry.uri, "-q", "none"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--latency-runs", "10"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    default = workdir / "raytrain_results" / "digits-mlp" / "export" / "honest-v1"
    assert (default / "float32.tflite").is_file()
    out = workdir / "chosen"
    result = runner.invoke(app, [*args, "--latency-runs", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "float32.tflite").is_file()
    assert not registry.theirs.exists()
