"""Serving a registered model over HTTP with Ray Serve: the replica's API (``app.py``), deploying
and updating it (``deploy.py``), and the server process's lifecycle (``lifecycle.py``)."""

from raytrain.serve.deploy import Deployment, deploy, describe, serve_model, serve_settings, stop

__all__ = ["Deployment", "deploy", "describe", "serve_model", "serve_settings", "stop"]
