"""Storage on Google Cloud Storage: a real GCS API (gcp-storage-emulator on loopback), real Ray,
real MLflow. The emulator's address reaches this process through STORAGE_EMULATOR_HOST only; the
session's Ray instance was started without it, so workers get it from raytrain itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from google.cloud import storage as gcs_client
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.cluster.connection import ClusterInfo
from raytrain.config.loader import load_experiment
from raytrain.config.schema import DataSpec
from raytrain.data.dataset import load_dataset
from raytrain.errors import DataError, ExportError, StorageError
from raytrain.export.destination import MANIFEST, publish
from raytrain.orchestration.run import run_experiment
from raytrain.orchestration.sweep import run_sweep
from raytrain.past_runs import list_runs
from raytrain.storage import (
    EMULATOR_ENV,
    check_location,
    exists,
    glob,
    list_files,
    read_text,
    resolve,
    upload_folder,
    write_text,
)
from raytrain.sweep.state import STATE_FILE as SWEEP_STATE

from .conftest import BUCKET, write_yaml

CE = "sparse_categorical_crossentropy"
EXPERIMENT = """
name: gcs-digits
data:
  source: gs://{bucket}/digits/*.parquet
model:
  builder: mlp
  params: {{hidden_units: [32]}}
train:
  epochs: 2
  batch_size: 32
  optimizer: {{name: adam, learning_rate: 0.01}}
scaling:
  num_workers: 1
checkpoint: {{keep: 1, score: val_accuracy, mode: max}}
storage: {storage}
tracking:
  uri: sqlite:///mlflow.db
  experiment: gcs
  register_as: gcs-digits
export: {{quantize: [dynamic], latency_runs: 10, representative_examples: 20}}
"""


@pytest.fixture(scope="module")
def gcs(gcs_emulator: str, ray_cluster: ClusterInfo) -> Iterator[str]:
    """STORAGE_EMULATOR_HOST set for this module, and the digits as two Parquet files in the
    bucket; yields ``gs://BUCKET``. Ray starts first: its processes must not inherit the
    variable, so that the tests show raytrain passing it on to workers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(EMULATOR_ENV, gcs_emulator)
        digits = load_digits()
        frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
        frame["label"] = digits.target
        for part, rows in enumerate(np.array_split(np.arange(len(frame)), 2)):
            _put(f"gs://{BUCKET}/digits/part-{part}.parquet", frame.iloc[rows].to_parquet())
        yield f"gs://{BUCKET}"


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.slow)])  # gcs: Ray
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against a local folder and a gs:// prefix."""
    if request.param == "local":
        return str(tmp_path)
    return f"{request.getfixturevalue('gcs')}/{tmp_path.name}"


def test_files_round_trip(location: str, tmp_path: Path) -> None:
    write_text(f"{location}/a/one.json", "1")
    write_text(f"{location}/b/two.json", "2")
    write_text(f"{location}/b/deeper/three.json", "3")
    assert read_text(f"{location}/b/two.json") == "2"
    assert exists(f"{location}/a")
    assert not exists(f"{location}/c")
    assert glob(f"{location}/*/*.json") == [f"{location}/a/one.json", f"{location}/b/two.json"]
    assert glob(f"{location}/b/two.json") == [f"{location}/b/two.json"]
    assert glob(f"{location}/*/nothing.json") == []

    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "x.txt").write_text("x")
    upload_folder(staged, f"{location}/b")  # adds, deletes nothing
    assert list_files(f"{location}/b") == ["deeper/three.json", "sub/x.txt", "two.json"]
    assert list_files(f"{location}/nothing") == []


def test_an_export_never_deletes_what_raytrain_did_not_write(location: str, tmp_path: Path) -> None:
    """`raytrain export --out PREFIX` used to empty PREFIX before it uploaded."""
    out = f"{location}/exports"
    write_text(f"{out}/sentinel.txt", "the user's")
    write_text(f"{location}/beside.txt", "the user's too")
    first = tmp_path / "first"
    (first / "saved_model").mkdir(parents=True)
    (first / "saved_model" / "saved_model.pb").write_text("pb")
    (first / "int8.tflite").write_text("1")
    with pytest.raises(
        ExportError,
        match=rf"^export destination '{out}' holds files raytrain did not write \(sentinel.txt\); "
        r"raytrain never deletes them: export to an empty or new folder \(`out`\)$",
    ):
        publish(first, out)
    assert list_files(out) == ["sentinel.txt"]

    mine = f"{location}/mine"
    publish(first, mine)
    assert list_files(mine) == ["int8.tflite", MANIFEST, "saved_model/saved_model.pb"]
    second = tmp_path / "second"
    second.mkdir()
    (second / "dynamic.tflite").write_text("2")
    publish(second, mine)  # replaces the earlier export: raytrain's files, named in its manifest
    assert list_files(mine) == ["dynamic.tflite", MANIFEST]
    write_text(f"{mine}/notes.txt", "added by the user")
    with pytest.raises(ExportError, match=r"holds files raytrain did not write \(notes\.txt\)"):
        publish(second, mine)
    assert read_text(f"{location}/beside.txt") == "the user's too"


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_gcs_sources_read_like_local_files(gcs: str, tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["label"] = (frame["a"] > 0).astype(int)
    local = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        frame.to_csv(local, index=False)
    elif fmt == "parquet":
        frame.to_parquet(local)
    else:
        np.savez(local, x=frame[["a", "b", "c"]].to_numpy(), label=frame["label"].to_numpy())
    remote = f"{gcs}/{tmp_path.name}/d.{fmt}"
    _put(remote, local.read_bytes())
    expected = load_dataset(DataSpec(source=str(local)), loss=CE)
    got = load_dataset(DataSpec(source=remote.replace("/d.", "/*.")), loss=CE)
    np.testing.assert_array_equal(got.x_train, expected.x_train)
    np.testing.assert_array_equal(got.y_val, expected.y_val)


def test_bad_gcs_sources_are_one_line_data_errors(gcs: str, tmp_path: Path) -> None:
    _put(f"{gcs}/{tmp_path.name}/broken.parquet", b"not parquet")
    cases = {
        "gs://no-such-bucket/d/*.parquet": "bucket 'no-such-bucket' does not exist",
        f"{gcs}/{tmp_path.name}/*.csv": "no file matches",
        f"{gcs}/{tmp_path.name}/*.parquet": "cannot read parquet data from",
    }
    for source, message in cases.items():
        with pytest.raises(DataError, match=message) as caught:
            load_dataset(DataSpec(source=source), loss=CE)
        assert "\n" not in str(caught.value)


def test_a_missing_bucket_fails_before_anything_runs(
    gcs: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StorageError, match="bucket 'nope' does not exist"):
        check_location("gs://nope/x", what="storage")
    exp = write_yaml(tmp_path, EXPERIMENT.format(bucket=BUCKET, storage="gs://no-such-bucket/r"))
    result = subprocess.run(
        [sys.executable, "-m", "raytrain", "run", str(exp)],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: storage 'gs://no-such-bucket/r': bucket 'no-such-bucket' does not exist "
        "(create it with `gcloud storage buckets create gs://no-such-bucket`, or fix the name)"
    ]
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")  # `resume` sets it if unset
    for args in (
        ["list", "--storage", "gs://no-such-bucket/r"],
        ["resume", "gs://no-such-bucket/r/s"],
    ):
        outcome = CliRunner().invoke(app, args)
        assert outcome.exit_code == 1
        assert "bucket 'no-such-bucket' does not exist" in outcome.output


def test_a_run_keeps_checkpoints_artifacts_and_exports_in_the_bucket(
    gcs: str, workdir: Path
) -> None:
    storage = f"{gcs}/{workdir.name}"
    summary = run_experiment(
        load_experiment(write_yaml(workdir, EXPERIMENT.format(bucket=BUCKET, storage=storage)))
    )
    assert summary.best_metrics["val_accuracy"] > 0.5
    assert summary.storage_path.startswith(f"{storage}/gcs-digits/gcs-digits-")
    assert summary.best_checkpoint is not None
    assert summary.best_checkpoint.startswith(summary.storage_path)
    checkpoint = _objects(summary.best_checkpoint)
    assert {"model.keras", "raytrain_state.json"} <= {o.rsplit("/", 1)[-1] for o in checkpoint}
    assert not (workdir / "raytrain_results").exists()

    run = summary.tracking
    assert run is not None
    client = mlflow.MlflowClient(tracking_uri=run.uri)
    assert client.get_run(run.run_id).info.artifact_uri.startswith(f"{storage}/mlflow/gcs/")
    assert {a.path for a in client.list_artifacts(run.run_id, "spec")} == {
        "spec/exp.yaml",
        "spec/resolved.yaml",
    }
    resolved = mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="spec/resolved.yaml", tracking_uri=run.uri
    )
    assert f"storage: {storage}" in Path(resolved).read_text()
    assert any(o.endswith("/artifacts/MLmodel") for o in _objects(f"{storage}/mlflow/gcs/models"))
    mlflow.set_tracking_uri(run.uri)
    model = mlflow.tensorflow.load_model(f"models:/gcs-digits/{summary.registered_version}")
    assert model.predict(np.zeros((2, 64), np.float32), verbose=0).shape == (2, 10)

    assert summary.export is not None
    assert summary.export.folder == f"{storage}/gcs-digits/export/gcs-digits-v1"
    exported = {o.rsplit("/", 1)[-1] for o in _objects(summary.export.folder)}
    assert {"float32.tflite", "dynamic.tflite", "report.json", "report.md"} <= exported
    assert {a.path for a in client.list_artifacts(run.run_id, "export")} >= {
        "export/dynamic.tflite"
    }


def test_a_sweep_resumes_from_the_bucket(
    gcs: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"{gcs}/{workdir.name}"
    overrides = [
        "tracking.enabled=false",
        "export=null",
        "train.epochs=1",
        "tune={metric: val_accuracy, mode: max, num_samples: 1, scheduler: {name: none}, "
        "search: {algorithm: random, seed: 0}, "
        "space: {train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}}}",
    ]
    exp = write_yaml(workdir, EXPERIMENT.format(bucket=BUCKET, storage=storage))
    first = run_sweep(load_experiment(exp, overrides))
    assert first.storage_path == f"{storage}/gcs-digits/{first.sweep_name}"
    assert first.rows[0]["checkpoint"].startswith(
        f"{storage}/gcs-digits/{first.sweep_name}-trials/"
    )
    listed = list_runs(tracking_uri="sqlite:///mlflow.db", storage=storage)
    assert [(r.name, r.storage) for r in listed] == [(first.sweep_name, first.storage_path)]

    # `raytrain resume NAME --storage gs://...` reads the sweep's state and Tune's from the bucket
    # and runs one more trial; nothing of it lands on the local disk.
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")  # the command sets it if unset
    args = ["resume", first.sweep_name, "--storage", storage, "--num-samples", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "2 trial(s)" in result.output
    state = json.loads(read_text(f"{first.storage_path}/{SWEEP_STATE}"))
    (extension,) = state["extensions"]
    assert state["finished"] == [first.sweep_name, extension]
    assert glob(f"{storage}/gcs-digits/{extension}/experiment_state-*.json")
    assert not (workdir / "raytrain_results").exists()


def _put(location: str, content: bytes) -> None:
    filesystem, path = resolve(location)
    with filesystem.open_output_stream(path) as stream:
        stream.write(content)


def _objects(prefix: str) -> list[str]:
    """Object names under a gs:// prefix, listed with Google's own client (not raytrain's)."""
    bucket, _, path = prefix.removeprefix("gs://").partition("/")
    client = gcs_client.Client.create_anonymous_client()
    return [blob.name for blob in client.list_blobs(bucket, prefix=path.rstrip("/") + "/")]
