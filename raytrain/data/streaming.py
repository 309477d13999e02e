"""Ray Data streaming of CSV, Parquet and TFRecord files too large for one process.

The in-memory path (data.py) reads everything on the driver. Here the driver only plans: Ray
Data reads the files in parallel tasks on the cluster (on ``data.locality`` nodes when set), one
streaming pass computes what the model needs (row counts, feature scaling, classes), and each
epoch every worker pulls its own share of rows into tf.data. Ray Train splits the rows with
``streaming_split(equal=True)``: every worker gets as many rows as the others, which
MultiWorkerMirroredStrategy's all-reduce needs. No process ever holds the whole dataset.

Validation rows are chosen by a seeded hash of each row's values: the choice needs no global
shuffle or row index, does not depend on how files are cut into blocks, and is the same on every
run with the same ``data.seed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytrain.config.schema import CLASSIFICATION_LOSSES, DataSpec
from raytrain.data.images import decode, pixel_names, read_images
from raytrain.data.labels import check_classes, class_text
from raytrain.data.sources import SourceFiles
from raytrain.data.tfrecord import expand_features, read_frames
from raytrain.errors import DataError
from raytrain.storage import forwarded_env, resolve

__all__ = ["SAMPLE_ROWS", "Streams", "open_streams", "worker_dataset"]

SAMPLE_ROWS = 2000  # rows of each split kept in memory: the model signature, export's checks
_BUCKETS = 1_000_000  # resolution of the validation fraction
_IMAGES_PER_BATCH = 64  # images one read task decodes into one block of rows


@dataclass(frozen=True)
class Streams:
    """How a batch of streamed rows becomes model inputs, the same on every worker."""

    features: list[str]
    label: str
    shape: tuple[int, ...]
    label_names: list[str] | None
    classification: bool

    def arrays(self, frame: Any) -> tuple[np.ndarray, np.ndarray]:
        """One batch of rows (a pandas frame) as float32 features and encoded labels."""
        x = frame[self.features].to_numpy(dtype=np.float32).reshape(len(frame), *self.shape)
        labels = frame[self.label].to_numpy()
        if self.label_names is not None:
            codes = np.searchsorted(self.label_names, class_text(labels))
            return x, codes.astype(np.int32)
        return x, labels.astype(np.int32 if self.classification else np.float32)


def open_streams(
    spec: DataSpec,
    splits: dict[str, SourceFiles],
    *,
    loss: str,
    task_cpus: float | None = None,
) -> tuple[
    Streams,
    dict[str, Any],
    dict[str, Any],
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
]:
    """Plan the reads of each split's files, split rows by hash (unless validation has files of
    its own) and run the statistics passes.

    ``task_cpus``: CPUs each read/decode task holds (None: Ray Data's default, one). Training
    workers that hold every CPU of the cluster would otherwise leave the tasks that feed them
    waiting for a CPU forever; with 0 they run beside the workers.

    Returns the decoding, the lazy Ray Data datasets ``{"train", "val"[, "test"]}``, the
    statistics (counts, scaling, classes) and the first rows of training and validation as
    arrays ``(x_train, y_train, x_val, y_val)``.
    """
    import ray
    import ray.data

    _follow_ray_log_level()

    train = splits["train"]
    pin = spec.locality_rule.resources()
    remote: dict[str, Any] = {"resources": pin} if pin else {}
    if task_cpus is not None:
        remote["num_cpus"] = task_cpus
    if task_cpus == 0:  # tasks that hold no CPU: as many at once as there are CPUs, not more
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote["compute"] = ray.data.TaskPoolStrategy(size=cpus)
    features, shape = _layout(spec, train)
    map_args = {"batch_format": "pandas", **remote}

    def rows_of(found: SourceFiles) -> Any:
        # Our own read tasks rather than ray.data.read_parquet/read_csv: those list files in
        # tasks that always hold a CPU, and workers holding every CPU would wait for them forever.
        if found is not train and found.fmt != "images":
            columns = _columns_of(found.files[0], found.fmt)
            held = feature_columns(spec, columns, source=found.source)
            if held != features:
                raise DataError(
                    f"'{found.source}' has the features {held[:8]}, the training data "
                    f"{features[:8]}: held-out files need the training data's columns"
                )
        reader = _FileReader(
            fmt=found.fmt,
            columns=[*features, spec.label],
            env=forwarded_env(),
            resize=spec.shape,
            like=(train.files[0], shape) if found.fmt == "images" else None,
        )
        labels = found.labels or [""] * len(found.files)
        items = [{"path": f, "label": c} for f, c in zip(found.files, labels, strict=True)]
        per_task = _IMAGES_PER_BATCH if found.fmt == "images" else 1
        return ray.data.from_items(items).map_batches(reader, batch_size=per_task, **map_args)

    held_out = "validation" in splits
    fraction = 0.0 if held_out else spec.validation_split
    split = _Split(features=features, seed=spec.seed, fraction=fraction)
    classification = loss in CLASSIFICATION_LOSSES
    rows = rows_of(train)
    stats = _statistics(rows, split, features, spec.label, classification, map_args)
    if not held_out and stats["num_val"] < 1:
        raise DataError(f"{stats['num_train']} examples are too few to split")
    datasets = {"train": rows.map_batches(split.keep, fn_kwargs={"validation": False}, **map_args)}
    if held_out:
        datasets["val"] = rows_of(splits["validation"])
    else:
        datasets["val"] = rows.map_batches(split.keep, fn_kwargs={"validation": True}, **map_args)
    whole = _Split(features=features, seed=spec.seed, fraction=0.0)
    for name, key in (("validation", "val"), ("test", "test")):
        if name not in splits:
            continue
        if key == "test":
            datasets["test"] = rows_of(splits["test"])
        counted = _statistics(datasets[key], whole, features, spec.label, classification, map_args)
        if classification:
            check_classes(
                set(counted["classes"]),
                frozenset(stats["classes"]),
                split=name,
                source=splits[name].source,
            )
        stats["num_val" if key == "val" else "num_test"] = counted["num_train"]
    streams = Streams(
        features=features,
        label=spec.label,
        shape=shape,
        label_names=stats["label_names"],
        classification=classification,
    )
    sample = (*_sample(streams, datasets["train"]), *_sample(streams, datasets["val"]))
    datasets["train"] = datasets["train"].randomize_block_order(seed=spec.seed)
    return streams, datasets, stats, sample


def _layout(spec: DataSpec, train: SourceFiles) -> tuple[list[str], tuple[int, ...]]:
    """The feature columns and the shape of one example, from the first training file."""
    if train.fmt == "images":
        shape = tuple(int(d) for d in decode(train.files[0], shape=spec.shape).shape)
        return pixel_names(shape), shape
    features = feature_columns(spec, _columns_of(train.files[0], train.fmt), source=train.source)
    shape = tuple(spec.shape) if spec.shape else (len(features),)
    if int(np.prod(shape)) != len(features):
        raise DataError(
            f"data.shape {list(shape)} holds {int(np.prod(shape))} values, but each example "
            f"has {len(features)} features"
        )
    return features, shape


def _columns_of(location: str, fmt: str) -> list[str]:
    try:
        return _columns(location, fmt)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {fmt} data from '{location}': {exc}") from None


def worker_dataset(
    streams: Streams,
    shard: Any,
    *,
    batch_size: int,
    steps: int,
    shuffle: bool,
    seed: int,
    passes: int = 1,
    drop_last: bool = True,
) -> Any:
    """A tf.data pipeline over this worker's shard: exactly ``steps`` batches per pass (the
    last one partial with ``drop_last`` off: all rows, for a test set).

    Each pass is one epoch of Ray Data's split, which starts on every worker together (a barrier
    across workers), so each worker must open exactly one pass at a time. Keras keeps one
    training iterator for the whole fit: it reads ``passes`` passes (the epochs left to train),
    each yielding ``steps`` batches and reading (and dropping) the rest, so that epochs stay
    aligned on all workers. No more: tf.data's read-ahead would open a pass after the last epoch
    on some workers and not others, and wait at the barrier for good (seen: a 2-worker run that
    had reported its 3 epochs hung there). Keras opens a new validation iterator for every
    evaluation: that one must end after one pass, or the abandoned iterator's read-ahead would
    start a second pass beside the new one and the barrier would count one worker twice (seen:
    both workers waiting forever).
    """
    import tensorflow as tf

    label_dtype = tf.int32 if streams.classification else tf.float32

    def one_pass() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        taken = 0
        for frame in shard.iter_batches(
            batch_size=batch_size,
            batch_format="pandas",
            drop_last=drop_last,
            prefetch_batches=4,
            local_shuffle_buffer_size=batch_size * 8 if shuffle else None,
            local_shuffle_seed=seed if shuffle else None,
        ):
            if taken < steps:
                taken += 1
                yield streams.arrays(frame)

    def all_passes() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _ in range(passes):
            yield from one_pass()

    rows = batch_size if drop_last else None
    signature = (
        tf.TensorSpec([rows, *streams.shape], tf.float32),
        tf.TensorSpec([rows], label_dtype),
    )
    ds = tf.data.Dataset.from_generator(all_passes, output_signature=signature)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # Nothing to tune in a Python generator; autotuning on would make the iterator's teardown
    # wait for its autotune thread (dataset.py `make_tf_dataset`).
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _follow_ray_log_level() -> None:
    """Ray Data logs every execution plan and its progress at INFO on a logger of its own;
    keep it as quiet as raytrain keeps Ray (``--verbose`` shows both)."""
    import logging

    from ray.data import DataContext

    from raytrain.shims import ray_core

    quiet = logging.getLogger("ray").getEffectiveLevel() > logging.INFO
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray_core.quiet_logger("data_progress", logging.ERROR)  # "progress bars disabled"
        DataContext.get_current().enable_progress_bars = False


def feature_columns(spec: DataSpec, columns: list[str], *, source: str) -> list[str]:
    """The feature columns ``spec`` asks for (all but the label when it names none), checked
    against what the files of ``source`` hold."""
    if spec.label not in columns:
        raise DataError(
            f"label column '{spec.label}' is not in '{source}'; columns: "
            f"{', '.join(columns)} (set data.label)"
        )
    features = expand_features(spec.features or [c for c in columns if c != spec.label], columns)
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"feature columns not in '{source}': {', '.join(missing)}")
    return features


def _columns(location: str, fmt: str | None) -> list[str]:
    import pyarrow.csv
    import pyarrow.parquet as pq

    filesystem, path = resolve(location)
    with filesystem.open_input_file(path) as stream:
        if fmt == "parquet":
            return list(pq.read_schema(stream).names)
        if fmt == "tfrecord":
            first = next(read_frames(stream, name=location, rows_per_frame=1), None)
            if first is None:
                raise DataError(f"'{location}' holds no records")
            return [str(c) for c in first.columns]
        return list(pyarrow.csv.open_csv(stream).schema.names)


@dataclass(frozen=True)
class _FileReader:
    """A Ray Data task: the rows of one file, a bounded batch at a time (a large file never
    sits whole in one task's memory), or of a batch of images, one row each."""

    fmt: str | None
    columns: list[str]
    env: dict[str, str]  # the driver's storage settings (an emulator's address)
    resize: list[int] | None = None  # images: data.shape
    like: tuple[str, tuple[int, ...]] | None = None  # images: the first one and its shape
    rows_per_block: int = 65_536

    def __call__(self, frame: Any) -> Iterator[Any]:
        import pandas as pd
        import pyarrow.csv
        import pyarrow.parquet as pq

        os.environ.update(self.env)
        if self.fmt == "images":
            x = read_images(list(frame["path"]), shape=self.resize, like=self.like)
            rows = pd.DataFrame(x.reshape(len(x), -1), columns=self.columns[:-1])
            yield rows.assign(**{self.columns[-1]: list(frame["label"])})
            return
        for location in frame["path"]:
            filesystem, path = resolve(location)
            with filesystem.open_input_file(path) as stream:
                if self.fmt == "parquet":
                    batches = pq.ParquetFile(stream).iter_batches(
                        batch_size=self.rows_per_block, columns=self.columns
                    )
                    for batch in batches:
                        yield batch.to_pandas()
                elif self.fmt == "tfrecord":
                    frames = read_frames(stream, name=location, rows_per_frame=self.rows_per_block)
                    for records in frames:
                        yield records.reindex(columns=self.columns)
                else:
                    options = pyarrow.csv.ConvertOptions(include_columns=self.columns)
                    for batch in pyarrow.csv.open_csv(stream, convert_options=options):
                        yield batch.to_pandas()


@dataclass(frozen=True)
class _Split:
    """Which rows are validation rows: a seeded hash of the row's values, bucketed."""

    features: list[str]
    seed: int
    fraction: float

    def is_validation(self, frame: Any) -> np.ndarray:
        import pandas as pd

        key = f"{self.seed % 10**16:016d}"  # pandas keys string columns only, with 16 characters
        hashed = pd.util.hash_pandas_object(frame[self.features], index=False, hash_key=key)
        # Numbers hash the same under any key: mix the seed in (splitmix64's finalizer).
        x: np.ndarray = hashed.to_numpy() ^ np.uint64((self.seed * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return (x % np.uint64(_BUCKETS)) < round(self.fraction * _BUCKETS)

    def keep(self, frame: Any, *, validation: bool) -> Any:
        chosen = self.is_validation(frame)
        return frame[chosen if validation else ~chosen]


def _statistics(
    rows: Any,
    split: _Split,
    features: list[str],
    label: str,
    classification: bool,
    map_args: dict[str, Any],
) -> dict[str, Any]:
    """One streaming pass: per-batch partial sums on the cluster, combined here."""
    import pandas as pd

    def partial(frame: pd.DataFrame) -> pd.DataFrame:
        validation = split.is_validation(frame)
        train = frame[~validation]
        bad = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        numeric = [c for c in features if c not in bad]
        x = train[numeric].to_numpy(dtype=np.float64)
        labels = frame[label].to_numpy()
        finite = np.isfinite(frame[numeric].to_numpy(dtype=np.float64)).all(0)
        integer = labels.dtype.kind in "iu" and (not len(labels) or labels.min() >= 0)
        return pd.DataFrame(
            {
                "n_train": [len(train)],
                "n_val": [int(validation.sum())],
                "bad": [bad],
                "nonfinite": [[c for c, ok in zip(numeric, finite, strict=True) if not ok]],
                "sum": [x.sum(0)],
                "sumsq": [np.square(x).sum(0)],
                "min": [x.min(0) if len(x) else np.full(x.shape[1], np.inf)],
                "max": [x.max(0) if len(x) else np.full(x.shape[1], -np.inf)],
                "integer_labels": [bool(integer)],
                "label_max": [float(labels.max()) if integer and len(labels) else 0.0],
                "classes": [sorted({str(c) for c in class_text(labels)}) if classification else []],
                "numeric_labels": [labels.dtype.kind in "iufb"],
            }
        )

    try:
        parts = rows.map_batches(partial, **map_args).to_pandas()
    except Exception as exc:  # a read task's DataError (a corrupt image), as Ray wraps it
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise
    bad = sorted({c for cols in parts["bad"] for c in cols})
    if bad:
        raise DataError(
            f"non-numeric feature columns: {', '.join(bad[:10])}; encode them or leave them out "
            "with data.features"
        )
    nonfinite = sorted({c for cols in parts["nonfinite"] for c in cols})
    if nonfinite:
        raise DataError(f"features contain NaN or infinite values (columns: {nonfinite[:10]})")
    n_train, n_val = int(parts["n_train"].sum()), int(parts["n_val"].sum())
    if n_train < 1:
        raise DataError(f"{n_train + n_val} examples are too few to train on")
    total, squares = np.sum(list(parts["sum"]), 0), np.sum(list(parts["sumsq"]), 0)
    mean = total / n_train
    stats: dict[str, Any] = {
        "num_train": n_train,
        "num_val": n_val,
        "mean": mean,
        "variance": np.maximum(squares / n_train - np.square(mean), 0.0),
        "min": np.min(list(parts["min"]), 0),
        "max": np.max(list(parts["max"]), 0),
        "label_names": None,
        "num_classes": None,
        "classes": sorted({c for classes in parts["classes"] for c in classes}),
    }
    if not classification:
        if not parts["numeric_labels"].all():
            raise DataError("regression labels must be numeric")
    elif parts["integer_labels"].all():
        stats["num_classes"] = int(parts["label_max"].max()) + 1
    else:
        names = sorted({c for classes in parts["classes"] for c in classes})
        stats["label_names"], stats["num_classes"] = names, len(names)
    return stats


def _sample(streams: Streams, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    frame = rows.limit(SAMPLE_ROWS).to_pandas()
    return streams.arrays(frame)
