"""Resource feasibility: a request the cluster can never satisfy fails in seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raytrain.cluster import ClusterInfo, check_feasible, connect
from raytrain.errors import ClusterError
from raytrain.run import run_experiment
from raytrain.specfile import load_experiment

from .conftest import REPO


def test_connect_keeps_an_existing_connection(ray_cluster: ClusterInfo) -> None:
    assert connect().address == ray_cluster.address


def test_infeasible_worker_count_fails_fast(ray_cluster: ClusterInfo, workdir: Path) -> None:
    loaded = load_experiment(
        REPO / "experiments" / "quickstart.yaml",
        ["scaling.num_workers=64", "train.batch_size=128"],
    )
    start = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        run_experiment(loaded)
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert "experiment 'digits-cnn' needs 64 worker(s) x {1 CPU}" in message
    assert "fit 2 such worker(s)" in message
    assert "Lower scaling.num_workers" in message
    assert not (workdir / "mlflow.db").exists(), "nothing is tracked for a run that cannot start"


def test_missing_resource_is_named(ray_cluster: ClusterInfo) -> None:
    with pytest.raises(ClusterError, match="No node has 'GPU'"):
        check_feasible(num_workers=1, per_worker={"CPU": 1, "GPU": 1}, what="this run")
    with pytest.raises(ClusterError, match="No node has 'onprem'"):
        check_feasible(num_workers=1, per_worker={"CPU": 1, "onprem": 1}, what="this run")


def test_fractional_workers_fit(ray_cluster: ClusterInfo) -> None:
    check_feasible(num_workers=4, per_worker={"CPU": 0.5}, what="this run")
    with pytest.raises(ClusterError, match="fit 4 such worker"):
        check_feasible(num_workers=5, per_worker={"CPU": 0.5}, what="this run")


def test_cluster_error_survives_pickling() -> None:
    import pickle

    error = ClusterError("no GPU")
    assert str(pickle.loads(pickle.dumps(error))) == "no GPU"
