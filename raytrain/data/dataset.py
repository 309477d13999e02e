"""Data sources -> in-memory arrays -> one equal shard per worker -> tf.data.

Why arrays sharded by hand rather than Ray Data's ``to_tf``: the driver reads the source once,
puts the arrays in Ray's object store, and each worker takes rows ``rank::world_size`` of the
training split. Shards are cut to equal length, so every worker runs the same number of steps per
epoch, which MultiWorkerMirroredStrategy requires (a worker with one batch more waits forever in
the all-reduce). The input pipeline is then a plain ``from_tensor_slices`` with no per-batch Python
in the loop, the fastest input TF has for data that fits in memory. Files are local or in GCS
(``gs://bucket/path/*.parquet``); both are read through storage.py's pyarrow filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from raytrain.config.schema import CLASSIFICATION_LOSSES, DataSpec
from raytrain.data.images import pixel_names, read_images
from raytrain.data.labels import LabelCoding
from raytrain.data.sources import source_files
from raytrain.data.streaming import Streams, feature_columns, open_streams
from raytrain.data.tfrecord import read_frames
from raytrain.errors import DataError
from raytrain.storage import open_input

__all__ = [
    "DataInfo",
    "Dataset",
    "load_dataset",
    "make_tf_dataset",
    "shard",
]


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about the data (shapes, classes, feature scaling)."""

    input_shape: tuple[int, ...]
    num_classes: int | None
    feature_names: list[str]
    label_names: list[str] | None
    num_train: int
    num_val: int
    scale_offset: np.ndarray = field(repr=False)
    scale_variance: np.ndarray = field(repr=False)
    num_test: int = 0


@dataclass(frozen=True)
class Dataset:
    """The examples, or with ``streams`` (``data.streaming``) the first rows of each split and
    the Ray Data datasets that hold them all. ``x_test`` is None without ``data.test``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    info: DataInfo
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    streams: Streams | None = None
    ray_datasets: dict[str, Any] | None = field(default=None, repr=False)

    def for_workers(self) -> Dataset:
        """What goes to the object store: Ray Train hands workers the datasets themselves."""
        return replace(self, ray_datasets=None)


def load_dataset(spec: DataSpec, *, loss: str, task_cpus: float | None = None) -> Dataset:
    """Read the sources, split off validation (unless it has a source of its own), encode labels
    as the training data does and fit feature scaling on the training examples only.

    ``task_cpus``: what each Ray Data task holds when the source is streamed."""
    if spec.streaming:
        return _open_streamed(spec, loss=loss, task_cpus=task_cpus)
    x, y, feature_names = _read(spec, spec.source, spec.format)
    labels = LabelCoding.fit(y, classification=loss in CLASSIFICATION_LOSSES)
    y = labels.encode(y, split="training", source=spec.source)
    if spec.validation is None:
        x, y, x_val, y_val = _split(x, y, spec)
    else:
        x_val, y_val = _held_out(spec, "validation", x, feature_names, labels)
    x_test = y_test = None
    if spec.test is not None:
        x_test, y_test = _held_out(spec, "test", x, feature_names, labels)
    offset, variance = _scaling(x, spec.normalize)
    info = DataInfo(
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_classes=labels.num_classes if loss != "binary_crossentropy" else None,
        feature_names=feature_names,
        label_names=labels.names,
        num_train=len(x),
        num_val=len(x_val),
        scale_offset=offset,
        scale_variance=variance,
        num_test=0 if x_test is None else len(x_test),
    )
    return Dataset(x, y, x_val, y_val, info, x_test, y_test)


def _split(x: np.ndarray, y: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, ...]:
    """Deterministic train/validation split of one source: (x, y, x_val, y_val)."""
    order = np.random.default_rng(spec.seed).permutation(len(x))
    n_val = max(1, round(len(x) * spec.validation_split))
    if len(x) - n_val < 1:
        raise DataError(f"{spec.source}: {len(x)} examples are too few to split")
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _held_out(
    spec: DataSpec, split: str, x_train: np.ndarray, features: list[str], labels: LabelCoding
) -> tuple[np.ndarray, np.ndarray]:
    """A validation or test set of its own, read and checked against the training data."""
    held = spec.validation if split == "validation" else spec.test
    assert held is not None
    x, y, names = _read(spec, held.source, held.format)
    if x.shape[1:] != x_train.shape[1:] or names != features:
        differ = [n for n in names if n not in features][:5]
        detail = f" (columns not in training: {', '.join(differ)})" if differ else ""
        raise DataError(
            f"data.{split}: examples of '{held.source}' have shape {list(x.shape[1:])} and "
            f"{len(names)} features, the training data's {list(x_train.shape[1:])} and "
            f"{len(features)}{detail}"
        )
    return x, labels.encode(y, split=split, source=held.source)


def _open_streamed(spec: DataSpec, *, loss: str, task_cpus: float | None) -> Dataset:
    splits = {name: source_files(*where) for name, where in spec.sources().items()}
    streams, datasets, stats, sample = open_streams(spec, splits, loss=loss, task_cpus=task_cpus)
    lo, hi = stats["min"], stats["max"]
    if spec.normalize == "none":
        offset, variance = np.zeros_like(lo), np.ones_like(lo)
    elif spec.normalize == "minmax":
        offset, variance = lo, np.square(np.where(hi > lo, hi - lo, 1.0))
    else:
        offset, variance = stats["mean"], np.where(stats["variance"] > 0, stats["variance"], 1.0)
    info = DataInfo(
        input_shape=streams.shape,
        num_classes=stats["num_classes"] if loss != "binary_crossentropy" else None,
        feature_names=streams.features,
        label_names=stats["label_names"],
        num_train=stats["num_train"],
        num_val=stats["num_val"],
        scale_offset=offset.astype(np.float32).reshape(streams.shape),
        scale_variance=variance.astype(np.float32).reshape(streams.shape),
        num_test=stats.get("num_test", 0),
    )
    return Dataset(*sample, info, streams=streams, ray_datasets=datasets)


def shard(x: np.ndarray, y: np.ndarray, *, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``index::count``, cut so that every shard has the same length."""
    per_shard = len(x) // count
    if per_shard == 0:
        raise DataError(f"{len(x)} examples cannot be split across {count} workers")
    rows = np.arange(index, per_shard * count, count)
    return x[rows], y[rows]


def make_tf_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """A batched, prefetched tf.data pipeline over one worker's shard."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # The shard is already this worker's own: TF must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No tf.data autotuning: in-memory slices need none, and destroying a root iterator with
    # autotuning on at the end of `fit` can wait seconds for its autotune thread's timer (TF
    # 2.21; train/worker.py `distributed` does the same for the strategy's device iterators).
    options.autotune.enabled = False
    return ds.with_options(options)


def _read(spec: DataSpec, source: str, declared: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Float32 examples (shaped by ``data.shape``), raw labels and feature names of a source."""
    if source.startswith("builtin:"):
        x, y, features = _builtin(source.removeprefix("builtin:"))
        return _shaped(spec, x, features), y, features
    found = source_files(source, declared)
    if found.fmt == "images":
        assert found.labels is not None
        x = read_images(found.files, shape=spec.shape, like=None)
        return x, np.asarray(found.labels), pixel_names(x.shape[1:])
    if found.fmt == "npz":
        x, y, features = _read_npz(found.files, spec.label)
        return _shaped(spec, x, features), y, features
    import pandas as pd

    frames: list[pd.DataFrame] = []
    try:
        for f in found.files:
            with open_input(f) as stream:
                if found.fmt == "tfrecord":
                    frames.extend(read_frames(stream, name=f))
                else:
                    frames.append((pd.read_csv if found.fmt == "csv" else pd.read_parquet)(stream))
        frame = pd.concat(frames, ignore_index=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {found.fmt} data from '{source}': {exc}") from None
    features = feature_columns(spec, [str(c) for c in frame.columns], source=source)
    x = _shaped(spec, frame[features].to_numpy(), features)
    return x, frame[spec.label].to_numpy(), features


def _shaped(spec: DataSpec, x: np.ndarray, features: list[str]) -> np.ndarray:
    x = _as_float(x, features)
    return _reshape(x, spec.shape) if spec.shape else x


def _read_npz(files: list[str], label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs, ys = [], []
    for f in files:
        with open_input(f) as stream, np.load(stream, allow_pickle=False) as arrays:
            if "x" not in arrays or label not in arrays:
                raise DataError(
                    f"'{f}' must hold arrays 'x' and '{label}' (data.label); it holds: "
                    f"{', '.join(arrays.files)}"
                )
            try:
                xs.append(arrays["x"])
                ys.append(arrays[label])
            except ValueError:  # object arrays: loading them would unpickle untrusted data
                raise DataError(
                    f"'{f}' holds Python object arrays, which raytrain does not unpickle; save "
                    "numbers, and strings as fixed-width (array.astype(str))"
                ) from None
    x = np.concatenate(xs)
    return x, np.concatenate(ys), [f"x{i}" for i in range(int(np.prod(x.shape[1:])))]


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "diabetes": datasets.load_diabetes,
    }
    if name not in loaders:
        raise DataError(f"unknown built-in dataset '{name}'; expected one of: {', '.join(loaders)}")
    bunch = loaders[name]()
    x = np.asarray(bunch.data, dtype=np.float32)
    names = [str(n) for n in bunch.get("feature_names", [f"x{i}" for i in range(x.shape[1])])]
    if name == "digits":
        x = x.reshape(-1, 8, 8, 1)  # images: a CNN takes them as they are, an MLP flattens
    return x, np.asarray(bunch.target), names


def _as_float(x: np.ndarray, feature_names: list[str]) -> np.ndarray:
    try:
        out = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        flat = x.reshape(len(x), -1)
        bad = [n for i, n in enumerate(feature_names) if not _is_numeric(flat[:, i])]
        raise DataError(
            f"non-numeric feature columns: {', '.join(bad[:10])}; encode them or leave them out "
            "with data.features"
        ) from None
    if not np.isfinite(out).all():
        cols = np.where(~np.isfinite(out.reshape(len(out), -1)).all(axis=0))[0]
        names = ", ".join(feature_names[i] for i in cols[:10] if i < len(feature_names))
        raise DataError(f"features contain NaN or infinite values (columns: {names})")
    return out


def _is_numeric(column: np.ndarray) -> bool:
    try:
        column.astype(np.float32)
    except (TypeError, ValueError):
        return False
    return True


def _reshape(x: np.ndarray, shape: list[int]) -> np.ndarray:
    size = int(np.prod(x.shape[1:]))
    if int(np.prod(shape)) != size:
        raise DataError(
            f"data.shape {shape} holds {int(np.prod(shape))} values, but each example "
            f"has {size} features"
        )
    return x.reshape(len(x), *shape)


def _scaling(x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature offset and variance for a Normalization layer baked into the model."""
    shape = x.shape[1:]
    if how == "none":
        return np.zeros(shape, np.float32), np.ones(shape, np.float32)
    if how == "minmax":
        lo, hi = x.min(axis=0), x.max(axis=0)
        return lo, np.square(np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    var = x.var(axis=0)
    return x.mean(axis=0), np.where(var > 0, var, 1.0).astype(np.float32)
