"""Reading image files for `edgecls predict` and for programs that start from files. Uses Pillow, imported
only here and only when called: the runtime itself takes numpy arrays and needs no image library."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edgecls.errors import EdgeclsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}

# Pillow modes mapped to what the preprocessing accepts (gray, RGB, RGBA); other 8-bit modes are converted
# by Pillow itself; 16-bit and float modes are refused because their scale is not 0..255.
_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA", "LA": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_KEEP = {"L", "RGB", "RGBA"}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files directly inside each directory given (sorted by name)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise EdgeclsError(f"directory {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise EdgeclsError(f"{path} does not exist; give image files or directories of images")
    if not files:
        raise EdgeclsError("no images given; pass image files or directories")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """One image file as a uint8 array: H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _CONVERT:
                image = image.convert(_CONVERT[mode])
            elif mode not in _KEEP:
                raise EdgeclsError(
                    f"{path} has pixel format {mode} (not 8-bit gray, RGB or RGBA); convert it to 8-bit RGB first"
                )
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow raises OSError for truncated files and SyntaxError for some broken headers
        raise EdgeclsError(f"cannot read {path} as an image ({type(exc).__name__}); check the file") from exc
