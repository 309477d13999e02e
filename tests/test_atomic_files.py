"""Files raytrain writes are whole or absent (a full disk leaves the old file, never half of a
new one), and ``raytrain serve --stop`` signals only the server it started."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from raytrain import storage
from raytrain.export.destination import publish
from raytrain.serve import lifecycle

OLD = '{"files": ["old.tflite"], "note": "' + "x" * 200 + '"}'


@contextmanager
def _disk_full_after(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes of a file fail (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _state(folder: Path) -> Callable[[], object]:
    (folder / "state.json").write_text(OLD)
    return lambda: storage.write_text(str(folder / "state.json"), "x" * 10_000)


def _report(folder: Path) -> Callable[[], object]:
    (folder / "out").mkdir()
    (folder / "out" / "report.json").write_text(OLD)
    (folder / "staging").mkdir()
    (folder / "staging" / "report.json").write_text("x" * 10_000)
    return lambda: storage.upload_folder(folder / "staging", str(folder / "out"))


def _manifest(folder: Path) -> Callable[[], object]:
    (folder / "export").mkdir()
    (folder / "export" / "raytrain_export.json").write_text(OLD)
    (folder / "export" / "old.tflite").write_bytes(b"old")
    (folder / "new").mkdir()
    for i in range(20):
        (folder / "new" / f"model-{i}.tflite").write_bytes(b"new")
    return lambda: publish(folder / "new", str(folder / "export"))


@pytest.mark.parametrize("case", [_state, _report, _manifest], ids=["state", "report", "manifest"])
def test_a_full_disk_leaves_the_old_file_whole(
    tmp_path: Path, case: Callable[[Path], Callable[[], object]]
) -> None:
    """The old file (written before the disk fills) is what a reader still finds."""
    write = case(tmp_path)
    with _disk_full_after(len(OLD) + 1), pytest.raises(OSError, match="File too large"):
        write()
    target = next(p for p in tmp_path.rglob("*.json") if "staging" not in p.parts)
    assert target.read_text() == OLD
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def sleeper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    monkeypatch.setenv("RAYTRAIN_HOME", str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _record(port: int, pid: int, started: float | None) -> None:
    found = {"pid": pid, "url": "http://127.0.0.1:1", "ray_address": "x"}
    if started is not None:
        found["started"] = started
    (lifecycle.state_dir() / f"serve-{port}.json").write_text(json.dumps(found))


@pytest.mark.parametrize("started", [1.0, None], ids=["other start time", "no start time"])
def test_stop_leaves_alone_a_process_that_reuses_the_servers_pid(
    sleeper: subprocess.Popen[bytes], started: float | None
) -> None:
    _record(8123, sleeper.pid, started)
    message = rf"^the server on port 8123 \(pid {sleeper.pid}\) has ended; pid {sleeper.pid} is now"
    assert lifecycle.running(8123) is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.1)
    assert re.match(message, lifecycle.stop_server(8123))
    assert sleeper.poll() is None
    assert not (lifecycle.state_dir() / "serve-8123.json").exists()


def test_stop_signals_the_server_it_recorded(sleeper: subprocess.Popen[bytes]) -> None:
    _record(8124, sleeper.pid, psutil.Process(sleeper.pid).create_time())
    assert lifecycle.running(8124) is not None
    assert lifecycle.stop_server(8124) == f"stopped the server on port 8124 (pid {sleeper.pid})"
    assert not psutil.pid_exists(sleeper.pid)  # ended and reaped


def test_record_notes_the_servers_start_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAYTRAIN_HOME", str(tmp_path))
    lifecycle.record(8125, "http://127.0.0.1:8125", "x")
    found = json.loads((tmp_path / "serve-8125.json").read_text())
    assert found["started"] == psutil.Process(os.getpid()).create_time()
