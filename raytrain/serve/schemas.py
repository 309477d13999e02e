"""The API's request and response models: what /docs shows and client generators read.

Routes parse bodies themselves (a byte cap before parsing, strict numbers, the binary
extension), so request models reach the OpenAPI document through ``openapi_extra``;
``openapi`` adds them, every route's error answers, auth and examples in the served model's
real input shape.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from raytrain.serve.tensors import DATATYPES, INPUT

__all__ = ["ERRORS", "openapi"]

Number = float
# A route's documented answers, by status code: FastAPI's ``responses``.
Responses = dict[int | str, dict[str, Any]]


class Error(BaseModel):
    error: str = Field(description="What was wrong and what was expected.")


class InstancesRequest(BaseModel):
    instances: list[Any] = Field(description="Rows, each of the model's input shape (or flat).")


class InputsRequest(BaseModel):
    inputs: list[Any] | dict[str, list[Any]] = Field(
        description=f"Columnar: the input batch, or {{'{INPUT}': batch}}."
    )


class PredictResponse(BaseModel):
    predictions: list[list[Number]] | None = Field(None, description="For 'instances'.")
    outputs: list[list[Number]] | None = Field(None, description="For 'inputs'.")
    model_version: str
    labels: list[str] | None = Field(None, description="Argmax class names of a classifier.")


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the batch dimension).")


class V2Input(BaseModel):
    name: Literal["input"]
    shape: list[int]
    # The Literal is built from DATATYPES' keys at import, so the two never differ; mypy
    # cannot evaluate it and reads the field as Any.
    datatype: Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
    data: list[Any] | None = Field(None, description="Row-major numbers, flat or nested.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this tensor appended after the JSON."
    )


class V2Output(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for bytes.")


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: true.")
    inputs: list[V2Input]
    outputs: list[V2Output] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Number] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class Health(BaseModel):
    status: str


class ServedVersion(BaseModel):
    version: str
    run_id: str
    traffic_percent: float
    input_shape: list[int]
    label_names: list[str] | None
    metrics: dict[str, float]
    replica_stats: dict[str, int]


class V1Metadata(BaseModel):
    name: str
    model_version: str
    input: dict[str, Any]
    versions: list[ServedVersion]
    limits: dict[str, float]


def _error(text: str) -> dict[str, Any]:
    return {"model": Error, "description": text}


ERRORS: dict[str, Responses] = {  # the errors each kind of route answers with
    "model": {404: _error("No such model or version here.")},
    "body": {
        400: _error("Not JSON, or a broken binary layout."),
        404: _error("No such model or version here."),
        413: _error("Body over max_body_mb, or more than max_instances_per_request."),
        422: _error("Well-formed, but not numbers of the model's input shape."),
        408: _error("Not answered within request_timeout_s (Serve's proxy)."),
        503: _error("Queue full (max_queued_requests); see Retry-After (Serve's proxy)."),
    },
}
# Request models per route: (path, method) -> content type -> model.
BODIES: dict[tuple[str, str], list[type[BaseModel]]] = {
    ("/v1/models/{name}:predict", "post"): [InstancesRequest, InputsRequest],
    ("/v2/models/{name}/infer", "post"): [InferRequest],
    ("/v2/models/{name}/versions/{version}/infer", "post"): [InferRequest],
}
HEALTH = {"/healthz", "/v2/health/live", "/v2/health/ready"}


def openapi(base: dict[str, Any], shape: list[int], *, auth: bool) -> dict[str, Any]:
    """FastAPI's document with request bodies, examples of ``shape`` and (with ``auth``) the
    bearer scheme and its 401 on every route but health."""
    components = base.setdefault("components", {}).setdefault("schemas", {})
    for model in {m for models in BODIES.values() for m in models}:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    row = np.zeros(shape).tolist()
    examples = {
        "InstancesRequest": {"instances": [row]},
        "InputsRequest": {"inputs": [row]},
        "InferRequest": {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": [1, *shape],
                    "datatype": "FP32",
                    "data": [0.0] * int(np.prod(shape)),
                }
            ]
        },
    }
    for (path, method), models in BODIES.items():
        refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
        schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
        operation = base["paths"][path][method]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": schema,
                    "examples": {m.__name__: {"value": examples[m.__name__]} for m in models},
                },
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                },
            }
            if "infer" in path
            else {
                "application/json": {
                    "schema": schema,
                    "examples": {m.__name__: {"value": examples[m.__name__]} for m in models},
                }
            },
        }
    if auth:
        components_root = base["components"]
        components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in base["paths"].items():
            if path in HEALTH:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = {
                    "description": "No or wrong bearer token.",
                    "content": error,
                }
    return base
