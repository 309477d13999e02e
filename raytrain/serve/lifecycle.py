"""A ``raytrain serve`` process's life: settings, detach, update in place, wait, stop.

``run_server`` is what the command does, usable from Python too. A serving process records its
pid and Ray address in a state file per port. ``detach`` starts the same server in a new session
(from explicit arguments, ``server_args``; output in a log file) and returns once it serves;
``stop_server`` signals exactly that pid, which shuts Serve (and a Ray instance it started) down
as Ctrl-C would; a second server on the same port joins that Ray instance and updates the
application in place instead of starting another.

Nothing here imports Ray until a model is deployed: detaching and stopping stay quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from raytrain.config.options import as_args
from raytrain.config.schema import DEFAULT_TRACKING_URI, Experiment, ServeSpec
from raytrain.errors import RaytrainError
from raytrain.storage import replace_file

if TYPE_CHECKING:
    from raytrain.serve.deployment import Deployment

__all__ = [
    "ServerRun",
    "forget",
    "record",
    "run_server",
    "running",
    "serve_settings",
    "server_args",
    "start_server",
    "state_dir",
    "stop_server",
    "wait_for_signal",
]

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerRun:
    """How ``run_server`` ended: ``detached`` (what the background server printed, and how to
    end it), ``updated_pid`` (the server on the port that was updated in place), or neither
    (it served here until a signal)."""

    port: int
    deployment: Deployment | None = None
    detached: str | None = None
    updated_pid: int | None = None


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
    over it (``autoscaling`` keys: in ``flags["autoscaling"]`` or ``autoscaling``); ``None``
    values leave a setting as it is."""
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
        raise RaytrainError(
            "name a model (NAME, NAME@ALIAS or NAME/VERSION) or pass `experiment`",
            options=("experiment",),
        )
    given = dict(flags or {})
    scaling = {**(given.pop("autoscaling", None) or {}), **(autoscaling or {})}
    scaling = {k: v for k, v in scaling.items() if v is not None}
    settings = base.model_dump()
    settings.update({k: v for k, v in given.items() if v is not None})
    if scaling:
        settings["autoscaling"] = {**(settings.get("autoscaling") or {}), **scaling}
    try:
        spec = ServeSpec.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(["serve", *(str(p) for p in first["loc"])])
        raise RaytrainError(f"{where}: {first['msg']}") from None
    return reference, uri or DEFAULT_TRACKING_URI, spec


def run_server(
    model: str | None = None,
    *,
    experiment: Experiment | None = None,
    tracking_uri: str | None = None,
    settings: dict[str, Any] | None = None,
    canary: str | None = None,
    canary_percent: float = 10.0,
    address: str | None = None,
    verbose: bool = False,
    detach: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> ServerRun:
    """Serve a registered model until Ctrl-C or SIGTERM, as ``raytrain serve`` does.

    ``model``, ``experiment``, ``tracking_uri`` and ``settings`` (serve settings by field name,
    over the experiment's ``serve:`` section) are resolved by ``serve_settings``.

    If a raytrain server already runs on the port, join its Ray instance (unless ``address``
    names another), update its application in place and return. Else with ``detach``, start
    the same server in the background (``server_args``) and return once it answers. Else
    deploy, record this process as the port's server, wait for a signal, then delete the
    application. ``on_event`` hears ``{"kind": "deploying"}`` (before Ray starts),
    ``"deployed"`` (with ``deployment`` and ``metrics_port``), ``"waiting"`` and ``"stopped"``:
    what a front end shows as progress.
    """
    reference, tracking_uri, spec = serve_settings(
        model, experiment=experiment, tracking_uri=tracking_uri, flags=settings
    )
    tell = on_event or (lambda event: None)
    current = running(spec.port)
    if detach and current is None:
        args = server_args(
            reference,
            tracking_uri=tracking_uri,
            spec=spec,
            canary=canary,
            canary_percent=canary_percent,
            address=address,
            verbose=verbose,
        )
        return ServerRun(spec.port, detached=start_server(spec.port, args))
    if current is not None and address is None:
        address = current["ray_address"]  # update that server in place
    from raytrain.serve.deployment import METRICS_PORT, serve_model, stop

    tell({"kind": "deploying", "reference": reference})
    deployment = serve_model(
        reference,
        tracking_uri=tracking_uri,
        spec=spec,
        canary=canary,
        canary_percent=canary_percent,
        address=address,
        verbose=verbose,
    )
    tell({"kind": "deployed", "deployment": deployment, "metrics_port": METRICS_PORT})
    if current is not None:
        return ServerRun(spec.port, deployment=deployment, updated_pid=current["pid"])
    record(spec.port, deployment.url, deployment.ray_address)
    tell({"kind": "waiting", "port": spec.port})
    try:
        wait_for_signal()
    finally:
        stop()
        forget(spec.port)
        tell({"kind": "stopped", "port": spec.port})
    return ServerRun(spec.port, deployment=deployment)


def server_args(
    reference: str,
    *,
    tracking_uri: str,
    spec: ServeSpec,
    canary: str | None = None,
    canary_percent: float = 10.0,
    address: str | None = None,
    verbose: bool = False,
) -> list[str]:
    """The ``raytrain serve`` arguments of a background server with exactly these settings:
    every serve setting is given explicitly, so it needs no experiment file."""
    args = [reference, "--tracking-uri", tracking_uri, *as_args(spec)]
    if canary is not None:
        args += ["--canary", canary]
    args += ["--canary-percent", str(canary_percent)]
    args += ["--address", address] if address else []
    return args + (["--verbose"] if verbose else [])


def state_dir() -> Path:
    """Where servers' state files and logs are: ``$RAYTRAIN_HOME``, else ``~/.raytrain``."""
    return Path(os.environ.get("RAYTRAIN_HOME", Path.home() / ".raytrain"))


def start_server(port: int, args: list[str]) -> str:
    """Start ``raytrain serve ARGS`` in the background; once it serves (its own record for the
    port, and the URL recorded there answers), return what it printed from ``serving`` up to
    ``Ctrl-C stops``: where it answers, as the CLI shows it."""
    if running(port):
        raise RaytrainError(
            f"a server already runs on port {port}: `raytrain serve --stop --port {port}` ends it"
        )
    state = _state_file(port)
    state.parent.mkdir(parents=True, exist_ok=True)
    log = state.with_suffix(".log")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raytrain", "serve", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text().strip().splitlines()[-5:]
            raise RaytrainError("the server did not start: " + " | ".join(tail))
        found = running(port) or {}
        if found.get("pid") == proc.pid and _healthy(found["url"]):
            printed = log.read_text().split("Ctrl-C stops")[0]
            return (
                printed[printed.find("serving ") :].rstrip()
                + "\n"
                + (
                    f"running in the background (pid {proc.pid}, log {log}); "
                    f"`raytrain serve --stop --port {port}` ends it"
                )
            )
        time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    raise RaytrainError(
        f"the server on port {port} did not answer within {START_TIMEOUT_S:.0f} s; see {log}"
    )


def running(port: int) -> dict[str, Any] | None:
    """The live raytrain server on ``port`` (pid, url, Ray address), if there is one."""
    state = _state_file(port)
    if not state.is_file():
        return None
    found = json.loads(state.read_text())
    return found if _alive(found["pid"]) and _same_process(found) else None


def record(port: int, url: str, ray_address: str) -> None:
    """Say that this process serves on ``port``: a later `raytrain serve` updates it in place.
    With its start time: once it has ended, its pid may be another process's."""
    pid = os.getpid()
    found = {"pid": pid, "started": _started(pid), "url": url, "ray_address": ray_address}
    replace_file(_state_file(port), json.dumps(found).encode())


def forget(port: int) -> None:
    """Remove this process's record for ``port`` (another process's stays)."""
    state = _state_file(port)
    if state.is_file() and json.loads(state.read_text())["pid"] == os.getpid():
        state.unlink()


def stop_server(port: int) -> str:
    """Signal the detached server on ``port`` to shut down, and wait until it has."""
    state = _state_file(port)
    if not state.is_file():
        raise RaytrainError(f"no raytrain server on port {port} (no {state})")
    found = json.loads(state.read_text())
    pid = found["pid"]
    if _alive(pid) and not _same_process(found):
        state.unlink(missing_ok=True)
        return (
            f"the server on port {port} (pid {pid}) has ended; pid {pid} is now another "
            "process's, which was left alone"
        )
    if _alive(pid):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return f"stopped the server on port {port} (pid {pid})"


def wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM (both end the server the same way)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass


def _state_file(port: int) -> Path:
    return state_dir() / f"serve-{port}.json"


def _started(pid: int) -> float | None:
    """When process ``pid`` started (None if it is gone): a pid and this identify a process."""
    import psutil

    try:
        return cast(float, psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _same_process(found: dict[str, Any]) -> bool:
    """Whether the recorded pid is still the server that recorded it (same start time)."""
    started = found.get("started")
    return started is not None and _started(found["pid"]) == started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return cast(int, response.status) == 200
    except OSError:
        return False
