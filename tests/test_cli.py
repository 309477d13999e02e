"""The CLI as a user runs it: a real subprocess, from validate to run to the printed summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

import raytrain
from raytrain.cli import app
from raytrain.cluster.connection import ClusterInfo

from .conftest import REPO, write_yaml

RAYTRAIN = [sys.executable, "-m", "raytrain"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [*RAYTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_validate_prints_a_summary() -> None:
    result = CliRunner().invoke(app, ["validate", str(REPO / "experiments" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "experiment 'digits-cnn'" in result.output
    assert "2 worker(s)" in result.output
    assert "global batch 64 (32 per worker)" in result.output


def test_validate_says_when_data_is_streamed_and_refuses_npz_streams() -> None:
    wine = str(REPO / "experiments" / "wine.yaml")
    streamed = CliRunner().invoke(app, ["validate", wine, "--set", "data.streaming=true"])
    assert streamed.exit_code == 0, streamed.output
    assert "streamed with Ray Data" in " ".join(streamed.output.split())  # rich wraps lines
    npz = ["--set", "data.streaming=true", "--set", "data.format=npz"]
    refused = CliRunner().invoke(app, ["validate", wine, *npz])
    assert refused.exit_code == 2
    assert "data.streaming: npz files are read whole" in " ".join(refused.output.split())


def test_validate_reports_problems_without_traceback(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path, "train:\n  epoch: 3\n  batch_size: -1\n")
    overrides = ["--set", "scaling.num_workers=zero", "--set", "name=t"]
    result = _cli("validate", str(bad), *overrides, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert f"{bad}:2: train.epoch: unknown key 'epoch'; did you mean 'epochs'?" in lines
    assert any(line.startswith(f"{bad}:3: train.batch_size:") for line in lines)
    assert any(
        line.startswith("--set scaling.num_workers=zero: scaling.num_workers:") for line in lines
    )
    assert "3 problem(s) found" in result.stderr


def test_validate_keeps_tensorflows_start_up_lines_off_the_terminal(tmp_path: Path) -> None:
    """custom_model.yaml's builder module imports TensorFlow, whose native libraries log CUDA
    probes and CPU features as they load, before any log level applies."""
    result = _cli("validate", str(REPO / "experiments" / "custom_model.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "experiment 'digits-residual'" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "verbose"])
def test_tensorflow_is_imported_only_when_needed_and_then_quietly(quiet: bool) -> None:
    """The CLI imports no TensorFlow up front; whenever the process imports it later, its native
    start-up lines stay off the terminal, unless --verbose (the control: they are there)."""
    code = (
        "import sys; from raytrain.display import quiet_tensorflow; "
        f"quiet_tensorflow({quiet}); print('tensorflow' in sys.modules); "
        "import tf_keras; import tensorflow as tf; print(int(tf.constant(2) * 2), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout == "False\n"
    assert done.stderr.splitlines()[-1] == "4"  # stderr works again after the import
    assert (done.stderr == "4\n") is quiet, done.stderr


@pytest.mark.slow  # joins the session's Ray instance in a subprocess
def test_a_one_worker_run_never_imports_tensorflow_in_the_driver(
    ray_cluster: ClusterInfo, tmp_path: Path
) -> None:
    """Its training process logs the model (~3 s of CPU saved per `raytrain run`)."""
    report = tmp_path / "imported"
    code = (
        f"import atexit, runpy, sys; atexit.register(lambda: open({str(report)!r}, 'w')"
        ".write(str('tensorflow' in sys.modules))); sys.argv[0] = 'raytrain'; "
        "runpy.run_module('raytrain', run_name='__main__')"
    )
    wine = str(REPO / "experiments" / "wine.yaml")
    args = ["run", wine, "--set", "train.epochs=2", "--set", "tracking.register_as=wine"]
    args += ["--address", ray_cluster.address]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered model wine version 1" in " ".join(done.stdout.split())
    assert report.read_text() == "False"


def test_version_names_raytrain_and_what_a_bug_report_needs() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"raytrain \S+ \(Ray \S+, TensorFlow \S+, MLflow \S+, Python \S+\)\n", result.output
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert result.output.split()[1] == raytrain.__version__ == project["version"]


def test_schema_is_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert set(schema["properties"]) >= {"data", "model", "train", "scaling", "tracking"}


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_run_end_to_end(ray_cluster: ClusterInfo, tmp_path: Path) -> None:
    quickstart = str(REPO / "experiments" / "quickstart.yaml")
    assert _cli("validate", quickstart, cwd=tmp_path).returncode == 0
    result = _cli(
        "run", quickstart, "--set", "train.epochs=2", "--address", ray_cluster.address, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    out = " ".join(result.stdout.split())
    run_id = out.split("MLflow run id ")[1].split()[0]
    assert "MLflow experiment digits" in out
    assert f"best checkpoint {tmp_path / 'raytrain_results' / 'digits-cnn'}" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in out
    assert "registered model digits-cnn version 1" in out
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["raytrain.overrides"] == "train.epochs=2"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--address", "127.0.0.1:1"], "error: cannot connect to Ray at 127.0.0.1:1"),
        (
            ["--set", "tracking.uri=http://127.0.0.1:1"],
            "error: cannot reach the MLflow tracking server at http://127.0.0.1:1",
        ),
        (["--set", "data.source=nothere.csv"], "data.source: no file matches"),
    ],
    ids=["ray-address", "tracking-server", "data-file"],
)
def test_unreachable_things_fail_fast_in_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = _cli("run", str(REPO / "experiments" / "wine.yaml"), *args, cwd=tmp_path)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "storage=/proc/x",
            "error: storage '/proc/x': cannot write there (No such file or directory)",
        ),
        (
            "tracking.uri=sqlite:///db",
            "error: tracking.uri 'sqlite:///{cwd}/db': cannot write the MLflow database {cwd}/db "
            "(its folder must exist and be writable, and the database must be a writable file)",
        ),
        (
            "export={out: /proc/x}",
            "error: export.out '/proc/x': cannot write there (No such file or directory)",
        ),
    ],
    ids=["storage", "sqlite", "export"],
)
def test_a_location_that_cannot_be_written_fails_before_ray_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, message: str
) -> None:
    """Before Ray starts (this test may not start it) and before any MLflow run exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()  # a folder where the database file should be
    wine = str(REPO / "experiments" / "wine.yaml")
    args = ["run", wine, "--set", "tracking.register_as=w", "--set", override]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [message.format(cwd=tmp_path)]
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run either
