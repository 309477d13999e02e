"""Where an export's files go, and the one rule for writing there: raytrain replaces only files
it wrote itself.

An export folder holds ``raytrain_export.json``, the list of the files raytrain put there. A new
export into that folder replaces exactly those files; a folder holding any other file (a user's,
another tool's, an export of an older raytrain) is refused before anything is written, so an
``out`` that points at a bucket prefix full of other data never loses any of it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from raytrain.errors import ExportError
from raytrain.storage import (
    check_writable,
    delete_files,
    join,
    list_files,
    read_text,
    upload_folder,
)

__all__ = ["MANIFEST", "check_destination", "publish"]

MANIFEST = "raytrain_export.json"


def check_destination(destination: str) -> list[str]:
    """The files an earlier raytrain export left in ``destination`` (paths relative to it),
    which a new export may replace; ``ExportError`` if it holds any file raytrain did not write."""
    check_writable(destination, what="export destination")
    files = list_files(destination)
    owned = json.loads(read_text(join(destination, MANIFEST)))["files"] if MANIFEST in files else []
    foreign = sorted(set(files) - set(owned) - {MANIFEST})
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ExportError(
            f"export destination '{destination}' holds files raytrain did not write "
            f"({foreign[0]}{more}); raytrain never deletes them: export to an empty or new "
            "folder (`out`)",
            options=("out",),
        )
    return owned


def publish(folder: Path, destination: str) -> None:
    """Put the export in the local ``folder`` at ``destination`` (a folder or gs://), in place of
    an earlier raytrain export there and of nothing else."""
    earlier = check_destination(destination)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    # The manifest first names old and new files, so that an upload cut short leaves a folder
    # whose every file is still raytrain's to replace.
    _write_manifest(destination, sorted({*earlier, *files}))
    delete_files(destination, [name for name in earlier if name not in files])
    upload_folder(folder, destination)
    _write_manifest(destination, files)


def _write_manifest(destination: str, files: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="raytrain-manifest-") as staging:
        Path(staging, MANIFEST).write_text(json.dumps({"files": files}, indent=2))
        upload_folder(Path(staging), destination)
