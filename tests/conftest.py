"""Shared fixtures: one real local Ray instance for the whole session, real MLflow stores."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import pytest
import ray

from raytrain.cluster import ClusterInfo, connect
from raytrain.train import WORKER_ENV

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ClusterInfo]:
    """A real local Ray instance (dashboard on: Train V2 needs it), shared by every test."""
    info = connect(env_vars=WORKER_ENV)
    yield info
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, so ./mlflow.db and ./raytrain_results land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path
