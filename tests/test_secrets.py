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
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.cluster.connection import ClusterInfo
from raytrain.config.loader import load_experiment
from raytrain.config.schema import Experiment
from raytrain.errors import ClusterError, RaytrainError, TrackingError, UntrustedModelError
from raytrain.masking import MASK, is_secret_key, mask_override, mask_text, mask_tree
from raytrain.sweep.state import SweepState, check_private
from raytrain.tracking.runs import check_reachable

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
        ("key", False),
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
    proc.terminate()
    proc.wait(timeout=30)


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


def test_a_submitted_job_shows_no_secret(ray_cluster: ClusterInfo, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    from raytrain.cluster.jobs import _auth_headers, list_jobs, stop_job, submit

    assert ray_cluster.dashboard_url is not None
    path = write_yaml(
        tmp_path,
        f"""
        name: canary-job
        scaling: {{num_workers: 1}}
        tracking:
          uri: http://raytrain:{CANARY}@127.0.0.1:{free_port()}
          tags: {{MLFLOW_TRACKING_PASSWORD: {CANARY}}}
        """,
    )
    secret = load_experiment(path, [f"tracking.tags.api_key={CANARY}"])
    with pytest.raises(ClusterError, match=r"--set tracking\.tags\.api_key=\*\*\*: a secret"):
        submit(secret, address=ray_cluster.dashboard_url)
    plain = load_experiment(path, ["train.epochs=1"])
    deadline = time.monotonic() + 120  # a fresh instance's job agent registers a moment late
    while True:
        try:
            job = submit(plain, address=ray_cluster.dashboard_url)
            break
        except ClusterError as exc:
            if "No available agent" not in str(exc):
                raise
            if time.monotonic() > deadline:  # seen where other Ray instances hold its ports
                pytest.skip("the session's Ray instance has no job agent to submit to")
            time.sleep(2)
    client = JobSubmissionClient(ray_cluster.dashboard_url, headers=_auth_headers())
    deadline = time.monotonic() + 120  # the job fails fast: its tracking server is not there
    while not client.get_job_status(job.job_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    stop_job(job.job_id, address=ray_cluster.dashboard_url)
    info = client.get_job_info(job.job_id)
    everything = [repr(d) for d in client.list_jobs()]
    everything += [repr(info), client.get_job_logs(job.job_id)]
    everything += [str(r) for r in list_jobs(address=ray_cluster.dashboard_url)]
    assert info.entrypoint == "python -m raytrain run exp.yaml --set train.epochs=1"
    assert all(CANARY not in text for text in everything)


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
    from raytrain.export.edge import export_model
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
