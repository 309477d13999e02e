"""data.streaming: CSV, Parquet and TFRecord files read by Ray Data tasks, split over workers."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from raytrain.config.loader import load_experiment
from raytrain.config.schema import DataSpec
from raytrain.data.dataset import load_dataset
from raytrain.data.streaming import _Split
from raytrain.errors import DataError
from raytrain.orchestration.run import run_experiment
from raytrain.orchestration.sweep import run_sweep
from raytrain.storage import EMULATOR_ENV, upload_folder

from .conftest import BUCKET, group_workers, write_tfrecord, write_yaml

pytestmark = pytest.mark.usefixtures("ray_cluster")
CE = "sparse_categorical_crossentropy"
LETTERS = np.array(list("abcdefghij"))


def _digits_files(folder: Path, fmt: str = "parquet", parts: int = 3) -> pd.DataFrame:
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    frame["label"] = LETTERS[digits.target]
    for part, rows in enumerate(np.array_split(np.arange(len(frame)), parts)):
        chunk = frame.iloc[rows]
        path = folder / f"digits-{part}.{fmt}"
        chunk.to_parquet(path) if fmt == "parquet" else chunk.to_csv(path, index=False)
    return frame


def test_the_validation_split_is_a_seeded_hash_of_each_row() -> None:
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(5000, 4)), columns=list("abcd"))
    split = _Split(features=list("abcd"), seed=7, fraction=0.2)
    whole = split.is_validation(frame)
    # The same rows whatever blocks the files are cut into, and about the asked fraction.
    pieces = [split.is_validation(frame.iloc[i : i + 333]) for i in range(0, 5000, 333)]
    np.testing.assert_array_equal(whole, np.concatenate(pieces))
    assert 0.18 < whole.mean() < 0.22
    other = _Split(features=list("abcd"), seed=8, fraction=0.2).is_validation(frame)
    assert (whole != other).any()


def test_streamed_parquet_trains_two_workers_with_statistics_of_the_train_rows(
    workdir: Path,
) -> None:
    frame = _digits_files(workdir)
    experiment = write_yaml(
        workdir,
        f"""
        name: streamed
        data:
          source: digits-*.parquet
          streaming: true
          shape: [8, 8, 1]
        model:
          builder: mlp
          params: {{hidden_units: [32]}}
        train:
          epochs: 3
          batch_size: 64
          optimizer: {{learning_rate: 0.01}}
          loss: {CE}
        scaling:
          num_workers: 2
        tracking:
          register_as: streamed
        """,
    )
    loaded = load_experiment(experiment)
    data = load_dataset(loaded.spec.data, loss=CE)
    validation = _Split(features=[f"p{i}" for i in range(64)], seed=0, fraction=0.2)
    chosen = validation.is_validation(frame)
    train = frame[~chosen]
    assert (data.info.num_train, data.info.num_val) == (len(train), int(chosen.sum()))
    assert data.info.label_names == list(LETTERS)
    assert data.info.input_shape == (8, 8, 1)
    expected = train[[f"p{i}" for i in range(64)]].to_numpy().mean(0).reshape(8, 8, 1)
    np.testing.assert_allclose(data.info.scale_offset, expected, rtol=1e-5, atol=1e-5)
    assert data.x_val.shape[1:] == (8, 8, 1)
    assert len(data.x_val) == data.info.num_val

    summary = run_experiment(loaded)
    assert summary.best_metrics["val_accuracy"] >= 0.85
    assert summary.final_metrics["epoch"] == 3
    run = summary.tracking
    assert run is not None
    stored = mlflow.MlflowClient(tracking_uri=run.uri).get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["data.streaming"] == "True"


def test_one_streamed_worker_reads_every_split_through_its_own_process(workdir: Path) -> None:
    """One worker trains in one actor, without Ray Train: its streamed train, validation and
    test splits come from that process's own datasets, not from a Ray Train shard."""
    _digits_files(workdir, fmt="csv")
    test = workdir / "test"
    test.mkdir()
    (workdir / "digits-2.csv").rename(test / "digits-2.csv")
    experiment = write_yaml(
        workdir,
        f"""
        name: streamed-one
        data:
          source: digits-*.csv
          streaming: true
          label: label
          test: {{source: test/digits-2.csv}}
        model: {{builder: mlp, params: {{hidden_units: [32]}}}}
        train: {{epochs: 2, batch_size: 64, optimizer: {{learning_rate: 0.01}}, loss: {CE}}}
        scaling: {{num_workers: 1}}
        tracking: {{enabled: false}}
        """,
    )
    loaded = load_experiment(experiment)
    assert loaded.spec.in_one_process
    summary = run_experiment(loaded)
    assert summary.final_metrics["epoch"] == 2
    assert summary.best_metrics["val_accuracy"] >= 0.6
    assert 0.6 <= summary.test_metrics["test_accuracy"] <= 1.0


def test_a_streamed_sweep_of_two_worker_trials_splits_each_trial_over_its_reused_group(
    workdir: Path,
) -> None:
    """Each 2-worker trial splits the streamed train, validation and test data over the group
    its trial process keeps (as Ray Train would), the second trial on the group of the first."""
    _digits_files(workdir)
    test = workdir / "test"
    test.mkdir()
    (workdir / "digits-2.parquet").rename(test / "digits-2.parquet")
    experiment = write_yaml(
        workdir,
        f"""
        name: streamed-sweep
        data:
          source: digits-*.parquet
          streaming: true
          shape: [8, 8, 1]
          test: {{source: test/digits-2.parquet}}
        model: {{builder: mlp, params: {{hidden_units: [32]}}}}
        train: {{epochs: 2, batch_size: 64, loss: {CE}}}
        scaling: {{num_workers: 2}}
        tracking: {{enabled: false}}
        tune:
          metric: val_accuracy
          mode: max
          max_concurrent_trials: 1
          search: {{algorithm: grid}}
          scheduler: {{name: none}}
          space: {{train.optimizer.learning_rate: {{grid: [0.01, 0.02]}}}}
        """,
    )
    loaded = load_experiment(experiment)
    assert loaded.spec.in_reused_group
    before = group_workers()
    summary = run_sweep(loaded)
    assert len(group_workers() - before) == 2  # one group, both trials
    assert [row["status"] for row in summary.rows] == ["finished", "finished"]
    for row in summary.rows:
        assert row["epochs"] == 2
        assert row["best_val_accuracy"] >= 0.6
        assert 0.6 <= row["test_accuracy"] <= 1.0


def test_streamed_tfrecords_in_gcs_are_read_by_ray_data_tasks(
    gcs_emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain and GZIP TFRecord files in the bucket (the emulator): the read tasks reach it
    through the settings raytrain forwards, and see every row exactly once."""
    monkeypatch.setenv(EMULATOR_ENV, gcs_emulator)
    frame = _digits_files(tmp_path, parts=1)
    pixels = [f"p{i}" for i in range(64)]
    files = tmp_path / "tfrecords"
    files.mkdir()
    write_tfrecord(files / "a.tfrecord", frame.iloc[:900], vectors={"image": pixels})
    write_tfrecord(files / "b.tfrecord.gz", frame.iloc[900:], vectors={"image": pixels})
    upload_folder(files, f"gs://{BUCKET}/{tmp_path.name}")
    source = f"gs://{BUCKET}/{tmp_path.name}/*.tfrecord*"
    spec = DataSpec(source=source, streaming=True, features=["image"], shape=[8, 8, 1])
    data = load_dataset(spec, loss=CE)

    keys = [f"image[{i}]" for i in range(64)]
    chosen = _Split(features=keys, seed=0, fraction=0.2)
    validation = chosen.is_validation(frame.rename(columns=dict(zip(pixels, keys, strict=True))))
    assert (data.info.num_train, data.info.num_val) == (
        int((~validation).sum()),
        int(validation.sum()),
    )
    assert data.info.label_names == list(LETTERS)
    assert data.info.feature_names == keys
    expected = frame.loc[validation, pixels].to_numpy().sum(1)
    np.testing.assert_allclose(
        np.sort(data.x_val.reshape(len(data.x_val), -1).sum(1)), np.sort(expected)
    )
    in_memory = load_dataset(spec.model_copy(update={"streaming": False}), loss=CE)
    assert in_memory.info.num_train + in_memory.info.num_val == len(frame)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(p3="x"), "non-numeric feature columns: p3"),
        (lambda f: f.assign(p5=np.where(f.index == 7, np.nan, f.p5)), "NaN or infinite"),
        (lambda f: f.drop(columns="label"), "label column 'label' is not in"),
    ],
    ids=["strings", "nan", "no-label"],
)
def test_bad_streamed_files_are_one_line_data_errors(
    tmp_path: Path, change: object, message: str
) -> None:
    frame = _digits_files(tmp_path, fmt="csv", parts=1)
    change(frame).to_csv(tmp_path / "digits-0.csv", index=False)  # type: ignore[operator]
    spec = DataSpec(source=str(tmp_path / "*.csv"), streaming=True)
    with pytest.raises(DataError, match=message):
        load_dataset(spec, loss=CE)
