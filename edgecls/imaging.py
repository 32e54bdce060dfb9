"""Decoding image files into pixels: one decoder for the training data (`edgecls.data`), for `edgecls predict` and
for programs that embed the runtime (`edgecls.runtime.images` re-exports it), so a file gives the same pixels wherever
it is read. Torch-free; uses Pillow, imported only when an image is opened.

Every pixel format Pillow reads becomes 8-bit RGB with its full range kept (16-bit gray is scaled, not clipped), or
is refused naming the file (floating-point and 32-bit integer pixels, whose range the file does not say). Images
above MAX_IMAGE_PIXELS are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import numpy as np

from edgecls.errors import EdgeclsError, first_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}

# 8192 x 8192 (200 MB of RGB pixels): decoding and classifying such a JPEG peaked at 0.6 GB.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_SIXTEEN_BIT_GRAY = {"I;16", "I;16L", "I;16B", "I;16N"}
_SIXTEEN_BIT_AS_I = {"PNG", "PPM"}  # formats whose 16-bit gray Pillow may hand over as 32-bit "I", range 0..65535

ImageSource = Union[bytes, str, os.PathLike]


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files directly inside each directory given (sorted by name)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not inside:
                    raise EdgeclsError(f"directory {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
                files.extend(inside)
            elif path.is_file():
                files.append(path)
            else:
                raise EdgeclsError(f"{path} does not exist; give image files or directories of images")
        except OSError as exc:  # a folder this user may not list or enter
            raise EdgeclsError(f"cannot read {exc.filename or path} ({exc.strerror}); check its permissions") from exc
    if not files:
        raise EdgeclsError("no images given; pass image files or directories")
    return files


@contextlib.contextmanager
def _opened(source: ImageSource, name: str, size: tuple[int, int] | None) -> Iterator[Any]:
    """The image, opened lazily (header only), after the checks its header allows: expected `size` (width, height),
    the pixel cap, a pixel format we can convert. Pillow's failures become one line naming the image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above its own, larger limit; our cap below refuses those images anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with image:
            width, height = image.size
            if size is not None and _orientation(image) in _TURNED:  # shown turned a quarter: its size as shown
                width, height = height, width  # (only asked with an expected size: a PNG's EXIF needs its pixels)
            if size is not None and (width, height) != size:
                raise EdgeclsError(f"image {name} is {width}x{height} pixels, not the {size[0]}x{size[1]} expected "
                                   "here; resize or remove it")
            if width * height > MAX_IMAGE_PIXELS:
                raise EdgeclsError(f"image {name} is {width}x{height} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS // 2**20} megapixels edgecls decodes; shrink it first")
            if image.mode == "F" or (image.mode == "I" and image.format not in _SIXTEEN_BIT_AS_I):
                kind = "floating-point" if image.mode == "F" else "32-bit integer"
                raise EdgeclsError(f"image {name} has {kind} pixels, whose range the file does not give; "
                                   "convert it to 8-bit RGB first")
            yield image
    except Image.DecompressionBombError as exc:  # beyond Pillow's own limit, which it checks while opening
        raise EdgeclsError(f"image {name} has more than the {MAX_IMAGE_PIXELS // 2**20} megapixels edgecls decodes "
                           "(far more); shrink it first") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # OSError: unknown format, truncated data; SyntaxError and ValueError: broken headers, unsupported modes
        why = "not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError) else first_line(exc)
        raise EdgeclsError(f"cannot decode image {name} ({why}); check, replace or remove the file") from exc


def check_image(source: ImageSource, name: str | None = None) -> None:
    """Refuse, from its header alone, an image `decode` would refuse (cheap: no pixel is decoded)."""
    with _opened(source, str(source) if name is None else name, None):
        pass


def decode(source: ImageSource, name: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """An encoded image (its bytes, or a file) as uint8 H x W x 3 RGB. `name` is what errors show (default: the
    path); `size` the (width, height) it must have, checked before decoding."""
    name = str(source) if name is None else name
    with _opened(source, name, size) as image:
        image.load()
        orientation = _orientation(image)
        if orientation in _TRANSPOSES:  # the camera's EXIF orientation: pixels as the photo is shown
            from PIL import Image

            methods = getattr(Image, "Transpose", Image)  # Pillow < 9.1 (JetPack 5's) keeps them on Image itself
            image = image.transpose(getattr(methods, _TRANSPOSES[orientation]))
        return _rgb(image)


# EXIF orientation (tag 0x0112) -> the Pillow transpose that shows the image upright (as Pillow's exif_transpose,
# without its copy of an image that needs none).
_ORIENTATION_TAG = 0x0112
_TRANSPOSES = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
               7: "TRANSVERSE", 8: "ROTATE_90"}
_TURNED = {5, 6, 7, 8}


def _orientation(image: Any) -> int:
    """The image's EXIF orientation, 1 (as stored) when it has none or its EXIF block is unreadable."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return int(value)
    except (OSError, ValueError, TypeError, SyntaxError, KeyError):
        return 1


def _rgb(image: Any) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_GRAY or image.mode == "I":  # "I" here: 16-bit gray (see _opened)
        # Pillow's own conversion clips 16-bit values at 255 (almost all white); scale 0..65535 to 0..255 instead.
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("P", "PA"):  # through RGBA: Pillow warns about palette transparency when going straight to RGB
        image = image.convert("RGBA")
    return _copy_rgb(image if image.mode == "RGB" else image.convert("RGB"))


def _copy_rgb(image: Any) -> np.ndarray:
    """An RGB image's pixels as a new H x W x 3 array, copied a band of rows at a time: numpy's own conversion goes
    through two full-size copies of the bytes, which tripled the memory a large photo takes."""
    width, height = image.size
    rows = max(1, (16 << 20) // (3 * width))  # bands of 16 MB
    if rows >= height:
        return np.array(image, dtype=np.uint8)
    pixels = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        pixels[top : top + band.size[1]] = np.asarray(band)
    return pixels


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image file as uint8 H x W x 3 RGB (see `decode`)."""
    return decode(path)
