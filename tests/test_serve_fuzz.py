"""Property-based fuzz of both protocols' request parsing (hypothesis), beside schemathesis's
fuzz of the running API (test_serve_v2.py): any body, valid or broken, is a batch of the
model's input shape or a 4xx naming what is wrong; never another exception (a 500)."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytrain.serve.tensors import BadRequest, parse_v1, parse_v2

SHAPE, MOST = [2, 2], 4
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
numbers = st.lists(st.floats(-10, 10) | st.integers(-10, 10), min_size=1, max_size=20)


def _valid_v2(n: int) -> dict[str, Any]:
    data = [0.5] * (n * 4)
    return {"inputs": [{"name": "input", "shape": [n, 2, 2], "datatype": "FP32", "data": data}]}


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


def _answers(parse: Any, *args: Any) -> None:
    """``parse`` returns a batch of SHAPE or raises a 4xx ``BadRequest`` with a message."""
    try:
        parsed = parse(*args)
    except BadRequest as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert 400 <= refused.status < 500
        assert str(refused)
        return
    array = parsed[0] if isinstance(parsed, tuple) else parsed.batch
    assert list(array.shape[1:]) == SHAPE
    assert 1 <= len(array) <= MOST
    assert array.dtype == np.float32


@FUZZ
@given(key=st.sampled_from(["instances", "inputs"]), value=values | numbers)
def test_v1_bodies_are_a_batch_or_a_4xx(key: str, value: Any) -> None:
    _answers(parse_v1, _dumps({key: value}), SHAPE, MOST)


@FUZZ
@given(body=st.binary(max_size=64) | values.map(_dumps))
def test_any_bytes_are_a_batch_or_a_4xx(body: bytes) -> None:
    _answers(parse_v1, body, SHAPE, MOST)
    _answers(parse_v2, body, None, SHAPE, MOST)


@FUZZ
@given(
    where=st.sampled_from(
        ["id", "parameters", "outputs", "inputs", "name", "shape", "datatype", "data"]
    ),
    value=values,
    rows=st.integers(1, 3),
)
def test_v2_requests_with_any_field_replaced_are_a_batch_or_a_4xx(
    where: str, value: Any, rows: int
) -> None:
    payload = _valid_v2(rows)
    target = payload if where in ("id", "parameters", "outputs", "inputs") else payload["inputs"][0]
    target[where] = value
    _answers(parse_v2, _dumps(payload), None, SHAPE, MOST)


@FUZZ
@given(
    header=st.text(max_size=6),
    parameters=values,
    output=values,
    datatype=st.sampled_from(["FP32", "FP64", "INT8", "UINT64"]) | values,
    tail=st.binary(max_size=40),
)
def test_v2_binary_bodies_are_a_batch_or_a_4xx(
    header: str, parameters: Any, output: Any, datatype: Any, tail: bytes
) -> None:
    tensor = {"name": "input", "shape": [1, 2, 2], "datatype": datatype, "parameters": parameters}
    head = _dumps({"inputs": [tensor], "outputs": [{"name": "output", "parameters": output}]})
    _answers(parse_v2, head + tail, header, SHAPE, MOST)
    _answers(parse_v2, head + tail, str(len(head)), SHAPE, MOST)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parameters": [1]}, r"^'parameters' must be an object, not \[1\]$"),
        ({"parameters": "x"}, r"""^'parameters' must be an object, not "x"$"""),
        ({"outputs": {"name": "output"}}, r"^'outputs' must be a list of objects, not \{"),
        ({"outputs": [3]}, r"^'outputs' must be a list of objects, not \[3\]$"),
        ({"tensor parameters": 5}, "^input 'parameters' must be an object, not 5$"),
        ({"datatype": ["FP32"]}, r"""^'datatype' \["FP32"\]; one of FP16"""),
        ({"datatype": {"a": 1}}, r"""^'datatype' \{"a": 1\}; one of FP16"""),
        ({"shape": [1, 4, 2**62 + 1]}, r"^input shape \[1, 4, 4611686018427387905\]; expected"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_malformed_v2_fields_are_422s_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    payload = _valid_v2(1)
    for key, value in change.items():
        if key == "tensor parameters":
            payload["inputs"][0]["parameters"] = value
        elif key in ("datatype", "shape"):
            payload["inputs"][0][key] = value
        else:
            payload[key] = value
    with pytest.raises(BadRequest, match=message) as caught:
        parse_v2(_dumps(payload), None, SHAPE, MOST)
    assert caught.value.status == 422


def test_a_header_length_in_other_digits_is_a_400() -> None:
    body = _dumps(_valid_v2(1))
    with pytest.raises(BadRequest, match=r"^inference-header-content-length '١٢' is not within"):
        parse_v2(body, "١٢", SHAPE, MOST)


def _peak(parse: Any, *args: Any) -> float:
    """Peak memory of ``parse(*args)``, in bytes (tracemalloc: Python's and numpy's)."""
    tracemalloc.start()
    try:
        parse(*args)
    except BadRequest:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_parsing_costs_a_few_times_the_bodys_size() -> None:
    """4 MB of 64-number rows (a 16 MB body costs the same multiple, four times slower)."""
    row = "[" + ",".join(["0.123456"] * 64) + "]"
    rows = 4 * 1024 * 1024 // (len(row) + 1)
    body = ('{"instances": [' + ",".join([row] * rows) + "]}").encode()
    assert _peak(parse_v1, body, [64], rows) < 6 * len(body)


@pytest.mark.parametrize(
    ("item", "message"),
    [("[0]", r"^body holds 4194305 lists, at most 1088;"), ('"a"', r"^body holds 4194305 strings")],
)
def test_a_16_mb_body_of_small_lists_or_strings_is_refused_before_parsing(
    item: str, message: str
) -> None:
    """Parsed, it would take ~35 times its size and seconds: refused from a count of bytes."""
    body = ('{"instances": [' + ",".join([item] * 4 * 1024 * 1024) + "]}").encode()
    started = time.perf_counter()
    with pytest.raises(BadRequest, match=message) as caught:
        parse_v1(body, [1], 1024)
    assert caught.value.status == 413
    assert time.perf_counter() - started < 2
    assert _peak(parse_v1, body, [1], 1024) < len(body) / 100
