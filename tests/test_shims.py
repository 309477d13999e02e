"""raytrain.shims: every private Ray, TensorFlow and MLflow name raytrain uses is there, and each
shim still does what it was written for. Each test here fails when its shim goes dead (the name
moved, or the library no longer calls what the shim replaces); none starts Ray."""

from __future__ import annotations

import logging
import re
import sys
import types

import numpy as np
import pytest

from raytrain.shims import ShimError, check, ray_core, ray_train

from .conftest import REPO

# What marks a name private in the libraries raytrain builds on.
PRIVATE = re.compile(
    r"\b(ray|tensorflow|mlflow|tf)(\.\w+)*\.(_internal|_private|_raylet|_common)\b"
    r"|tensorflow\.python\b|_to_mlflow_entity|ray\.core\.generated"
)


def test_no_module_outside_shims_names_a_private_api() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "raytrain").rglob("*.py"))
        if "shims" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found == [], "private names belong in raytrain/shims:\n" + "\n".join(found)


def test_the_private_name_check_sees_imports_attributes_and_strings() -> None:
    for line in (
        "from ray.train.v2._internal.util import TrainingFramework",
        "    listener = ray._private.worker.listen_error_messages",
        "from ray._raylet import PlacementGroupID",
        '    logging.getLogger("ray.data._internal.progress")',
        "from tensorflow.python.data.ops import multi_device_iterator_ops",
        "            dataset=_dataset(record)._to_mlflow_entity(),",
    ):
        assert PRIVATE.search(line), line
    assert not PRIVATE.search("from ray.train import RunConfig  # _private_instance")


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def test_a_shim_fails_in_one_line_when_its_name_is_gone_or_no_longer_called() -> None:
    library = _module(
        "library",
        "import functools\n"
        "def helper(): pass\n"
        "def wrap(f):\n"
        "    @functools.wraps(f)\n"
        "    def inner(*a): return f(*a)\n"
        "    return inner\n"
        "class Trainer:\n"
        "    def fit(self): return helper()\n"
        "@wrap\n"
        "def connect(): return [x for x in (helper,)]\n",
    )
    check.calls(library, "helper", shim="s", written_for="lib 1.0")
    check.calls(library.Trainer, "helper", shim="s", written_for="lib 1.0")
    assert check.require(library, "helper", shim="s", written_for="lib 1.0") is library.helper
    with pytest.raises(ShimError, match=r"^raytrain's shim s \(written for lib 1.0\) needs "):
        check.require(library, "gone", shim="s", written_for="lib 1.0")
    with pytest.raises(ShimError, match="replaces other, which library no longer calls"):
        check.calls(library, "other", shim="s", written_for="lib 1.0")
    del library.Trainer
    only_wrapped = _module("wrapped", "def f(): pass\n")
    only_wrapped.connect = library.connect
    with pytest.raises(ShimError, match="no longer calls"):
        check.calls(only_wrapped, "helper", shim="s", written_for="lib 1.0")


def test_the_failure_policy_is_the_one_rays_trainer_builds() -> None:
    from ray.train import FailureConfig
    from ray.train.v2.api import data_parallel_trainer

    from raytrain.train.failures import RetryLostWorkersOnly, install

    install()
    assert data_parallel_trainer.create_failure_policy is RetryLostWorkersOnly
    policy = ray_train.installed_failure_policy()(FailureConfig(max_failures=2))
    assert isinstance(policy, ray_train.DefaultFailurePolicy)
    assert ray_train.is_preemption_failure(RuntimeError("no")) is False


def test_a_lean_trainer_starts_without_the_callbacks_it_leaves_out(tmp_path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class Lean(ray_train.LeanTrainer):
        def unneeded_callbacks(self) -> tuple[type, ...]:
            return (ray_train.DatasetsCallback,)

    trainer = Lean(
        lambda: None,
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="lean", storage_path=str(tmp_path)),
    )
    everything = DataParallelTrainer._create_default_callbacks(trainer)
    assert any(isinstance(c, ray_train.DatasetsCallback) for c in everything)
    kept = trainer._create_default_callbacks()
    assert kept
    assert not any(isinstance(c, ray_train.DatasetsCallback) for c in kept)
    assert len(kept) == len(everything) - 1


def test_ray_train_settings_and_the_worker_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    assert ray_train.propagated_settings()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25"
    host, _, port = ray_train.worker_address().rpartition(":")
    assert host
    assert 0 < int(port) < 65536
    assert ray_train.TrainingFramework.TENSORFLOW


def test_the_driver_prints_no_cluster_errors_within_and_its_listener_comes_back() -> None:
    import ray._private.worker as ray_worker  # the shim's own target, checked from outside

    original = ray_worker.listen_error_messages
    with ray_core.unprinted_cluster_errors():
        assert ray_worker.listen_error_messages is not original
        assert ray_worker.listen_error_messages(None, None) is None
    assert ray_worker.listen_error_messages is original
    with ray_core.unprinted_cluster_errors(quiet=False):
        assert ray_worker.listen_error_messages is original


def test_the_address_a_running_ray_start_left(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_core.read_ray_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6390")
    assert ray_core.read_ray_address() == "127.0.0.1:6390"


def test_a_placement_group_by_its_hex_id() -> None:
    hex_id = "ab" * 18
    assert ray_core.placement_group(hex_id).id.hex() == hex_id
    record = ray_core.PlacementGroupTableData(placement_group_id=bytes.fromhex(hex_id))
    assert record.placement_group_id.hex() == hex_id


def test_the_auth_token_from_where_ray_reads_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-the-shim-test")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    from ray._raylet import AuthenticationTokenLoader  # its cache: a session's Ray loaded one

    from raytrain.cluster.jobs import _auth_headers

    AuthenticationTokenLoader.instance().reset_cache()
    try:
        assert _auth_headers() == {"Authorization": "Bearer s3cret-token-for-the-shim-test"}
    finally:
        AuthenticationTokenLoader.instance().reset_cache()


def test_the_private_loggers_raytrain_quiets_exist() -> None:
    for what, name in ray_core.PRIVATE_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET)
        ray_core.quiet_logger(what, logging.ERROR)
        assert logging.getLogger(name).level == logging.ERROR, name


def test_housekeeping_through_a_private_call_fails_loudly_under_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The placement-group cleaner logs its failures for users; under test (the suite sets
    RAYTRAIN_STRICT_SHIMS) a broken private call raises instead of passing for 'none found'."""
    from raytrain.cluster import placement

    def broken() -> list:
        raise ShimError("the GCS table moved")

    monkeypatch.setattr(ray_core, "placement_group_table", broken)
    monkeypatch.setattr(placement, "state_address", lambda: "127.0.0.1:1")
    monkeypatch.setattr("ray.util.state.list_actors", lambda **kwargs: [])
    assert check.strict()
    with pytest.raises(ShimError, match="the GCS table moved"):
        placement.release_orphaned_placement_groups()
    monkeypatch.delenv(check.STRICT_ENV)
    assert placement.release_orphaned_placement_groups() == 0


def test_a_dataset_as_mlflow_logs_it() -> None:
    from mlflow.data.numpy_dataset import from_numpy

    from raytrain.shims.mlflow import dataset_entity

    entity = dataset_entity(from_numpy(np.arange(6.0).reshape(3, 2), name="train"))
    assert entity.name == "train"
    assert entity.digest
    assert entity.source_type


@pytest.mark.skipif(sys.platform != "linux", reason="TensorFlow's CPU wheel")
def test_a_strategy_reads_each_device_dataset_without_autotuning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The datasets a multi-device iterator builds per device do not inherit the input's
    options; with autotuning on, destroying their iterators at the end of `fit` waited seconds
    for the autotune thread (raytrain.shims.tensorflow)."""
    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops

    from raytrain.data.dataset import make_tf_dataset
    from raytrain.train.worker import distributed

    x = np.arange(8, dtype=np.float32).reshape(-1, 1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # read through a multi-device iterator
    dataset = distributed(
        strategy, make_tf_dataset(x, x[:, 0], batch_size=4, shuffle=False, seed=0)
    )
    made: list = []
    create = multi_device_iterator_ops._create_device_dataset
    monkeypatch.setattr(
        multi_device_iterator_ops,
        "_create_device_dataset",
        lambda *a, **k: made.append(create(*a, **k)) or made[-1],
    )
    assert next(iter(dataset))[0].numpy().tolist() == [[0.0], [1.0], [2.0], [3.0]]
    assert made, "no device dataset was built: the strategy no longer reads this way"
    assert [d.options().autotune.enabled for d in made] == [False] * len(made)
