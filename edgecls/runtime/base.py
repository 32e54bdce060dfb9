"""The narrow interface every backend fits (Polygraphy-like): a runner that is created cheaply, opened by
`activate()`, runs named float32 inputs to named outputs with `infer()`, and is closed by `deactivate()`.

Code above this layer (the classifier, the bench) never asks which backend it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.formats import ModelMetadata

MAX_THREADS = 1024  # CPU threads a backend may be given: above any machine's cores, below a runaway value


class Closable(AbstractContextManager):
    """Something with a `close()` that a `with` block calls on the way out (the classifier, a served model)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of an opened model: its numpy dtype name ("float32") and dims (None for a dynamic one)."""

    dtype: str
    dims: tuple[Optional[int], ...]


@dataclass(frozen=True)
class GraphIO:
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


def check_graph(metadata: ModelMetadata, graph: GraphIO | None, source: str) -> None:
    """The one check, at load, that a model's record (ModelMetadata, already valid on its own: see Preprocessing)
    agrees with its graph, for ONNX files and TensorRT plans alike: exactly one input, float32, shaped
    [batch, 3, crop, crop] with a dynamic or positive batch; a float32 output [batch, classes] whose width is the
    number of class names. Anything else would give wrong answers silently or fail on the first image."""
    if graph is None:
        return
    fix = "re-export it with `edgecls export`"
    metadata.check_io({name: list(info.dims) for name, info in graph.inputs.items()}, set(graph.outputs), source)
    if len(graph.inputs) != 1:
        raise EdgeclsError(f"{source} has {len(graph.inputs)} inputs ({', '.join(sorted(graph.inputs))}); an edgecls "
                           f"model takes one, '{metadata.input_name}'; {fix}")
    for role, name, info in (("input", metadata.input_name, graph.inputs[metadata.input_name]),
                             ("output", metadata.output_name, graph.outputs[metadata.output_name])):
        if info.dtype != "float32":
            raise EdgeclsError(f"{source}: {role} '{name}' is {info.dtype}; edgecls models take and give float32 "
                               f"(fp16 and int8 inside only); {fix}")
    dims = graph.outputs[metadata.output_name].dims
    classes = len(metadata.preprocess.class_names)
    if len(dims) != 2 or (dims[1] is not None and dims[1] != classes):
        shown = ["batch" if d is None else d for d in dims]
        raise EdgeclsError(f"{source}: output '{metadata.output_name}' has shape {shown}, but its metadata names "
                           f"{classes} classes ([batch, {classes}]); {fix}")


def check_threads(threads: Any) -> Optional[int]:
    """A thread count for a backend: None (the backend's default) or 1 to MAX_THREADS; anything else is refused in
    one line (a million threads would be accepted by ONNX Runtime and grow memory without bound)."""
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise EdgeclsError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


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
            try:
                check_graph(self.metadata, self.graph_io(), str(self.path))
            except BaseException:
                self._close()  # a model refused is not left half-open
                raise
            self.active = True
        return self

    def graph_io(self) -> GraphIO | None:
        """The opened model's inputs and outputs as the backend sees them, for `check_graph`; None only for a
        backend whose graph is built from the record itself (a checkpoint)."""
        return None

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
