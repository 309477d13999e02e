"""Pure functions that the Ray tests reach only through whole runs and sweeps, tested alone:
no Ray, no TensorFlow model, no MLflow store (the fast lane, ``make test-fast``)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from ray.tune.search.sample import Categorical, Float, Integer, Quantized

from raytrain import errors
from raytrain.config.schema import Experiment, TuneSpec, unknown_key_message
from raytrain.config.space_rules import PROBES, _spread, sampled_values
from raytrain.errors import (
    RaytrainError,
    RegistryError,
    SpecError,
    StorageError,
    TrainingError,
    find_user_error,
    spell_options,
)
from raytrain.storage import (
    EMULATOR_ENV,
    check_location,
    forwarded_env,
    glob,
    is_gcs,
    join,
    parent,
    ray_storage,
    resolve,
    to_uri,
)
from raytrain.sweep.results import best_trial, error_reason, pareto_front, trial_status
from raytrain.sweep.space import apply_config, search_space
from raytrain.tracking.names import CHAMPION
from raytrain.tracking.registry import parse_reference
from raytrain.tracking.runs import absolute_tracking_uri, flatten

# ---- raytrain.config.space_rules: the values validation tries for a tune.space entry -------------


def test_every_choice_and_grid_value_is_tried() -> None:
    assert sampled_values("choice", [[8], [16], [128, 64]]) == [[8], [16], [128, 64]]
    assert sampled_values("grid", [0.001, 0.01]) == [0.001, 0.01]


@pytest.mark.parametrize("high", [1, 4, PROBES])
def test_an_integer_range_of_up_to_32_values_is_tried_whole(high: int) -> None:
    assert sampled_values("randint", [1, high]) == list(range(1, high + 1))  # inclusive


def test_a_wider_integer_range_is_its_first_values_then_a_spread_to_the_last() -> None:
    values = sampled_values("randint", [16, 512])
    assert len(values) == PROBES
    assert values[:9] == list(range(16, 25))  # a rule like "divides by 2 or 3" fails here
    assert values[-1] == 512
    assert values == sorted(set(values))
    assert sampled_values("randint", [1, 33]) == [*range(1, 21), *range(22, 34)]


def test_spread_keeps_short_lists_and_thins_long_ones_evenly() -> None:
    assert _spread([3, 1, 2]) == [3, 1, 2]
    assert _spread(list(range(PROBES))) == list(range(PROBES))
    spread = _spread(list(range(100)))
    assert spread[: PROBES // 4] == list(range(PROBES // 4))
    assert spread[-1] == 99
    assert len(spread) == PROBES
    gaps = np.diff(spread[PROBES // 4 :])
    assert set(gaps.tolist()) <= {3, 4}  # even steps over the rest


def test_a_quantized_range_tries_its_multiples() -> None:
    assert sampled_values("quniform", [2, 6, 0.5]) == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]
    assert sampled_values("qloguniform", [0.1, 0.35, 0.1]) == [0.1, 0.2, 0.3]  # no 0.30000000004
    assert sampled_values("quniform", [0.1, 0.15, 0.1]) == [0.1]
    assert sampled_values("quniform", [0.11, 0.19, 0.1]) == [0.11, 0.19]  # no multiple: the ends
    assert len(sampled_values("quniform", [0, 1000, 1])) == PROBES


def test_a_continuous_range_tries_its_ends_and_a_fraction_between() -> None:
    assert sampled_values("uniform", [0.0, 1.0]) == [0.0, 0.382, 1.0]
    assert sampled_values("uniform", [1, 5]) == [1, 2.528, 5]  # not whole: an int field fails
    low, between, high = sampled_values("loguniform", [0.001, 0.1])
    assert (low, high) == (0.001, 0.1)
    assert between == pytest.approx(0.001 * 100**0.382, rel=1e-4)


# ---- raytrain.config.schema: unknown keys --------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "message"),
    [
        (("train", "epoch"), "unknown key 'epoch'; did you mean 'epochs'?"),
        (("trian",), "unknown key 'trian'; did you mean 'train'?"),
        (
            ("train", "zzzz"),
            "unknown key 'zzzz'; expected one of: epochs, batch_size, optimizer, loss, metrics, "
            "mixed_precision, steps_per_execution, seed",
        ),
        (("train", "epochs", "x"), "unknown key 'x'"),  # epochs is no section
        (("model", "params", "x"), "unknown key 'x'"),  # a free-form mapping
    ],
)
def test_unknown_key_message(loc: tuple[str, ...], message: str) -> None:
    assert unknown_key_message(loc) == message


def test_unknown_top_level_key_lists_every_section() -> None:
    message = unknown_key_message(("zzzz",))
    assert message.startswith("unknown key 'zzzz'; expected one of: name, description, data, ")
    for section in ("model", "train", "scaling", "tracking", "tune"):
        assert f" {section}," in message or message.endswith(f" {section}")


# ---- raytrain.sweep.space: tune.space as Tune domains, a trial's experiment ----------------------


def test_search_space_turns_every_kind_into_its_tune_domain() -> None:
    space = search_space(
        TuneSpec(
            space={
                "a": {"uniform": [0.1, 0.2]},
                "b": {"loguniform": [1e-4, 1e-2]},
                "c": {"quniform": [1, 5, 0.5]},
                "d": {"qloguniform": [1, 100, 1]},
                "e": {"randint": [1, 4]},
                "f": {"choice": [[8], [16]]},
                "g": {"grid": [1, 2]},
            }
        )
    )
    assert isinstance(space["a"], Float)
    assert (space["a"].lower, space["a"].upper) == (0.1, 0.2)
    assert type(space["b"].get_sampler()).__name__ == "_LogUniform"
    for key, q in (("c", 0.5), ("d", 1)):
        sampler = space[key].get_sampler()
        assert isinstance(sampler, Quantized)
        assert sampler.q == q
    assert type(space["d"].get_sampler().get_sampler()).__name__ == "_LogUniform"
    assert isinstance(space["e"], Integer)
    assert (space["e"].lower, space["e"].upper) == (1, 5)  # Tune's upper bound is exclusive
    assert isinstance(space["f"], Categorical)
    assert space["f"].categories == [[8], [16]]
    assert space["g"] == {"grid_search": [1, 2]}


def test_a_grid_search_enumerates_choices() -> None:
    spec = TuneSpec(search={"algorithm": "grid"}, space={"x": {"choice": [1, 2]}})
    assert search_space(spec) == {"x": {"grid_search": [1, 2]}}


def test_apply_config_sets_dotted_paths_with_plain_values() -> None:
    spec = Experiment.model_validate(
        {
            "name": "t",
            "checkpoint": {"score": "val_accuracy", "mode": "max"},
            "tune": {"space": {"train.epochs": {"choice": [1, 2]}}},
        }
    )
    trial = apply_config(
        spec,
        {
            "train.optimizer.learning_rate": np.float64(0.01),
            "train.epochs": np.int64(2),
            "model.params.hidden_units": [8],
        },
    )
    assert trial.tune is None
    assert trial.train.epochs == 2
    assert type(trial.train.epochs) is int
    assert trial.train.optimizer.learning_rate == 0.01
    assert type(trial.train.optimizer.learning_rate) is float
    assert trial.model.params == {"hidden_units": [8]}
    # The kept checkpoint is the best by the sweep's metric (val_loss, min), not the file's.
    assert (trial.checkpoint.score, trial.checkpoint.mode) == ("val_loss", "min")
    assert spec.tune is not None  # the sweep's own spec is left as it was
    assert spec.checkpoint.score == "val_accuracy"
    assert spec.model.params == {}


def test_apply_config_ranks_checkpoints_by_the_first_of_several_metrics() -> None:
    spec = Experiment.model_validate(
        {
            "name": "t",
            "tune": {
                "metric": ["val_accuracy", "param_count"],
                "mode": ["max", "min"],
                "space": {"train.epochs": {"choice": [1, 2]}},
            },
        }
    )
    trial = apply_config(spec, {})
    assert (trial.checkpoint.score, trial.checkpoint.mode) == ("val_accuracy", "max")


def test_apply_config_without_a_tune_section_keeps_the_checkpoint_rule() -> None:
    spec = Experiment.model_validate(
        {"name": "t", "checkpoint": {"score": "val_accuracy", "mode": "max"}}
    )
    trial = apply_config(spec, {"train.epochs": 3})
    assert (trial.checkpoint.score, trial.checkpoint.mode, trial.train.epochs) == (
        "val_accuracy",
        "max",
        3,
    )


# ---- raytrain.sweep.results: trial status, error reason, best trial, Pareto front ----------------


@pytest.mark.parametrize(
    ("last", "total", "error", "status"),
    [
        (3, 3, False, "finished"),
        (4, 3, False, "finished"),
        (1, 3, False, "stopped_early"),
        (0, 3, False, "stopped_early"),
        (3, 3, True, "failed"),
        (0, 3, True, "failed"),
    ],
)
def test_trial_status(last: int, total: int, error: bool, status: str) -> None:
    assert trial_status(last, total, error) == status


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Traceback (most recent call last):\n  File x\nValueError: bad width\n", "bad width"),
        (
            "raytrain.errors.TrainingError: the loss became nan at epoch 1",
            "the loss became nan at epoch 1",
        ),
        ("the worker died", "the worker died"),
        ("two words: stay", "two words: stay"),  # not an exception class before the colon
        ("", "unknown error"),
        ("  \n\n ", "unknown error"),
    ],
)
def test_error_reason_is_the_last_line_without_its_class(text: str, reason: str) -> None:
    assert error_reason(text) == reason


def test_error_reason_takes_an_exception_too() -> None:
    assert error_reason(ValueError("nope")) == "nope"  # type: ignore[arg-type]


ROWS = [
    {"id": "a", "acc": 0.9, "size": 100.0},
    {"id": "b", "acc": 0.8, "size": 10.0},
    {"id": "c", "acc": 0.7, "size": 50.0},  # b beats it on both
    {"id": "d", "acc": 0.9, "size": 100.0},  # ties a: neither dominates the other
    {"id": "e", "acc": 0.95, "size": None},  # no number: not ranked
    {"id": "f", "size": 1.0},  # no accuracy: not ranked
]


def _ids(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows]


def test_pareto_front_keeps_what_nothing_dominates() -> None:
    assert _ids(pareto_front(ROWS, ["acc", "size"], ["max", "min"])) == ["a", "b", "d"]


def test_pareto_front_follows_each_metrics_mode() -> None:
    assert _ids(pareto_front(ROWS, ["acc", "size"], ["min", "max"])) == ["a", "c", "d"]
    assert _ids(pareto_front(ROWS, ["acc", "size"], ["min", "min"])) == ["b", "c"]
    assert _ids(pareto_front(ROWS, ["acc"], ["max"])) == ["e"]  # e has no size: it counts here
    assert pareto_front([], ["acc"], ["max"]) == []


def test_best_trial_is_picked_from_the_front() -> None:
    rows = [{"best_" + k: v for k, v in r.items() if k != "id"} | {"id": r["id"]} for r in ROWS]
    best, front = best_trial(rows, ["acc", "size"], ["max", "min"])
    assert best is not None
    assert best["id"] == "a"  # e has the top accuracy but no size
    assert _ids(front) == ["a", "b", "d"]
    best, front = best_trial(rows, ["acc"], ["min"])
    assert best is not None
    assert (best["id"], front) == ("c", [])
    assert best_trial([{"id": "x"}], ["acc"], ["max"]) == (None, [])


# ---- raytrain.tracking: model references, params, tracking URIs ----------------------------------


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("digits", ("digits", CHAMPION, None)),
        ("digits@prod", ("digits", "prod", None)),
        ("digits/3", ("digits", None, "3")),
        ("my-model_2@champion", ("my-model_2", "champion", None)),
    ],
)
def test_parse_reference(reference: str, parsed: tuple) -> None:
    assert parse_reference(reference) == parsed


@pytest.mark.parametrize(
    "reference", ["", "digits@", "@prod", "digits/", "/3", "digits/v2", "a/b/c"]
)
def test_a_bad_reference_says_what_is_expected(reference: str) -> None:
    message = (
        f"'{reference}' is not a model reference; expected NAME (its 'champion' alias), "
        "NAME@ALIAS or NAME/VERSION"
    )
    with pytest.raises(RegistryError, match=f"^{re.escape(message)}$"):
        parse_reference(reference)


def test_flatten_makes_dotted_string_params() -> None:
    tree = {"train": {"epochs": 3, "optimizer": {"learning_rate": 0.1}, "metrics": ["accuracy"]}}
    assert flatten({**tree, "storage": None, "export": False}) == {
        "train.epochs": "3",
        "train.optimizer.learning_rate": "0.1",
        "train.metrics": '["accuracy"]',  # lists as JSON
        "storage": "None",
        "export": "False",
    }
    assert flatten(Experiment(name="t").model_dump(mode="json"))["data.source"] == "builtin:digits"


def test_absolute_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:///sub/../m.db") == f"sqlite:///{tmp_path}/m.db"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")
    assert absolute_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert absolute_tracking_uri("file:///x/mlruns") == "file:///x/mlruns"


# ---- raytrain.storage: locations as strings ------------------------------------------------------


def test_location_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_gcs("gs://b/p")
    assert not is_gcs("/gs://b")
    assert not is_gcs("gcs/b")
    assert join("gs://b/p/", "x", "y.json") == "gs://b/p/x/y.json"
    assert join("/data", "x", "y.json") == "/data/x/y.json"
    assert parent("gs://b/p/x/") == "gs://b/p"
    assert parent("/data/x/y.json") == "/data/x"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve("runs")[1] == str(tmp_path / "runs")
    assert resolve("~/runs")[1] == str(tmp_path / "home" / "runs")
    assert ray_storage("runs") == (str(tmp_path / "runs"), None)
    assert to_uri("/a/b", None) == "/a/b"


def test_gcs_locations_resolve_to_bucket_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:1")  # nothing is contacted
    filesystem, path = resolve("gs://bucket/prefix/")
    assert (filesystem.type_name, path) == ("gcs", "bucket/prefix")
    assert ray_storage("gs://bucket/p") == ("bucket/p", filesystem)
    assert to_uri("bucket/p/checkpoint_1", filesystem) == "gs://bucket/p/checkpoint_1"
    assert to_uri("gs://bucket/p", filesystem) == "gs://bucket/p"
    assert forwarded_env() == {EMULATOR_ENV: "http://127.0.0.1:1"}
    monkeypatch.delenv(EMULATOR_ENV)
    assert forwarded_env() == {}


def test_check_location_needs_a_bucket_and_ignores_local_folders(tmp_path: Path) -> None:
    check_location(str(tmp_path / "not" / "yet"), what="storage")  # created when written
    with pytest.raises(StorageError, match=r"^storage 'gs:///x': expected gs://BUCKET/PREFIX$"):
        check_location("gs:///x", what="storage")


def test_local_glob_is_sorted(tmp_path: Path) -> None:
    for name in ("b.csv", "a.csv", "c.txt"):
        (tmp_path / name).write_text("")
    assert glob(str(tmp_path / "*.csv")) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert glob(str(tmp_path / "*.parquet")) == []


# ---- raytrain.errors: every error crosses Ray's process boundaries -------------------------------

ERRORS = sorted(
    (
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, RaytrainError)
    ),
    key=lambda cls: cls.__name__,
)


def test_every_error_class_is_exported() -> None:
    assert {cls.__name__ for cls in ERRORS} <= set(errors.__all__)
    assert len(ERRORS) == 14


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_survives_pickling(cls: type[RaytrainError]) -> None:
    args = (["a.yaml:3: train.epochs: bad", "b"],) if cls is SpecError else ("set `epochs`",)
    error = cls(*args, options=["epochs"])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert copy.options == ("epochs",)
    if cls is SpecError:
        assert copy.problems == ["a.yaml:3: train.epochs: bad", "b"]
    assert type(error)(*error.args).args == error.args  # rebuilt from args alone, as Ray does


def test_spelled_names_settings_the_callers_way() -> None:
    error = StorageError("set `storage` or `tracking_uri`", options=["storage", "tracking_uri"])
    assert error.spelled(lambda name: "--" + name.replace("_", "-")) == (
        "set --storage or --tracking-uri"
    )
    assert spell_options("keep `other`", ["storage"], str.upper) == "keep `other`"


def test_find_user_error_digs_through_wrappers() -> None:
    mine = TrainingError("the loss became nan")
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = mine
    assert find_user_error(wrapped) is mine
    context = RuntimeError("while handling")
    context.__context__ = wrapped
    assert find_user_error(context) is mine

    class GroupError(Exception):
        worker_failures = {0: ValueError("x"), 1: mine}

    assert find_user_error(GroupError()) is mine
    other = find_user_error(RuntimeError("boom"))
    assert isinstance(other, TrainingError)
    assert str(other) == "training failed: boom"


def test_only_a_lost_worker_is_retried() -> None:
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raytrain.errors import ModelBuildError
    from raytrain.train.failures import is_code_error

    died = WorkerHealthCheckFailedError("worker died", failure=ActorDiedError())
    bug, peer_lost = ModelBuildError("bad width"), type("UnavailableError", (Exception,), {})()
    assert is_code_error(WorkerGroupError("", {0: bug, 1: ValueError("bad data")}))
    assert not is_code_error(WorkerGroupError("", {0: bug, 1: died}))  # a loss wins
    assert not is_code_error(WorkerGroupError("", {0: peer_lost}))  # MWMS without its peer
    assert not is_code_error(ValueError("not a worker group failure"))


def test_the_restart_notice_names_the_lost_worker_and_its_node() -> None:
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raytrain.train.failures import restart_notice

    died = WorkerHealthCheckFailedError("A worker health check failed.", failure=ActorDiedError())
    peer_lost = type("UnavailableError", (Exception,), {})(
        "Collective ops is aborted by: Socket closed\nAdditional GRPC error information from "
        "remote target /job:worker/replica:0/task:1 while calling RecvBuf"
    )
    nodes = {0: "10.0.0.1", 1: "10.0.0.2"}
    line = restart_notice(WorkerGroupError("", {0: peer_lost, 1: died}), 1, 3, nodes)
    assert line == (  # the peer that saw it go is not named
        "lost worker 1 on 10.0.0.2 (ActorDiedError): restarting the workers from the last "
        "checkpoint once the cluster has room for them (retry 1 of 3, failure.max_failures)"
    )
    # Only the survivor's error reached the controller: TensorFlow names the peer it lost.
    line = restart_notice(WorkerGroupError("", {0: peer_lost}), 2, 3, nodes)
    assert line.startswith("lost worker 1 on 10.0.0.2 (its peers saw UnavailableError): ")


def test_a_run_starts_only_the_helper_actors_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray 2.60's trainer starts a Ray Data actor for every run, raytrain's only for Ray Data;
    a placement-group cleaner everywhere, raytrain's not on a private instance."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    from raytrain.train import loop
    from raytrain.train.backend import KerasBackendConfig
    from raytrain.train.loop import KerasTrainer

    def callbacks(datasets: dict[str, object] | None) -> list[str]:
        trainer = KerasTrainer(
            lambda config: None,
            backend_config=KerasBackendConfig(),
            datasets=datasets,
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(storage_path=str(tmp_path)),
        )
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    assert DatasetsCallback.__name__ not in callbacks(None)
    assert DatasetsCallback.__name__ in callbacks({"train": object()})  # streamed input keeps it
    assert PlacementGroupCleanerCallback.__name__ in callbacks(None)  # a cluster of others
    monkeypatch.setattr(loop, "on_private_instance", lambda: True)
    private = callbacks(None)
    assert PlacementGroupCleanerCallback.__name__ not in private
    assert DatasetsCallback.__name__ not in private


def _epoch_folder(root: Path, epoch: int) -> str:
    """What the loop hands its session for an epoch: a local folder with the state file."""
    from raytrain.train.checkpoint import STATE_FILE

    local = root / f"local-{epoch}"
    local.mkdir(exist_ok=True)
    (local / STATE_FILE).write_text(f'{{"metrics": {{"epoch": {epoch}, "val_loss": {epoch}}}}}')
    return str(local)


def test_a_checkpoint_counts_once_its_report_was_delivered(tmp_path: Path) -> None:
    """A checkpoint counts once the receiver of its report marks it (the sweep's driver): a
    process lost after saving epoch 3 but before its report arrived resumes from epoch 2 (epoch 3
    is then reported once, not never); one lost after the arrival, before it heard of it, resumes
    from 3 (reported once, not twice). The latest delivered is kept however few checkpoint.keep
    keeps."""
    from raytrain.train.session import CHECKPOINT_PATH, CheckpointFolder, mark_delivered

    spec = Experiment(name="t", checkpoint={"keep": 1, "score": "val_loss", "mode": "max"})
    trial = str(tmp_path / "trial")
    for epoch in (1, 2):
        metrics = {"epoch": epoch, "val_loss": epoch}
        with CheckpointFolder(spec, trial).saving(_epoch_folder(tmp_path, epoch), metrics) as at:
            mark_delivered(trial, {**metrics, CHECKPOINT_PATH: at})
    assert CheckpointFolder(spec, trial).latest() == 2
    lost = CheckpointFolder(spec, trial)
    with pytest.raises(ConnectionError), lost.saving(_epoch_folder(tmp_path, 3), {"epoch": 3.0}):
        raise ConnectionError("the report was not delivered")
    again = CheckpointFolder(spec, trial)
    assert again.latest() == 2
    with again.resume_from() as folder:
        assert folder is not None
        assert '"epoch": 2' in (Path(folder) / "raytrain_state.json").read_text()
    third = {"epoch": 3, "val_loss": 3}

    def arrives_then_the_process_is_lost(location: str) -> None:
        mark_delivered(trial, {**third, CHECKPOINT_PATH: location})
        raise ConnectionError("lost before it heard that the report arrived")

    with pytest.raises(ConnectionError), again.saving(_epoch_folder(tmp_path, 3), third) as at:
        arrives_then_the_process_is_lost(at)
    resumed = CheckpointFolder(spec, trial)
    assert resumed.latest() == 3
    mark_delivered(trial, {"epoch": 4})  # a report without a checkpoint changes nothing
    assert CheckpointFolder(spec, trial).latest() == 3
    fourth = {"epoch": 4, "val_loss": 4}
    with resumed.saving(_epoch_folder(tmp_path, 4), fourth) as at:
        assert at.endswith("checkpoint_000004")
        mark_delivered(trial, {**fourth, CHECKPOINT_PATH: at})
    assert sorted(p.name for p in Path(trial).glob("checkpoint_*")) == ["checkpoint_000004"]
    assert CheckpointFolder(spec, trial).latest() == 4
