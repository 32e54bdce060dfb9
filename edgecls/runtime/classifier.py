"""Classify uint8 images with any runner: preprocessing and class names come from the model's own metadata."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.runtime.base import Closable, Runner

Images = Union[np.ndarray, Sequence[np.ndarray]]  # typing.Union: the runtime also runs on JetPack 5's Python 3.8


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # keeps exp() finite whatever the logit scale
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Predictions:
    """What a classification returns; row i belongs to input image i."""

    logits: np.ndarray  # float32, N x classes
    probabilities: np.ndarray  # float32, N x classes, rows sum to 1
    indices: np.ndarray  # int64, N: the top-1 class index
    class_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        """For each image, the k most probable (class name, probability) pairs, most probable first."""
        k = max(1, min(k, self.probabilities.shape[1]))
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[c], float(row[c])) for c in cols] for row, cols in zip(self.probabilities, order)]


def open_runner(path: str | Path, provider: str = "cpu", threads: int | None = None,
                device: str | None = None) -> Runner:
    """The runner for a model file, chosen by its suffix; nothing is opened until `activate()`.

    `provider`: ONNX Runtime's execution provider for .onnx files; `device`: PyTorch's for checkpoints (.pt), which
    only the training machine can run (the runtime itself never imports torch).
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise EdgeclsError(f"path must be a str or pathlib.Path naming a model file, got {path!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from edgecls.runtime.onnx_backend import OnnxRunner

        return OnnxRunner(path, provider=provider, threads=threads)
    if suffix in (".plan", ".engine"):
        from edgecls.runtime.tensorrt_backend import TensorRTRunner

        return TensorRTRunner(path)
    if suffix == ".pt":
        from edgecls.runtime.torch_backend import TorchRunner

        return TorchRunner(path, device=device, threads=threads)
    raise EdgeclsError(f"{path}: unknown model type {suffix or '(no suffix)'}; give an .onnx file, a TensorRT .plan "
                       "or a checkpoint (.pt)")


class Classifier(Closable):
    """Images in, class indices, names and probabilities out, in batches the engine accepts.

    Memory stays bounded whatever the number of images: they are preprocessed and run `batch_size` at a time.

    Threads: one Classifier may be shared by several threads. Its runner's buffers are shared, so calls into the
    runner are serialized on a lock, and each call gets its own results. For parallel throughput, give each thread
    its own Classifier (each holds its own session or engine context).
    """

    DEFAULT_BATCH = 256  # images per runner call when the backend accepts any batch size

    def __init__(self, runner: Runner, batch_size: int | None = None) -> None:
        if not isinstance(runner, Runner):
            raise EdgeclsError(f"runner must be an edgecls Runner (from edgecls.runtime.open_runner), got {runner!r}; "
                               "to open a model file, use Classifier.load(path)")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or
                                       batch_size < 1):
            raise EdgeclsError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        self.runner = runner.activate()
        self.metadata = runner.metadata
        self.preprocess = self.metadata.preprocess
        self.class_names = self.preprocess.class_names
        limit = runner.max_batch or self.DEFAULT_BATCH
        self.batch_size = limit if batch_size is None else min(limit, batch_size)
        self._lock = threading.Lock()
        self.closed = False

    @classmethod
    def load(
        cls, path: str | Path, provider: str = "cpu", threads: int | None = None, batch_size: int | None = None
    ) -> "Classifier":
        """Open an .onnx (ONNX Runtime, `provider` cpu/cuda/...) or a TensorRT .plan (with its .plan.json)."""
        return cls(open_runner(path, provider=provider, threads=threads), batch_size=batch_size)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.runner.deactivate()

    def describe(self) -> dict[str, Any]:
        return {**self.runner.describe(), "path": str(self.runner.path), "model": self.metadata.model,
                "precision": self.metadata.precision, "max_batch": self.batch_size}

    def logits(self, images: Images) -> np.ndarray:
        """float32 logits, N x classes, for uint8 HWC images (N x H x W x C array, one image, or a list)."""
        if isinstance(images, (str, bytes, os.PathLike)):
            raise EdgeclsError(f"classify takes pixels, not a file ({images!r}); read image files with "
                               "edgecls.runtime.images.read_image")
        if not isinstance(images, (np.ndarray, list, tuple)):
            raise EdgeclsError(f"expected uint8 images (an array, or a list of arrays), got {type(images).__name__}")
        if isinstance(images, np.ndarray) and images.ndim not in (2, 3, 4):
            raise EdgeclsError(f"expected uint8 images shaped N x H x W x C, H x W x C or H x W, got an array of "
                               f"shape {images.shape}")
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] in (1, 3, 4) and \
                images.shape[1] < images.shape[2]:
            raise EdgeclsError(f"images of shape {images.shape} look channels-first (N x C x H x W); classify takes "
                               "N x H x W x C uint8 images (images.transpose(0, 2, 3, 1)), and run_preprocessed "
                               "takes preprocessed N x 3 x H x W float32 batches")
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            images = [images]  # one image, as Preprocessing reads a 2-D or 3-D array
        elif isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] != 3:
            images = list(images)  # gray or RGBA batch: converted image by image
        count = len(images)
        if count == 0:
            raise EdgeclsError("no images to classify")
        step = self.batch_size
        chunks = [self._run(self.preprocess(images[start : start + step])) for start in range(0, count, step)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def classify(self, images: Images) -> Predictions:
        logits = self.logits(images)
        return Predictions(logits, softmax(logits), logits.argmax(axis=1).astype(np.int64), self.class_names)

    def run_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Logits of an already preprocessed float32 NCHW batch that fits the engine."""
        crop = self.preprocess.crop_size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4 or \
                batch.shape[1:] != (3, crop, crop) or not 1 <= len(batch) <= self.batch_size:
            shown = f"{batch.dtype} array of shape {batch.shape}" if isinstance(batch, np.ndarray) else \
                type(batch).__name__
            raise EdgeclsError(f"run_preprocessed takes a float32 array of shape (N, 3, {crop}, {crop}) with N from 1 "
                               f"to {self.batch_size} (as preprocess() makes), got a {shown}")
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if count < self.runner.min_batch:
            # An engine whose profile starts above 1: pad with zeros, then drop the padding's outputs.
            pad = np.zeros((self.runner.min_batch - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        with self._lock:
            if self.closed:
                raise EdgeclsError(f"the classifier of {self.runner.path} is closed; load the model again")
            logits = self.runner.infer({self.runner.input_name: batch})[self.runner.output_name]
            return np.array(logits[:count], dtype=np.float32)  # a copy: some runners reuse their output buffer
