"""Storage locations, a local folder or ``gs://bucket/prefix``, in the form each consumer needs.

Ray Train and Tune persist checkpoints and state through a pyarrow filesystem; raytrain reads and
writes its own files (sweep state, data sources, exports) through the same filesystem, so a
location works the same everywhere. MLflow writes ``gs://`` artifacts with google-cloud-storage.

Credentials come from Application Default Credentials only (``gcloud auth application-default
login`` on a laptop, the service account of a VM on GCP), never from the experiment file. With
``STORAGE_EMULATOR_HOST`` set (the variable google-cloud-storage and MLflow read), the filesystem
talks to that emulator anonymously instead, and ``forwarded_env`` passes it on to Ray workers.
"""

from __future__ import annotations

import functools
import glob as local_glob
import os
import posixpath
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, ClassVar, Self

from pyarrow import fs as pafs
from pydantic import BaseModel, ConfigDict, ValidationError

from raytrain.errors import RaytrainError, StorageError

__all__ = [
    "EMULATOR_ENV",
    "StoredState",
    "check_location",
    "check_writable",
    "delete_files",
    "exists",
    "forwarded_env",
    "glob",
    "is_gcs",
    "join",
    "list_files",
    "open_input",
    "parent",
    "ray_storage",
    "read_text",
    "replace_file",
    "resolve",
    "to_uri",
    "upload_folder",
    "write_text",
]

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GCS = "gs://"
GLOB_CHARS = re.compile(r"[*?[]")
# A missing credential is retried for many minutes by default; the early check gives up sooner.
CHECK_RETRY = timedelta(seconds=15)
ADC_HELP = (
    "credentials come from Application Default Credentials: run `gcloud auth "
    "application-default login`, or use a VM whose service account can use the bucket"
)


def is_gcs(location: str) -> bool:
    return location.startswith(GCS)


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path on it (``bucket/prefix`` for GCS)."""
    if is_gcs(location):
        return _gcs(os.environ.get(EMULATOR_ENV) or None), location.removeprefix(GCS).rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def ray_storage(location: str) -> tuple[str, pafs.FileSystem | None]:
    """``storage_path`` and ``storage_filesystem`` for a Ray RunConfig: Ray wants the scheme
    stripped when it is given a filesystem, and resolves local folders by itself."""
    if not is_gcs(location):
        return resolve(location)[1], None
    filesystem, path = resolve(location)
    return path, filesystem


def to_uri(path: str, filesystem: pafs.FileSystem | None) -> str:
    """A location again, from a path Ray hands back with its filesystem (a checkpoint's, a
    result's)."""
    if filesystem is not None and filesystem.type_name == "gcs" and not is_gcs(path):
        return GCS + path
    return path


def join(location: str, *parts: str) -> str:
    if is_gcs(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return os.path.join(location, *parts)


def parent(location: str) -> str:
    return (
        posixpath.dirname(location.rstrip("/")) if is_gcs(location) else os.path.dirname(location)
    )


def check_location(location: str, *, what: str, options: Sequence[str] = ()) -> None:
    """Fail in seconds, before any cluster time is spent, if a ``gs://`` location's bucket does
    not exist or cannot be reached. ``what`` names the setting, e.g. ``storage``; ``options``
    are the parameters it names as `name` (see ``raytrain.errors``)."""
    if not is_gcs(location):
        return
    bucket = location.removeprefix(GCS).split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{what} '{location}': expected gs://BUCKET/PREFIX", options=options)
    try:
        found = _gcs(os.environ.get(EMULATOR_ENV) or None, CHECK_RETRY).get_file_info(bucket)
    except OSError as exc:
        raise StorageError(
            f"{what} '{location}': cannot reach bucket '{bucket}' ({_reason(exc)}); {ADC_HELP}",
            options=options,
        ) from None
    if found.type == pafs.FileType.NotFound:
        raise StorageError(
            f"{what} '{location}': bucket '{bucket}' does not exist (create it with "
            f"`gcloud storage buckets create gs://{bucket}`, or fix the name)",
            options=options,
        )


def check_writable(location: str, *, what: str, options: Sequence[str] = ()) -> None:
    """``check_location``, and for a local folder: it exists or can be made, and a file can be
    written in it (a read-only mount, a path under a file or /proc fail here in one line, not
    deep inside Ray Train). For where raytrain writes: storage, exports."""
    check_location(location, what=what, options=options)
    if is_gcs(location):
        return
    folder = Path(location).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".raytrain-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(
            f"{what} '{location}': cannot write there ({exc.strerror or exc})", options=options
        ) from None


def glob(pattern: str) -> list[str]:
    """Files matching ``pattern``, sorted. On GCS, ``*``, ``?`` and ``[...]`` match within one
    path segment, as a local glob does."""
    if not is_gcs(pattern):
        return sorted(local_glob.glob(os.path.expanduser(pattern)))
    filesystem, path = resolve(pattern)
    segments = path.split("/")
    fixed = next((i for i, s in enumerate(segments) if GLOB_CHARS.search(s)), len(segments))
    if fixed == len(segments):
        found = [filesystem.get_file_info(path)]
    else:
        # One recursive listing below the pattern's fixed prefix: a non-recursive GCS listing
        # in pyarrow omits "folders" that are only prefixes of object names.
        base = "/".join(segments[:fixed])
        found = filesystem.get_file_info(
            pafs.FileSelector(base, recursive=True, allow_not_found=True)
        )
    return sorted(
        GCS + info.path
        for info in found
        if info.type == pafs.FileType.File and _matches(info.path.split("/"), segments)
    )


@contextmanager
def open_input(location: str) -> Iterator[IO[bytes]]:
    """A seekable binary file (readers such as ``np.load`` of an ``.npz`` need to seek)."""
    filesystem, path = resolve(location)
    with filesystem.open_input_file(path) as stream:
        yield stream


def read_text(location: str) -> str:
    with open_input(location) as stream:
        return stream.read().decode()


def write_text(location: str, text: str, *, private: bool = False) -> None:
    """Write ``text`` whole or not at all: a local file by ``replace_file``; a gs:// object in
    one upload, which GCS makes visible only once complete (an object write is atomic).
    ``private``: a local file that holds secrets, readable by its owner only; a bucket's readers
    are its IAM's business."""
    if not is_gcs(location):
        replace_file(Path(resolve(location)[1]), text.encode(), private=private)
        return
    filesystem, path = resolve(location)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def replace_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: a reader
    sees the old file or the new one, and a full disk leaves the old one, never half of one.
    ``private``: mode 600 from its first byte (it holds secrets)."""
    _atomically(path, lambda stream: stream.write(data), mode=0o600 if private else 0o666)


def _atomically(path: Path, write: Callable[[IO[bytes]], Any], *, mode: int = 0o666) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        created = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(created, "wb") as stream:  # ``mode`` less the umask, as a plain write had
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def exists(location: str) -> bool:
    filesystem, path = resolve(location)
    return bool(filesystem.get_file_info(path).type != pafs.FileType.NotFound)


def upload_folder(folder: Path, location: str) -> None:
    """Copy a local folder's files to ``location``, replacing files of the same name and
    deleting nothing (files written locally first: TensorFlow's savers and converters want local
    paths). What else ``location`` holds is its owner's business: see ``raytrain.export``."""
    if not is_gcs(location):  # each file renamed into place: never half a file there
        for source in sorted(p for p in folder.rglob("*") if p.is_file()):
            target = Path(resolve(location)[1], source.relative_to(folder))
            with source.open("rb") as original:
                _atomically(target, functools.partial(shutil.copyfileobj, original))
        return
    filesystem, path = resolve(location)
    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(
        str(folder),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=filesystem,
    )


def list_files(location: str) -> list[str]:
    """Every file under ``location``, as a sorted path relative to it (empty if it is missing)."""
    filesystem, path = resolve(location)
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    return sorted(
        info.path.removeprefix(prefix) for info in found if info.type == pafs.FileType.File
    )


def delete_files(location: str, relative: Sequence[str]) -> None:
    """Delete these files under ``location``, each by name: never a whole folder, so nothing is
    deleted that the caller did not name."""
    filesystem, path = resolve(location)
    for name in relative:
        filesystem.delete_file(f"{path.rstrip('/')}/{name}")


def forwarded_env() -> dict[str, str]:
    """Environment variables Ray workers need to reach the same storage as this process."""
    host = os.environ.get(EMULATOR_ENV)
    return {EMULATOR_ENV: host} if host else {}


@functools.lru_cache(maxsize=8)
def _gcs(emulator: str | None, retry: timedelta | None = None) -> pafs.GcsFileSystem:
    if emulator is None:
        return pafs.GcsFileSystem(retry_time_limit=retry)  # Application Default Credentials
    scheme, _, host = emulator.rpartition("://")
    return pafs.GcsFileSystem(
        anonymous=True,
        scheme=scheme or "http",
        endpoint_override=host.rstrip("/"),
        retry_time_limit=retry,
    )


def _matches(parts: list[str], patterns: list[str]) -> bool:
    return len(parts) == len(patterns) and all(map(fnmatchcase, parts, patterns))


def _reason(exc: BaseException) -> str:
    """The informative part of a google-cloud-cpp status, which spans many lines."""
    text = str(exc)
    found = re.search(r"last message of (.+?)(?: error_info=|\. |$)", text)
    return (found.group(1) if found else text.strip().splitlines()[0])[:300]


class StoredState(BaseModel):
    """A JSON file of raytrain's own in a run's or sweep's storage folder, validated when read
    back: what ``raytrain resume`` and ``raytrain list`` know about it besides Ray's state."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    FILE: ClassVar[str]  # the file's name in ``folder``
    KIND: ClassVar[str]  # what it is the state of, for messages

    @property
    def folder(self) -> str:
        raise NotImplementedError

    def save(self) -> None:
        """Owner-only: the experiment in it holds the secrets its references resolved to."""
        text = self.model_dump_json(by_alias=True, indent=2)
        write_text(join(self.folder, self.FILE), text, private=True)

    def update(self, **changes: object) -> Self:
        """This state with ``changes``, saved."""
        state = self.model_copy(update=changes)
        state.save()
        return state

    @classmethod
    def load(cls, folder: str) -> Self:
        """The state in ``folder`` (local or gs://)."""
        path = join(folder, cls.FILE)
        try:
            return cls.model_validate_json(read_text(path))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RaytrainError(
                f"{path} is not a {cls.KIND} state this raytrain can read ({where}: {first['msg']})"
            ) from None
