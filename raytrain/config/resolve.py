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
    """Import a user's ``package.module:function``; ``base_dir`` (the experiment's folder) first.

    One process can build for several experiments (a notebook, a test session): a module of
    the same name that an earlier experiment imported from its own folder is not this
    experiment's, so it is imported again from ``base_dir``."""
    module_name, _, attr = path.partition(":")
    if base_dir is not None:
        folder = str(base_dir)
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
        _forget_if_imported_elsewhere(module_name.partition(".")[0], Path(folder))
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def _forget_if_imported_elsewhere(top: str, folder: Path) -> None:
    """Drop ``top`` (and its submodules) from the import cache when ``folder`` holds a module
    or package of that name and the cached one came from somewhere else."""
    if not ((folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()):
        return  # not the folder's: an installed package, say
    cached = sys.modules.get(top)
    if cached is None:
        importlib.invalidate_caches()  # the file may be newer than the finder's listing
        return
    home = folder.resolve()
    origins = [getattr(cached, "__file__", None), *getattr(cached, "__path__", [])]
    if any(o and Path(o).resolve().is_relative_to(home) for o in origins):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
