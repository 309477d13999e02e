"""HTTP serving: ``raytrain serve`` against what a user would otherwise run, one load generator.

Targets, one at a time on the same Serve instance (each replica holds 1 CPU, one thread):
raytrain's model API; (a) a minimal hand-written Serve deployment with ``@serve.batch``;
(b) a Serve endpoint that returns a constant (Serve's own ceiling here); (c) a plain
FastAPI/uvicorn app calling ``model.predict`` per request (one process, one thread). The client
is aiohttp with keep-alive connections, a fixed duration per level, in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request

from benchmarks.common import free_ports
from raytrain.config.loader import load_experiment
from raytrain.config.schema import ServeSpec
from raytrain.orchestration.run import run_experiment
from raytrain.serve.deployment import deploy, describe, stop
from raytrain.tracking.registry import load_keras

NAME = "bench-serve"
CONCURRENCY = (1, 16, 64)


def run(folder: Path, *, quick: bool) -> list[dict[str, Any]]:
    duration = 3.0 if quick else 10.0
    uri = _registered_model(folder)
    served = describe(f"{NAME}/1", tracking_uri=uri)
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    one = json.dumps({"instances": _rows(1).tolist()}).encode()
    many = json.dumps({"instances": _rows(64).tolist()}).encode()
    rows = []

    predict = f"{url}/v1/models/{NAME}:predict"
    deploy(served, spec=ServeSpec(port=port))
    rows += _levels("raytrain serve", predict, one, many, duration)
    infer = f"{url}/v2/models/{NAME}/infer"
    for target, (body, headers) in _v2_bodies(_rows(64)).items():
        stats = asyncio.run(_load(infer, body, 16, duration, headers))
        rows.append(_row(target, 64, 16, stats))
    # Levers: Serve's default max_ongoing_requests (5) caps batches; no batching at all.
    deploy(served, spec=ServeSpec(port=port, max_ongoing_requests=5))
    rows.append(_row("raytrain, max_ongoing_requests=5", 1, 16, _load_sync(predict, one, duration)))
    deploy(served, spec=ServeSpec(port=port, max_batch_size=1))
    rows.append(_row("raytrain, max_batch_size=1", 1, 16, _load_sync(predict, one, duration)))
    stop()
    serve.run(_Handwritten.bind(served.__dict__), name="a", route_prefix="/a")
    rows += _levels("(a) hand-written @serve.batch", f"{url}/a", one, many, duration)
    serve.delete("a")
    serve.run(_Constant.bind(), name="b", route_prefix="/b")
    rows += _levels("(b) Serve, constant answer", f"{url}/b", one, None, duration)
    serve.delete("b")
    with _uvicorn(folder, uri) as plain_url:
        rows += _levels("(c) FastAPI + model.predict", plain_url, one, many, duration)
    rows += _in_process(uri, duration)
    serve.shutdown()
    return rows


def _levels(
    target: str, url: str, one: bytes, many: bytes | None, duration: float
) -> list[dict[str, Any]]:
    rows = []
    for concurrency in CONCURRENCY:
        rows.append(
            _row(target, 1, concurrency, asyncio.run(_load(url, one, concurrency, duration)))
        )
    if many is not None:
        rows.append(_row(target, 64, 16, asyncio.run(_load(url, many, 16, duration))))
    return rows


def _row(target: str, instances: int, concurrency: int, stats: dict[str, float]) -> dict[str, Any]:
    return {
        "target": target,
        "instances/request": instances,
        "concurrency": concurrency,
        "requests/s": round(stats["rps"], 1),
        "instances/s": round(stats["rps"] * instances),
        "p50 ms": round(stats["p50"] * 1000, 1),
        "p99 ms": round(stats["p99"] * 1000, 1),
        "errors": int(stats["errors"]),
    }


def _load_sync(url: str, body: bytes, duration: float) -> dict[str, float]:
    return asyncio.run(_load(url, body, 16, duration))


def _v2_bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """A v2 infer request with JSON tensors, and with binary ones (in and out)."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    plain = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return {
        "raytrain serve, v2 JSON": (json.dumps(plain).encode(), {}),
        "raytrain serve, v2 binary": (
            header + x.astype("<f4").tobytes(),
            {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
        ),
    }


async def _load(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Keep-alive clients posting ``body`` back to back; a 1 s warm-up is not counted."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 1.0
        end = start + duration

        async def client() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < end:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if sent >= start:
                    latencies.append(time.perf_counter() - sent)
                    errors += not ok

        await asyncio.gather(*(client() for _ in range(concurrency)))
    latencies.sort()
    return {
        "rps": len(latencies) / duration,
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "errors": errors,
    }


IN_PROCESS = """
import raytrain, json, sys, time, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from raytrain.tracking.registry import resolve, load_keras
model = load_keras(resolve("{ref}", tracking_uri="{uri}"))
call = tf.function(lambda x: model(x, training=False))
x = np.random.default_rng(0).uniform(0, 16, size=(64, *model.input_shape[1:])).astype("float32")
call(x)
model.predict(x, verbose=0)
per_call = []
for run in (lambda: call(x).numpy(), lambda: model.predict(x, verbose=0)):
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < {duration}:
        run()
        count += 1
    per_call.append((time.perf_counter() - start) / count)
print(json.dumps(per_call))
"""


def _in_process(uri: str, duration: float) -> list[dict[str, Any]]:
    """The limit: 64-instance batches through the compiled model call (what a replica runs) and
    through ``model.predict``, no HTTP, one thread (a fresh process: this one's TensorFlow
    already runs with its default threads)."""
    script = IN_PROCESS.format(ref=f"{NAME}/1", uri=uri, duration=duration)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    compiled, predict = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        {
            "target": target,
            "instances/request": 64,
            "concurrency": 1,
            "requests/s": round(1 / per_call, 1),
            "instances/s": round(64 / per_call),
            "p50 ms": round(per_call * 1000, 2),
            "p99 ms": "",
            "errors": 0,
        }
        for target, per_call in (
            ("in-process compiled call (limit)", compiled),
            ("in-process model.predict", predict),
        )
    ]


@serve.deployment(max_ongoing_requests=128)
class _Handwritten:
    """What a Ray user writes from Serve's batching guide."""

    def __init__(self, served: dict[str, Any]) -> None:
        import raytrain  # noqa: F401  (tf_keras)
        from raytrain.serve.app import ServedModel

        self.shape = served["input_shape"]
        self.model = load_keras(ServedModel(**served).registered())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, inputs: list[np.ndarray]) -> list[list]:
        outputs = self.model(np.concatenate(inputs), training=False).numpy()
        return [o.tolist() for o in np.split(outputs, np.cumsum([len(i) for i in inputs])[:-1])]

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        x = np.asarray(body["instances"], np.float32).reshape(-1, *self.shape)
        return {"predictions": await self.predict(x)}


@serve.deployment(max_ongoing_requests=128)
class _Constant:
    async def __call__(self, request: Request) -> dict[str, Any]:
        await request.body()
        return {"predictions": [[0.0]]}


class _uvicorn:
    """A plain FastAPI app in its own process: ``model.predict`` per request, one thread."""

    SCRIPT = """
import raytrain, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from fastapi import FastAPI
from raytrain.tracking.registry import resolve, load_keras
model = load_keras(resolve("{ref}", tracking_uri="{uri}"))
app = FastAPI()
@app.post("/predict")
def predict(body: dict):
    x = np.asarray(body["instances"], np.float32).reshape(-1, *model.input_shape[1:])
    return {{"predictions": model.predict(x, verbose=0).tolist()}}
"""

    def __init__(self, folder: Path, uri: str) -> None:
        (folder / "plain_app.py").write_text(self.SCRIPT.format(ref=f"{NAME}/1", uri=uri))
        self.folder, self.port = folder, free_ports(1)[0]

    def __enter__(self) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}
        command = [sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, "--log-level", "warning"],
            cwd=self.folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return f"http://127.0.0.1:{self.port}/predict"
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the plain FastAPI app did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _registered_model(folder: Path) -> str:
    """A 64-256-256-10 MLP on digits, trained and registered by raytrain."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = {
        "name": NAME,
        "data": {"source": "builtin:digits", "shape": [64]},
        "model": {"builder": "mlp", "params": {"hidden_units": [256, 256]}},
        "train": {"epochs": 3, "batch_size": 64},
        "scaling": {"num_workers": 1},
        "storage": str(folder / "results"),
        "tracking": {"uri": uri, "register_as": NAME},
    }
    path = folder / "serve.yaml"
    path.write_text(json.dumps(spec))
    cwd = Path.cwd()
    os.chdir(folder)  # MLflow's artifacts go to ./mlruns
    try:
        run_experiment(load_experiment(path))
    finally:
        os.chdir(cwd)
    return uri


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(n, 64)).astype(np.float32)
