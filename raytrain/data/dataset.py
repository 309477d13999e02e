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

from raytrain.config.resolve import infer_format
from raytrain.config.schema import CLASSIFICATION_LOSSES, DataSpec
from raytrain.data.streaming import Streams, feature_columns, open_streams
from raytrain.data.tfrecord import read_frames
from raytrain.errors import DataError, StorageError
from raytrain.storage import check_location, glob, open_input

__all__ = ["DataInfo", "Dataset", "load_dataset", "make_tf_dataset", "shard"]


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


@dataclass(frozen=True)
class Dataset:
    """The examples, or with ``streams`` (``data.streaming``) the first rows of each split and
    the Ray Data datasets that hold them all."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    info: DataInfo
    streams: Streams | None = None
    ray_datasets: dict[str, Any] | None = field(default=None, repr=False)

    def for_workers(self) -> Dataset:
        """What goes to the object store: Ray Train hands workers the datasets themselves."""
        return replace(self, ray_datasets=None)


def load_dataset(spec: DataSpec, *, loss: str, task_cpus: float | None = None) -> Dataset:
    """Read the source, split it deterministically and fit feature scaling on the train split.

    ``task_cpus``: what each Ray Data task holds when the source is streamed."""
    if spec.streaming:
        return _open_streamed(spec, loss=loss, task_cpus=task_cpus)
    x, y, feature_names = _read(spec)
    classification = loss in CLASSIFICATION_LOSSES
    x = _as_float(x, feature_names)
    y, label_names = _encode_labels(y, classification=classification)
    if spec.shape:
        x = _reshape(x, spec.shape)
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(x))
    n_val = max(1, round(len(x) * spec.validation_split))
    if len(x) - n_val < 1:
        raise DataError(f"{spec.source}: {len(x)} examples are too few to split")
    val, train = order[:n_val], order[n_val:]
    offset, variance = _scaling(x[train], spec.normalize)
    num_classes = int(y.max()) + 1 if classification and loss != "binary_crossentropy" else None
    info = DataInfo(
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_classes=num_classes,
        feature_names=feature_names,
        label_names=label_names,
        num_train=len(train),
        num_val=len(val),
        scale_offset=offset,
        scale_variance=variance,
    )
    return Dataset(x[train], y[train], x[val], y[val], info)


def _open_streamed(spec: DataSpec, *, loss: str, task_cpus: float | None) -> Dataset:
    files = _match(spec.source)
    streams, datasets, stats, sample = open_streams(spec, files, loss=loss, task_cpus=task_cpus)
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
    return ds.with_options(options)


def _read(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if spec.source.startswith("builtin:"):
        return _builtin(spec.source.removeprefix("builtin:"))
    files = _match(spec.source)
    fmt = infer_format(files[0], spec.format)
    if fmt == "npz":
        return _read_npz(files, spec.label)
    import pandas as pd

    frames = []
    try:
        for f in files:
            with open_input(f) as stream:
                if fmt == "tfrecord":
                    frames.extend(read_frames(stream, name=f))
                else:
                    frames.append((pd.read_csv if fmt == "csv" else pd.read_parquet)(stream))
        frame = pd.concat(frames, ignore_index=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {fmt} data from '{spec.source}': {exc}") from None
    features = feature_columns(spec, [str(c) for c in frame.columns])
    return frame[features].to_numpy(), frame[spec.label].to_numpy(), features


def _match(source: str) -> list[str]:
    """The files a path or glob names, local or ``gs://`` (read through pyarrow, whole)."""
    try:
        check_location(source, what="data.source")
        files = glob(source)
    except StorageError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:  # e.g. no permission to list the bucket
        raise DataError(f"cannot list '{source}': {exc}") from None
    if not files:
        raise DataError(f"no file matches '{source}'")
    return files


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


def _encode_labels(y: np.ndarray, *, classification: bool) -> tuple[np.ndarray, list[str] | None]:
    if not classification:
        try:
            return y.astype(np.float32), None
        except (TypeError, ValueError):
            raise DataError("regression labels must be numeric") from None
    if y.dtype.kind in "iu" and len(y) and y.min() >= 0:
        return y.astype(np.int32), None
    classes, encoded = np.unique(y.astype(str), return_inverse=True)
    return encoded.astype(np.int32), [str(c) for c in classes]


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
