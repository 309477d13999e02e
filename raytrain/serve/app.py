"""The model API one Serve replica runs: routes, request parsing, batching, canary routing.

One replica holds the model (and a canary's, when there is one) behind a FastAPI ingress, so a
request costs one hop: validation, routing and batching run in the replica that computes it.
Each served version gets its own ``@serve.batch`` queue: requests for different versions are
never mixed in one model call.
"""

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from raytrain.config.schema import ServeSpec
from raytrain.tracking.registry import RegisteredModel, load_keras

__all__ = ["APP_NAME", "BadRequest", "ModelServer", "ServedModel", "api"]

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

    def __str__(self) -> str:
        return f"{self.name} version {self.version}"

    def registered(self) -> RegisteredModel:
        return RegisteredModel(self.name, self.version, self.run_id, self.source, self.tracking_uri)


class BadRequest(Exception):
    """A client mistake: answered with ``status`` and a message, never a 500."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


api = FastAPI(
    title="raytrain model API",
    description="Predictions from a model in the MLflow registry (TensorFlow Serving's shape).",
)


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


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
        model = load_keras(self.info.registered())
        signature = tf.TensorSpec([None, *self.info.input_shape], tf.float32)
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        self._call(np.zeros([1, *self.info.input_shape], np.float32))  # trace before traffic
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


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """The model API of one registered model: predict, metadata, health."""

    def __init__(
        self,
        primary: dict[str, Any],
        canary: dict[str, Any] | None,
        canary_percent: float,
        limits: dict[str, Any],
    ) -> None:
        import raytrain  # noqa: F401  (tf.keras must be tf_keras before TF loads a model)

        self.limits = ServeSpec(**limits)
        _use_threads(self.limits.num_cpus)
        self.primary = _Version(primary, self.limits)
        self.canary = _Version(canary, self.limits) if canary else None
        self.canary_percent = canary_percent
        self.started = time.time()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models/{name}")
    async def metadata(self, name: str) -> dict[str, Any]:
        """Served versions, their input, labels and metrics at registration, the traffic split."""
        self._check_name(name)
        versions = [self.primary] + ([self.canary] if self.canary else [])
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
                for v in versions
            ],
            "limits": {
                "max_instances_per_request": self.limits.max_instances_per_request,
                "max_body_mb": self.limits.max_body_mb,
                "max_batch_size": self.limits.max_batch_size,
            },
        }

    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> JSONResponse:
        """``{"instances": [...]}`` -> ``{"predictions": [...], "model_version": ...}``."""
        self._check_name(name)
        instances = await self._instances(request)
        version = self.primary
        if self.canary and random.uniform(0.0, 100.0) < self.canary_percent:
            version = self.canary
        outputs = await version.predict(instances)
        body: dict[str, Any] = {
            "predictions": outputs.tolist(),
            "model_version": version.info.version,
        }
        labels = version.info.label_names
        if labels:
            body["labels"] = [labels[i] for i in outputs.argmax(axis=1)]
        return JSONResponse(body)

    async def _instances(self, request: Request) -> np.ndarray:
        limit = int(self.limits.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body of {declared} bytes is over {limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise BadRequest(413, f"request body is over {limit} bytes")
        return self._parse(bytes(raw))

    def _parse(self, raw: bytes) -> np.ndarray:
        shape = self.primary.info.input_shape
        expected = f'{{"instances": [...]}} with each instance of shape {shape}'
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
            raise BadRequest(400, f"body is not valid JSON ({exc}); expected {expected}") from None
        if not isinstance(payload, dict) or "instances" not in payload:
            raise BadRequest(422, f"missing 'instances'; expected {expected}")
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest(422, f"'instances' must be a non-empty list; expected {expected}")
        most = self.limits.max_instances_per_request
        if len(instances) > most:
            raise BadRequest(413, f"{len(instances)} instances; at most {most} per request")
        try:
            array = np.asarray(instances, dtype=np.float32)
        except (ValueError, TypeError):
            raise BadRequest(
                422, f"instances must be numbers, all of one shape; expected {expected}"
            ) from None
        if list(array.shape[1:]) != shape:
            if array.ndim > 1 and int(np.prod(array.shape[1:])) == int(np.prod(shape)):
                array = array.reshape(len(array), *shape)  # flat rows of the right size
            else:
                got = list(array.shape[1:])
                raise BadRequest(422, f"instances have shape {got}; expected {expected}")
        if not np.isfinite(array).all():
            raise BadRequest(422, "instances contain NaN or infinity; send finite numbers")
        return array

    def _check_name(self, name: str) -> None:
        if name != self.primary.info.name:
            served = self.primary.info.name
            raise BadRequest(404, f"no model '{name}' here; this server serves '{served}'")

    def _percent(self, version: _Version) -> float:
        canary = self.canary_percent if self.canary else 0.0
        return canary if version is self.canary else 100.0 - canary
