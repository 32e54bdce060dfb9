"""The narrow interface every backend fits (Polygraphy-like): a runner that is created cheaply, opened by
`activate()`, runs named float32 inputs to named outputs with `infer()`, and is closed by `deactivate()`.

Code above this layer (the classifier, the bench) never asks which backend it holds.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecls.errors import EdgeclsError


class Runner(ABC):
    """Base class of the backends. Subclasses fill in `_open`, `_close`, `infer` and may override `model_only`."""

    #: short backend name shown in reports, e.g. "onnxruntime"
    backend = "?"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.active = False
        # Filled by `_open`: the model's own edgecls metadata (docs/FORMATS.md) and the batch sizes it accepts.
        self.metadata: dict[str, Any] = {}
        self.min_batch = 1
        self.max_batch: int | None = None  # None: no upper limit

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
    def input_name(self) -> str:
        return str(self.metadata.get("input_name", "images"))

    @property
    def output_name(self) -> str:
        return str(self.metadata.get("output_name", "logits"))

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out: everything a caller pays for (transfers included)."""

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        """A zero-argument function that runs the model alone on `feed`, already placed where the model reads
        it (device memory on a GPU), and waits for it to finish; None when the backend cannot separate that."""
        return None

    def describe(self) -> dict[str, Any]:
        """Backend, device and settings, for reports."""
        return {"backend": self.backend}


def parse_metadata(raw: str | None, source: str) -> dict[str, Any]:
    """The `edgecls` metadata JSON of an exported model; EdgeclsError when absent or unreadable."""
    if raw is None:
        raise EdgeclsError(f"{source} carries no edgecls metadata; it was not exported by edgecls, "
                           "run `edgecls export`")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EdgeclsError(f"{source} has unreadable edgecls metadata ({exc.msg}); re-export the model") from exc
    if not isinstance(record, dict) or "preprocess" not in record:
        raise EdgeclsError(f"{source} has edgecls metadata without a preprocessing record; re-export the model")
    return record
