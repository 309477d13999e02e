"""Request bodies to one validated float32 batch, and answers back: every protocol, one path.

TensorFlow Serving's v1 bodies (``instances`` rows or ``inputs`` columns) and the Open Inference
Protocol's v2 bodies (JSON tensors, or the binary tensor data extension) all end in ``batch``,
which accepts JSON numbers only (a boolean or a string is named by instance and position), and
refuses NaN, infinity and numbers beyond float32. Nothing here imports Ray or TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "INPUT",
    "OUTPUT",
    "BadRequest",
    "V2Request",
    "batch",
    "parse_v1",
    "parse_v2",
    "v2_response",
]

INPUT, OUTPUT = "input", "output"  # the v2 tensor names of every served model
HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header
DATATYPES = {  # v2 datatypes a client may send, as little-endian numpy types
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}
_NUMBERS = (int, float)
_KINDS = {bool: "a boolean", str: "a string", dict: "an object", type(None): "null"}


class BadRequest(Exception):
    """A client mistake: answered with ``status`` and a message, never a 500."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _no_constant(name: str) -> float:
    raise BadRequest(422, f"{name} is not a number; send finite numbers")


def read_json(raw: bytes, expected: str) -> Any:
    """Strict JSON: NaN and Infinity (which Python's parser accepts) are refused."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise BadRequest(400, f"body is not valid JSON ({exc}); expected {expected}") from None


def batch(values: Any, shape: list[int], *, what: str, expected: str) -> np.ndarray:
    """A list of ``what`` (instances, rows) as a float32 array of ``[n, *shape]``; flat rows of
    the right size are reshaped. Only JSON numbers: ``np.asarray`` would take "1.5" and True."""
    if not isinstance(values, list) or not values:
        raise BadRequest(422, f"{what} must be a non-empty list; expected {expected}")
    try:
        cells = np.asarray(values, dtype=object)
    except ValueError:
        cells = np.asarray([], dtype=object)  # ragged below the first level
    if cells.size == 0 or cells.ndim < 1:
        raise BadRequest(422, f"{what} must be numbers, all of one shape; expected {expected}")
    flat = cells.ravel()
    if not set(map(type, flat)) <= {int, float}:
        _not_a_number(cells, what, expected)
    try:
        array = cells.astype(np.float64)
    except OverflowError:
        index = next(i for i, v in enumerate(flat) if abs(v) > 1e308)
        raise BadRequest(422, f"{_where(cells, index, what)} is beyond float32's range") from None
    with np.errstate(over="ignore"):
        array32 = array.astype(np.float32)
    if not np.isfinite(array32).all():
        index = int(np.argmax(~np.isfinite(array32.ravel())))
        raise BadRequest(422, f"{_where(cells, index, what)} is beyond float32's range")
    if array32.ndim == 1 or list(array32.shape[1:]) != shape:
        if array32.ndim > 1 and int(np.prod(array32.shape[1:])) == int(np.prod(shape)):
            return array32.reshape(len(array32), *shape)
        got = list(array32.shape[1:])
        raise BadRequest(422, f"{what} have shape {got}; expected {expected}")
    return array32


def _not_a_number(cells: np.ndarray, what: str, expected: str) -> None:
    for index, value in enumerate(cells.ravel()):
        if type(value) is list:
            raise BadRequest(422, f"{what} must be numbers, all of one shape; expected {expected}")
        if type(value) not in _NUMBERS:
            kind = _KINDS.get(type(value), type(value).__name__)
            got = json.dumps(value)[:40]
            raise BadRequest(422, f"{_where(cells, index, what)} is {kind} ({got}), not a number")


def _where(cells: np.ndarray, index: int, what: str) -> str:
    position = [int(i) for i in np.unravel_index(index, cells.shape)]
    return f"{what[:-1]} {position[0]}, position {position[1:]}"


def parse_v1(raw: bytes, shape: list[int], most: int) -> tuple[np.ndarray, bool]:
    """``{"instances": rows}`` or ``{"inputs": columns}`` (one input: a list, or ``{INPUT: ...}``);
    the batch and whether the answer is columnar (``outputs`` instead of ``predictions``)."""
    expected = f'{{"instances": [...]}} or {{"inputs": [...]}} with each instance of shape {shape}'
    payload = read_json(raw, expected)
    if not isinstance(payload, dict) or ("instances" in payload) == ("inputs" in payload):
        raise BadRequest(422, f"give one of 'instances' or 'inputs'; expected {expected}")
    columnar = "inputs" in payload
    values = payload["inputs"] if columnar else payload["instances"]
    if columnar and isinstance(values, dict):
        if list(values) != [INPUT]:
            raise BadRequest(422, f"inputs are named {sorted(values)}; the model's one is {INPUT}")
        values = values[INPUT]
    _count(values, most)
    return batch(values, shape, what="instances", expected=expected), columnar


def _count(values: Any, most: int) -> None:
    if isinstance(values, list) and len(values) > most:
        raise BadRequest(413, f"{len(values)} instances; at most {most} per request")


@dataclass(frozen=True)
class V2Request:
    """A parsed v2 infer request: its batch, its id, and whether outputs go back as binary."""

    batch: np.ndarray
    id: str | None
    binary_output: bool


def parse_v2(raw: bytes, header_length: str | None, shape: list[int], most: int) -> V2Request:
    """An Open Inference Protocol infer request, JSON or with binary tensor data appended."""
    expected = (
        f'{{"inputs": [{{"name": "{INPUT}", "shape": [n, {", ".join(map(str, shape))}], '
        f'"datatype": "FP32", "data": [...]}}]}}'
    )
    json_part, binary = raw, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise BadRequest(400, f"{HEADER_LENGTH} {header_length!r} is not within the body")
        json_part, binary = raw[: int(header_length)], raw[int(header_length) :]
    payload = read_json(json_part, expected)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest(422, f"missing 'inputs'; expected {expected}")
    if len(payload["inputs"]) != 1 or not isinstance(payload["inputs"][0], dict):
        raise BadRequest(422, f"the model has one input, '{INPUT}'; expected {expected}")
    tensor = payload["inputs"][0]
    if tensor.get("name") != INPUT:
        raise BadRequest(422, f"unknown input {tensor.get('name')!r}; expected {expected}")
    dims = tensor.get("shape")
    if not isinstance(dims, list) or not dims or not all(type(d) is int and d > 0 for d in dims):
        raise BadRequest(422, f"'shape' must be a list of positive integers; expected {expected}")
    if dims[0] > most:
        raise BadRequest(413, f"{dims[0]} instances; at most {most} per request")
    if int(np.prod(dims[1:])) != int(np.prod(shape)):
        raise BadRequest(422, f"input shape {dims}; expected {expected}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise BadRequest(422, f"datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        array = _from_bytes(binary, size, dims, datatype)
    else:
        if binary:
            raise BadRequest(400, "binary data after the JSON header, but no binary_data_size")
        data = tensor.get("data")
        flat = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else data
        rows = flat if not isinstance(flat, list) else _rows(flat, dims)
        array = batch(rows, shape, what="instances", expected=expected)
    return V2Request(
        batch=array.reshape(dims[0], *shape),
        id=payload.get("id") if isinstance(payload.get("id"), str) else None,
        binary_output=_binary_output(payload),
    )


def _rows(flat: list[Any], dims: list[int]) -> list[Any]:
    """Flat row-major data as ``dims[0]`` rows; a mismatch in size is a 422."""
    per_row = int(np.prod(dims[1:]))
    if len(flat) != dims[0] * per_row:
        raise BadRequest(422, f"'data' holds {len(flat)} numbers; shape {dims} needs "
                              f"{dims[0] * per_row}")  # fmt: skip
    return [flat[i * per_row : (i + 1) * per_row] for i in range(dims[0])]


def _from_bytes(binary: bytes, size: Any, dims: list[int], datatype: str) -> np.ndarray:
    dtype = np.dtype(DATATYPES[datatype])
    needed = int(np.prod(dims)) * dtype.itemsize
    if type(size) is not int or size != needed or len(binary) != size:
        raise BadRequest(
            422,
            f"binary_data_size {size!r} with {len(binary)} bytes appended; shape {dims} "
            f"of {datatype} needs {needed}",
        )
    array = np.frombuffer(binary, dtype=dtype).astype(np.float32).reshape(dims[0], -1)
    if not np.isfinite(array).all():
        row = int(np.argmax(~np.isfinite(array).all(axis=1)))
        raise BadRequest(422, f"instance {row} holds NaN or infinity (or beyond float32's range)")
    return array


def _binary_output(payload: dict[str, Any]) -> bool:
    wanted = (payload.get("parameters") or {}).get("binary_data_output") is True
    for output in payload.get("outputs") or []:
        if isinstance(output, dict):
            wanted = (output.get("parameters") or {}).get("binary_data", wanted) is True
    return wanted


def v2_response(
    outputs: np.ndarray, *, name: str, version: str, id: str | None, binary: bool
) -> tuple[bytes, dict[str, str]]:
    """The v2 answer's body and headers: JSON data, or the binary extension's layout."""
    tensor: dict[str, Any] = {"name": OUTPUT, "shape": list(outputs.shape), "datatype": "FP32"}
    data = np.ascontiguousarray(outputs, dtype="<f4")
    if binary:
        tensor["parameters"] = {"binary_data_size": data.nbytes}
    else:
        tensor["data"] = data.ravel().tolist()
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": [tensor]}
    if id is not None:
        body["id"] = id
    header = json.dumps(body).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + data.tobytes(), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
