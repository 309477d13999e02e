"""Request parsing and deploy-time checks of the model API, without Ray: v2 bodies (JSON and
the binary tensor data extension), the answers' layout, canary signatures, auth tokens."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from raytrain.config.schema import ServeSpec
from raytrain.errors import RaytrainError
from raytrain.serve.app import ServedModel
from raytrain.serve.deployment import deploy, token_digest
from raytrain.serve.lifecycle import serve_settings
from raytrain.serve.tensors import BadRequest, parse_v2, v2_response

SHAPE = [2, 2]


def _v2(data: object, *, shape: list[int] | None = None, **tensor: object) -> bytes:
    given = {"name": "input", "shape": shape or [1, 2, 2], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [{**given, **tensor}]}).encode()


def test_v2_json_tensors_flat_or_nested() -> None:
    for data in ([1, 2, 3, 4.5], [[[1, 2], [3, 4.5]]]):
        parsed = parse_v2(_v2(data), None, SHAPE, 8)
        np.testing.assert_array_equal(parsed.batch, [[[1, 2], [3, 4.5]]])
        assert parsed.batch.dtype == np.float32
        assert not parsed.binary_output


def test_v2_binary_tensors_in_and_out() -> None:
    x = np.arange(8, dtype="<f8").reshape(2, 2, 2)
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "input", "shape": [2, 2, 2], "datatype": "FP64",
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    parsed = parse_v2(header + x.tobytes(), str(len(header)), SHAPE, 8)
    np.testing.assert_array_equal(parsed.batch, x.astype(np.float32))
    assert (parsed.id, parsed.binary_output) == ("r1", True)

    y = np.array([[0.25, 0.75]], np.float32)
    body, headers = v2_response(y, name="m", version="3", id="r1", binary=True)
    length = int(headers["inference-header-content-length"])
    answer = json.loads(body[:length])
    assert answer == {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "outputs": [{"name": "output", "shape": [1, 2], "datatype": "FP32",
                     "parameters": {"binary_data_size": 8}}],
    }  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4"), [0.25, 0.75])


BAD_V2 = [
    ("boolean", _v2([1, 2, True, 4]), 422, r"instance 0, position \[2\] is a boolean \(true\)"),
    ("string", _v2([1, 2, "3", 4]), 422, r'instance 0, position \[2\] is a string \("3"\)'),
    ("overflow", _v2([1, 2, 3, 10**400]), 422, r"position \[3\] is beyond float32's range"),
    ("NaN", _v2([1, 2, 3, float("nan")]), 422, "NaN is not a number"),
    ("size", _v2([1, 2, 3]), 422, r"'data' holds 3 numbers; shape \[1, 2, 2\] needs 4"),
    ("shape", _v2([1, 2, 3], shape=[1, 3]), 422, r"input shape \[1, 3\]; expected"),
    ("name", _v2([1, 2, 3, 4], name="x"), 422, "unknown input 'x'"),
    ("datatype", _v2([1, 2, 3, 4], datatype="BYTES"), 422, "'datatype' \"BYTES\"; one of FP16"),
    ("too many", _v2([0] * 36, shape=[9, 2, 2]), 413, "9 instances; at most 8 per request"),
    ("no inputs", b'{"id": "x"}', 422, "missing 'inputs'"),
    ("size given", _v2(None, parameters={"binary_data_size": 16}), 422, "binary_data_size 16 "),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [c[1:] for c in BAD_V2], ids=[c[0] for c in BAD_V2]
)
def test_v2_mistakes_are_4xx_naming_what_is_wrong(body: bytes, status: int, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        parse_v2(body, None, SHAPE, 8)
    assert caught.value.status == status


def test_a_binary_header_longer_than_the_body_is_a_400() -> None:
    with pytest.raises(BadRequest, match="'999' is not within the body") as caught:
        parse_v2(b"{}", "999", SHAPE, 8)
    assert caught.value.status == 400


def _served(version: str, shape: list[int]) -> ServedModel:
    return ServedModel("m", version, "run", "src", "sqlite://", shape, None)


def test_a_canary_with_another_input_shape_is_refused_before_deploying() -> None:
    message = (
        r"^the canary m version 2 takes input of shape \[3\], m version 1 takes \[4\]: "
        r"a canary must take the same input$"
    )
    with pytest.raises(RaytrainError, match=message):
        deploy(_served("1", [4]), canary=_served("2", [3]), canary_percent=10)


def test_the_token_comes_from_the_environment_or_a_file_and_only_its_hash_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = hashlib.sha256(b"s3cret").hexdigest()
    assert token_digest(ServeSpec()) is None
    monkeypatch.setenv("MODEL_TOKEN", "s3cret\n")
    assert token_digest(ServeSpec(auth_token_env="MODEL_TOKEN")) == expected
    (tmp_path / "token").write_text("s3cret\n")
    assert token_digest(ServeSpec(auth_token_file=str(tmp_path / "token"))) == expected
    with pytest.raises(RaytrainError, match=r"^no auth token in environment variable UNSET_X$"):
        token_digest(ServeSpec(auth_token_env="UNSET_X"))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "model.example.com"])
def test_a_host_off_loopback_needs_a_token_or_allow_unauthenticated(host: str) -> None:
    message = (
        f"^1 validation error for ServeSpec\n  Value error, host {host} is reachable from other "
        "machines: set auth_token_env or auth_token_file, or allow_unauthenticated: true to "
        "serve without a token"
    )
    with pytest.raises(ValueError, match=message):
        ServeSpec(host=host)
    assert ServeSpec(host=host, auth_token_env="MODEL_TOKEN").host == host
    assert ServeSpec(host=host, allow_unauthenticated=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert ServeSpec(host=host).host == host


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {"max_body_mb": float("inf")},
            "max_body_mb\n  Input should be less than or equal to 1024",
        ),
        ({"max_body_mb": 1e9}, "max_body_mb\n  Input should be less than or equal to 1024"),
        ({"request_timeout_s": float("inf")}, "request_timeout_s\n  Input should be less than"),
        ({"max_instances_per_request": 10**12}, "max_instances_per_request\n  Input should be"),
        ({"num_replicas": 10**6}, "num_replicas\n  Input should be less than or equal to 1000"),
        ({"max_queued_requests": 10**9}, "max_queued_requests\n  Input should be less than"),
        ({"auth_token_env": ""}, "auth_token_env\n  String should match pattern"),
        ({"auth_token_file": ""}, "auth_token_file\n  String should have at least 1 character"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_serve_limits_are_finite_and_token_sources_not_empty(
    setting: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ServeSpec.model_validate(setting)


def test_serve_settings_name_the_section_of_a_refused_host() -> None:
    with pytest.raises(RaytrainError, match=r"^serve: Value error, host 0\.0\.0\.0 is reachable"):
        serve_settings("m/1", flags={"host": "0.0.0.0"})
