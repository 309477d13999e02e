"""`raytrain plan`: cost arithmetic against the declared prices of every shipped config, ASHA's
expected epochs (against Ray's own bracket), the schedule, data.locality and hardware honesty
without Ray; one real profile on the session's Ray, through the CLI's --json."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from ray.util.state import list_actors
from typer.testing import CliRunner

from raytrain.cli import app
from raytrain.cluster.connection import state_address
from raytrain.config.schema import Experiment
from raytrain.plan.calibration import ACTUAL_WALL_TAG, PLAN_WALL_TAG, compare
from raytrain.plan.clusters import load_cluster, shipped_configs
from raytrain.plan.estimate import Profile, asha_epochs, config_cost, run_wall, schedule

from .conftest import REPO, group_workers

CONFIGS = REPO / "cluster_configs"
PROFILE = Profile(
    hardware="cpu",
    connect_s=7.0,
    data_s=1.0,
    start_s=10.0,
    epoch_s=2.0,
    end_s=1.0,
    retrace_s=0.5,
    slots=2,
    steps=9,
    profiled_steps=9,
)


def _spec(**sections: Any) -> Experiment:
    return Experiment.model_validate({"name": "plan-test", "train": {"epochs": 5}, **sections})


def _cost(spec: Experiment, config: str, profile: Profile = PROFILE) -> Any:
    return config_cost(spec, load_cluster(CONFIGS / config), profile, profile.hardware)


def test_every_node_type_of_every_shipped_config_has_a_dated_price() -> None:
    assert [p.name for p in shipped_configs()] == ["gcp-tpu.yaml", "gcp.yaml", "onprem.yaml"]
    for path in shipped_configs():
        cluster = load_cluster(path)
        assert cluster.node_types, path
        for node in cluster.node_types:
            assert node.price is not None, f"{path.name}: {node.name} has no price entry"
            assert node.price.date
            assert node.price.source
        declared = yaml.safe_load((CONFIGS / "prices" / path.name).read_text())
        assert set(declared["node_types"]) == {n.name for n in cluster.node_types}


def test_cpu_run_on_gcp_fits_on_the_head_and_costs_its_price() -> None:
    spec = _spec(tracking={"enabled": False})
    wall = 7 + 1 + 10 + 5 * 2 + 1  # connect, data, start, epochs, end
    assert run_wall(spec, PROFILE, 2) == (wall, None)
    cost = _cost(spec, "gcp.yaml")
    assert cost.node_hours == {"head": wall / 3600}
    assert cost.on_demand_usd == pytest.approx(0.39 * wall / 3600, rel=1e-12)
    assert cost.spot_usd == cost.on_demand_usd  # nothing left to put on spot
    tpu_config = _cost(spec, "gcp-tpu.yaml")  # the TPU hosts are not for a CPU experiment
    assert tpu_config.node_hours == {"head": wall / 3600}
    assert tpu_config.on_demand_usd == pytest.approx(0.38 * wall / 3600, rel=1e-12)


def test_gpu_workers_are_priced_per_node_and_unknown_spot_stays_unknown() -> None:
    spec = _spec(tracking={"enabled": False}, scaling={"num_workers": 2, "use_gpu": True})
    gpu = Profile(**{**vars(PROFILE), "hardware": "gpu"})
    wall = 29.0
    cost = _cost(spec, "gcp.yaml", gpu)
    assert cost.node_hours == {"head": wall / 3600, "gpu_worker": 2 * wall / 3600}
    assert cost.on_demand_usd == pytest.approx((0.39 + 2 * 0.73) * wall / 3600, rel=1e-12)
    assert cost.spot_usd is None  # gpu_spot_worker's price is not declared: never guessed


def test_tpu_host_and_onprem_machines() -> None:
    tpu = _spec(
        tracking={"enabled": False},
        scaling={"num_workers": 1, "accelerator": "tpu", "resources_per_worker": {"TPU": 4}},
    )
    profile = Profile(**{**vars(PROFILE), "hardware": "tpu"})
    cost = _cost(tpu, "gcp-tpu.yaml", profile)
    assert cost.node_hours == {"head": 29 / 3600, "tpu_worker": 29 / 3600}
    assert cost.on_demand_usd == pytest.approx((0.38 + 12.90) * 29 / 3600, rel=1e-12)
    onprem = _cost(_spec(tracking={"enabled": False}), "onprem.yaml")
    assert onprem.node_hours == {"node": 3 * 29 / 3600}  # head and two workers, all along
    assert onprem.on_demand_usd == 0.0
    assert onprem.spot_usd is None


def test_onprem_data_rules_out_the_gcp_configs() -> None:
    spec = _spec(data={"locality": "onprem"})
    for config in ("gcp.yaml", "gcp-tpu.yaml"):
        cost = _cost(spec, config)
        assert not cost.usable
        assert cost.note == "data.locality: onprem: no node here carries it"
    assert _cost(spec, "onprem.yaml").usable


def test_a_cpu_profile_never_predicts_gpu_nodes() -> None:
    spec = _spec(scaling={"num_workers": 2, "use_gpu": True})
    cost = config_cost(spec, load_cluster(CONFIGS / "gcp.yaml"), PROFILE, "gpu")
    assert cost.usable
    assert cost.node_hours is None
    assert cost.on_demand_usd is None
    assert "`raytrain plan FILE --address HEAD_IP:6379`" in cost.note
    assert "ray up gcp.yaml" in cost.note
    onprem = config_cost(spec, load_cluster(CONFIGS / "onprem.yaml"), PROFILE, "gpu")
    assert not onprem.usable
    assert onprem.note == "no gpu node type fits a worker"


def test_asha_expected_epochs_by_hand() -> None:
    assert asha_epochs(1, 6, 1, 2) == [6.0]  # the first arrival always continues
    assert asha_epochs(3, 4, 4, 2) == [4.0] * 3  # grace = max_t: no rung stops anything
    # rung at 1: the second trial meets the median of one value: continues half the time
    first, second = asha_epochs(2, 2, 1, 2)
    assert first == 2.0
    assert second == pytest.approx(1.5, abs=0.02)


def test_asha_expected_epochs_match_rays_bracket() -> None:
    """Ray's own bracket, fed trial after trial a value that keeps its rank at every rung,
    stops as often as predicted (the prediction seeds its own draws)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    trials, max_t, grace, rf = 8, 9, 1, 3.0
    rng = random.Random(0)
    total, rounds = 0, 1000
    for _ in range(rounds):
        bracket = _Bracket(grace, max_t, rf, 0, stop_last_trials=False)
        for trial_id in range(trials):
            trial, value = SimpleNamespace(trial_id=trial_id), rng.random()
            for epoch in range(1, max_t + 1):
                total += 1
                if bracket.on_result(trial, epoch, value) == "STOP":
                    break
    predicted = sum(asha_epochs(trials, max_t, grace, rf))
    assert total / rounds == pytest.approx(predicted, rel=0.05)


def test_sweep_schedule_concurrency_and_budget() -> None:
    tune = {"num_samples": 4, "scheduler": {"name": "none"}, "max_concurrent_trials": 2}
    spec = _spec(scaling={"num_workers": 1}, tune=tune)
    # two places; each trial: Tune's share and its start (a new process: 1.5 + 11 s; a reused
    # one: 0.4 + 0.5 s), then 10 s of epochs
    planned = schedule(spec, PROFILE, 2)
    assert (planned.trials, planned.concurrent) == (4, 2)
    assert planned.trials_s == pytest.approx(1.5 + 11 + 0.4 + 0.5 + 2 * 10)
    budget = schedule(
        _spec(scaling={"num_workers": 1}, tune={**tune, "time_budget_s": 20}), PROFILE, 2
    )
    assert budget.trials == 2
    assert budget.trials_s == 20
    assert budget.budget_capped
    grid = {"search": {"algorithm": "grid"}, "space": {"train.batch_size": {"grid": [16, 32, 64]}}}
    assert schedule(_spec(tune=grid), PROFILE, 2).trials == 3


def test_two_worker_trials_start_a_group_once_per_place_unless_they_are_ray_train_runs() -> None:
    tune = {"num_samples": 3, "scheduler": {"name": "none"}}
    reused = schedule(_spec(scaling={"num_workers": 2}, tune=tune), PROFILE, 2)
    # one place of 2 workers: the first trial starts the group (10 s + 1 s), the others reuse it
    assert reused.concurrent == 1
    assert reused.trials_s == pytest.approx(1.5 + 11 + 2 * (0.4 + 0.5) + 3 * 10)
    each = _spec(scaling={"num_workers": 2, "trial_workers": "ray_train"}, tune=tune)
    assert schedule(each, PROFILE, 2).trials_s == pytest.approx(3 * (1.5 + 11 + 10))


def test_plan_against_actual_in_one_line() -> None:
    assert compare({}) is None
    tags = {ACTUAL_WALL_TAG: "44.0", PLAN_WALL_TAG: "40.0"}
    assert compare(tags) == "planned 40 s, took 44 s (+10%); ? node-hours planned, ? used"


def test_a_missing_price_file_leaves_prices_unknown(tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIGS / "gcp.yaml").read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    cost = _cost_at(tmp_path / "mine.yaml")
    assert cost.node_hours == {"head": 29 / 3600}
    assert cost.on_demand_usd is None
    assert "head: price unknown (no entry in prices/mine.yaml)" in cost.prices


def _cost_at(path: Path) -> Any:
    return config_cost(_spec(tracking={"enabled": False}), load_cluster(path), PROFILE, "cpu")


def test_plan_profiles_for_real_and_prints_json(ray_cluster: Any, workdir: Path) -> None:
    """One real profile (wine: a CSV, 1 worker) on the session's Ray; the JSON's shape."""
    wine = str(REPO / "experiments" / "wine.yaml")
    args = ["plan", wine, "--json", "--set", f"storage={workdir / 'results'}"]
    result = CliRunner().invoke(app, [*args, "--set", "tracking.enabled=false"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output.strip().splitlines()[-1])
    assert plan["trials"] == 1
    assert plan["epochs"] == 30
    assert plan["wall_s"] > 30 * plan["epoch_s"] > 0
    assert plan["profile"]["steps"] == plan["profile"]["profiled_steps"] == 5  # 133 rows / 32
    by_name = {c["name"]: c for c in plan["configs"]}
    assert set(by_name) == {"gcp.yaml", "gcp-tpu.yaml", "onprem.yaml"}
    gcp = by_name["gcp.yaml"]
    assert set(gcp) >= {"name", "node_hours", "on_demand_usd", "spot_usd"}
    assert gcp["on_demand_usd"] == pytest.approx(gcp["node_hours"] * 0.39, rel=1e-12)
    assert Path(plan["saved"]).exists()


def test_a_sweep_of_two_worker_trials_is_profiled_on_a_group_it_then_ends(
    ray_cluster: Any, workdir: Path
) -> None:
    """The profile trains the way the trials will, on a worker group (its start, then a reused
    trial's retrace), and leaves no group holding the cluster's CPUs."""
    sweep = str(REPO / "experiments" / "sweep.yaml")
    args = ["plan", sweep, "--json", "--set", f"storage={workdir / 'results'}"]
    before = group_workers()
    result = CliRunner().invoke(app, [*args, "--set", "tracking.enabled=false"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output.strip().splitlines()[-1])
    assert (plan["trials"], plan["concurrent"]) == (6, 1)
    assert plan["profile"]["start_s"] > plan["profile"]["retrace_s"] > 0
    assert len(group_workers() - before) == 2
    alive = list_actors(
        address=state_address(),
        filters=[("class_name", "=", "_GroupWorker"), ("state", "=", "ALIVE")],
    )
    assert not [a for a in alive if a["actor_id"] not in before]
