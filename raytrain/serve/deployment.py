"""Deploying a registered model on Ray Serve: resolve it, connect, deploy or update in place.

Re-deploying (another version, or the champion alias moved) is a Serve update of the same
application, which rolls replicas over while requests keep flowing.
"""

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve

from raytrain.config.schema import ServeSpec
from raytrain.errors import RaytrainError
from raytrain.serve.app import APP_NAME, ModelServer, ServedModel
from raytrain.tracking import credentials
from raytrain.tracking.registry import (
    check_keras,
    check_trusted,
    download,
    pickled_files,
    resolve,
)

__all__ = [
    "METRICS_PORT",
    "Deployment",
    "client_url",
    "deploy",
    "describe",
    "serve_model",
    "stop",
    "token_digest",
]

METRICS_PORT = 8080  # Prometheus metrics of a Ray instance raytrain starts itself


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


def client_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def describe(
    reference: str, *, tracking_uri: str, trust_pickled_models: bool = False
) -> ServedModel:
    """Resolve ``reference`` in the registry and read what the API reports about it; refuse it
    here, before any replica starts, if it holds pickled objects or a model file naming code
    that the caller does not trust."""
    import mlflow

    model = resolve(reference, tracking_uri=tracking_uri)
    pickled = pickled_files(model)
    check_trusted(model, pickled, trust_pickled_models=trust_pickled_models)
    if not trust_pickled_models:
        check_keras(model)
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
        trust_pickled_models=trust_pickled_models,
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
    if canary is not None and canary.input_shape != primary.input_shape:
        raise RaytrainError(
            f"the canary {canary} takes input of shape {canary.input_shape}, {primary} takes "
            f"{primary.input_shape}: a canary must take the same input"
        )
    if canary is None:
        canary_percent = 0.0
    if not 0.0 <= canary_percent <= 100.0:
        raise RaytrainError(
            f"`canary_percent` must be within 0..100, not {canary_percent:g}",
            options=("canary_percent",),
        )
    digest = token_digest(spec)
    http = {"host": spec.host, "port": spec.port, "request_timeout_s": spec.request_timeout_s}
    serve.start(http_options=http)
    scaling: dict[str, Any] = (
        {"autoscaling_config": spec.autoscaling.model_dump()}
        if spec.autoscaling
        else {"num_replicas": spec.num_replicas}
    )
    # @serve.deployment made ModelServer a Deployment, which mypy does not see.
    app = ModelServer.options(  # type: ignore[attr-defined]
        name=f"{primary.name}-server",
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.max_queued_requests,
        backpressure_config={"retry_after_s": 1},
        ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
        **scaling,
    ).bind(
        primary=asdict(primary),
        canary=asdict(canary) if canary else None,
        canary_percent=canary_percent,
        limits=spec.model_dump(),
        token_digest=digest,
        signed_in=credentials.current(),
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


def token_digest(spec: ServeSpec) -> str | None:
    """The SHA-256 of the bearer token ``spec`` names (from an environment variable or a file):
    the replicas check tokens against it and never hold the token itself."""
    if spec.auth_token_env and spec.auth_token_file:
        raise RaytrainError(
            "give one of `auth_token_env` and `auth_token_file`",
            options=("auth_token_env", "auth_token_file"),
        )
    token = None
    if spec.auth_token_env:
        token = os.environ.get(spec.auth_token_env, "").strip()
        where = f"environment variable {spec.auth_token_env}"
    elif spec.auth_token_file:
        path = Path(spec.auth_token_file).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
        where = f"file {path}"
    if token is None:
        return None
    if not token:
        raise RaytrainError(f"no auth token in {where}")
    return hashlib.sha256(token.encode()).hexdigest()


def stop() -> bool:
    """Delete the model API from the connected cluster; False when none was running."""
    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    return True


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
    from raytrain.cluster.connection import connect
    from raytrain.storage import forwarded_env

    trust = {"trust_pickled_models": bool(spec and spec.trust_pickled_models)}
    primary = describe(reference, tracking_uri=tracking_uri, **trust)
    challenger = describe(canary, tracking_uri=tracking_uri, **trust) if canary else None
    connect(address, verbose=verbose, metrics_port=metrics_port, env_vars=forwarded_env())
    return deploy(primary, spec=spec, canary=challenger, canary_percent=canary_percent)
