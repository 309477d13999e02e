"""Request bodies to one validated float32 batch, and answers back: every protocol, one path.

TensorFlow Serving's v1 bodies (``instances`` rows or ``inputs`` columns) and the Open Inference
Protocol's v2 bodies (JSON tensors, or the binary tensor data extension) all end in ``batch``,
which accepts JSON numbers only (a boolean or a string is named by instance and position), and
refuses NaN, infinity and numbers beyond float32. Nothing here imports Ray or TensorFlow.
"""

from __future__ import annotations

import json
import math
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
# What a well-formed request holds besides numbers: strings (keys, names, datatype, id), objects
# and lists beyond those its instances nest. More are refused before parsing: JSON turns a
# 4-byte `"a",` or `[0],` into 60 to 90 bytes of Python objects, a number into 8 to 32.
MOST_STRINGS, MOST_OBJECTS, SPARE_LISTS = 256, 64, 64
_KINDS = {bool: "a boolean", str: "a string", dict: "an object", type(None): "null"}


class BadRequest(Exception):
    """A client mistake: answered with ``status`` and a message, never a 500."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _no_constant(name: str) -> float:
    raise BadRequest(422, f"{name} is not a number; send finite numbers")


def read_json(raw: bytes | bytearray, expected: str, *, most_lists: int) -> Any:
    """Strict JSON: NaN and Infinity (which Python's parser accepts) are refused; so is a body
    with more strings, objects or lists than a request can hold (``most_lists`` lists), before
    it is parsed, which bounds its memory at a few times its size."""
    counts = {
        "strings": (raw.count(b'"') // 2, MOST_STRINGS),
        "objects": (raw.count(b"{"), MOST_OBJECTS),
        "lists": (raw.count(b"["), most_lists),
    }
    for kind, (found, most) in counts.items():
        if found > most:
            raise BadRequest(413, f"body holds {found} {kind}, at most {most}; expected {expected}")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise BadRequest(400, f"body is not valid JSON ({exc}); expected {expected}") from None


def batch(values: Any, shape: list[int], *, what: str, expected: str) -> np.ndarray:
    """A list of ``what`` (instances, rows) as a float32 array of ``[n, *shape]``; flat rows of
    the right size are reshaped. Only JSON numbers: ``np.asarray`` would take "1.5" and True.
    No object array on the way: the parsed lists and the float32 result are all it holds."""
    if not isinstance(values, list) or not values:
        raise BadRequest(422, f"{what} must be a non-empty list; expected {expected}")
    ragged = f"{what} must be numbers, all of one shape; expected {expected}"
    try:
        odd = _first(values, lambda v: type(v) not in _NUMBERS, depth=len(shape) + 1)
    except _TooDeep:
        raise BadRequest(422, ragged) from None
    if odd is not None:
        position, value = odd
        kind = _KINDS.get(type(value), type(value).__name__)
        got = json.dumps(value)[:40]
        raise BadRequest(422, f"{_where(position, what)} is {kind} ({got}), not a number")
    try:
        with np.errstate(over="ignore"):  # beyond float32: infinity, refused below
            array32 = np.array(values, dtype=np.float32)
    except ValueError:  # ragged
        raise BadRequest(422, ragged) from None
    except OverflowError:  # an integer beyond float64
        position, _ = _first(values, lambda v: abs(v) > 1e308, depth=len(shape) + 1) or ((0,), 0)
        raise BadRequest(422, f"{_where(position, what)} is beyond float32's range") from None
    if array32.size == 0 or array32.ndim < 1:
        raise BadRequest(422, ragged)
    if not np.isfinite(array32).all():
        index = int(np.argmax(~np.isfinite(array32.ravel())))
        position = tuple(int(i) for i in np.unravel_index(index, array32.shape))
        raise BadRequest(422, f"{_where(position, what)} is beyond float32's range")
    if array32.ndim == 1 or list(array32.shape[1:]) != shape:
        if array32.ndim > 1 and math.prod(array32.shape[1:]) == math.prod(shape):
            return array32.reshape(len(array32), *shape)
        raise BadRequest(422, f"{what} have shape {list(array32.shape[1:])}; expected {expected}")
    return array32


def _first(
    values: list[Any], odd: Any, *, depth: int, at: tuple[int, ...] = ()
) -> tuple[tuple[int, ...], Any] | None:
    """The position and value of the first leaf that is ``odd``, row-major; ``_TooDeep`` for
    lists nested deeper than ``depth`` (which also bounds the recursion)."""
    for i, value in enumerate(values):
        if type(value) is list:
            if depth <= 1:
                raise _TooDeep
            found = _first(value, odd, depth=depth - 1, at=(*at, i))
            if found is not None:
                return found
        elif odd(value):
            return (*at, i), value
    return None


class _TooDeep(Exception):
    """Lists nested deeper than the input shape: not numbers of one shape."""


def _where(position: tuple[int, ...], what: str) -> str:
    return f"{what[:-1]} {position[0]}, position {list(position[1:])}"


def _most_lists(shape: list[int], most: int) -> int:
    """Lists in ``most`` instances of ``shape`` written nested, and a request's own few."""
    per_instance = sum(math.prod(shape[:depth]) for depth in range(len(shape)))
    return most * per_instance + SPARE_LISTS


def parse_v1(raw: bytes | bytearray, shape: list[int], most: int) -> tuple[np.ndarray, bool]:
    """``{"instances": rows}`` or ``{"inputs": columns}`` (one input: a list, or ``{INPUT: ...}``);
    the batch and whether the answer is columnar (``outputs`` instead of ``predictions``)."""
    expected = f'{{"instances": [...]}} or {{"inputs": [...]}} with each instance of shape {shape}'
    payload = read_json(raw, expected, most_lists=_most_lists(shape, most))
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


def parse_v2(
    raw: bytes | bytearray, header_length: str | None, shape: list[int], most: int
) -> V2Request:
    """An Open Inference Protocol infer request, JSON or with binary tensor data appended."""
    expected = (
        f'{{"inputs": [{{"name": "{INPUT}", "shape": [n, {", ".join(map(str, shape))}], '
        f'"datatype": "FP32", "data": [...]}}]}}'
    )
    binary: bytes | bytearray
    json_part, binary = raw, b""
    if header_length is not None:
        digits = header_length.isascii() and header_length.isdigit()
        if not digits or int(header_length) > len(raw):
            raise BadRequest(400, f"{HEADER_LENGTH} {header_length!r} is not within the body")
        json_part, binary = raw[: int(header_length)], raw[int(header_length) :]
    payload = read_json(json_part, expected, most_lists=_most_lists(shape, most))
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
    if math.prod(dims[1:]) != math.prod(shape):  # Python integers: no int64 overflow
        raise BadRequest(422, f"input shape {dims}; expected {expected}")
    datatype = tensor.get("datatype")
    if type(datatype) is not str or datatype not in DATATYPES:
        got = json.dumps(datatype)[:40]
        raise BadRequest(422, f"'datatype' {got}; one of {', '.join(DATATYPES)}")
    size = _parameters(tensor, "input 'parameters'").get("binary_data_size")
    if size is not None:
        array = _from_bytes(binary, size, dims, datatype)
    else:
        if binary:
            raise BadRequest(400, "binary data after the JSON header, but no binary_data_size")
        data = tensor.get("data")
        rows = _rows(_flat(data, len(dims)), dims) if isinstance(data, list) else data
        array = batch(rows, shape, what="instances", expected=expected)
    return V2Request(
        batch=array.reshape(dims[0], *shape),
        id=payload.get("id") if isinstance(payload.get("id"), str) else None,
        binary_output=_binary_output(payload),
    )


def _rows(flat: list[Any], dims: list[int]) -> list[Any]:
    """Flat row-major data as ``dims[0]`` rows; a mismatch in size is a 422."""
    per_row = math.prod(dims[1:])
    if len(flat) != dims[0] * per_row:
        raise BadRequest(422, f"'data' holds {len(flat)} numbers; shape {dims} needs "
                              f"{dims[0] * per_row}")  # fmt: skip
    return [flat[i * per_row : (i + 1) * per_row] for i in range(dims[0])]


def _flat(data: list[Any], depth: int) -> list[Any]:
    """Row-major ``data`` (flat, or nested up to ``depth`` lists) as one flat list; a list
    deeper than that is left as a value (``batch`` names it)."""
    if not any(type(v) is list for v in data) or depth <= 1:
        return data
    return [leaf for v in data for leaf in (_flat(v, depth - 1) if type(v) is list else [v])]


def _from_bytes(binary: bytes | bytearray, size: Any, dims: list[int], datatype: str) -> np.ndarray:
    dtype = np.dtype(DATATYPES[datatype])
    needed = math.prod(dims) * dtype.itemsize
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


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    """The ``parameters`` object of a request or tensor ({} when absent)."""
    found = holder.get("parameters")
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise BadRequest(422, f"{what} must be an object, not {json.dumps(found)[:40]}")
    return found


def _binary_output(payload: dict[str, Any]) -> bool:
    wanted = _parameters(payload, "'parameters'").get("binary_data_output") is True
    outputs = payload.get("outputs")
    if outputs is None:
        return wanted
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        got = json.dumps(outputs)[:40]
        raise BadRequest(422, f"'outputs' must be a list of objects, not {got}")
    for output in outputs:
        wanted = _parameters(output, "output 'parameters'").get("binary_data", wanted) is True
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
