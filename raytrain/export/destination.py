"""Where an export's files go, and the one rule for writing there: raytrain replaces only files
it wrote itself.

An export folder holds ``raytrain_export.json``, the list of the files raytrain put there. A new
export into that folder replaces exactly those files; a folder holding any other file (a user's,
another tool's, an export of an older raytrain) is refused before anything is written, so an
``out`` that points at a bucket prefix full of other data never loses any of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raytrain.errors import ExportError
from raytrain.storage import (
    check_writable,
    delete_files,
    is_gcs,
    join,
    list_files,
    read_text,
    upload_folder,
    write_text,
)

__all__ = ["MANIFEST", "check_destination", "publish"]

MANIFEST = "raytrain_export.json"


def check_destination(destination: str) -> list[str]:
    """The files an earlier raytrain export left in ``destination`` (paths relative to it),
    which a new export may replace; ``ExportError`` if it holds any file raytrain did not write,
    or a manifest naming anything but a plain path inside it."""
    check_writable(destination, what="export destination")
    files = list_files(destination)
    owned = _read_manifest(destination) if MANIFEST in files else []
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
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for name in [*files, MANIFEST]:  # plain names, but a symbolic link there would be followed
        _check_entry(destination, name, source="the new export")
    # The manifest first names old and new files, so that an upload cut short leaves a folder
    # whose every file is still raytrain's to replace.
    _write_manifest(destination, sorted({*earlier, *files}))
    delete_files(destination, [name for name in earlier if name not in files])
    upload_folder(folder, destination)
    _write_manifest(destination, files)


def _read_manifest(destination: str) -> list[str]:
    """The manifest's files, each checked by ``_check_entry`` before any is replaced: a manifest
    is as writable as the folder it is in, and it names the files raytrain deletes."""
    where = join(destination, MANIFEST)
    try:
        files = json.loads(read_text(where))["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ExportError(
            f"the export manifest {where} is not one raytrain wrote (a JSON object whose "
            '"files" is a list of paths); raytrain deletes nothing there: remove it, or export '
            "to an empty or new folder (`out`)",
            options=("out",),
        )
    for name in files:
        _check_entry(destination, name, source=f"the export manifest {where}")
    return files


def _check_entry(destination: str, name: str, *, source: str) -> None:
    """``ExportError`` unless ``name`` is a plain relative path inside ``destination``: no
    ``..``, ``.`` or empty part, not absolute, no backslash or control character, and (for a
    local folder) no symbolic link on the way, which deleting or writing would follow out."""
    parts = name.split("/")
    plain = (
        bool(name)
        and not name.startswith("/")
        and "\\" not in name
        and not any(ord(c) < 32 for c in name)
        and all(part not in ("", ".", "..") for part in parts)
    )
    if plain and not is_gcs(destination):
        inside = os.path.join(os.path.realpath(destination), *parts)
        plain = os.path.realpath(inside) == inside
    if not plain:
        raise ExportError(
            f"{source} names '{name}', which is not a plain path inside the export destination "
            f"{destination} (no '..', absolute path, backslash or symbolic link); raytrain "
            "deletes nothing there: remove the manifest, or export to an empty or new folder "
            "(`out`)",
            options=("out",),
        )


def _write_manifest(destination: str, files: list[str]) -> None:
    write_text(join(destination, MANIFEST), json.dumps({"files": files}, indent=2))
