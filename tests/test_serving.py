"""The model API on a real Ray Serve app over real HTTP, models from a real MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from ray import serve
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.config.loader import load_experiment
from raytrain.config.schema import ServeSpec
from raytrain.serve import Deployment, ServedModel, deploy, describe, serve_settings, stop
from raytrain.tracking.registry import load_keras

from .conftest import SERVED as NAME
from .conftest import free_port, write_yaml

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def limits() -> ServeSpec:
    return ServeSpec(
        port=free_port(),
        max_batch_size=16,
        batch_wait_timeout_s=0.02,
        max_instances_per_request=8,
        max_body_mb=0.05,
    )


@pytest.fixture(scope="module")
def server(versions: dict[str, ServedModel], limits: ServeSpec) -> Iterator[Deployment]:
    deployment = deploy(versions["1"], spec=limits)
    yield deployment
    stop()
    serve.shutdown()  # the Ray instance is shared: leave no Serve actors to later tests


def _digits(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 16, size=(n, 64)).astype(np.float32)


def test_predictions_over_http_equal_the_model_in_process(
    server: Deployment, versions: dict[str, ServedModel]
) -> None:
    x = _digits(5).reshape(5, 8, 8, 1)  # digits images; flat rows of 64 are accepted too
    model = load_keras(versions["1"].registered())
    expected = model.predict(x, verbose=0)
    for key, instances in [("instances", x), ("instances", x.reshape(5, 64)), ("inputs", x)]:
        response = requests.post(server.predict_url, json={key: instances.tolist()})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1"
        answer = body["outputs" if key == "inputs" else "predictions"]
        np.testing.assert_allclose(np.array(answer), expected, atol=1e-5)
        assert body["labels"] == [str(i) for i in expected.argmax(axis=1)]

    info = requests.get(f"{server.url}/v1/models/{NAME}", timeout=30).json()
    assert info["model_version"] == "1"
    assert info["input"] == {"shape": [None, 8, 8, 1], "dtype": "float32"}
    (served,) = info["versions"]
    assert served["run_id"] == versions["1"].run_id
    assert served["label_names"] == [str(i) for i in range(10)]
    assert served["metrics"]["best_val_accuracy"] > 0.5
    assert requests.get(f"{server.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert "/v1/models/{name}:predict" in requests.get(f"{server.url}/openapi.json").text


ROW = json.dumps([1.0] * 64)
BAD_REQUESTS = [
    ("invalid JSON", b'{"instances": [', 400, "not valid JSON"),
    ("neither", b'{"rows": [[1]]}', 422, "give one of 'instances' or 'inputs'"),
    ("not a list", b'{"instances": 3}', 422, "non-empty list"),
    ("empty list", b'{"instances": []}', 422, "non-empty list"),
    ("wrong shape", b'{"instances": [[1.0, 2.0]]}', 422, "shape [2]; expected"),
    ("ragged", f'{{"instances": [{ROW}, [1.0]]}}'.encode(), 422, "all of one shape"),
    ("strings", b'{"instances": [["a"]]}', 422, 'instance 0, position [0] is a string ("a")'),
    (
        "numeric string",
        ROW.replace("1.0", '"1.5"', 1).join(['{"inputs": [', "]}"]).encode(),
        422,
        'instance 0, position [0] is a string ("1.5"), not a number',
    ),
    (
        "boolean",
        ROW.replace("1.0]", "true]").join(['{"instances": [', "]}"]).encode(),
        422,
        "instance 0, position [63] is a boolean (true), not a number",
    ),
    (
        "310 digits",
        ROW.replace("1.0", "9" * 310, 1).join(['{"instances": [', "]}"]).encode(),
        422,
        "instance 0, position [0] is beyond float32's range",
    ),
    (
        "beyond float32",
        ROW.replace("1.0", "1e39", 1).join(['{"instances": [', "]}"]).encode(),
        422,
        "instance 0, position [0] is beyond float32's range",
    ),
    # More lists than any instance of the model's shape holds: refused before parsing.
    ("nested deep", b'{"instances": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 413, "lists"),
    ("too many dims", b'{"instances": [' + b"[" * 80 + b"1" + b"]" * 80 + b"]}", 422, "numbers"),
    ("NaN", f'{{"instances": [{ROW.replace("1.0", "NaN", 1)}]}}'.encode(), 422, "NaN is not"),
    (
        "Infinity",
        ROW.replace("1.0", "-Infinity").join(['{"instances": [', "]}"]).encode(),
        422,
        "-Infinity is not a number",
    ),
    ("too many", f'{{"instances": [{",".join([ROW] * 9)}]}}'.encode(), 413, "at most 8"),
    ("too big", b'{"instances": [' + b" " * 60_000 + b"]}", 413, "over 52428 bytes"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_that_says_what_was_expected(
    server: Deployment, body: bytes, status: int, message: str
) -> None:
    response = requests.post(
        server.predict_url, data=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_an_unknown_model_is_a_404(server: Deployment) -> None:
    response = requests.post(
        f"{server.url}/v1/models/other:predict", json={"instances": [[0.0] * 64]}, timeout=30
    )
    assert response.status_code == 404
    assert NAME in response.json()["error"]


def test_concurrent_requests_are_batched(server: Deployment) -> None:
    def call(i: int) -> int:
        x = _digits(1 + i % 3).tolist()
        return requests.post(server.predict_url, json={"instances": x}, timeout=60).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(call, range(50)))
    assert codes == [200] * 50
    info = requests.get(f"{server.url}/v1/models/{NAME}", timeout=30).json()
    assert info["versions"][0]["replica_stats"]["largest_batch"] > 1


def test_canary_split_and_a_rolling_update_without_failed_requests(
    server: Deployment, versions: dict[str, ServedModel], limits: ServeSpec
) -> None:
    def answered_by(n: int) -> set[str]:
        x = {"instances": _digits(1).tolist()}
        return {requests.post(server.predict_url, json=x, timeout=30).json()["model_version"]
                for _ in range(n)}  # fmt: skip

    deploy(versions["1"], spec=limits, canary=versions["2"], canary_percent=100)
    assert answered_by(20) == {"2"}
    info = requests.get(f"{server.url}/v1/models/{NAME}", timeout=30).json()
    split = {v["version"]: v["traffic_percent"] for v in info["versions"]}
    assert split == {"1": 0.0, "2": 100.0}
    deploy(versions["1"], spec=limits, canary=versions["2"], canary_percent=0)
    assert answered_by(20) == {"1"}

    # Roll from version 1 to 2 while a client keeps sending requests.
    failures: list[str] = []
    seen: list[str] = []
    done = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    r = session.post(
                        server.predict_url, json={"instances": [[0.0] * 64]}, timeout=60
                    )
                    if r.status_code == 200:
                        seen.append(r.json()["model_version"])
                    else:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    client = threading.Thread(target=load)
    client.start()
    try:
        deploy(versions["2"], spec=limits)
        for _ in range(20):  # a few more requests once the update is done
            if seen[-10:] == ["2"] * 10:
                break
            threading.Event().wait(0.5)
    finally:
        done.set()
        client.join()
    assert failures == []
    assert seen[0] == "1"
    assert seen[-1] == "2"


def test_flags_override_the_experiments_serve_section(tmp_path: Path) -> None:
    experiment = write_yaml(
        tmp_path,
        """
        name: t
        tracking:
          register_as: digits
        serve:
          autoscaling: {min_replicas: 1, max_replicas: 4}
          max_batch_size: 8
        """,
    )
    reference, _, spec = serve_settings(
        None,
        experiment=load_experiment(experiment).spec,
        flags={"max_batch_size": 16, "max_ongoing_requests": 64, "max_body_mb": 2.0},
        autoscaling={"target_ongoing_requests": 3.0, "max_replicas": None},
    )
    assert reference == "digits"
    assert spec.autoscaling is not None
    assert (spec.autoscaling.max_replicas, spec.autoscaling.target_ongoing_requests) == (4, 3.0)
    assert (spec.max_batch_size, spec.max_ongoing_requests, spec.max_body_mb) == (16, 64, 2.0)

    # A bad flag value is one line naming the setting, before anything is deployed.
    result = CliRunner().invoke(
        app, ["serve", "--experiment", str(experiment), "--target-ongoing-requests", "0"]
    )
    assert result.exit_code != 0
    assert "serve.autoscaling.target_ongoing_requests: Input should be greater than 0" in (
        result.output
    )
    assert "Traceback" not in result.output


def test_describe_refuses_a_model_that_is_not_registered(registry: str, tmp_path: Path) -> None:
    from raytrain.errors import RaytrainError

    with pytest.raises(RaytrainError, match="did you mean 'digits-serve'"):
        describe("digits-serv", tracking_uri=registry)


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_cli_serves_in_the_background_until_stopped(registry: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAYTRAIN_HOME": str(tmp_path)}
    raytrain = [sys.executable, "-m", "raytrain", "serve"]
    started = subprocess.run(
        [*raytrain, f"{NAME}/2", "--tracking-uri", registry, "--port", str(port), "--detach"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    predict = f"http://127.0.0.1:{port}/v1/models/{NAME}:predict"
    assert f"POST {predict}" in started.stdout
    response = requests.post(predict, json={"instances": _digits(2).tolist()}, timeout=30)
    assert response.json()["model_version"] == "2"

    # Serving another version on the same port updates that server in place.
    updated = subprocess.run(
        [*raytrain, f"{NAME}/1", "--tracking-uri", registry, "--port", str(port)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "updated the server" in updated.stdout
    response = requests.post(predict, json={"instances": _digits(2).tolist()}, timeout=30)
    assert response.json()["model_version"] == "1"

    stopped = subprocess.run(
        [*raytrain, "--stop", "--port", str(port)], env=env, capture_output=True, text=True
    )
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    again = subprocess.run(
        [*raytrain, "--stop", "--port", str(port)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1
    assert "no raytrain server" in again.stderr
    assert "Traceback" not in again.stderr
