"""The model API one Serve replica runs: routes, request parsing, batching, canary routing.

One replica holds the model (and a canary's, when there is one) behind a FastAPI ingress, so a
request costs one hop: validation, routing and batching run in the replica that computes it.
Each served version gets its own ``@serve.batch`` queue: requests for different versions are
never mixed in one model call.
"""

import asyncio
import hashlib
import hmac
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException

from raytrain.config.schema import ServeSpec
from raytrain.serve import schemas
from raytrain.serve.schemas import ERRORS
from raytrain.serve.tensors import (
    INPUT,
    OUTPUT,
    BadRequest,
    parse_v1,
    parse_v2,
    v2_response,
)
from raytrain.tracking.credentials import Credentials
from raytrain.tracking.registry import RegisteredModel, load_keras

__all__ = ["APP_NAME", "ModelServer", "ServedModel", "api"]

APP_NAME = "raytrain"  # one Serve application: the model API owns the routes under /v1/models


@dataclass(frozen=True)
class ServedModel:
    """A registered version and what clients need to know to call it."""

    name: str
    version: str
    run_id: str
    source: str
    tracking_uri: str
    input_shape: list[int]
    label_names: list[str] | None
    metrics: dict[str, float] = field(default_factory=dict)
    trust_pickled_models: bool = False  # replicas may load it with MLflow's unpickling loader

    def __str__(self) -> str:
        return f"{self.name} version {self.version}"

    def registered(self) -> RegisteredModel:
        return RegisteredModel(self.name, self.version, self.run_id, self.source, self.tracking_uri)


class _Model(StringConvertor):
    """A model name in a path: no ':' (``/v1/models/m:predict`` is not model ``m:predict``)."""

    regex = "[^/:]+"


register_url_convertor("model", _Model())


class BearerAuth:
    """Every route but health needs ``Authorization: Bearer TOKEN`` when a token is set.

    ASGI middleware, so docs and unknown paths are covered too. The replica holds only the
    token's SHA-256 (``digest``, set by ``ModelServer``), never the token itself.
    """

    digest: str | None = None
    OPEN = frozenset(schemas.HEALTH)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        digest = BearerAuth.digest
        if scope["type"] != "http" or digest is None or scope["path"] in self.OPEN:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if token and hmac.compare_digest(hashlib.sha256(token).hexdigest(), digest):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "this API needs `Authorization: Bearer TOKEN`"},
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )
        await response(scope, receive, send)


api = FastAPI(
    title="raytrain model API",
    description="Predictions from a model in the MLflow registry: TensorFlow Serving's v1 "
    "routes and the Open Inference Protocol (v2, with the binary tensor data extension).",
    openapi_url=None,  # served by ModelServer: examples in the served model's input shape
    docs_url=None,
    redoc_url=None,
)
api.add_middleware(BearerAuth)


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


@api.exception_handler(HTTPException)
async def _no_route(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and methods answer in the API's one error shape too."""
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _use_threads(cpus: float) -> None:
    """As many TF threads as the replica holds CPUs: TF would take every core of the node."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, int(cpus)))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, int(cpus)))
    except RuntimeError:  # TF already started in this process (e.g. local testing mode)
        pass


class _Version:
    """One served version: its model, a batch queue of its own, and what it has done."""

    def __init__(self, served: dict[str, Any], limits: ServeSpec) -> None:
        import tensorflow as tf

        self.info = ServedModel(**served)
        model = load_keras(
            self.info.registered(), trust_pickled_models=self.info.trust_pickled_models
        )
        signature = tf.TensorSpec([None, *self.info.input_shape], tf.float32)
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        traced = self._call(np.zeros([1, *self.info.input_shape], np.float32))  # before traffic
        self.output_shape = [int(d) for d in traced.shape[1:]]
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        batched = serve.batch(
            max_batch_size=limits.max_batch_size, batch_wait_timeout_s=limits.batch_wait_timeout_s
        )
        self.predict = batched(self._predict_batch)

    async def _predict_batch(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        """Many requests, one model call; each gets back its own rows."""
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        self.stats["requests"] += len(requests)
        outputs = self._call(np.concatenate(requests)).numpy()
        return np.split(outputs, np.cumsum([len(r) for r in requests])[:-1])


def _json(model: type, text: str = "Success.") -> schemas.Responses:
    return {200: {"model": model, "description": text}}


BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
INFER: schemas.Responses = {
    **_json(schemas.InferResponse, "JSON tensors, or binary ones after a JSON header."),
    **ERRORS["body"],
}
INFER[200]["content"] = BINARY


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """The model API of one registered model: predict and infer, metadata, health."""

    def __init__(
        self,
        primary: dict[str, Any],
        canary: dict[str, Any] | None,
        canary_percent: float,
        limits: dict[str, Any],
        token_digest: str | None = None,
        signed_in: Credentials | None = None,
    ) -> None:
        import raytrain  # noqa: F401  (tf.keras must be tf_keras before TF loads a model)

        if signed_in:  # the MLflow user of `raytrain serve`, to download the model
            signed_in.use()
        self.limits = ServeSpec(**limits)
        _use_threads(self.limits.num_cpus)
        self.primary = _Version(primary, self.limits)
        self.canary = _Version(canary, self.limits) if canary else None
        self.canary_percent = canary_percent
        self.started = time.time()
        BearerAuth.digest = token_digest

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        app = request.app
        base = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        shape = self.primary.info.input_shape
        return JSONResponse(schemas.openapi(base, shape, auth=BearerAuth.digest is not None))

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="raytrain model API")

    @api.get("/healthz", responses=_json(schemas.Health))
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v2/health/live", responses=_json(schemas.Live))
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready", responses=_json(schemas.Ready))
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}  # models load in __init__: a replica that answers is ready

    @api.get("/v2", responses=_json(schemas.ServerMetadata))
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "raytrain", "version": "2", "extensions": ["binary_tensor_data"]}

    @api.get("/v1/models/{name:model}", responses={**_json(schemas.V1Metadata), **ERRORS["model"]})
    async def metadata(self, name: str) -> dict[str, Any]:
        """Served versions, their input, labels and metrics at registration, the traffic split."""
        self._served(name, None)
        return {
            "name": name,
            "model_version": self.primary.info.version,
            "input": {"shape": [None, *self.primary.info.input_shape], "dtype": "float32"},
            "versions": [
                {
                    "version": v.info.version,
                    "run_id": v.info.run_id,
                    "traffic_percent": self._percent(v),
                    "input_shape": v.info.input_shape,
                    "label_names": v.info.label_names,
                    "metrics": v.info.metrics,
                    "replica_stats": v.stats,
                }
                for v in self._versions()
            ],
            "limits": {
                "max_instances_per_request": self.limits.max_instances_per_request,
                "max_body_mb": self.limits.max_body_mb,
                "max_batch_size": self.limits.max_batch_size,
            },
        }

    @api.post(
        "/v1/models/{name:model}:predict",
        responses={**_json(schemas.PredictResponse), **ERRORS["body"]},
    )
    async def predict(self, name: str, request: Request) -> JSONResponse:
        """``{"instances": rows}`` -> ``{"predictions": ...}``, ``{"inputs": columns}`` ->
        ``{"outputs": ...}``; with ``model_version``, and ``labels`` for a classifier."""
        self._served(name, None)
        body = await self._body(request)
        instances, columnar = await asyncio.to_thread(parse_v1, body, *self._limits())
        version = self._route()
        outputs = await version.predict(instances)
        answer: dict[str, Any] = {
            "outputs" if columnar else "predictions": outputs.tolist(),
            "model_version": version.info.version,
        }
        labels = version.info.label_names
        if labels:
            answer["labels"] = [labels[i] for i in outputs.argmax(axis=1)]
        return JSONResponse(answer)

    @api.get(
        "/v2/models/{name:model}", responses={**_json(schemas.ModelMetadata), **ERRORS["model"]}
    )
    async def v2_metadata(self, name: str) -> dict[str, Any]:
        return self._v2_metadata(name, None)

    @api.get(
        "/v2/models/{name:model}/versions/{version}",
        responses={**_json(schemas.ModelMetadata), **ERRORS["model"]},
    )
    async def v2_version_metadata(self, name: str, version: str) -> dict[str, Any]:
        return self._v2_metadata(name, version)

    @api.get("/v2/models/{name:model}/ready", responses={**_json(schemas.Ready), **ERRORS["model"]})
    async def model_ready(self, name: str) -> dict[str, bool]:
        self._served(name, None)
        return {"ready": True}

    @api.get(
        "/v2/models/{name:model}/versions/{version}/ready",
        responses={**_json(schemas.Ready), **ERRORS["model"]},
    )
    async def version_ready(self, name: str, version: str) -> dict[str, bool]:
        self._served(name, version)
        return {"ready": True}

    @api.post("/v2/models/{name:model}/infer", responses=INFER)
    async def infer(self, name: str, request: Request) -> Response:
        """Open Inference Protocol inference; the canary split applies."""
        return await self._infer(name, None, request)

    @api.post("/v2/models/{name:model}/versions/{version}/infer", responses=INFER)
    async def infer_version(self, name: str, version: str, request: Request) -> Response:
        """Inference by one served version (the primary's or the canary's)."""
        return await self._infer(name, version, request)

    async def _infer(self, name: str, version: str | None, request: Request) -> Response:
        served = self._served(name, version)
        body = await self._body(request)
        header = request.headers.get("inference-header-content-length")
        parsed = await asyncio.to_thread(parse_v2, body, header, *self._limits())
        answering = served or self._route()
        outputs = await answering.predict(parsed.batch)
        content, headers = v2_response(
            outputs,
            name=name,
            version=answering.info.version,
            id=parsed.id,
            binary=parsed.binary_output,
        )
        return Response(content, headers=headers)

    def _v2_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        served = self._served(name, version) or self.primary
        return {
            "name": name,
            "versions": [v.info.version for v in ([served] if version else self._versions())],
            "platform": "tensorflow_keras",
            "inputs": [
                {"name": INPUT, "datatype": "FP32", "shape": [-1, *served.info.input_shape]}
            ],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, *served.output_shape]}],
        }

    async def _body(self, request: Request) -> bytearray:
        """The body, refused before it is parsed (or read past the cap) when it is too big; not
        copied (parsing runs in a thread: a large body would hold the event loop)."""
        limit = int(self.limits.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body of {declared} bytes is over {limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise BadRequest(413, f"request body is over {limit} bytes")
        return raw

    def _limits(self) -> tuple[list[int], int]:
        return self.primary.info.input_shape, self.limits.max_instances_per_request

    def _versions(self) -> list[_Version]:
        return [self.primary] + ([self.canary] if self.canary else [])

    def _served(self, name: str, version: str | None) -> _Version | None:
        """The version asked for (None: let the split decide); a 404 for what is not here."""
        if name != self.primary.info.name:
            served = self.primary.info.name
            raise BadRequest(404, f"no model '{name}' here; this server serves '{served}'")
        if version is None:
            return None
        for candidate in self._versions():
            if candidate.info.version == version:
                return candidate
        served = ", ".join(v.info.version for v in self._versions())
        raise BadRequest(404, f"no version '{version}' of '{name}' here; served: {served}")

    def _route(self) -> _Version:
        """The primary, or the canary for its share of requests."""
        if self.canary and random.uniform(0.0, 100.0) < self.canary_percent:
            return self.canary
        return self.primary

    def _percent(self, version: _Version) -> float:
        canary = self.canary_percent if self.canary else 0.0
        return canary if version is self.canary else 100.0 - canary
