"""The deployment preprocessing, in numpy only (torch-free, so the runtime can use it on a device).

The values come from the preprocessing record stored with the model (docs/FORMATS.md); this module
only applies them: channels to RGB, resize the shorter side to `input_size` when the image has another
size, center-crop to `crop_size`, scale to 0..1, standardize, HWC -> NCHW.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from edgecls.errors import EdgeclsError

# What the deployment preprocessing knows how to apply; a record asking for anything else is refused when read.
CHANNEL_ORDERS = ("RGB",)
LAYOUTS = ("NCHW",)
MAX_INPUT_SIZE = 4096  # pixels per side of the network input: far above any CIFAR model, far below an absurd one


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    input_size: int = 32
    crop_size: int = 28
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        """Every value this module applies, checked once where a record is made or read: a wrong one would give
        wrong answers silently (a zero std: inf; "BGR": swapped colours), or an absurd allocation."""
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != 3 or \
                    not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise EdgeclsError(f"preprocessing {name} must be 3 finite numbers (one per RGB channel), "
                                   f"got {list(values) if isinstance(values, tuple) else values!r}")
        if min(self.std) <= 0:
            raise EdgeclsError(f"preprocessing std must be above 0 for every channel, got {list(self.std)}")
        if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
            raise EdgeclsError("preprocessing class_names must be a non-empty list of names")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.input_size, self.crop_size)) or \
                not 1 <= self.crop_size <= self.input_size <= MAX_INPUT_SIZE:
            raise EdgeclsError(f"preprocessing sizes must satisfy 1 <= crop_size <= input_size <= {MAX_INPUT_SIZE}, "
                               f"got input_size {self.input_size!r}, crop_size {self.crop_size!r}")
        if self.channel_order not in CHANNEL_ORDERS or self.layout not in LAYOUTS:
            raise EdgeclsError(f"preprocessing channel order {self.channel_order!r} and layout {self.layout!r}: "
                               f"this edgecls applies only {'/'.join(CHANNEL_ORDERS)} and {'/'.join(LAYOUTS)}")

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(
                mean=tuple(float(v) for v in record["mean"]),
                std=tuple(float(v) for v in record["std"]),
                class_names=tuple(str(n) for n in record["class_names"]),
                input_size=int(record["input_size"]),
                crop_size=int(record["crop_size"]),
                channel_order=str(record.get("channel_order", "RGB")),
                layout=str(record.get("layout", "NCHW")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeclsError(f"preprocessing record is incomplete or malformed ({exc!r}); re-export the model") from exc
        except EdgeclsError as exc:
            raise EdgeclsError(f"{exc}; re-export the model") from exc

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        record["class_names"] = list(self.class_names)
        return record

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HWC images (an N x H x W x C array, one H x W x C image, or a list) -> float32 NCHW."""
        return self.normalize(self.crop_batch(images))

    def crop_batch(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Bring images to uint8 N x crop x crop x 3, before normalization."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
            if images.dtype != np.uint8:
                raise EdgeclsError(f"images must be uint8 (0..255), got {images.dtype}; convert them before classifying")
            if images.shape[1:3] == (self.input_size, self.input_size):
                return center_crop(images, self.crop_size)  # the common case: no per-image work
            images = list(images)
        elif isinstance(images, np.ndarray) and images.ndim in (2, 3):
            images = [images]
        elif isinstance(images, np.ndarray):
            raise EdgeclsError(f"expected uint8 images shaped N x H x W x 3 or H x W x C, got shape {images.shape}")
        if len(images) == 0:
            raise EdgeclsError("no images to classify")
        return np.stack([center_crop(self.fit(np.asarray(image))[None], self.crop_size)[0] for image in images])

    def normalize(self, crops: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)  # broadcast over N x 3 x H x W
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float32)).reshape(3, 1, 1)
        chw = crops.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        return np.ascontiguousarray((chw - mean) * inv_std)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image as input_size x input_size x 3 RGB (`fit_image`)."""
        return fit_image(image, self.input_size)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """One uint8 image (H x W, or H x W x 1, 3 or 4) as size x size x 3 RGB: the shorter side resized to size, the
    center kept. Its memory is that of the image, whatever the image's shape."""
    image = to_rgb(image)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise EdgeclsError(f"an image of {height}x{width} pixels has nothing to classify; remove it")
    if (height, width) == (size, size):
        return image
    return resize_shorter_side(image, size, window=size)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale (H x W or H x W x 1) and RGBA (alpha dropped) to H x W x 3 uint8."""
    if image.dtype != np.uint8:
        raise EdgeclsError(f"images must be uint8 (0..255), got {image.dtype}; convert them before classifying")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise EdgeclsError(
            f"cannot use an image of shape {image.shape}: expected H x W with 1 (gray), 3 (RGB) or 4 (RGBA) channels"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Center crop of N x H x W x C images; the same offsets torch code uses: (H - size) // 2."""
    height, width = images.shape[1:3]
    if height < size or width < size:
        raise EdgeclsError(f"image of {height}x{width} pixels is smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return images[:, top : top + size, left : left + size]


def resize_shorter_side(image: np.ndarray, size: int, window: int | None = None) -> np.ndarray:
    """Resize so that the shorter side becomes `size`: box filter for whole-number shrinking, then bilinear.

    The box filter first averages factor x factor blocks, so a large photo is smoothed rather than sampled
    (bilinear alone would skip most pixels and alias fine detail). `window`: return only the centered
    window x window of the result (`center_crop`'s offsets), computing only those pixels, so that a long thin image
    (1 x 100000 becomes 32 x 3,200,000) costs no more memory than a square one.
    """
    factor = min(image.shape[:2]) // size
    if factor >= 2:
        height, width = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor, image.shape[2])
        # The same whole numbers 0..255 in any dtype: uint8 only keeps the smaller image small, no pixel depends on it.
        image = np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)  # pragma: no mutate
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))

    def sample_positions(new: int, old: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = new if window is None else window
        kept = np.arange(count) + (new - count) // 2
        pos = np.clip((kept + 0.5) * (old / new) - 0.5, 0, old - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, old - 1)
        return low, high, (pos - low).astype(np.float32)  # pragma: no mutate (float64 weights: the same pixels)

    y0, y1, wy = sample_positions(new_h, height)
    x0, x1, wx = sample_positions(new_w, width)
    def gather(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # only the pixels the samples read
        return image[rows[:, None], cols[None, :]]  # uint8, times the float32 weights: float32

    left = gather(y0, x0) * (1 - wy)[:, None, None] + gather(y1, x0) * wy[:, None, None]
    right = gather(y0, x1) * (1 - wy)[:, None, None] + gather(y1, x1) * wy[:, None, None]
    out = left * (1 - wx)[None, :, None] + right * wx[None, :, None]
    return np.rint(out).astype(np.uint8)  # weighted means of pixels: already within 0..255


__all__ = ["Preprocessing", "center_crop", "resize_shorter_side", "to_rgb"]
