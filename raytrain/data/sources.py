"""What one split's source names: its files (a path, a glob or an image folder; local or
``gs://``), their format and, for image folders, each file's class.

The in-memory reader, Ray Data streaming and dataset lineage all start from this listing, so a
source means the same files to each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from raytrain.config.resolve import infer_format
from raytrain.data.images import image_files
from raytrain.errors import DataError, StorageError
from raytrain.storage import check_location, glob

__all__ = ["SourceFiles", "source_files"]


@dataclass(frozen=True)
class SourceFiles:
    """The files of one split's source."""

    source: str  # as the experiment names it (after anchoring relative paths)
    fmt: str
    files: list[str]
    labels: list[str] | None = None  # image folders: each file's class (its sub-folder)


def source_files(source: str, declared: str) -> SourceFiles:
    """List ``source`` (not ``builtin:``); a source that matches nothing is a one-line error."""
    if infer_format(source, declared) == "images":
        files, labels = image_files(source)
        return SourceFiles(source, "images", files, labels)
    try:
        check_location(source, what="data source")
        files = glob(source)
    except StorageError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:  # e.g. no permission to list the bucket
        raise DataError(f"cannot list '{source}': {exc}") from None
    if not files:
        raise DataError(f"no file matches '{source}'")
    fmt = infer_format(files[0], declared)
    if fmt is None:
        raise DataError(
            f"cannot infer the format of '{files[0]}'; set data.format to one of: csv, parquet, "
            "tfrecord, npz, images"
        )
    return SourceFiles(source, fmt, files)
