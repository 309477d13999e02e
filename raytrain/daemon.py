"""``raytrain serve --detach`` / ``--stop``: the server as a background process, found by pid.

The detached server is the same ``raytrain serve`` command in a new session, its output in a log
file; a state file per port records its pid, so ``--stop`` signals exactly that process and it
shuts Serve (and a Ray instance it started) down cleanly, as Ctrl-C would.
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

__all__ = ["client_url", "start_server", "state_dir", "stop_server", "wait_for_signal"]

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def state_dir() -> Path:
    return Path(os.environ.get("RAYTRAIN_HOME", Path.home() / ".raytrain"))


def start_server(port: int, host: str, args: list[str]) -> str:
    """Start ``raytrain serve ARGS`` in the background; return once it answers /healthz."""
    state = _state_file(port)
    if state.is_file() and _alive(json.loads(state.read_text())["pid"]):
        raise RaytrainError(
            f"a detached server already runs on port {port}: `raytrain serve "
            f"--stop --port {port}` ends it"
        )
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
        if _healthy(url) and "Ctrl-C stops" in log.read_text():
            state.write_text(json.dumps({"pid": proc.pid, "url": url, "log": str(log)}))
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


def client_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def stop_server(port: int) -> str:
    """Signal the detached server on ``port`` to shut down, and wait until it has."""
    state = _state_file(port)
    if not state.is_file():
        raise RaytrainError(f"no detached server on port {port} (no {state})")
    pid = json.loads(state.read_text())["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    state.unlink()
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
