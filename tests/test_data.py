"""Data sources, the deterministic split and per-worker shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from raytrain.config.schema import DataSpec
from raytrain.data.dataset import load_dataset, make_tf_dataset, shard
from raytrain.errors import DataError

from .conftest import write_tfrecord

CE = "sparse_categorical_crossentropy"


def _table(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    frame["label"] = np.where(frame["a"] + frame["b"] > 0, "yes", "no")
    return frame


@pytest.mark.parametrize("fmt", ["csv", "parquet", "tfrecord", "tfrecord.gz", "npz"])
def test_file_formats_load_the_same_examples(tmp_path: Path, fmt: str) -> None:
    frame = _table()
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt.startswith("tfrecord"):
        write_tfrecord(path, frame)
    else:
        np.savez(
            path, x=frame[["a", "b", "c"]].to_numpy(), label=frame["label"].to_numpy().astype(str)
        )
    ds = load_dataset(DataSpec(source=str(path)), loss=CE)
    assert ds.info.num_train + ds.info.num_val == 200
    assert ds.info.num_val == 40
    assert ds.info.num_classes == 2
    assert ds.info.label_names == ["no", "yes"]
    assert ds.x_train.shape == (160, 3)
    assert ds.x_train.dtype == np.float32
    assert ds.info.feature_names == (["x0", "x1", "x2"] if fmt == "npz" else ["a", "b", "c"])


def test_a_multi_valued_tfrecord_key_is_one_feature_per_value(tmp_path: Path) -> None:
    digits = load_digits()
    pixels = [f"p{i}" for i in range(64)]
    frame = pd.DataFrame(digits.data, columns=pixels).assign(label=digits.target)
    write_tfrecord(tmp_path / "digits.tfrecords", frame, vectors={"image": pixels})
    spec = DataSpec(source=str(tmp_path / "*.tfrecords"), features=["image"], shape=[8, 8, 1])
    ds = load_dataset(spec, loss=CE)
    assert ds.info.feature_names == [f"image[{i}]" for i in range(64)]
    assert ds.x_train.shape[1:] == (8, 8, 1)
    assert ds.info.num_classes == 10
    expected = load_dataset(DataSpec(source="builtin:digits", shape=[8, 8, 1]), loss=CE)
    np.testing.assert_array_equal(ds.x_train, expected.x_train)
    np.testing.assert_array_equal(ds.y_val, expected.y_val)


def test_a_file_that_is_not_tfrecord_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d.tfrecord").write_bytes(b"label,a\n1,2\n")
    with pytest.raises(DataError, match="is not a TFRecord file"):
        load_dataset(DataSpec(source=str(tmp_path / "d.tfrecord")), loss=CE)


def test_split_is_deterministic_and_disjoint() -> None:
    first = load_dataset(DataSpec(source="builtin:digits", seed=7), loss=CE)
    again = load_dataset(DataSpec(source="builtin:digits", seed=7), loss=CE)
    other = load_dataset(DataSpec(source="builtin:digits", seed=8), loss=CE)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in first.x_val[:50])
    assert first.x_train.shape[1:] == (8, 8, 1)


def test_scaling_is_fitted_on_the_training_split_only() -> None:
    ds = load_dataset(DataSpec(source="builtin:wine"), loss=CE)
    np.testing.assert_allclose(ds.info.scale_offset, ds.x_train.mean(axis=0), rtol=1e-5)
    assert not np.allclose(ds.info.scale_offset, ds.x_val.mean(axis=0), rtol=1e-3)


def test_regression_labels_stay_float() -> None:
    ds = load_dataset(DataSpec(source="builtin:diabetes"), loss="mean_squared_error")
    assert ds.info.num_classes is None
    assert ds.y_train.dtype == np.float32


def test_shards_are_equal_disjoint_and_cover_the_data() -> None:
    x = np.arange(103, dtype=np.float32).reshape(-1, 1)
    shards = [shard(x, x[:, 0], index=i, count=3) for i in range(3)]
    assert {len(s[0]) for s in shards} == {34}
    seen = np.concatenate([s[0][:, 0] for s in shards])
    assert len(set(seen.tolist())) == 102  # one example dropped so all shards run equal steps


def test_too_few_examples_for_the_workers() -> None:
    x = np.zeros((2, 1), np.float32)
    with pytest.raises(DataError, match="2 examples cannot be split across 4 workers"):
        shard(x, x[:, 0], index=0, count=4)


def test_tf_dataset_batches_the_shard() -> None:
    x = np.arange(10, dtype=np.float32).reshape(-1, 1)
    batches = list(make_tf_dataset(x, x[:, 0], batch_size=4, shuffle=True, seed=1))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("frame", "spec_kwargs", "message"),
    [
        (_table().drop(columns="label"), {}, "label column 'label' is not in"),
        (_table().assign(a="x"), {}, "non-numeric feature columns: a"),
        (_table().assign(b=np.nan), {}, r"features contain NaN or infinite values \(columns: b\)"),
        (_table(), {"features": ["a", "zz"]}, "feature columns not in .*: zz"),
        (
            _table(),
            {"shape": [2, 2]},
            r"data.shape \[2, 2\] holds 4 values, but each example has 3",
        ),
    ],
)
def test_bad_data_is_a_clear_error(
    tmp_path: Path, frame: pd.DataFrame, spec_kwargs: dict, message: str
) -> None:
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        load_dataset(DataSpec(source=str(path), **spec_kwargs), loss=CE)
