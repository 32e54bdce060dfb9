"""TensorRT backend: a serialized engine (`.plan`) with its manifest (`.plan.json`, docs/FORMATS.md).

Only the inference API common to TensorRT 8.5 through 11 is used: `Runtime.deserialize_cuda_engine`,
`create_execution_context`, `num_io_tensors` / `get_tensor_name` / `get_tensor_mode`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`. Plans only run with the TensorRT version and the GPU they were
built for, so the manifest is checked against this machine before TensorRT sees the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.formats import EngineManifest
from edgecls.runtime.base import Runner
from edgecls.runtime.cuda_memory import open_cuda


def _version_key(version: str) -> list[str]:
    return str(version).strip().split(".")


def check_compatibility(
    plan: Path, manifest: EngineManifest, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Raise a message naming both sides when this TensorRT or GPU cannot run a plan built as `manifest` says.

    Versions are compared on the components both strings have ("10.3.0" matches "10.3.0.30"); the GPU on its
    compute capability, which is what the kernels in a plan are compiled for.
    """
    built, here = _version_key(manifest.tensorrt_version), _version_key(tensorrt_version)
    shared = max(3, min(len(built), len(here)))
    same_version = built[:shared] == here[:shared]
    wanted_cc = manifest.compute_capability
    same_gpu = not wanted_cc or wanted_cc == compute_capability
    if not (same_version and same_gpu):
        raise EdgeclsError(f"{plan} {_mismatch(manifest, tensorrt_version, gpu_name, compute_capability)}")


def _mismatch(manifest: EngineManifest, tensorrt_version: str, gpu_name: str, compute_capability: str) -> str:
    return (
        f"was built with TensorRT {manifest.tensorrt_version} for {manifest.gpu_name or '?'} "
        f"(compute {manifest.compute_capability or '?'}), but this machine has TensorRT {tensorrt_version} "
        f"on {gpu_name} (compute {compute_capability}); rebuild the engine here with `edgecls build`"
    )


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.manifest: EngineManifest | None = None
        self.cuda: Any = None
        self.gpu: tuple[str, str] = ("?", "?")
        self.trt_version = "?"

    def _open(self) -> None:
        self.manifest = EngineManifest.read(self.path)
        self.metadata = self.manifest.model
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EdgeclsError(
                f"TensorRT is not installed; {self.path} needs TensorRT {self.manifest.tensorrt_version} "
                "(it comes with JetPack on a Jetson) and a GPU"
            ) from exc
        self.trt_version = trt.__version__
        self.cuda = open_cuda()
        try:
            self._load()
        except BaseException:
            self._close()  # nothing half-open stays behind: buffers, stream, engine
            raise

    def _load(self) -> None:
        import tensorrt as trt  # imported here, not passed in, so that mypy checks each call against the version's API

        self.gpu = self.cuda.device_info()
        check_compatibility(self.path, self.manifest, self.trt_version, *self.gpu)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:  # TensorRT logs the cause and returns None rather than raising
            message = _mismatch(self.manifest, self.trt_version, *self.gpu)
            raise EdgeclsError(f"TensorRT could not deserialize {self.path}, which {message}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EdgeclsError(f"TensorRT could not create an execution context for {self.path}; "
                               "is the GPU out of memory?")
        self._bind()

    def _bind(self) -> None:
        """Allocate every I/O tensor for the largest batch once; their addresses never change afterwards."""
        import tensorrt as trt

        assert self.manifest is not None  # read by _open before anything else
        batch = self.manifest.batch
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        shapes = {name: tuple(self._engine.get_tensor_shape(name)) for name in names}
        modes = {name: self._engine.get_tensor_mode(name) for name in names}
        if modes.get(self.input_name) != trt.TensorIOMode.INPUT or modes.get(self.output_name) != trt.TensorIOMode.OUTPUT:
            raise EdgeclsError(f"{self.path} lacks the input {self.input_name!r} or output {self.output_name!r}; rebuild it")
        first = shapes[self.input_name][0]
        if first >= 1:  # static batch
            self.min_batch = self.max_batch = int(first)
        else:
            self.min_batch, self.max_batch = batch["min"], batch["max"]
        self._buffers = {}
        for name in names:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = (self.max_batch, *(int(d) for d in shapes[name][1:]))
            self._buffers[name] = self.cuda.allocate(shape, dtype)
            self._context.set_tensor_address(name, self._buffers[name].device)

    def _close(self) -> None:
        # Release TensorRT objects before the memory and stream they use; context before engine before runtime.
        for attribute in ("_context", "_engine", "_runtime", "_logger"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        self._buffers = {}  # their memory goes with the CUDA helper: a later infer() must not find them
        if self.cuda is not None:
            self.cuda.close()
            self.cuda = None

    def _stage(self, batch: np.ndarray) -> int:
        """Copy one input batch to the device and set its shape; returns the batch size."""
        if not self.active:
            raise EdgeclsError(f"{self.path} is closed; run it inside `with` or after activate()")
        count = len(batch)
        if not self.min_batch <= count <= (self.max_batch or count):
            raise EdgeclsError(
                f"{self.path} accepts batches of {self.min_batch} to {self.max_batch} images, got {count}"
            )
        buffer = self._buffers[self.input_name]
        np.copyto(buffer.host[:count], batch, casting="same_kind")
        if not self._context.set_input_shape(self.input_name, tuple(buffer.host[:count].shape)):
            raise EdgeclsError(f"{self.path} does not accept input of shape {buffer.host[:count].shape}; rebuild it")
        self.cuda.to_device(buffer, buffer.host[:count].nbytes)
        return count

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.cuda.stream_handle):
            raise EdgeclsError(f"TensorRT failed to run {self.path}; see TensorRT's log above")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = self._stage(feed[self.input_name])
        self._execute()
        output = self._buffers[self.output_name]
        self.cuda.to_host(output, output.host[:count].nbytes)
        self.cuda.synchronize()
        return {self.output_name: output.host[:count].astype(np.float32)}  # a copy: the buffer is reused

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        count = self._stage(feed[self.input_name])
        self.cuda.synchronize()
        shape = (count, *self._buffers[self.input_name].host.shape[1:])

        def run() -> None:
            self._context.set_input_shape(self.input_name, shape)
            self._execute()
            self.cuda.synchronize()

        return run

    def describe(self) -> dict[str, Any]:
        built = self.manifest
        return {
            "backend": self.backend,
            "device": "gpu",
            "tensorrt": self.trt_version,
            "gpu_name": self.gpu[0],
            "compute_capability": self.gpu[1],
            "cuda_helper": getattr(self.cuda, "name", None),
            "built_with": None if built is None else {"tensorrt_version": built.tensorrt_version,
                                                      "gpu_name": built.gpu_name,
                                                      "compute_capability": built.compute_capability},
            "batch": {"min": self.min_batch, "max": self.max_batch},
        }

