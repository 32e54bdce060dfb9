"""The narrow interface every backend fits (Polygraphy-like): a runner that is created cheaply, opened by
`activate()`, runs named float32 inputs to named outputs with `infer()`, and is closed by `deactivate()`.

Code above this layer (the classifier, the bench) never asks which backend it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.formats import ModelMetadata


class Runner(ABC):
    """Base class of the backends. Subclasses fill in `_open`, `_close`, `infer` and may override `model_only`."""

    #: short backend name shown in reports, e.g. "onnxruntime"
    backend = "?"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.active = False
        # Filled by `_open`: the model's own edgecls metadata (docs/FORMATS.md) and the batch sizes it accepts.
        self._metadata: Optional[ModelMetadata] = None
        self.min_batch = 1
        self.max_batch: Optional[int] = None  # None: no upper limit

    # --- lifecycle -------------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.active:
            self._open()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._close()
            self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abstractmethod
    def _open(self) -> None:
        """Open the backend: load the model, read its metadata, set the batch limits."""

    @abstractmethod
    def _close(self) -> None:
        """Release what `_open` acquired."""

    # --- inference -------------------------------------------------------------------------------------
    @property
    def metadata(self) -> ModelMetadata:
        """The model's own record; known once the runner has been activated."""
        if self._metadata is None:
            raise EdgeclsError(f"{self.path} has not been opened yet; call activate() or use `with`")
        return self._metadata

    @metadata.setter
    def metadata(self, value: ModelMetadata) -> None:
        self._metadata = value

    @property
    def input_name(self) -> str:
        return self.metadata.input_name

    @property
    def output_name(self) -> str:
        return self.metadata.output_name

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out: everything a caller pays for (transfers included)."""

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        """A zero-argument function that runs the model alone on `feed`, already placed where the model reads
        it (device memory on a GPU), and waits for it to finish; None when the backend cannot separate that."""
        return None

    def pipelined(self, feed: dict[str, np.ndarray]) -> tuple[Callable[[], None], Callable[[], None]] | None:
        """For throughput with many runs in flight: (`launch`, `wait`), where `launch` queues one run of the model
        on `feed` (placed where the model reads it) without waiting for it, and `wait` waits for every queued run;
        None when the backend cannot queue runs."""
        return None

    def describe(self) -> dict[str, Any]:
        """Backend, device and settings, for reports."""
        return {"backend": self.backend}
