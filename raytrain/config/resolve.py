"""Resolving what an experiment names: built-in datasets, file formats by extension, and a
user's model builder (``package.module:function``).

Both the validator and the runtime resolve these names, so their meaning lives here, once.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

__all__ = [
    "BUILTIN_DATASETS",
    "FILE_FORMATS",
    "IMAGE_EXTENSIONS",
    "STREAMED_FORMATS",
    "infer_format",
    "load_builder",
]

BUILTIN_DATASETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")
FILE_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
    ".npz": "npz",
}
STREAMED_FORMATS = ("csv", "parquet", "tfrecord", "images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # in an image folder's class sub-folders


def infer_format(source: str, declared: str) -> str | None:
    """The file format named by ``declared`` or, for ``auto``, by the source's extension; a
    folder (a local one, or any path ending in /) is a folder of images."""
    if declared != "auto":
        return declared
    if source.endswith("/") or ("://" not in source and os.path.isdir(source)):
        return "images"
    path = Path(source.lower())
    if path.suffix == ".gz" and FILE_FORMATS.get(path.with_suffix("").suffix) == "tfrecord":
        return "tfrecord"  # GZIP-compressed TFRecords (TFRecordWriter's options="GZIP")
    return FILE_FORMATS.get(path.suffix)


def load_builder(path: str, base_dir: Path | None = None) -> object:
    """Import a user's ``package.module:function``; ``base_dir`` (the experiment's folder) first."""
    module_name, _, attr = path.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    module = importlib.import_module(module_name)
    return getattr(module, attr)
