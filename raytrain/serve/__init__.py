"""Serving a registered model over HTTP with Ray Serve: the replica's API (``app.py``), deploying
and updating it (``deployment.py``), and the server process's lifecycle (``lifecycle.py``).

Names load on first use: ``lifecycle`` (settings, detach, stop) runs without importing Ray.
"""

import importlib
from typing import Any

_API = {
    "Deployment": "raytrain.serve.deployment",
    "ServedModel": "raytrain.serve.app",
    "ServerRun": "raytrain.serve.lifecycle",
    "deploy": "raytrain.serve.deployment",
    "describe": "raytrain.serve.deployment",
    "run_server": "raytrain.serve.lifecycle",
    "serve_model": "raytrain.serve.deployment",
    "serve_settings": "raytrain.serve.lifecycle",
    "stop": "raytrain.serve.deployment",
    "stop_server": "raytrain.serve.lifecycle",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'raytrain.serve' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
