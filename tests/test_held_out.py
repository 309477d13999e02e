"""Data as users bring it: fixed validation and test files, image folders, dataset lineage.

Every file here is written by the tests themselves: PNG class folders from scikit-learn's
digits, a CSV train/test pair and a Parquet validation set.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from raytrain import tracking
from raytrain.config.loader import load_experiment
from raytrain.config.schema import DataSpec, HeldOutSpec
from raytrain.data.dataset import load_dataset
from raytrain.data.lineage import describe
from raytrain.errors import DataError, SpecError
from raytrain.tracking.lineage import log_datasets

from .conftest import write_yaml

CE = "sparse_categorical_crossentropy"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digit_folders(folder: Path, rows: slice) -> Path:
    """Digits as 8x8 grayscale PNGs (pixel values 0-240), one sub-folder per digit."""
    digits = load_digits()
    for i in range(*rows.indices(len(digits.target))):
        label = folder / str(digits.target[i])
        label.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * 15).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(label / f"{i:04d}.png")
    return folder


def write_digit_tables(folder: Path) -> dict[str, Path]:
    """Digits with string labels: train.csv, validation.parquet and test.csv (347 rows: an odd
    count, so two workers' test shards differ by a row)."""
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    frame["label"] = [NAMES[t] for t in digits.target]
    paths = {
        "train": folder / "train.csv",
        "validation": folder / "validation.parquet",
        "test": folder / "test.csv",
    }
    frame.iloc[:1200].to_csv(paths["train"], index=False)
    frame.iloc[1200:1450].reset_index(drop=True).to_parquet(paths["validation"])
    frame.iloc[1450:].to_csv(paths["test"], index=False)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    return {
        "train": write_digit_folders(folder / "train", slice(0, 500)),
        "test": write_digit_folders(folder / "test", slice(1500, 1600)),
    }


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_digit_tables(tmp_path_factory.mktemp("tables"))


def test_an_image_folder_reads_as_the_pixels_and_classes_it_holds(
    images: dict[str, Path],
) -> None:
    spec = DataSpec(source=f"{images['train']}/", test=HeldOutSpec(source=str(images["test"])))
    data = load_dataset(spec, loss=CE)
    assert data.info.input_shape == (8, 8, 1)
    assert data.info.label_names == [str(d) for d in range(10)]
    assert (data.info.num_train, data.info.num_val, data.info.num_test) == (400, 100, 100)
    assert data.x_train.max() == 240.0  # raw pixel values: the scaling is in the model
    digits = load_digits()
    assert data.x_test is not None
    assert data.y_test is not None
    np.testing.assert_array_equal(np.sort(data.y_test), np.sort(digits.target[1500:1600]))
    first = data.x_test[data.y_test == digits.target[1500]][0]
    np.testing.assert_array_equal(first[:, :, 0], digits.images[1500] * 15)

    resized = load_dataset(DataSpec(source=str(images["train"]), shape=[16, 16, 1]), loss=CE)
    assert resized.x_train.shape[1:] == (16, 16, 1)


@pytest.mark.parametrize("broken", ["corrupt", "channels", "empty"])
def test_a_bad_image_folder_is_a_one_line_error(tmp_path: Path, broken: str) -> None:
    folder = write_digit_folders(tmp_path / "images", slice(0, 30))
    if broken == "corrupt":
        bad = folder / "3" / "0003.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        message = f"'{bad}' is not a readable JPEG or PNG image"
    elif broken == "channels":
        Image.new("RGB", (8, 8)).save(folder / "5" / "rgb.png")
        message = "images have mixed channel counts: .* has 1, .*rgb.png' has 3"
    else:
        (folder / "ten").mkdir()
        message = f"class folder '{folder / 'ten'}' holds no JPEG or PNG image"
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(DataSpec(source=str(folder)), loss=CE)
    assert "\n" not in str(caught.value)


def test_fixed_validation_and_test_files_keep_training_whole(tables: dict[str, Path]) -> None:
    spec = DataSpec(
        source=str(tables["train"]),
        validation=HeldOutSpec(source=str(tables["validation"])),
        test=HeldOutSpec(source=str(tables["test"])),
    )
    data = load_dataset(spec, loss=CE)
    assert (data.info.num_train, data.info.num_val, data.info.num_test) == (1200, 250, 347)
    assert data.info.label_names == sorted(NAMES)
    # One coding for every split: a class is the same output in training, validation and test.
    test = pd.read_csv(tables["test"])
    assert data.y_test is not None
    assert [data.info.label_names[c] for c in data.y_test[:20]] == list(test["label"][:20])
    # Scaling is fitted on the training file alone.
    np.testing.assert_allclose(data.info.scale_offset, data.x_train.mean(axis=0), rtol=1e-5)


def test_a_test_label_training_never_saw_is_named(tmp_path: Path, tables: dict[str, Path]) -> None:
    frame = pd.read_csv(tables["test"])
    frame.loc[3, "label"] = "eleven"
    frame.to_csv(tmp_path / "test.csv", index=False)
    test = HeldOutSpec(source=str(tmp_path / "test.csv"))
    spec = DataSpec(source=str(tables["train"]), test=test)
    with pytest.raises(DataError, match=r"test label 'eleven' in '.*test.csv' never occurs in"):
        load_dataset(spec, loss=CE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "{source: train.csv, validation: {source: validation.parquet}, validation_split: 0.1}",
            "exp.yaml:2: data.validation_split: data.validation is a fixed validation set",
        ),
        ("{source: train.csv, test: {source: nothere.csv}}", "data.test.source: no file matches"),
        ("{source: train.csv, test: {source: 'builtin:digits'}}", "data.test.source: a built-in"),
        ("{source: train.csv, test: {format: csv}}", "data.test.source: Field required"),
    ],
)
def test_held_out_rules_name_the_yaml_path(
    tmp_path: Path, tables: dict[str, Path], data: str, message: str
) -> None:
    for path in tables.values():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    path = write_yaml(tmp_path, f"name: t\ndata: {data}\n")
    with pytest.raises(SpecError, match=message):
        load_experiment(path)


def test_selection_never_looks_at_test_metrics(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "name: t\ncheckpoint: {score: test_accuracy, mode: max}\n"
        "tune: {metric: test_loss, space: {train.epochs: {choice: [1, 2]}}}\n",
    )
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    problems = str(caught.value)
    assert "checkpoint.score: test metrics are measured once, after training" in problems
    assert "tune.metric: test metrics are measured once" in problems


def test_lineage_is_metadata_with_digests_that_follow_the_files(
    tmp_path: Path, tables: dict[str, Path]
) -> None:
    spec = DataSpec(
        source=str(tables["train"]),
        validation=HeldOutSpec(source=str(tables["validation"])),
        test=HeldOutSpec(source=str(tables["test"])),
    )
    records = describe(spec, load_dataset(spec, loss=CE))
    assert [(r.context, r.rows) for r in records] == [
        ("training", 1200),
        ("validation", 250),
        ("test", 347),
    ]
    assert records[2].source == str(tables["test"])
    assert records[2].digest_of == "content"
    assert records[0].schema["classes"] == sorted(NAMES)

    changed = tmp_path / "test.csv"
    pd.read_csv(tables["test"]).iloc[:-1].to_csv(changed, index=False)
    other = spec.model_copy(update={"test": HeldOutSpec(source=str(changed))})
    again = describe(other, load_dataset(other, loss=CE))
    assert again[0].digest == records[0].digest
    assert again[2].digest != records[2].digest

    split = describe(DataSpec(source="builtin:digits"), load_dataset(DataSpec(), loss=CE))
    assert [r.context for r in split] == ["training", "validation"]
    assert split[0].digest != split[1].digest  # two parts of one source

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(
        uri=uri, experiment="e", run_name="r", spec={}, tags={}, spec_file=None
    )
    log_datasets(run, records)
    inputs = mlflow.MlflowClient(tracking_uri=uri).get_run(run.run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"training", "validation", "test"}
    assert by_context["test"].digest == records[2].digest
    assert '"num_rows": 347' in by_context["test"].profile
    assert str(tables["test"]) in by_context["test"].source


@pytest.mark.usefixtures("ray_cluster")
def test_logged_test_accuracy_is_that_of_the_registered_model(
    workdir: Path, tables: dict[str, Path]
) -> None:
    """Two workers, a CSV train/test pair and a Parquet validation set: the test metrics on
    the run, its summary and the registered version are those of the model one can load."""
    from raytrain.orchestration.run import run_experiment
    from raytrain.tracking.registry import load_keras, resolve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    path = write_yaml(
        workdir,
        f"""
        name: held-out
        data:
          source: {tables["train"]}
          validation: {{source: {tables["validation"]}}}
          test: {{source: {tables["test"]}}}
        model: {{builder: mlp, params: {{hidden_units: [32]}}}}
        train: {{epochs: 2, batch_size: 64, optimizer: {{learning_rate: 0.01}}}}
        checkpoint: {{score: val_accuracy, mode: max}}
        scaling: {{num_workers: 2}}
        tracking: {{uri: "{uri}", register_as: held-out}}
        """,
    )
    summary = run_experiment(load_experiment(path))
    logged = summary.test_metrics["test_accuracy"]
    assert summary.tracking is not None
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.tracking.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(logged)
    assert "test_loss" in run.data.metrics
    version = client.get_model_version("held-out", summary.registered_version)
    assert float(version.tags["raytrain.test_accuracy"]) == pytest.approx(logged)
    contexts = {i.tags[0].value: i.dataset.name for i in run.inputs.dataset_inputs}
    assert contexts == {
        "training": "train.csv",
        "validation": "validation.parquet",
        "test": "test.csv",
    }

    # An independent evaluation: the registered model, loaded from the registry, on test.csv.
    model = load_keras(resolve(f"held-out/{summary.registered_version}", tracking_uri=uri))
    test = pd.read_csv(tables["test"])
    predicted = model.predict(test.drop(columns="label").to_numpy(np.float32), verbose=0)
    names = sorted(NAMES)
    accuracy = float(np.mean([names[i] for i in predicted.argmax(axis=1)] == test["label"]))
    assert abs(logged - accuracy) <= 0.001, (logged, accuracy)
    assert accuracy > 0.5


@pytest.mark.usefixtures("ray_cluster")
def test_streamed_image_folders_train_and_test(workdir: Path, images: dict[str, Path]) -> None:
    from raytrain.orchestration.run import run_experiment

    path = write_yaml(
        workdir,
        f"""
        name: streamed-images
        data:
          source: {images["train"]}/
          test: {{source: {images["test"]}/}}
          streaming: true
        model: {{builder: cnn, params: {{filters: [8], dense_units: 16}}}}
        train: {{epochs: 2, batch_size: 32, optimizer: {{learning_rate: 0.01}}}}
        scaling: {{num_workers: 2}}
        tracking: {{uri: "sqlite:///{workdir / "mlflow.db"}"}}
        """,
    )
    summary = run_experiment(load_experiment(path))
    assert summary.best_metrics["val_accuracy"] > 0.2  # chance: 0.1
    assert 0.2 < summary.test_metrics["test_accuracy"] <= 1.0
    assert summary.tracking is not None
    run = mlflow.MlflowClient(tracking_uri=summary.tracking.uri).get_run(summary.tracking.run_id)
    test = next(i.dataset for i in run.inputs.dataset_inputs if i.tags[0].value == "test")
    assert '"num_rows": 100' in test.profile


@pytest.mark.usefixtures("ray_cluster")
def test_a_sweep_tests_every_finished_trial_and_logs_its_datasets_once(
    workdir: Path, tables: dict[str, Path]
) -> None:
    from raytrain.orchestration.sweep import run_sweep

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    path = write_yaml(
        workdir,
        f"""
        name: held-out-sweep
        data: {{source: {tables["train"]}, test: {{source: {tables["test"]}}}}}
        model: {{builder: mlp, params: {{hidden_units: [16]}}}}
        train: {{epochs: 2, batch_size: 64}}
        scaling: {{num_workers: 1}}
        tracking: {{uri: "{uri}", register_as: held-out-sweep}}
        tune:
          metric: val_accuracy
          mode: max
          search: {{algorithm: grid}}
          space: {{train.optimizer.learning_rate: {{grid: [0.003, 0.01]}}}}
        """,
    )
    summary = run_sweep(load_experiment(path))
    finished = [r for r in summary.rows if r["status"] == "finished"]
    assert finished, summary.rows
    assert all(0.0 < r["test_accuracy"] <= 1.0 for r in finished), summary.rows
    assert summary.best is not None
    assert summary.tracking is not None
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(summary.tracking.run_id)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(summary.best["test_accuracy"])
    contexts = sorted(i.tags[0].value for i in parent.inputs.dataset_inputs)
    assert contexts == ["test", "training", "validation"]
    for child in tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id):
        assert not client.get_run(child.info.run_id).inputs.dataset_inputs
    version = client.get_model_version("held-out-sweep", summary.registered_version)
    assert float(version.tags["raytrain.test_accuracy"]) == pytest.approx(
        summary.best["test_accuracy"]
    )
