"""Shared fixtures: one real local Ray instance for the whole session, real MLflow stores."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import pytest
import ray

from raytrain.cluster import ClusterInfo, connect
from raytrain.train import WORKER_ENV

REPO = Path(__file__).resolve().parent.parent
BUCKET = "raytrain-test"  # created by the gcs_emulator fixture


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ClusterInfo]:
    """A real local Ray instance (dashboard on: Train V2 needs it), shared by every test."""
    info = connect(env_vars=WORKER_ENV)
    yield info
    ray.shutdown()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A real GCS JSON API (the gcp-storage-emulator package) on loopback, in memory, with the
    bucket ``BUCKET``; yields the value for STORAGE_EMULATOR_HOST."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", *args, "--default-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the GCS emulator exited"
            assert time.monotonic() < deadline, "the GCS emulator did not start in 30 s"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, so ./mlflow.db and ./raytrain_results land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path
