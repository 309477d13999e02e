"""Real 2-worker training on a local Ray instance, read back from a real MLflow store."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
from ray.util.state import list_actors

from raytrain.cluster.connection import state_address
from raytrain.config.loader import load_experiment
from raytrain.errors import ModelBuildError, TrainingError
from raytrain.orchestration.run import run_experiment
from raytrain.train import checkpoint
from raytrain.train.checkpoint import MODEL_FILE

from .conftest import REPO, write_yaml

pytestmark = pytest.mark.usefixtures("ray_cluster")
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def test_two_workers_converge_and_mlflow_has_everything(workdir: Path) -> None:
    loaded = load_experiment(QUICKSTART)
    assert loaded.spec.scaling.num_workers == 2
    events: list[dict] = []
    summary = run_experiment(loaded, on_epoch=events.append)

    epochs = loaded.spec.train.epochs
    assert [int(e["epoch"]) for e in events] == list(range(1, epochs + 1))
    assert summary.best_metrics["val_accuracy"] >= 0.9
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s", "samples_per_s"} <= set(
        events[-1]
    )

    run = summary.tracking
    assert run is not None
    client = mlflow.MlflowClient(tracking_uri=run.uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["scaling.num_workers"] == "2"
    assert stored.data.tags["raytrain.spec_hash"]
    assert stored.data.tags["ray.version"].startswith("2.")
    history = client.get_metric_history(run.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    assert stored.data.metrics["best_val_accuracy"] == pytest.approx(
        summary.best_metrics["val_accuracy"]
    )
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "spec")}
    assert artifacts == {"spec/quickstart.yaml", "spec/resolved.yaml"}

    # The logged model is the best checkpoint's model, and it predicts like it.
    assert summary.best_checkpoint is not None
    trained = tf.keras.models.load_model(Path(summary.best_checkpoint, MODEL_FILE), compile=False)
    x = np.random.default_rng(0).uniform(0, 16, size=(16, 8, 8, 1)).astype(np.float32)
    mlflow.set_tracking_uri(run.uri)
    logged = mlflow.tensorflow.load_model(f"models:/digits-cnn/{summary.registered_version}")
    np.testing.assert_allclose(
        logged.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6
    )
    # Its requirements are pinned as MLflow would infer them, without the process it starts to.
    model_uri = f"models:/digits-cnn/{summary.registered_version}"
    pinned = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert [p.split("==")[0] for p in pinned] == [
        "mlflow",
        "cloudpickle",
        "numpy",
        "tensorflow",
        "tf-keras",
    ]
    assert f"tensorflow=={tf.__version__}" in pinned
    # Checkpoints kept: checkpoint.keep best by val_accuracy.
    kept = [
        p
        for p in Path(summary.storage_path).iterdir()
        if p.is_dir() and p.name.startswith("checkpoint_")
    ]
    assert len(kept) == loaded.spec.checkpoint.keep


def test_tabular_csv_with_string_labels(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-worker run, whose model is logged by the process that trained it: this process
    never loads it (nor imports TensorFlow for it)."""

    def not_here(location: str) -> None:
        raise AssertionError(f"the driver loaded {location}")

    monkeypatch.setattr(checkpoint, "load_model", not_here)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    label = np.where(x[:, 0] - 2 * x[:, 1] > 0, "pos", "neg")
    lines = ["f0,f1,f2,f3,target"] + [
        ",".join(f"{v:.5f}" for v in row) + f",{lab}" for row, lab in zip(x, label, strict=True)
    ]
    (workdir / "table.csv").write_text("\n".join(lines))
    loaded = load_experiment(
        REPO / "experiments" / "wine.yaml",
        ["data.source=table.csv", "data.label=target", "train.epochs=15", "scaling.num_workers=1"],
    )
    summary = run_experiment(loaded)
    assert summary.best_metrics["val_accuracy"] >= 0.9
    assert summary.tracking is not None
    mlflow.set_tracking_uri(summary.tracking.uri)  # this process never needed it
    meta = mlflow.models.get_model_info(f"runs:/{summary.tracking.run_id}/model").metadata
    assert meta["label_names"] == ["neg", "pos"]


def test_user_builder_experiment_runs(workdir: Path) -> None:
    loaded = load_experiment(
        REPO / "experiments" / "custom_model.yaml", ["train.epochs=3", "tracking.enabled=false"]
    )
    summary = run_experiment(loaded)
    assert summary.tracking is None
    assert summary.best_metrics["val_accuracy"] > 0.8
    assert len(summary.epochs) == 0  # no progress callback given, no events collected


def test_killed_worker_resumes_from_last_checkpoint(workdir: Path) -> None:
    # failure.max_failures: 1. A small MLP: the test is about the restart, not the model.
    cheaper = ["train.epochs=4", "model={builder: mlp, params: {hidden_units: [32]}}"]
    loaded = load_experiment(QUICKSTART, cheaper)
    killed_after: list[int] = []

    def kill_one_worker(event: dict) -> None:
        if killed_after or event["epoch"] < 2:
            return
        workers = list_actors(
            address=state_address(),  # this session's Ray: others may run on the machine
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        assert len(workers) == 2
        os.kill(int(workers[-1]["pid"]), signal.SIGKILL)
        killed_after.append(int(event["epoch"]))

    notices: list[str] = []
    summary = run_experiment(loaded, on_epoch=kill_one_worker, on_notice=notices.append)
    assert killed_after == [2]
    (notice,) = notices  # one line says what happened
    assert re.fullmatch(
        r"lost worker \d on [\d.]+ \([\w ]+\): restarting the workers from the last checkpoint "
        r"once the cluster has room for them \(retry 1 of 1, failure.max_failures\)",
        notice,
    ), notice
    run = summary.tracking
    assert run is not None
    client = mlflow.MlflowClient(tracking_uri=run.uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    # Rank 0 had reported epoch 2 when the worker died; Ray's controller had committed epoch 1's
    # checkpoint at least (reports queue one deep), epoch 2's at most. Never from scratch.
    resumed = int(stored.data.tags["raytrain.resumed_from_epoch"])
    assert resumed in (1, 2)
    # One value per epoch: an epoch trained twice (reported, lost before Ray committed it, then
    # trained again after the restart) is logged once.
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "val_accuracy"))
    assert steps == list(range(1, 5))
    assert summary.final_metrics["epoch"] == 4
    assert summary.best_metrics["val_accuracy"] >= 0.9


def test_a_killed_one_worker_process_resumes_from_its_last_checkpoint(workdir: Path) -> None:
    """A 1-worker run trains in one actor, not a Ray Train run: killed, it is started again
    from the run's latest checkpoint, and the user hears one line."""
    cheaper = [
        "scaling.num_workers=1",
        "train.epochs=4",
        "model={builder: mlp, params: {hidden_units: [32]}}",
        "failure.max_failures=1",
    ]
    loaded = load_experiment(QUICKSTART, cheaper)
    killed_after: list[int] = []

    def kill_the_process(event: dict) -> None:
        if killed_after or event["epoch"] < 2:
            return
        (trainer,) = list_actors(
            address=state_address(),
            filters=[("class_name", "=", "_Trainer"), ("state", "=", "ALIVE")],
            detail=True,
        )
        os.kill(int(trainer.pid), signal.SIGKILL)
        killed_after.append(int(event["epoch"]))

    notices: list[str] = []
    summary = run_experiment(loaded, on_epoch=kill_the_process, on_notice=notices.append)
    assert killed_after == [2]
    (notice,) = notices
    assert re.fullmatch(
        r"lost worker 0 on [\d.]+ \(\w+\): restarting the worker from the last checkpoint "
        r"once the cluster has room for it \(retry 1 of 1, failure.max_failures\)",
        notice,
    ), notice
    run = summary.tracking
    assert run is not None
    client = mlflow.MlflowClient(tracking_uri=run.uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert int(stored.data.tags["raytrain.resumed_from_epoch"]) == 2  # its checkpoint was stored
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "val_accuracy"))
    assert steps == list(range(1, 5))  # each epoch logged once
    assert summary.final_metrics["epoch"] == 4
    assert not list_actors(
        address=state_address(), filters=[("class_name", "=", "_Trainer"), ("state", "=", "ALIVE")]
    )


def _only_run(uri: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()]
    )
    return run


def test_a_builder_failing_in_the_worker_reaches_the_user_as_itself(workdir: Path) -> None:
    """...at once: a bug in the model code is not retried (failure.max_failures is for lost
    workers), so the builder runs once."""
    (workdir / "late.py").write_text(
        "def build(**kwargs):\n"
        f"    with open({str(workdir / 'calls')!r}, 'a') as calls:\n"
        "        calls.write('x')\n"
        "    raise ValueError('bad width')\n"
    )
    exp = write_yaml(
        workdir,
        """
        name: t
        model: {builder: "late:build"}
        train: {epochs: 1}
        scaling: {num_workers: 1}
        """,
    )
    with pytest.raises(ModelBuildError, match="'late:build' failed: ValueError: bad width"):
        run_experiment(load_experiment(exp))
    run = _only_run(f"sqlite:///{workdir / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    assert "bad width" in run.data.tags["raytrain.error"]
    assert (workdir / "calls").read_text() == "x"


def test_a_diverging_loss_stops_with_a_clear_error(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        workdir / "huge.npz",
        x=rng.uniform(1e29, 1e30, (64, 2)).astype(np.float32),
        label=rng.normal(size=64).astype(np.float32),
    )
    exp = write_yaml(
        workdir,
        """
        name: t
        data: {source: huge.npz, normalize: none}
        train: {epochs: 2, loss: mean_squared_error, metrics: [mean_absolute_error]}
        scaling: {num_workers: 1}
        """,
    )
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch 1; lower"):
        run_experiment(load_experiment(exp))


def test_mixed_precision_and_steps_per_execution(workdir: Path) -> None:
    loaded = load_experiment(
        REPO / "experiments" / "wine.yaml",
        [
            "train.mixed_precision=mixed_bfloat16",
            "train.steps_per_execution=4",
            "train.epochs=10",
            "tracking.enabled=false",
        ],
    )
    summary = run_experiment(loaded)
    assert summary.best_metrics["val_accuracy"] >= 0.8
    assert summary.best_checkpoint is not None
    model = tf.keras.models.load_model(Path(summary.best_checkpoint, MODEL_FILE), compile=False)
    body = model.layers[-1]
    policies = {layer.dtype_policy.name for layer in body.layers}
    assert "mixed_bfloat16" in policies
    assert body.layers[-1].dtype_policy.name == "float32"  # the head stays in float32
    assert model.predict(np.zeros((1, 13), np.float32), verbose=0).dtype == np.float32


def test_two_workers_learn_from_both_data_shards(workdir: Path) -> None:
    """Correctness guard for data parallelism: classes 5-9 exist only in the second worker's
    shard, so a run that stops training on both shards cannot classify half the validation set."""
    from raytrain.data.dataset import load_dataset, shard

    rows, rng = 1200, np.random.default_rng(0)
    spec_text = """
        name: shards
        data: {source: data.npz, normalize: none, validation_split: 0.2}
        model: {builder: mlp, params: {hidden_units: [32]}}
        scaling: {num_workers: 2}
        train: {epochs: 4, batch_size: 64, optimizer: {learning_rate: 0.01}}
        tracking: {enabled: false}
    """
    # Where each row lands (train split, which shard) comes from raytrain's own split and shard.
    np.savez(
        workdir / "data.npz", x=np.arange(rows, dtype=np.float32)[:, None], label=np.zeros(rows)
    )
    probe = load_experiment(write_yaml(workdir, spec_text)).spec
    split = load_dataset(probe.data, loss=probe.train.loss)
    second = shard(split.x_train, split.y_train, index=1, count=2)[0][:, 0].astype(int)
    train = split.x_train[:, 0].astype(int)

    label = rng.integers(0, 5, rows)  # shard 0 (and validation): classes 0-4 ...
    label[second] += 5  # ... shard 1: classes 5-9
    val = np.setdiff1d(np.arange(rows), train)
    label[val] = rng.integers(0, 10, len(val))
    x = 3 * np.eye(10, dtype=np.float32)[label] + rng.normal(0, 0.5, (rows, 10)).astype(np.float32)
    np.savez(workdir / "data.npz", x=x, label=label)

    summary = run_experiment(load_experiment(workdir / "exp.yaml"), on_epoch=lambda e: None)
    assert summary.best_metrics["val_accuracy"] > 0.9
    # The control: the first shard alone cannot get past about half of the validation set.
    first = np.setdiff1d(train, second)
    alone = tf.keras.Sequential([tf.keras.Input((10,)), tf.keras.layers.Dense(10)])
    alone.compile(
        "adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    )
    alone.fit(x[first], label[first], epochs=20, verbose=0)
    assert alone.evaluate(x[val], label[val], verbose=0)[1] < 0.6
