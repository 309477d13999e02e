"""Secrets never stored, pickles never loaded unasked, sweeps never resumed from others' folders.

A canary secret goes everywhere a user could put one (the tracking URI's user-info, tracking
tags, a ``--set`` override, an environment-variable-like value, a submitted job) through a real
MLflow server on a sqlite file and the session's Ray instance; then the database's bytes, every
artifact file and the Ray job's info are searched for it. A model version carrying a pickle whose
unpickling would write a marker file is refused by export and serving, naming the file.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.cluster.connection import ClusterInfo
from raytrain.config.loader import load_experiment
from raytrain.config.schema import Experiment
from raytrain.errors import (
    RaytrainError,
    SpecError,
    TrackingError,
    UntrustedModelError,
)
from raytrain.secrets import MASK, is_secret_key, mask_override, mask_text, mask_tree
from raytrain.sweep.state import SweepState, check_private
from raytrain.tracking.runs import check_reachable
from raytrain.train.state import RunState

from .conftest import SERVED, free_port, wait_for_mlflow, write_yaml

CANARY = "canary-Zq81vXk"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("tracking.tags.apiKey", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("MLFLOW_TRACKING_PASSWORD", True),
        ("GITHUB_TOKEN", True),
        ("client_secret", True),
        ("x-api-key", True),
        ("Authorization", True),
        ("pwd", True),
        ("db_pass", True),
        ("jwt", True),
        ("SENTRY_DSN", True),
        ("connection_string", True),
        ("ssh_key", True),
        ("key", False),
        ("bypass", False),
        ("connection", False),
        ("sort_key", False),
        ("monitor", False),
        ("num_tokens", False),
        ("token_dim", False),
        ("auth_token_env", False),  # where a secret is, not the secret
        ("password_file", False),
    ],
)
def test_which_keys_name_secrets(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_text_masking_reads_uris_assignments_yaml_and_json() -> None:
    text = (
        f"uri: https://user:{CANARY}@host:5000/x\n"
        f"--set tracking.tags.api_key={CANARY} --set train.epochs=3\n"
        f"tags:\n  password: {CANARY} with spaces  # why\n  team: vision\n"
        f'{{"token": "{CANARY}", "n": 2}}\n'
        f"https://h/p?access_token={CANARY}&page=2\n"
        f"Authorization: Bearer {CANARY}\n"
        "the Ray auth token: not found\n"  # prose keeps its words
    )
    masked = mask_text(text)
    assert CANARY not in masked
    assert "https://***@host:5000/x" in masked
    for kept in ("train.epochs=3", "team: vision", '"n": 2', "&page=2", "auth token: not found"):
        assert kept in masked
    assert f'password: "{MASK}"  # why' in masked
    assert mask_text(masked) == masked  # masking twice changes nothing
    assert mask_text(f"api_key={MASK}: why") == f"api_key={MASK}: why"
    assert mask_override(f"model.params.password={CANARY} two") == f"model.params.password={MASK}"
    assert mask_tree({"tags": {"api_key": [1, 2], "sort_key": "name"}}) == {
        "tags": {"api_key": MASK, "sort_key": "name"}
    }


def test_text_masking_reads_signed_urls_command_lines_and_passwords_with_at() -> None:
    text = (
        f"https://b.s3.amazonaws.com/k?X-Amz-Expires=60&X-Amz-Signature={CANARY}&part=1\n"
        f"https://storage.googleapis.com/b/o?X-Goog-Signature={CANARY}#top\n"
        f"https://a.blob.core.windows.net/c/b?sv=2024&sig={CANARY}\n"
        f"mlflow login --password {CANARY} --epochs 3; psql --password={CANARY}\n"
        f"postgresql://mlflow:p@ss{CANARY}@db:5432/mlflow\n"
    )
    masked = mask_text(text)
    assert CANARY not in masked
    assert "postgresql://***@db:5432/mlflow" in masked
    for kept in ("X-Amz-Expires=60", "&part=1", "#top", "sv=2024", "--epochs 3"):
        assert kept in masked
    assert mask_text(masked) == masked


def test_a_validation_error_never_echoes_a_secret(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: e\ntracking: {tags: {db_pass: 98765432, n: 12345}}\n")
    with pytest.raises(SpecError, match=r"tracking\.tags\.db_pass: .* \(got \*\*\*\)") as caught:
        load_experiment(path, ["tracking.tags.jwt=55555"])
    shown = str(caught.value)
    assert "(got 12345)" in shown  # what is no secret is still shown
    assert "98765432" not in shown
    assert "55555" not in shown


def test_mlflows_own_run_link_shows_no_password(
    mlflow_server: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """MLflow prints "View run NAME at: URL" as a run ends, URL with the URI's user-info."""
    import mlflow

    from raytrain.tracking.runs import TrackedRun, end_run

    url, _ = mlflow_server
    uri = f"http://raytrain:{CANARY}@{url.removeprefix('http://')}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("run-link")
    run_id = client.create_run(experiment_id).info.run_id
    end_run(TrackedRun(uri, "run-link", experiment_id, run_id), status="FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert CANARY not in capfd.readouterr().out


def test_run_and_sweep_state_files_are_owner_only(tmp_path: Path) -> None:
    """They hold the experiment, with the secrets its references resolved to."""
    state_file = tmp_path / "results" / "s" / "s-sweep" / "raytrain_sweep.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{}")
    state_file.chmod(0o644)  # as an older raytrain left it
    state = _sweep_state(tmp_path)
    assert Path(state.folder, state.FILE) == state_file
    assert state_file.stat().st_mode & 0o777 == 0o600
    run_state = RunState(
        spec=state.spec,
        spec_file=state.spec_file,
        base_dir=state.base_dir,
        storage_root=state.storage_root,
        run_name="r",
    )
    run_state.save()
    assert Path(run_state.folder, run_state.FILE).stat().st_mode & 0o777 == 0o600


def test_secrets_are_referenced_and_resolved_where_the_experiment_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raytrain.config.references import deferred, literal_secrets

    secret_file = tmp_path / "mlflow_password"
    secret_file.write_text(f"{CANARY}-file\n")
    monkeypatch.setenv("RAYTRAIN_TEST_KEY", f"{CANARY}-env")
    path = write_yaml(
        tmp_path,
        f"""
        name: refs
        tracking:
          uri: http://raytrain:${{file:{secret_file}}}@127.0.0.1:5000
          tags: {{api_key: "${{env:RAYTRAIN_TEST_KEY}}", team: vision}}
        """,
    )
    spec = load_experiment(path).spec
    assert spec.tracking.uri == f"http://raytrain:{CANARY}-file@127.0.0.1:5000"
    assert spec.tracking.tags["api_key"] == f"{CANARY}-env"
    with deferred():  # raytrain submit: the job resolves them on its node
        kept = load_experiment(path).spec
    assert kept.tracking.tags["api_key"] == "${env:RAYTRAIN_TEST_KEY}"
    assert literal_secrets(kept.model_dump(mode="json")) == []
    assert literal_secrets(spec.model_dump(mode="json")) == [
        "tracking.uri",
        "tracking.tags.api_key",
    ]
    refused = {
        "tracking.tags.team=${env:RAYTRAIN_TEST_KEY}": (
            r"tracking\.tags: team: a \$\{env:\.\.\.\} or \$\{file:\.\.\.\} reference holds a "
            r"secret, and here it would be shown in plain text"
        ),
        "tracking.tags.token=${env:RAYTRAIN_UNSET}": (
            r"tracking\.tags: token: \$\{env:RAYTRAIN_UNSET\}: RAYTRAIN_UNSET is not set \(or "
            r"empty\) here"
        ),
        "tracking.tags.token=${file:pw.txt}": (
            r"\$\{file:pw\.txt\}: give the file's absolute path \(or ~/\.\.\.\) on the machine"
        ),
        f"tracking.tags.token=${{file:{tmp_path}/none}}": r"cannot read .*/none: No such file",
    }
    for override, message in refused.items():
        with pytest.raises(SpecError, match=message):
            load_experiment(path, [override])


def test_submit_refuses_secrets_written_as_text(tmp_path: Path) -> None:
    """Every job can read the uploaded folder: the experiment holds references only."""
    path = write_yaml(
        tmp_path,
        f"""
        name: plain
        tracking: {{uri: "http://raytrain:{CANARY}@head:5000", tags: {{db_pass: {CANARY}}}}}
        """,
    )
    runner = CliRunner()
    result = runner.invoke(app, ["submit", str(path)], env={"RAY_ADDRESS": ""})
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: exp.yaml: tracking.uri, tracking.tags.db_pass holds a secret as text, which every "
        "user of the cluster could read in the uploaded folder: write ${env:NAME} or "
        "${file:PATH} instead, which the job resolves on its node (docs/security.md)"
    )
    overridden = ["submit", str(path), "--set", "tracking.tags.api_key=" + CANARY]
    result = runner.invoke(app, overridden, env={"RAY_ADDRESS": ""})
    assert "--set tracking.tags.api_key=***: a secret in an override" in result.output
    assert "write ${env:NAME} or ${file:PATH} instead" in result.output
    assert CANARY not in result.output


def test_errors_mask_their_messages() -> None:
    uri = f"http://user:{CANARY}@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=r"http://\*\*\*@127\.0\.0\.1") as caught:
        check_reachable(uri, timeout_s=2)
    assert CANARY not in str(caught.value)
    assert CANARY not in str(pickle.loads(pickle.dumps(caught.value)))


def test_mlflows_pickle_of_tf_keras_classes_is_inert_and_nothing_else_is() -> None:
    """MLflow pickles tf_keras' registry of its own classes with every model: read, not run."""
    import cloudpickle
    import tf_keras

    from raytrain.tracking.registry import inert_pickle

    assert inert_pickle(cloudpickle.dumps({"Custom>Adam": tf_keras.optimizers.Adam}))
    assert inert_pickle(pickle.dumps({"a": "b", "c": "d"}, protocol=2))
    assert not inert_pickle(cloudpickle.dumps({"layer": lambda x: x}))  # code, by value
    assert not inert_pickle(pickle.dumps({"x": pickle.Pickler}))  # a class from elsewhere
    assert not inert_pickle(pickle.dumps(exec))
    assert not inert_pickle(b"not a pickle")


def _sweep_state(tmp_path: Path) -> SweepState:
    spec = {"name": "s", "tune": {"space": {"train.optimizer.learning_rate": {"choice": [0.1]}}}}
    state = SweepState(
        spec=Experiment.model_validate(spec),
        spec_file=str(tmp_path / "s.yaml"),
        base_dir=str(tmp_path),
        storage_root=str(tmp_path / "results" / "s"),
        sweep_name="s-sweep",
    )
    state.save()
    (Path(state.folder) / "tuner.pkl").write_bytes(pickle.dumps({}))
    return state


def test_resume_refuses_a_sweep_folder_others_can_write(tmp_path: Path) -> None:
    from raytrain.orchestration.sweep import resume_sweep

    state = _sweep_state(tmp_path)
    check_private(state)  # this user's, private: fine
    pickled = Path(state.folder) / "tuner.pkl"
    pickled.chmod(0o666)
    with pytest.raises(RaytrainError, match=r"tuner\.pkl: it is writable by every user") as caught:
        resume_sweep(state.folder, storage=str(tmp_path / "results"))
    assert "\n" not in str(caught.value)
    pickled.chmod(0o600)
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    os.chown(state.folder, 4242, -1)
    with pytest.raises(RaytrainError, match=r"s-sweep: it is owned by another user \(uid 4242\)"):
        check_private(state)


def _search(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real MLflow tracking server on loopback: its sqlite file and artifacts in one folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(port), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts"), "--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_mlflow(url, proc)
    yield url, folder
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # slow to stop on a loaded machine
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_no_secret_reaches_mlflow_or_the_console(
    ray_cluster: ClusterInfo, mlflow_server: tuple[str, Path], workdir: Path
) -> None:
    from raytrain.display import experiment_summary, print_run
    from raytrain.orchestration.run import run_experiment

    url, folder = mlflow_server
    path = write_yaml(
        workdir,
        f"""
        name: canary
        description: "deploy with MLFLOW_TRACKING_PASSWORD={CANARY}"
        model: {{builder: mlp, params: {{hidden_units: [8]}}}}
        train: {{epochs: 1, batch_size: 128}}
        scaling: {{num_workers: 1}}
        tracking:
          uri: http://raytrain:{CANARY}@{url.removeprefix("http://")}
          tags: {{api_key: {CANARY}, note: "AWS_SECRET_ACCESS_KEY={CANARY}"}}
        """,
    )
    loaded = load_experiment(path, [f"tracking.tags.deploy_token={CANARY}x"])
    summary = run_experiment(loaded)
    console = Console(record=True, width=100)
    console.print(experiment_summary(loaded.spec))
    print_run(summary, loaded.spec, console)
    shown = console.export_text()
    assert "http://***@127.0.0.1" in shown
    assert CANARY not in shown
    assert summary.tracking is not None
    assert _search(folder, CANARY) == []  # the database's bytes and every artifact file
    artifacts = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert any(a.endswith("spec/resolved.yaml") for a in artifacts)
    assert any(a.endswith("spec/exp.yaml") for a in artifacts)  # the user's file, masked
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=url).get_run(summary.tracking.run_id)
    assert run.data.params["tracking.uri"] == f"http://***@{url.removeprefix('http://')}"
    assert run.data.tags["api_key"] == MASK
    assert run.data.tags["raytrain.overrides"] == f"tracking.tags.deploy_token={MASK}"


PLANTED = "planted"


@pytest.fixture(scope="module")
def planted(registry: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A real registered version whose model folder carries MLflow's custom-objects pickle, made
    to write a marker file when unpickled: what someone with write access to a registry plants."""
    import mlflow

    from raytrain.tracking.registry import download, resolve

    folder = tmp_path_factory.mktemp("planted")
    marker = folder / "pwned"
    model = Path(download(resolve(f"{SERVED}/1", tracking_uri=registry)))
    files = folder / "model"
    shutil.copytree(model, files)

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    (files / "data" / "custom_objects.cloudpickle").write_bytes(pickle.dumps(Payload()))
    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.create_registered_model(PLANTED)
    run_id = client.get_model_version(SERVED, "1").run_id
    client.create_model_version(PLANTED, str(files), run_id=run_id)
    return registry, marker


def test_a_planted_pickle_is_refused_by_serve_and_export(
    planted: tuple[str, Path], workdir: Path
) -> None:
    from raytrain.export.tflite import export_model
    from raytrain.serve import describe
    from raytrain.serve.deployment import serve_model
    from raytrain.tracking.registry import load_keras, resolve

    uri, marker = planted
    refused = r"refused to load planted version 1: .*\(data/custom_objects\.cloudpickle\)"
    with pytest.raises(UntrustedModelError, match=refused):
        serve_model(f"{PLANTED}/1", tracking_uri=uri)
    with pytest.raises(UntrustedModelError, match=refused):
        export_model(f"{PLANTED}/1", tracking_uri=uri, options={"quantize": ["none"]})
    with pytest.raises(UntrustedModelError, match=refused):
        load_keras(resolve(f"{PLANTED}/1", tracking_uri=uri))  # a replica checks again
    result = CliRunner().invoke(app, ["export", f"{PLANTED}/1", "--tracking-uri", uri])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line
    assert "data/custom_objects.cloudpickle" in line
    assert "pass --trust-pickled-models only if you trust everyone who can write" in line
    assert not marker.exists()
    # raytrain's own model loads in safe mode, from its own file; trusted, the planted one too.
    shape = (None, *describe(f"{SERVED}/1", tracking_uri=uri).input_shape)
    assert load_keras(resolve(f"{SERVED}/1", tracking_uri=uri)).input_shape == shape
    assert describe(f"{PLANTED}/1", tracking_uri=uri, trust_pickled_models=True).version == "1"
    trusted = load_keras(resolve(f"{PLANTED}/1", tracking_uri=uri), trust_pickled_models=True)
    assert trusted.input_shape == shape
    assert marker.exists()  # what trusting a pickle means: its code ran
