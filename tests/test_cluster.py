"""Resource feasibility: a request the cluster can never satisfy fails in seconds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray._raylet import PlacementGroupID
from ray.core.generated.gcs_pb2 import PlacementGroupTableData
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain.cluster.connection import (
    PREEMPTION_WATCHER_ENV,
    ClusterInfo,
    connect,
    running_local_instance,
)
from raytrain.cluster.placement import (
    AbandonedGroupCollector,
    orphaned_groups,
    release_orphaned_placement_groups,
)
from raytrain.cluster.resources import check_feasible
from raytrain.config.loader import load_experiment
from raytrain.errors import ClusterError
from raytrain.orchestration.run import run_experiment

from .conftest import REPO


def test_connect_keeps_an_existing_connection(ray_cluster: ClusterInfo) -> None:
    assert connect().address == ray_cluster.address


def test_a_running_local_instance_is_found_only_while_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray start` writes its address to Ray's temp dir; the file outlives a killed instance.
    (A listening socket stands in for the instance: only its port is checked.)"""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert running_local_instance() is None  # no `ray start` here
    (tmp_path / "ray").mkdir()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
        assert running_local_instance() == address
    assert running_local_instance() is None  # the instance is gone, its file is not


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
        now = [100.0]  # the collector's clock, moved by the test
        collector = AbandonedGroupCollector(
            {"CPU": 1.0}, grace_s=2.0, every_s=0.0, clock=lambda: now[0]
        )
        collector.tick()
        now[0] += 1.9
        collector.tick()
        assert _state(abandoned) == "CREATED"  # not before the grace period
        now[0] += 0.2
        collector.tick()
        assert _state(abandoned) == "REMOVED"
        assert _state(occupied) == "CREATED"
        assert _state(tune_trial) == "CREATED"
    finally:
        ray.kill(worker)
        for group in (abandoned, occupied, tune_trial):
            remove_placement_group(group)


def test_a_worker_group_whose_controller_died_is_collected_without_waiting(
    ray_cluster: ClusterInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray Train's controller, killed with its stopped trial just as it asked for the worker
    # group, leaves the group with a dead creator: held for the whole grace period, it made the
    # next trial of a 2-worker sweep wait 30 s. The race cannot be made on demand, so the GCS
    # record of a real empty group is read with its creator marked dead, as Ray marks it.
    from raytrain.shims import ray_core

    abandoned = placement_group([{"CPU": 1.0}])
    young = placement_group([{"CPU": 1.0}])  # empty too, made by this driver: only the grace
    ray.get([abandoned.ready(), young.ready()], timeout=60)
    table = ray_core.placement_group_table

    def marked() -> list[Any]:
        records = table()
        for record in records:
            if record.placement_group_id.hex() == abandoned.id.hex():
                record.creator_actor_id = bytes([7]) * 16  # a Train controller's
                record.creator_actor_dead = True
        return records

    monkeypatch.setattr(ray_core, "placement_group_table", marked)
    try:
        AbandonedGroupCollector({"CPU": 1.0}, grace_s=30.0, every_s=0.0).tick()
        assert _state(abandoned) == "REMOVED"
        assert _state(young) == "CREATED"
    finally:
        for group in (abandoned, young):
            if _state(group) != "REMOVED":
                remove_placement_group(group)


def _state(group: PlacementGroup) -> str:
    return ray.util.placement_group_table(group)["state"]


def _group_record(number: int, **fields: Any) -> PlacementGroupTableData:
    record = PlacementGroupTableData(placement_group_id=bytes([number]) * 18, **fields)
    record.state = fields.get("state", PlacementGroupTableData.CREATED)
    return record


def test_orphaned_groups_follow_rays_lifetime_rule() -> None:
    # Ray left a worker group of a SIGKILLed sweep driver held for good (CI, Ray 2.60), while its
    # job still owned Ray's own detached helpers: the rule looks at the group's creator only.
    driver = bytes([0xFF]) * 16  # a group created by the driver itself names no actor
    keeper, train_controller = bytes([1]) * 16, bytes([2]) * 16
    records = [
        _group_record(1, creator_job_dead=True, creator_actor_id=driver),
        _group_record(2, creator_job_dead=True, creator_actor_id=train_controller),
        _group_record(3, creator_job_dead=True, creator_actor_id=keeper),  # a detached actor's
        _group_record(4, creator_job_dead=True, is_detached=True),
        _group_record(5, creator_job_dead=False, creator_actor_id=driver),  # its job still runs
        _group_record(6, creator_job_dead=True, state=PlacementGroupTableData.REMOVED),
    ]
    found = orphaned_groups(records, keepers={keeper.hex()})
    assert found == [(bytes([1]) * 18).hex(), (bytes([2]) * 18).hex()]


DRIVER = """
import sys, time
import ray
from ray.util.placement_group import placement_group

ray.init(address=sys.argv[1])

@ray.remote(num_cpus=0)
class Keeper:
    def make_group(self):
        self.group = placement_group([{"memory": 1024.0 * 1024}])
        ray.get(self.group.ready())
        return self.group.id.hex()

keeper = Keeper.options(name="keeper", namespace="raytrain-test", lifetime="detached").remote()
kept = ray.get(keeper.make_group.remote())
detached = placement_group([{"memory": 1024.0 * 1024}], lifetime="detached")
ray.get(detached.ready())
print("groups:", kept, detached.id.hex(), flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # starts Ray (or joins it) in a subprocess
def test_groups_of_an_exited_driver_that_outlive_it_on_purpose_are_kept(
    ray_cluster: ClusterInfo, tmp_path: Path
) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), ray_cluster.address], stdout=subprocess.PIPE, text=True
    )
    try:
        line = next(x for x in driver.stdout if x.startswith("groups:"))  # type: ignore[union-attr]
        kept, detached = line.split()[1:]
    finally:
        driver.kill()
        driver.wait()
    try:
        deadline = time.monotonic() + 30
        while not any(job.job_id == _job_of(kept) and job.status != "RUNNING" for job in _jobs()):
            assert time.monotonic() < deadline, "the killed driver's job never ended"
            time.sleep(0.5)
        release_orphaned_placement_groups()
        assert _state(_group(kept)) == "CREATED"  # its creator, a detached actor, lives on
        assert _state(_group(detached)) == "CREATED"
    finally:
        ray.kill(ray.get_actor("keeper", namespace="raytrain-test"))
        remove_placement_group(_group(detached))


def _jobs() -> list[Any]:
    from ray.util.state import list_jobs

    return list_jobs(address=ray.get_runtime_context().gcs_address, limit=10_000)


def _job_of(group_id: str) -> str:
    return group_id[-8:]  # a placement group id ends with its creator job's id


def _group(group_id: str) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))


PRIVATE_RUN = """
import json, sys
from ray.util.state import list_actors
from raytrain.cluster.connection import connect
from raytrain.config.loader import load_experiment
from raytrain.orchestration.run import run_experiment

address = connect("local").address  # where other instances run, the State API needs it
run_experiment(load_experiment(sys.argv[1]))
print("actors:", json.dumps(sorted({a.class_name for a in list_actors(address, limit=1000)})))
"""


@pytest.mark.slow  # starts its own Ray in a subprocess
def test_a_run_on_a_private_instance_starts_no_cleaner_and_no_preemption_watcher(
    tmp_path: Path,
) -> None:
    """They guard runs on clusters that outlive their driver or lose nodes to preemption; a
    private instance does neither (raytrain.cluster.connection.PRIVATE_INSTANCE_ENV)."""
    (tmp_path / "exp.yaml").write_text(
        "name: private\ndata: {source: 'builtin:digits'}\n"
        "model: {builder: mlp, params: {hidden_units: [8]}}\ntrain: {epochs: 1}\n"
        "scaling: {num_workers: 1, one_worker: ray_train}\n"  # a Ray Train run's own actors
        f"storage: {tmp_path / 'results'}\n"
        "tracking: {enabled: false}\n"
    )
    (tmp_path / "driver.py").write_text(PRIVATE_RUN)
    done = subprocess.run(
        [sys.executable, "driver.py", "exp.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != PREEMPTION_WATCHER_ENV},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("actors:"))
    actors = json.loads(line.removeprefix("actors:"))
    assert {"TrainController", "RayTrainWorker"} <= set(actors), actors
    assert not {"PreemptionWatcher", "PlacementGroupCleaner"} & set(actors), actors
