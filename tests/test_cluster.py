"""Resource feasibility: a request the cluster can never satisfy fails in seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain.cluster import AbandonedGroupCollector, ClusterInfo, check_feasible, connect
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


@ray.remote(num_cpus=1)
class _Sleeper:
    def ready(self) -> bool:
        return True


def test_abandoned_worker_groups_are_collected_and_occupied_ones_kept(
    ray_cluster: ClusterInfo,
) -> None:
    # What Ray Train leaves when a trial is stopped as its worker group is created: a group
    # holding a worker's CPU with nobody in it. A group with its worker in it stays.
    abandoned = placement_group([{"CPU": 1.0}])
    occupied = placement_group([{"CPU": 1.0}])
    tune_trial = placement_group([{"memory": 1024.0 * 1024}])  # another shape: Tune's own
    ray.get([abandoned.ready(), occupied.ready(), tune_trial.ready()], timeout=60)
    strategy = PlacementGroupSchedulingStrategy(placement_group=occupied)
    worker = _Sleeper.options(scheduling_strategy=strategy).remote()
    ray.get(worker.ready.remote(), timeout=60)
    try:
        collector = AbandonedGroupCollector({"CPU": 1.0}, grace_s=2.0, every_s=0.0)
        collector.tick()
        assert _state(abandoned) == "CREATED"  # not before the grace period
        time.sleep(2.5)
        collector.tick()
        assert _state(abandoned) == "REMOVED"
        assert _state(occupied) == "CREATED"
        assert _state(tune_trial) == "CREATED"
    finally:
        ray.kill(worker)
        for group in (abandoned, occupied, tune_trial):
            remove_placement_group(group)


def _state(group: PlacementGroup) -> str:
    return ray.util.placement_group_table(group)["state"]
