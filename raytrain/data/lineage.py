"""Dataset lineage: which data a model was trained, validated and tested on, as metadata only.

Each split is described by where it is (the source as the experiment names it), a digest that
changes when its files do, its schema and its row count; never by its rows. The digest hashes
the files' contents when that is cheap (local files of ``CONTENT_HASH_BYTES`` in all), else
their names, sizes and modification times, read from one listing (so on GCS no file is
downloaded). On-prem data stays on-prem: only this record reaches the tracking server.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pyarrow import fs as pafs

from raytrain.config.schema import DataSpec
from raytrain.data.sources import source_files
from raytrain.storage import is_gcs, resolve

if TYPE_CHECKING:
    from raytrain.data.dataset import Dataset

__all__ = ["CONTENT_HASH_BYTES", "DatasetRecord", "describe"]

CONTENT_HASH_BYTES = 64 * 1024 * 1024
_DIGEST_CHARS = 16  # MLflow keeps dataset digests of up to 36 characters


@dataclass(frozen=True)
class DatasetRecord:
    """One split's lineage: what MLflow's dataset API records (``mlflow.log_input``)."""

    context: str  # training, validation or test
    name: str
    source: str  # as the experiment names it: builtin:<name>, a path, glob, folder or gs:// URI
    digest: str
    digest_of: str  # content, or metadata (names, sizes, modification times)
    rows: int
    files: int
    bytes: int
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Fingerprint:
    source: str
    digest: str
    digest_of: str
    files: int
    bytes: int


def describe(spec: DataSpec, data: Dataset) -> list[DatasetRecord]:
    """The lineage of every split of ``data``, read from ``spec``'s sources."""
    info = data.info
    schema = {
        "features": info.feature_names[:100],
        "num_features": len(info.feature_names),
        "input_shape": list(info.input_shape),
        "dtype": "float32",
        "label": spec.label,
        "classes": info.label_names or info.num_classes,
    }
    train = _fingerprint(spec.source, spec.format)
    split = f"split {spec.validation_split:g}, seed {spec.seed}"
    records = []

    def add(context: str, found: _Fingerprint, rows: int, part: str = "") -> None:
        digest = found.digest if not part else _hash(f"{found.digest}\n{part}")
        name = _name(found.source) + (f" ({part})" if part else "")
        records.append(
            DatasetRecord(
                context=context,
                name=name,
                source=found.source,
                digest=digest,
                digest_of=found.digest_of,
                rows=rows,
                files=found.files,
                bytes=found.bytes,
                schema=schema,
            )
        )

    if spec.validation is None:
        add("training", train, info.num_train, f"training, {split}")
        add("validation", train, info.num_val, f"validation, {split}")
    else:
        add("training", train, info.num_train)
        validation = _fingerprint(spec.validation.source, spec.validation.format)
        add("validation", validation, info.num_val)
    if spec.test is not None:
        add("test", _fingerprint(spec.test.source, spec.test.format), info.num_test)
    return records


def _fingerprint(source: str, declared: str) -> _Fingerprint:
    if source.startswith("builtin:"):
        from sklearn import __version__, datasets

        bunch = getattr(datasets, f"load_{source.removeprefix('builtin:')}")()
        content = hashlib.sha256(f"scikit-learn {__version__}".encode())
        for array in (bunch.data, bunch.target):
            content.update(np.ascontiguousarray(array).tobytes())
        size = int(bunch.data.nbytes + bunch.target.nbytes)
        return _Fingerprint(source, content.hexdigest()[:_DIGEST_CHARS], "content", 1, size)
    files = source_files(source, declared).files
    infos = _file_infos(files)
    total = sum(int(i.size or 0) for i in infos)
    if total <= CONTENT_HASH_BYTES and not any(is_gcs(f) for f in files):
        content = hashlib.sha256()
        for location in files:
            content.update(os.path.basename(location).encode() + b"\0")
            with open(location, "rb") as stream:
                for chunk in iter(functools.partial(stream.read, 1 << 20), b""):
                    content.update(chunk)
        return _Fingerprint(
            source, content.hexdigest()[:_DIGEST_CHARS], "content", len(files), total
        )
    listing = "\n".join(f"{i.path}\t{i.size}\t{i.mtime_ns}" for i in infos)
    return _Fingerprint(source, _hash(listing), "metadata", len(files), total)


def _file_infos(files: list[str]) -> list[pafs.FileInfo]:
    """Size and modification time of each file, from one recursive listing of the folder they
    share (one request on GCS, not one per file)."""
    filesystem, first = resolve(files[0])
    paths = [resolve(f)[1] for f in files]
    if len(paths) == 1:
        return [filesystem.get_file_info(first)]
    base = os.path.commonpath(paths)
    wanted = set(paths)
    listed = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted((i for i in listed if i.path in wanted), key=lambda i: i.path)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def _name(source: str) -> str:
    """A short name for MLflow's UI: the source's last part (a file, glob or folder)."""
    trimmed = source.rstrip("/")
    return trimmed.rsplit("/", 1)[-1] or trimmed
