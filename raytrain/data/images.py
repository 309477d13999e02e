"""Folders of images, one sub-folder per class (the layout ``image_dataset_from_directory``
reads), local or in GCS::

    train/cat/0001.jpg  train/cat/0002.png  train/dog/0001.jpg ...

Images are decoded with Pillow (not TensorFlow: Ray Data read tasks and the driver stay light)
into float32 pixel values in their raw range (0-255 for 8-bit images), resized bilinearly to
``data.shape`` ``[height, width, channels]`` when it is set. Resizing happens here, before
training: the model (and so the served and exported model) takes images already at that size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import numpy as np

from raytrain.config.resolve import IMAGE_EXTENSIONS
from raytrain.errors import DataError, StorageError
from raytrain.storage import check_location, is_gcs, join, list_files, open_input

__all__ = ["check_like", "decode", "image_files", "pixel_names", "read_images"]

# Pillow's modes -> channels; other modes (palette, CMYK, 16-bit) are converted first.
_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1, "I": 1, "F": 1}


def image_files(folder: str) -> tuple[list[str], list[str]]:
    """Every JPEG/PNG file of every class sub-folder (local paths or gs:// URIs, sorted) and
    its class, the name of its sub-folder. A class sub-folder without one is an error: a typo
    in a folder name would otherwise drop a class silently."""
    if not is_gcs(folder) and not os.path.isdir(folder):
        raise DataError(f"no folder '{folder}'")
    try:
        check_location(folder, what="data source")
        relative = list_files(folder)
    except StorageError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot list '{folder}': {exc}") from None
    classes: dict[str, list[str]] = {name: [] for name in _local_sub_folders(folder)}
    for path in relative:
        label, sep, rest = path.partition("/")
        if not sep or label.startswith("."):
            continue  # a file beside the class folders (a README, a CSV), or a hidden folder
        found = classes.setdefault(label, [])
        if os.path.splitext(rest)[1].lower() in IMAGE_EXTENSIONS:
            found.append(path)
    if not classes:
        raise DataError(
            f"'{folder}' has no class sub-folders: put each class's images in a folder of its "
            "own (e.g. cat/, dog/)"
        )
    empty = sorted(label for label, paths in classes.items() if not paths)
    if empty:
        raise DataError(
            f"class folder '{join(folder, empty[0])}' holds no JPEG or PNG image"
            + (f" (nor do: {', '.join(empty[1:6])})" if len(empty) > 1 else "")
        )
    pairs = [(join(folder, path), label) for label in sorted(classes) for path in classes[label]]
    return [f for f, _ in pairs], [label for _, label in pairs]


def pixel_names(shape: tuple[int, ...]) -> list[str]:
    """Feature names of an image's values, in row-major (height, width, channel) order."""
    return [f"pixel[{i}]" for i in range(int(np.prod(shape)))]


def read_images(
    files: Iterable[str], *, shape: list[int] | None, like: tuple[str, tuple[int, ...]] | None
) -> np.ndarray:
    """Decode ``files`` into ``(N, height, width, channels)`` float32 pixels. Every image must
    have the channels (and, without ``shape``, the size) of ``like`` (a file and its decoded
    shape), or of the first one."""
    pixels = []
    for location in files:
        array = decode(location, shape=shape)
        if like is None:
            like = (location, array.shape)
        check_like(location, array.shape, like)
        pixels.append(array)
    if not pixels:
        raise DataError("no image to read")
    return np.stack(pixels)


def check_like(location: str, shape: tuple[int, ...], like: tuple[str, tuple[int, ...]]) -> None:
    """One-line errors for an image whose channels or size differ from those of ``like``."""
    first, expected = like
    if shape[-1] != expected[-1]:
        raise DataError(
            f"images have mixed channel counts: '{first}' has {expected[-1]}, '{location}' has "
            f"{shape[-1]}; convert them to one mode (e.g. all RGB)"
        )
    if shape != expected:
        raise DataError(
            f"images have different sizes: '{first}' is {expected[1]}x{expected[0]}, "
            f"'{location}' is {shape[1]}x{shape[0]}; set data.shape [height, width, channels] "
            "to resize them"
        )


def decode(location: str, *, shape: list[int] | None) -> np.ndarray:
    """One image as ``(height, width, channels)`` float32, resized to ``shape`` if given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_input(location) as stream:
            content = stream.read()
        with Image.open(io.BytesIO(content)) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode not in _CHANNELS:  # palette, CMYK, ...: as RGB(A)
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            if shape is not None and image.size != (shape[1], shape[0]):
                image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"'{location}' is not a readable JPEG or PNG image ({exc})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if shape is not None and array.shape[-1] != shape[2]:
        raise DataError(
            f"data.shape asks for {shape[2]} channel(s), but '{location}' has {array.shape[-1]}"
        )
    return array


def _local_sub_folders(folder: str) -> list[str]:
    """Class folders that hold no file at all exist only on a local disk (GCS has no empty
    folders)."""
    if is_gcs(folder) or not os.path.isdir(folder):
        return []
    return [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
