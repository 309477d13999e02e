"""Which ``raytrain serve`` process serves on a port: detach, stop, update in place.

A serving process records its pid and Ray address in a state file per port. ``--detach`` runs
the same command in a new session (output in a log file) and returns once it serves; ``--stop``
signals exactly that pid, which shuts Serve (and a Ray instance it started) down as Ctrl-C
would; a second ``raytrain serve`` on the same port joins that Ray instance and updates the
application in place instead of starting another.
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
from pathlib import Path

from raytrain.errors import RaytrainError

__all__ = [
    "client_url",
    "forget",
    "record",
    "running",
    "start_server",
    "state_dir",
    "stop_server",
    "wait_for_signal",
]

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def state_dir() -> Path:
    return Path(os.environ.get("RAYTRAIN_HOME", Path.home() / ".raytrain"))


def start_server(port: int, host: str, args: list[str]) -> str:
    """Start ``raytrain serve ARGS`` in the background; return what it printed once it serves."""
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
    url = client_url(host, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text().strip().splitlines()[-5:]
            raise RaytrainError("the server did not start: " + " | ".join(tail))
        if (running(port) or {}).get("pid") == proc.pid and _healthy(url):
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
        f"the server did not answer at {url} within {START_TIMEOUT_S:.0f} s; see {log}"
    )


def running(port: int) -> dict | None:
    """The live raytrain server on ``port`` (pid, url, Ray address), if there is one."""
    state = _state_file(port)
    if not state.is_file():
        return None
    found = json.loads(state.read_text())
    return found if _alive(found["pid"]) else None


def record(port: int, url: str, ray_address: str) -> None:
    """Say that this process serves on ``port``: a later `raytrain serve` updates it in place."""
    state = _state_file(port)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"pid": os.getpid(), "url": url, "ray_address": ray_address}))


def forget(port: int) -> None:
    """Remove this process's record for ``port`` (another process's stays)."""
    state = _state_file(port)
    if state.is_file() and json.loads(state.read_text())["pid"] == os.getpid():
        state.unlink()


def client_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def stop_server(port: int) -> str:
    """Signal the detached server on ``port`` to shut down, and wait until it has."""
    state = _state_file(port)
    if not state.is_file():
        raise RaytrainError(f"no raytrain server on port {port} (no {state})")
    pid = json.loads(state.read_text())["pid"]
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
            return response.status == 200
    except OSError:
        return False
