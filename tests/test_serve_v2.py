"""The Open Inference Protocol (v2) on a real Ray Serve app, called by real clients: Triton's
``tritonclient.http`` unchanged (JSON and binary tensors), and schemathesis fuzzing every route
against the OpenAPI document the server publishes. The server requires a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from raytrain.config.schema import ServeSpec
from raytrain.serve.app import ServedModel
from raytrain.serve.deployment import Deployment, deploy, stop
from raytrain.tracking.registry import load_keras

from .conftest import SERVED as NAME
from .conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_cluster")
TOKEN = "test-token-7f3a"


def _auth() -> dict[str, str]:
    """A fresh header dict per call: tritonclient adds its own headers to the one it gets."""
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(versions: dict[str, ServedModel]) -> Iterator[Deployment]:
    spec = ServeSpec(
        port=free_port(), max_instances_per_request=8, max_body_mb=0.05, auth_token_env="V2_TOKEN"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("V2_TOKEN", TOKEN)
        deployment = deploy(versions["1"], spec=spec, canary=versions["2"], canary_percent=50)
    yield deployment
    stop()
    serve.shutdown()  # the Ray instance is shared: leave no Serve actors to later tests


@pytest.fixture(scope="module")
def client(server: Deployment) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def test_tritonclient_json_and_binary_tensors(
    client: triton.InferenceServerClient, versions: dict[str, ServedModel]
) -> None:
    assert client.is_server_live()  # health needs no token
    assert client.is_server_ready()
    assert client.is_model_ready(NAME, headers=_auth())
    assert client.is_model_ready(NAME, "2", headers=_auth())
    meta = client.get_model_metadata(NAME, headers=_auth())
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["versions"] == ["1", "2"]

    x = np.random.default_rng(0).uniform(0, 16, size=(5, 8, 8, 1)).astype(np.float32)
    expected = load_keras(versions["1"].registered()).predict(x, verbose=0)
    for binary in (False, True):
        given = triton.InferInput("input", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer(
            NAME, [given], model_version="2", outputs=[wanted], request_id="r7", headers=_auth()
        )
        np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)
        response = result.get_response()
        assert (response["model_version"], response["id"]) == ("2", "r7")
    # No outputs named: tritonclient asks for binary ones; the canary split answers.
    result = client.infer(NAME, [given], headers=_auth())
    np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)
    assert result.get_response()["model_version"] in {"1", "2"}


def test_every_route_but_health_needs_the_token(server: Deployment) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/healthz"):
        assert requests.get(server.url + path, timeout=30).status_code == 200
    for path in (f"/v2/models/{NAME}", "/openapi.json", "/docs", "/nowhere"):
        response = requests.get(server.url + path, timeout=30)
        assert response.status_code == 401, path
        assert response.json() == {"error": "this API needs `Authorization: Bearer TOKEN`"}
    wrong = requests.get(server.url + "/openapi.json", headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    unknown = requests.get(server.url + "/nowhere", headers=_auth(), timeout=30)
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Not Found: GET /nowhere"})


def test_openapi_examples_have_the_models_input_shape(server: Deployment) -> None:
    document = requests.get(f"{server.url}/openapi.json", headers=_auth(), timeout=30).json()
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    example = infer["requestBody"]["content"]["application/json"]["examples"]["InferRequest"]
    assert example["value"]["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert set(infer["responses"]) >= {"200", "400", "401", "404", "408", "413", "422", "503"}
    response = requests.post(f"{server.url}/v2/models/{NAME}/infer", json=example["value"],
                             headers=_auth(), timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text


def test_the_api_keeps_to_its_openapi_document(server: Deployment) -> None:
    """Valid and invalid requests to every route: no 500, no undocumented status code, every
    answer in its documented schema."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=_auth())
    cases = st.one_of(
        schema.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    )
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]

    @given(case=cases)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        case.call_and_validate(headers=_auth(), checks=checks, timeout=30)

    call()
