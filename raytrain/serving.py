"""Serve a registered model over HTTP with Ray Serve: a typed API, batching, canaries, updates.

One replica holds the model (and a canary's, when there is one) behind a FastAPI ingress, so a
request costs one hop: validation, routing and batching run in the replica that computes it.
Each served version gets its own ``@serve.batch`` queue: requests for different versions are
never mixed in one model call. Re-deploying (another version, or the champion alias moved) is a
Serve update of the same application, which rolls replicas over while requests keep flowing.
"""

import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from raytrain.daemon import client_url
from raytrain.errors import RaytrainError
from raytrain.registry import RegisteredModel, download, load_keras, resolve
from raytrain.spec import Experiment, ServeSpec

__all__ = [
    "APP_NAME",
    "METRICS_PORT",
    "Deployment",
    "ServedModel",
    "deploy",
    "describe",
    "serve_model",
    "serve_settings",
    "stop",
]

APP_NAME = "raytrain"  # one Serve application: the model API owns the routes under /v1/models
METRICS_PORT = 8080  # Prometheus metrics of a Ray instance raytrain starts itself


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


@dataclass(frozen=True)
class Deployment:
    """What ``deploy`` started and where to reach it."""

    url: str
    predict_url: str
    docs_url: str
    primary: ServedModel
    canary: ServedModel | None
    canary_percent: float
    ray_address: str


def describe(reference: str, *, tracking_uri: str) -> ServedModel:
    """Resolve ``reference`` in the registry and read what the API reports about it."""
    import mlflow

    model = resolve(reference, tracking_uri=tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=model.tracking_uri)
    info = mlflow.models.Model.load(download(model, "MLmodel"))
    meta = info.metadata or {}
    if "input_shape" not in meta:
        raise RaytrainError(f"{model} was not logged by raytrain: its input shape is unknown")
    run = client.get_run(model.run_id)
    return ServedModel(
        name=model.name,
        version=model.version,
        run_id=model.run_id,
        source=model.source,
        tracking_uri=model.tracking_uri,
        input_shape=[int(d) for d in meta["input_shape"]],
        label_names=_label_names(meta),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
    )


def _label_names(meta: dict[str, Any]) -> list[str] | None:
    """Class names of a classifier (its class indices when the labels were integers)."""
    classes = meta.get("num_classes")
    if not classes:
        return None
    return [str(n) for n in meta.get("label_names") or range(int(classes))]


def deploy(
    primary: ServedModel,
    *,
    spec: ServeSpec | None = None,
    canary: ServedModel | None = None,
    canary_percent: float = 0.0,
) -> Deployment:
    """Deploy (or update in place) the model API on the connected Ray cluster."""
    spec = spec or ServeSpec()
    if canary is not None and canary.name != primary.name:
        raise RaytrainError(
            f"a canary must be a version of the same model: {primary.name}, not {canary.name}"
        )
    if canary is None:
        canary_percent = 0.0
    if not 0.0 <= canary_percent <= 100.0:
        raise RaytrainError(f"--canary-percent must be within 0..100, not {canary_percent:g}")
    serve.start(http_options={"host": spec.host, "port": spec.port})
    scaling: dict[str, Any] = (
        {"autoscaling_config": spec.autoscaling.model_dump()}
        if spec.autoscaling
        else {"num_replicas": spec.num_replicas}
    )
    app = ModelServer.options(
        name=f"{primary.name}-server",
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
        **scaling,
    ).bind(
        primary=asdict(primary),
        canary=asdict(canary) if canary else None,
        canary_percent=canary_percent,
        limits=spec.model_dump(),
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = client_url(spec.host, spec.port)
    return Deployment(
        url=url,
        predict_url=f"{url}/v1/models/{primary.name}:predict",
        docs_url=f"{url}/docs",
        primary=primary,
        canary=canary,
        canary_percent=canary_percent,
        ray_address=ray.get_runtime_context().gcs_address,
    )


def stop() -> bool:
    """Delete the model API from the connected cluster; False when none was running."""
    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    return True


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


def serve_settings(
    model: str | None,
    *,
    experiment: Experiment | None = None,
    tracking_uri: str | None = None,
    flags: dict[str, Any] | None = None,
    autoscaling: dict[str, Any] | None = None,
) -> tuple[str, str, ServeSpec]:
    """What to serve, from where, how: the model reference (default: the experiment's
    ``register_as``), the tracking URI and the experiment's ``serve:`` section with ``flags``
    (and ``autoscaling`` keys) over it; ``None`` values leave a setting as it is."""
    from pydantic import ValidationError

    base, reference, uri = ServeSpec(), model, tracking_uri
    if experiment is not None:
        base, uri = experiment.serve, tracking_uri or experiment.tracking.uri
        reference = model or experiment.tracking.register_as
        if reference is None:
            raise RaytrainError(
                f"experiment '{experiment.name}' registers no model (tracking.register_as)"
            )
    if reference is None:
        raise RaytrainError("name a model (NAME, NAME@ALIAS or NAME/VERSION) or --experiment FILE")
    settings = base.model_dump()
    settings.update({k: v for k, v in (flags or {}).items() if v is not None})
    scaling = {k: v for k, v in (autoscaling or {}).items() if v is not None}
    if scaling:
        settings["autoscaling"] = {**(settings.get("autoscaling") or {}), **scaling}
    try:
        spec = ServeSpec.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RaytrainError(f"serve.{where}: {first['msg']}") from None
    return reference, uri or "sqlite:///mlflow.db", spec


def serve_model(
    reference: str,
    *,
    tracking_uri: str,
    spec: ServeSpec | None = None,
    canary: str | None = None,
    canary_percent: float = 0.0,
    address: str | None = None,
    verbose: bool = False,
    metrics_port: int | None = METRICS_PORT,
) -> Deployment:
    """Everything ``raytrain serve`` does before it waits: resolve, connect, deploy."""
    from raytrain.cluster import connect
    from raytrain.storage import forwarded_env

    primary = describe(reference, tracking_uri=tracking_uri)
    challenger = describe(canary, tracking_uri=tracking_uri) if canary else None
    connect(address, verbose=verbose, metrics_port=metrics_port, env_vars=forwarded_env())
    return deploy(primary, spec=spec, canary=challenger, canary_percent=canary_percent)
