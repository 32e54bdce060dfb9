"""Reading image files, for `edgecls predict` and for programs that start from files: the decoder itself lives in
`edgecls.imaging` (shared with the training data, which sits below the runtime) and is re-exported here, so a program
on the device needs only `edgecls.runtime`. The runtime itself takes numpy arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgecls.imaging import (IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageSource, check_image, decode, expand_paths,
                             read_image)
from edgecls.preprocess import Preprocessing

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "ImageSource", "check_image", "decode", "expand_paths",
           "fitted_batches", "read_image"]


def fitted_batches(paths: Sequence[Path], preprocess: Preprocessing,
                   batch_size: int) -> Iterator[tuple[Sequence[Path], np.ndarray]]:
    """The images of `paths`, `batch_size` at a time, each brought to the model's input size (`Preprocessing.fit`)
    as soon as it is decoded: memory holds one full-size image and one batch of small ones, whatever the count."""
    for start in range(0, len(paths), batch_size):
        part = paths[start : start + batch_size]
        yield part, np.stack([preprocess.fit(decode(path)) for path in part])
