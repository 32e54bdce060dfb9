"""TensorRT backend: a serialized engine (`.plan`) with its manifest (`.plan.json`, docs/FORMATS.md).

Only the inference API common to TensorRT 8.5 through 11 is used: `Runtime.deserialize_cuda_engine`,
`create_execution_context`, `num_io_tensors` / `get_tensor_name` / `get_tensor_mode`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`. Plans only run with the TensorRT build and the GPU model they were
built for, so the manifest is checked against this machine before TensorRT sees the plan.

Threads: every call runs with the device's primary context pushed onto the calling thread (the CUDA helper's
`current()`), so a runner opened in one thread may be used from another, one call at a time
(edgecls.runtime.Classifier serializes its calls with a lock).
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import numpy as np

from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import EngineManifest
from edgecls.runtime.base import GraphIO, Runner, TensorInfo
from edgecls.runtime.cuda_memory import Buffer, CudaBinding, open_cuda

if TYPE_CHECKING:  # the API contract (tests/test_api_contract.py) type-checks every TensorRT call against each version
    import tensorrt as trt

# TensorRT DataType member names -> numpy. By name, because trt.nptype cannot be used: TensorRT 8.5's builds its
# table with np.bool, which numpy 1.24 removed (JetPack 5's Python 3.8 gets numpy 1.24), so it raises
# AttributeError for every type. BF16, FP8, INT4, FP4, E8M0 have no numpy type.
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


TENSORRT_INSTALL_HINT = (
    "TensorRT's Python bindings are not installed: on a Jetson install JetPack's python3-libnvinfer "
    "(sudo apt install python3-libnvinfer), on a desktop `pip install tensorrt`; engines are built and run on the "
    "device itself")


def tensorrt_problem() -> Optional[str]:
    """Why TensorRT's Python bindings cannot be used here (not installed, failing to load), or None. The one diagnosis
    `edgecls build`, `edgecls doctor` and this runner give."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if str(exc.name or "").split(".")[0] == "tensorrt":
            return TENSORRT_INSTALL_HINT
        return f"TensorRT's Python package does not load ({first_line(exc)}); reinstall it"
    except Exception as exc:  # noqa: BLE001 - e.g. a missing libnvinfer (ImportError / OSError): one line, no traceback
        return (f"TensorRT's Python package is installed but does not load ({first_line(exc)}); reinstall JetPack's "
                "python3-libnvinfer (or `pip install tensorrt` on a desktop)")
    if not hasattr(trt, "Builder"):  # e.g. tensorrt-stubs installed into site-packages: an empty namespace package
        return (f"the `tensorrt` module found ({getattr(trt, '__path__', '?')}) is not TensorRT's bindings; remove it "
                "and install TensorRT (JetPack's python3-libnvinfer)")
    return None


BOARD_MODEL_FILE = "/proc/device-tree/model"


def board_model(path: str = BOARD_MODEL_FILE) -> str:
    """The board's model from the device tree (e.g. "NVIDIA Jetson AGX Orin Developer Kit"); "" where there is none."""
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def board_warning(plan: Path, built_on: str, here: str) -> Optional[str]:
    """One line when a plan was built on another board model. Every Orin module reports the GPU "Orin" with compute
    capability 8.7, so a plan from an AGX Orin passes the GPU check on an Orin Nano; TensorRT chose its kernels for
    the other board's GPU size and clocks. A warning, not a refusal: the plan does run there."""
    if not built_on or not here or built_on == here:
        return None
    return (f"warning: {plan} was built on a {built_on}, this is a {here}: the same GPU type, but its kernels were "
            "chosen for the other board; rebuild it here with `edgecls build` for this board's speed")


def numpy_dtype(tensorrt_type: str, tensor: str, plan: Path) -> np.dtype:
    """The numpy dtype of a TensorRT DataType member name; a clear error for the types numpy lacks."""
    if tensorrt_type not in NUMPY_DTYPES:
        raise EdgeclsError(f"{plan}: tensor {tensor!r} is of TensorRT type {tensorrt_type}, which numpy cannot hold; "
                           "rebuild the engine from an edgecls export (float32 inputs and outputs)")
    return np.dtype(NUMPY_DTYPES[tensorrt_type])


def check_compatibility(
    plan: Path, manifest: EngineManifest, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Refuse, naming what differs, a plan built with another TensorRT build or on another GPU model.

    A plan holds kernels chosen for one TensorRT build and one GPU model, so the full version string (8.5.2.2 is
    not 8.5.2), the GPU name and the compute capability must all be those of the build (the manifest).
    """
    differs = []
    if manifest.tensorrt_version.strip() != tensorrt_version.strip():
        differs.append("the TensorRT version")
    if manifest.gpu_name.strip() != gpu_name.strip():
        differs.append("the GPU")
    if manifest.compute_capability.strip() != compute_capability.strip():
        differs.append("the compute capability")
    if differs:
        raise EdgeclsError(f"{plan} {_built_for(manifest)}, but this machine has TensorRT {tensorrt_version} on "
                           f"{gpu_name} (compute {compute_capability}): {' and '.join(differs)} differ"
                           f"{'s' if len(differs) == 1 else ''}; rebuild the engine here with `edgecls build`")


def _built_for(manifest: EngineManifest) -> str:
    return (f"was built with TensorRT {manifest.tensorrt_version} for {manifest.gpu_name or '?'} "
            f"(compute {manifest.compute_capability or '?'})")


def check_input(plan: Path, batch: np.ndarray, item_shape: Tuple[int, ...], dtype: np.dtype,
                min_batch: int, max_batch: int) -> None:
    """Refuse a batch the engine's input buffer cannot take as it is (np.copyto would broadcast N x 3 x 1 x 1)."""
    if not isinstance(batch, np.ndarray) or batch.ndim != len(item_shape) + 1 or batch.shape[1:] != item_shape:
        shape = getattr(batch, "shape", type(batch).__name__)
        raise EdgeclsError(f"{plan} takes input batches of shape (N, {', '.join(map(str, item_shape))}), got {shape}")
    if not min_batch <= len(batch) <= max_batch:
        raise EdgeclsError(f"{plan} accepts batches of {min_batch} to {max_batch} images, got {len(batch)}")
    if not np.can_cast(batch.dtype, dtype, casting="same_kind"):
        raise EdgeclsError(f"{plan} takes {dtype} input, got {batch.dtype}")


class _Engine:
    """The TensorRT objects and device buffers of an open plan, released in the one safe order (context, engine,
    runtime, then the memory and the CUDA context they live in), by close() or when the runner is collected."""

    runtime: trt.Runtime  # set one by one while the plan is opened; release() drops whichever were set
    engine: trt.ICudaEngine
    context: trt.IExecutionContext

    def __init__(self, cuda: CudaBinding) -> None:
        self.cuda = cuda
        self.buffers: Dict[str, Buffer] = {}

    def release(self) -> None:
        try:
            with self.cuda.current():  # TensorRT frees its objects with the context current
                self._drop_tensorrt_objects()
        except Exception:  # noqa: BLE001 - no context to push (e.g. at exit): they go without it; this must not raise
            self._drop_tensorrt_objects()
        finally:
            self.buffers = {}
            self.cuda.close()

    def _drop_tensorrt_objects(self) -> None:
        for name in ("context", "engine", "runtime"):  # each holds the next alive: drop them in this order
            self.__dict__.pop(name, None)


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.manifest: Optional[EngineManifest] = None
        self.trt_version = "?"
        self._open_engine: Optional[_Engine] = None
        self._graph: Optional[GraphIO] = None  # the engine's inputs and outputs, once opened
        self._release: Optional[weakref.finalize] = None
        self.warnings: list[str] = []  # e.g. a plan built on another board model

    @property
    def cuda(self) -> Optional[CudaBinding]:
        return None if self._open_engine is None else self._open_engine.cuda

    def _open(self) -> None:
        self.manifest = EngineManifest.read(self.path)
        self.metadata = self.manifest.model
        problem = tensorrt_problem()
        if problem is not None:
            raise EdgeclsError(f"{self.path} needs TensorRT {self.manifest.tensorrt_version} and a GPU: {problem}")
        import tensorrt as trt

        self.trt_version = trt.__version__
        state = _Engine(open_cuda())
        self._open_engine = state
        self._release = weakref.finalize(self, state.release)  # close(), or when the runner is collected
        try:
            with state.cuda.current():
                self._load(state)
        except (RuntimeError, TypeError, AttributeError, ValueError) as exc:  # pybind11's, for what TensorRT refused
            self._close()
            raise EdgeclsError(f"TensorRT {self.trt_version} failed to open {self.path}: {first_line(exc)}; "
                               "rebuild it here with `edgecls build`") from exc
        except BaseException:
            self._close()  # nothing half-open stays behind: buffers, stream, engine
            raise

    def _load(self, state: _Engine) -> None:
        import tensorrt as trt  # imported here, not passed in, so that mypy checks each call against the version's API

        manifest = self.manifest
        assert manifest is not None  # read by _open first
        gpu = state.cuda.gpu
        check_compatibility(self.path, manifest, self.trt_version, gpu.name, gpu.compute_capability)
        warning = board_warning(self.path, manifest.board, board_model())
        if warning:
            self.warnings.append(warning)
            logging.getLogger("edgecls").warning(warning)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        state.runtime = runtime
        if manifest.dla_core is not None:
            if manifest.dla_core >= runtime.num_DLA_cores:
                raise EdgeclsError(f"{self.path} runs on DLA core {manifest.dla_core}, which this device lacks "
                                   f"({runtime.num_DLA_cores} DLA cores); rebuild it with another --dla or none")
            runtime.DLA_core = manifest.dla_core  # read when the plan is deserialized
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:  # TensorRT logs the cause and returns None rather than raising
            raise EdgeclsError(f"TensorRT {self.trt_version} could not deserialize {self.path}, which "
                               f"{_built_for(manifest)} (its log above says why); rebuild it with `edgecls build`")
        state.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EdgeclsError(f"TensorRT could not create an execution context for {self.path}; "
                               "is the GPU out of memory?")
        state.context = context
        self._bind(state)

    def _bind(self, state: _Engine) -> None:
        """Allocate every I/O tensor for the largest batch once; their addresses never change afterwards."""
        import tensorrt as trt

        assert self.manifest is not None
        engine = state.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = {name: tuple(engine.get_tensor_shape(name)) for name in names}
        modes = {name: engine.get_tensor_mode(name) for name in names}
        if modes.get(self.input_name) != trt.TensorIOMode.INPUT or modes.get(self.output_name) != trt.TensorIOMode.OUTPUT:
            raise EdgeclsError(f"{self.path} lacks the input {self.input_name!r} or output {self.output_name!r}; rebuild it")
        first = shapes[self.input_name][0]
        if first >= 1:  # static batch
            self.min_batch = self.max_batch = int(first)
        else:
            self.min_batch, self.max_batch = self.manifest.batch["min"], self.manifest.batch["max"]
        dtypes = {name: numpy_dtype(engine.get_tensor_dtype(name).name, name, self.path) for name in names}
        infos = {name: TensorInfo(dtypes[name].name, tuple(int(d) if d >= 0 else None for d in shapes[name]))
                 for name in names}
        self._graph = GraphIO({n: i for n, i in infos.items() if modes[n] == trt.TensorIOMode.INPUT},
                              {n: i for n, i in infos.items() if modes[n] == trt.TensorIOMode.OUTPUT})
        for name in names:
            # the buffers are plain (N, C, H, W) arrays: an I/O tensor in another layout (a DLA plan built with
            # DIRECT_IO, say) would be read as garbage without an error
            if engine.get_tensor_format(name) != trt.TensorFormat.LINEAR:
                raise EdgeclsError(f"{self.path}: tensor {name!r} has the {engine.get_tensor_format(name).name} "
                                   "layout, not LINEAR; rebuild the engine with `edgecls build`")
            dtype = dtypes[name]
            shape = (self.max_batch, *(int(d) for d in shapes[name][1:]))
            state.buffers[name] = state.cuda.allocate(shape, dtype)
            if not state.context.set_tensor_address(name, state.buffers[name].device):
                raise EdgeclsError(f"TensorRT refused the buffer of tensor {name!r} of {self.path} "
                                   "(its log above says why); rebuild the engine with `edgecls build`")

    def graph_io(self) -> GraphIO | None:
        return self._graph  # read from the engine when it was opened; activate() checks it against the manifest

    def _close(self) -> None:
        if self._release is not None:
            self._release()  # runs _Engine.release once, whichever comes first: this or garbage collection
        self._open_engine, self._release = None, None

    def _state(self) -> _Engine:
        if not self.active or self._open_engine is None:
            raise EdgeclsError(f"{self.path} is closed; run it inside `with` or after activate()")
        return self._open_engine

    def _stage(self, state: _Engine, batch: np.ndarray) -> int:
        """Copy one input batch to the device and set its shape; returns the batch size. Context pushed by caller."""
        buffer = state.buffers[self.input_name]
        check_input(self.path, batch, buffer.host.shape[1:], buffer.host.dtype, self.min_batch,
                    self.max_batch or len(batch))
        count = len(batch)
        np.copyto(buffer.host[:count], batch, casting="same_kind")
        if not state.context.set_input_shape(self.input_name, tuple(buffer.host[:count].shape)):
            raise EdgeclsError(f"{self.path} does not accept input of shape {buffer.host[:count].shape}; rebuild it")
        state.cuda.to_device(buffer, buffer.host[:count].nbytes)
        return count

    def _execute(self, state: _Engine) -> None:
        if not state.context.execute_async_v3(state.cuda.stream_handle):
            raise EdgeclsError(f"TensorRT failed to run {self.path}; see TensorRT's log above")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = self._state()
        with state.cuda.current():
            count = self._stage(state, feed[self.input_name])
            self._execute(state)
            output = state.buffers[self.output_name]
            state.cuda.to_host(output, output.host[:count].nbytes)
            state.cuda.synchronize()
            return {self.output_name: output.host[:count].astype(np.float32)}  # a copy: the buffer is reused

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        state = self._state()
        with state.cuda.current():
            count = self._stage(state, feed[self.input_name])
            state.cuda.synchronize()
        shape = (count, *state.buffers[self.input_name].host.shape[1:])

        def run() -> None:
            with state.cuda.current():
                # only when another call changed it (a set_input_shape per timed call would be timed too)
                if tuple(state.context.get_tensor_shape(self.input_name)) != shape and \
                        not state.context.set_input_shape(self.input_name, shape):
                    raise EdgeclsError(f"{self.path} does not accept input of shape {shape}; rebuild it")
                self._execute(state)
                state.cuda.synchronize()

        return run

    def describe(self) -> dict[str, Any]:
        built = self.manifest
        cuda = self.cuda
        return {
            "backend": self.backend,
            "device": "gpu" if built is None or built.dla_core is None else f"dla:{built.dla_core}",
            "tensorrt": self.trt_version,
            "gpu_name": cuda.gpu.name if cuda else "?",
            "compute_capability": cuda.gpu.compute_capability if cuda else "?",
            "cuda_helper": cuda.name if cuda else None,
            "built_with": None if built is None else {"tensorrt_version": built.tensorrt_version,
                                                      "gpu_name": built.gpu_name,
                                                      "compute_capability": built.compute_capability,
                                                      "board": built.board},
            "batch": {"min": self.min_batch, "max": self.max_batch},
            "board": board_model(),
            "layers": None if built is None or built.layers_on_dla is None else {
                "dla": len(built.layers_on_dla), "gpu": len(built.layers_on_gpu or ())},
            "warnings": list(self.warnings),
        }
