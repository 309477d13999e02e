"""TFRecord files of ``tf.train.Example`` records as pandas frames, without TensorFlow.

Ray Data read tasks and the driver both read TFRecords; importing TensorFlow there would cost
seconds and hundreds of MB per process, and TensorFlow cannot open ``gs://`` paths without
tensorflow-io. The record framing is simple (length, CRC, payload, CRC) and the ``Example``
message is parsed by protobuf from its schema, declared here as TensorFlow declares it.

Each feature key becomes a column: a key with one value per record a plain column, a key
with ``k`` values (a flattened image, an embedding) the columns ``key[0]`` .. ``key[k-1]``.
Byte strings (e.g. class names) are decoded as UTF-8 text.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from functools import cache
from typing import IO, Any

from raytrain.errors import DataError

__all__ = ["expand_features", "read_frames"]

_HEADER = struct.Struct("<QI")  # payload length, masked CRC-32C of the length


def read_frames(stream: IO[bytes], *, name: str, rows_per_frame: int = 65_536) -> Iterator[Any]:
    """The records of one TFRecord file (gzip-compressed too), ``rows_per_frame`` at a time."""
    import pandas as pd

    source: IO[bytes] | gzip.GzipFile = (
        gzip.GzipFile(fileobj=stream) if _is_gzip(stream) else stream
    )
    example = _example_class()
    rows: list[dict[str, Any]] = []
    for payload in _records(source, name=name):
        message = example()
        try:
            message.ParseFromString(payload)
        except Exception:
            raise DataError(f"'{name}' holds a record that is not a tf.train.Example") from None
        rows.append(_row(message))
        if len(rows) == rows_per_frame:
            yield pd.DataFrame.from_records(rows)
            rows = []
    if rows:
        yield pd.DataFrame.from_records(rows)


def expand_features(names: list[str], columns: list[str]) -> list[str]:
    """``data.features`` may name a multi-valued key; it stands for all of its columns."""
    expanded = []
    for name in names:
        parts = [c for c in columns if c.startswith(f"{name}[")]
        expanded.extend([name] if name in columns or not parts else parts)
    return expanded


def _is_gzip(stream: IO[bytes]) -> bool:
    magic = stream.read(2)
    stream.seek(0)
    return magic == b"\x1f\x8b"


def _records(stream: IO[bytes] | gzip.GzipFile, *, name: str) -> Iterator[bytes]:
    """Each record's payload, both of its CRCs checked: a file that is not a TFRecord fails
    on its first header, and a damaged record is an error rather than wrong numbers."""
    while True:
        header = stream.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size or _masked_crc(header[:8]) != _HEADER.unpack(header)[1]:
            raise DataError(f"'{name}' is not a TFRecord file (or it is cut short)")
        payload = stream.read(_HEADER.unpack(header)[0])
        footer = stream.read(4)
        if len(footer) < 4 or _masked_crc(payload) != struct.unpack("<I", footer)[0]:
            raise DataError(f"'{name}' has a damaged or cut-short record")
        yield payload


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc: int = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _row(message: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, feature in sorted(message.features.feature.items()):  # the same order everywhere
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if kind == "bytes_list":
            values = [v.decode("utf-8", errors="replace") for v in values]
        if len(values) == 1:
            row[key] = values[0]
        else:
            row.update({f"{key}[{i}]": v for i, v in enumerate(values)})
    return row


@cache
def _example_class() -> Any:
    """tensorflow/core/example/{example,feature}.proto, built in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="raytrain/example.proto", package="raytrain", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        msg = proto.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                field.type_name = type_name
        return msg

    repeated, optional = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    message("BytesList", ("value", 1, repeated, f.TYPE_BYTES, ""))
    message("FloatList", ("value", 1, repeated, f.TYPE_FLOAT, ""))
    message("Int64List", ("value", 1, repeated, f.TYPE_INT64, ""))
    feature = message(
        "Feature",
        ("bytes_list", 1, optional, f.TYPE_MESSAGE, ".raytrain.BytesList"),
        ("float_list", 2, optional, f.TYPE_MESSAGE, ".raytrain.FloatList"),
        ("int64_list", 3, optional, f.TYPE_MESSAGE, ".raytrain.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message(
        "Features", ("feature", 1, repeated, f.TYPE_MESSAGE, ".raytrain.Features.FeatureEntry")
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=optional, type=f.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=optional, type=f.TYPE_MESSAGE, type_name=".raytrain.Feature"
    )
    entry.options.map_entry = True
    message("Example", ("features", 1, optional, f.TYPE_MESSAGE, ".raytrain.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("raytrain.Example"))
