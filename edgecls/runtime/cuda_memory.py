"""The little CUDA the TensorRT backend needs: the GPU's facts, page-locked host + device buffers, one stream, copies.

Two bindings, tried in this order, each on the device's *primary* context (the one TensorRT and the CUDA runtime
use):

- cuda-python (`cuda.bindings`, or `cuda.cuda` / `cuda.cudart` before 12.6), NVIDIA's current choice. It imports
  on machines where it cannot work: with no driver its driver calls raise RuntimeError (libcuda not found), and
  with a driver older than the CUDA it was built for (JetPack 5's CUDA 11.4 under cuda-python 12/13) its runtime
  calls fail. Both are asked of the driver API first, so that pycuda is tried next instead of failing later.
- pycuda, what works on JetPack 5.

Threads: a binding pushes its primary context onto the calling thread for each use (`with binding.current():`)
and pops it after, so any thread may use it, one at a time (the caller serializes; edgecls.runtime.Classifier
holds a lock). Nothing here relies on a context made current at import (pycuda.autoinit does that, in the
importing thread only).

Lifetime: `close()` frees the buffers and the stream and releases the context; a binding that is never closed
does the same when it is garbage collected (or at interpreter exit), through one finalizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from edgecls.errors import EdgeclsError, first_line

if TYPE_CHECKING:  # for the annotations only: the API contract checks each call on a pycuda object by its class
    import pycuda.driver as pycuda_driver

CUDA_PYTHON = "cuda-python"
PYCUDA = "pycuda"


@dataclass(frozen=True)
class GpuInfo:
    """What a binding (or nvidia-smi) says about one GPU."""

    name: str
    compute_capability: str  # "major.minor"
    total_memory: int  # bytes; 0 when unknown
    source: str  # cuda-python | pycuda | nvidia-smi


@dataclass(frozen=True)
class BindingStatus:
    """Whether one CUDA binding works here: its version, the GPU it sees, or why it cannot be used."""

    name: str
    version: Optional[str]  # None: not installed
    gpu: Optional[GpuInfo]
    problem: Optional[str]  # None when it works; else why not and what to do

    @property
    def works(self) -> bool:
        return self.problem is None


@dataclass
class Buffer:
    """A page-locked host array and a device allocation of the same size (bytes)."""

    host: np.ndarray
    device: int  # device pointer
    nbytes: int


def _cuda_version_text(version: int) -> str:
    """CUDA's integer version (11040) as text (11.4)."""
    return f"{version // 1000}.{version % 1000 // 10}"


# ------------------------------------------------------------------------------------------------ cuda-python
# The modules are always named `driver` and `runtime` (and `self.driver` / `self.runtime`): the API contract
# (tools/api/apicheck.py) follows those names to check every call against each cuda-bindings release.

def _import_cuda_python() -> Tuple[Any, Any]:
    """cuda-python's driver and runtime modules; ImportError when it is not installed."""
    try:
        from cuda.bindings import driver, runtime
    except ImportError as missing:
        try:
            from cuda import cuda as driver, cudart as runtime  # cuda-python before 12.6
        except ImportError:
            raise missing from None
    return driver, runtime


def _native_handle() -> Callable[[Any], int]:
    """The documented way from a cuda-python object (a stream) to its handle: int() on it is deprecated since 12.x."""
    try:
        from cuda.bindings import utils as cuda_utils
    except ImportError:
        return int  # cuda-python before 12.6, where int() is the accessor
    return cuda_utils.get_cuda_native_handle


def _cuda_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("cuda-bindings", "cuda-python"):  # cuda-python before 12.6 ships no cuda-bindings
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "?"


def _check(driver: Any, runtime: Any, result: Tuple[Any, ...], what: str) -> Any:
    """The value(s) of a driver or runtime call's (error, *values) result; EdgeclsError naming the error otherwise."""
    error, values = result[0], result[1:]
    if int(error) != 0:  # CUDA_SUCCESS and cudaSuccess (both enums are int subclasses)
        if isinstance(error, driver.CUresult):
            text = driver.cuGetErrorString(error)[1]
        else:
            text = runtime.cudaGetErrorString(error)[1]
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise EdgeclsError(f"{what} failed ({getattr(error, 'name', error)}: {text})")
    return values[0] if len(values) == 1 else values


def _cuda_python_gpu(driver: Any, runtime: Any, ordinal: int) -> Tuple[Any, GpuInfo]:
    """(CUdevice, GpuInfo) of GPU `ordinal`, through the driver API, which tells "no driver" (a RuntimeError from the
    library loader), "driver too old" (its version) and "no GPU" apart; the runtime API answers all three with
    cudaErrorInsufficientDriver."""
    driver_version = _check(driver, runtime, driver.cuDriverGetVersion(), "cuDriverGetVersion")
    built_for = _check(driver, runtime, runtime.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    if driver_version // 1000 < built_for // 1000:
        major = driver_version // 1000
        raise EdgeclsError(
            f"cuda-python {_cuda_python_version()} is built for CUDA {_cuda_version_text(built_for)} but the driver "
            f"is CUDA {_cuda_version_text(driver_version)}: install the release of the driver's major version "
            f"(pip install 'cuda-python>={major},<{major + 1}'), or use pycuda")
    _check(driver, runtime, driver.cuInit(0), "cuInit")
    if _check(driver, runtime, driver.cuDeviceGetCount(), "cuDeviceGetCount") <= ordinal:
        raise EdgeclsError(f"the driver sees no GPU number {ordinal}")
    device = _check(driver, runtime, driver.cuDeviceGet(ordinal), "cuDeviceGet")
    name = _check(driver, runtime, driver.cuDeviceGetName(256, device), "cuDeviceGetName")
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    attribute = driver.CUdevice_attribute
    major = _check(driver, runtime, driver.cuDeviceGetAttribute(
        attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "cuDeviceGetAttribute")
    minor = _check(driver, runtime, driver.cuDeviceGetAttribute(
        attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "cuDeviceGetAttribute")
    memory = _check(driver, runtime, driver.cuDeviceTotalMem(device), "cuDeviceTotalMem")
    return device, GpuInfo(name.rstrip("\x00").strip(), f"{major}.{minor}", int(memory), CUDA_PYTHON)


class CudaPython:
    """Buffers, stream and copies through cuda-python's runtime API, on the primary context."""

    name = CUDA_PYTHON

    def __init__(self, ordinal: int = 0) -> None:
        driver, runtime = _import_cuda_python()
        self.driver = driver
        self.runtime = runtime
        self._handle = _native_handle()
        self._device, self.gpu = _cuda_python_gpu(driver, runtime, ordinal)
        self._context = self._check(driver.cuDevicePrimaryCtxRetain(self._device), "cuDevicePrimaryCtxRetain")
        self._host_pointers: List[int] = []
        self._device_pointers: List[int] = []
        self._streams: List[Any] = []  # the stream lives only here, so that the finalizer is its one owner
        # One finalizer for close() and garbage collection alike; it holds no reference to self.
        self._release = weakref.finalize(self, _release_cuda_python, driver, runtime, self._device, self._context,
                                         self._streams, self._host_pointers, self._device_pointers)
        with self.current():
            self._streams.append(self._check(runtime.cudaStreamCreate(), "cudaStreamCreate"))

    def _check(self, result: Tuple[Any, ...], what: str) -> Any:
        return _check(self.driver, self.runtime, result, what)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The primary context, current on the calling thread for the duration."""
        self._check(self.driver.cuCtxPushCurrent(self._context), "cuCtxPushCurrent")
        try:
            yield
        finally:
            self.driver.cuCtxPopCurrent()

    def allocate(self, shape: Tuple[int, ...], dtype: np.dtype) -> Buffer:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self.current():
            host_pointer = int(self._check(self.runtime.cudaMallocHost(nbytes), "cudaMallocHost"))
            self._host_pointers.append(host_pointer)
            device_pointer = int(self._check(self.runtime.cudaMalloc(nbytes), "cudaMalloc"))
            self._device_pointers.append(device_pointer)
        raw = (ctypes.c_byte * nbytes).from_address(host_pointer)
        return Buffer(np.frombuffer(raw, dtype=dtype).reshape(shape), device_pointer, nbytes)

    def to_device(self, buffer: Buffer, nbytes: int) -> None:
        kind = self.runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.runtime.cudaMemcpyAsync(buffer.device, buffer.host.ctypes.data, nbytes, kind, self.stream),
                    "cudaMemcpyAsync")

    def to_host(self, buffer: Buffer, nbytes: int) -> None:
        kind = self.runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.runtime.cudaMemcpyAsync(buffer.host.ctypes.data, buffer.device, nbytes, kind, self.stream),
                    "cudaMemcpyAsync")

    @property
    def stream(self) -> Any:
        return self._streams[0]

    @property
    def stream_handle(self) -> int:
        return int(self._handle(self.stream))

    def synchronize(self) -> None:
        self._check(self.runtime.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        self._release()


def _release_cuda_python(driver: Any, runtime: Any, device: Any, context: Any, streams: List[Any],
                         host_pointers: List[int], device_pointers: List[int]) -> None:
    """Free what a CudaPython holds, then release its hold on the primary context. Error codes are ignored: this
    also runs from the garbage collector and at exit, where nothing could report them."""
    pushed = int(driver.cuCtxPushCurrent(context)[0]) == 0
    for pointer in device_pointers:
        runtime.cudaFree(pointer)
    for pointer in host_pointers:
        runtime.cudaFreeHost(pointer)
    for stream in streams:
        runtime.cudaStreamDestroy(stream)
    del device_pointers[:], host_pointers[:], streams[:]
    if pushed:
        driver.cuCtxPopCurrent()
    driver.cuDevicePrimaryCtxRelease(device)


# ------------------------------------------------------------------------------------------------------ pycuda

def _pycuda_gpu(pycuda_driver: Any, ordinal: int) -> Tuple[pycuda_driver.Device, GpuInfo]:
    pycuda_driver.init()
    if pycuda_driver.Device.count() <= ordinal:
        raise EdgeclsError(f"the driver sees no GPU number {ordinal}")
    device: pycuda_driver.Device = pycuda_driver.Device(ordinal)
    major, minor = device.compute_capability()
    return device, GpuInfo(str(device.name()).strip(), f"{major}.{minor}", int(device.total_memory()), PYCUDA)


def _pycuda_version() -> str:
    import pycuda

    return str(getattr(pycuda, "VERSION_TEXT", "?"))


class PyCuda:
    """The same through pycuda, on the primary context, retained explicitly (pycuda.autoinit would make a context
    of its own, current only in the importing thread)."""

    name = PYCUDA

    def __init__(self, ordinal: int = 0) -> None:
        import pycuda.driver as pycuda_driver

        self.pycuda = pycuda_driver
        device: pycuda_driver.Device
        device, self.gpu = _pycuda_gpu(pycuda_driver, ordinal)
        self._context: pycuda_driver.Context = device.retain_primary_context()
        self._device_allocations: List[pycuda_driver.DeviceAllocation] = []
        self._host_arrays: List[np.ndarray] = []  # page-locked
        self._streams: List[pycuda_driver.Stream] = []  # the stream lives only here, so that the finalizer destroys it
        self._release = weakref.finalize(self, _release_pycuda, pycuda_driver, self._context, self._streams,
                                         self._device_allocations, self._host_arrays)
        with self.current():
            self._streams.append(pycuda_driver.Stream())

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The primary context, current on the calling thread for the duration."""
        self._context.push()
        try:
            yield
        finally:
            self.pycuda.Context.pop()

    def allocate(self, shape: Tuple[int, ...], dtype: np.dtype) -> Buffer:
        with self.current():
            host = self.pycuda.pagelocked_empty(shape, dtype)
            allocation: pycuda_driver.DeviceAllocation = self.pycuda.mem_alloc(host.nbytes)
        self._device_allocations.append(allocation)
        self._host_arrays.append(host)
        return Buffer(host, int(allocation), host.nbytes)

    def to_device(self, buffer: Buffer, nbytes: int) -> None:
        self.pycuda.memcpy_htod_async(buffer.device, buffer.host.reshape(-1).view(np.uint8)[:nbytes], self.stream)

    def to_host(self, buffer: Buffer, nbytes: int) -> None:
        self.pycuda.memcpy_dtoh_async(buffer.host.reshape(-1).view(np.uint8)[:nbytes], buffer.device, self.stream)

    @property
    def stream(self) -> pycuda_driver.Stream:
        return self._streams[0]

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._release()


def _release_pycuda(pycuda_driver: Any, context: pycuda_driver.Context, streams: List[Any],
                    device_allocations: List[Any], host_arrays: List[np.ndarray]) -> None:
    """Free device and page-locked memory and the stream with the context current, then detach from the context.
    Errors are not raised: this also runs from the garbage collector and at exit."""
    try:
        context.push()
    except Exception:  # noqa: BLE001 - the context is gone already, and with it what was allocated in it
        return
    try:
        allocation: pycuda_driver.DeviceAllocation
        for allocation in device_allocations:
            allocation.free()
        for array in host_arrays:
            host_allocation: pycuda_driver.HostAllocation = array.base  # what pagelocked_empty's array lives in
            host_allocation.free()
        del device_allocations[:], host_arrays[:], streams[:]  # the stream is destroyed here, with its context current
    finally:
        pycuda_driver.Context.pop()
        context.detach()


# ---------------------------------------------------------------------------------------------------- choosing

CudaBinding = Union[CudaPython, PyCuda]
_INSTALL = {
    CUDA_PYTHON: "pip install cuda-python, the release of the CUDA driver's major version (12.x on JetPack 6, 13.x on "
                 "JetPack 7; none reaches JetPack 5's CUDA 11.4 driver, use pycuda there)",
    PYCUDA: "pip install pycuda (it compiles against the CUDA toolkit: put /usr/local/cuda/bin on PATH first)",
}


def _why_not(name: str, exc: BaseException) -> str:
    """Why a binding cannot be used, from what it raised, with what to do."""
    text = first_line(exc)
    if isinstance(exc, ModuleNotFoundError) and str(exc.name or "").split(".")[0] in ("cuda", "pycuda"):
        return f"not installed; {_INSTALL[name]}"
    if isinstance(exc, ImportError):
        return f"installed but does not load ({text}); reinstall it: {_INSTALL[name]}"
    if isinstance(exc, EdgeclsError):
        return text
    if isinstance(exc, RuntimeError):  # cuda-python's library loader: no libcuda.so (no driver, or not on the path)
        return f"cannot reach the NVIDIA driver ({text}); a Jetson has it from JetPack, a PC from the NVIDIA driver"
    return f"{type(exc).__name__}: {text}"


def probe(ordinal: int = 0) -> List[BindingStatus]:
    """Whether each CUDA binding works here, and the GPU it sees; never raises. Opens no context and no memory."""
    statuses = []
    for name in (CUDA_PYTHON, PYCUDA):
        version: Optional[str] = None
        try:
            if name == CUDA_PYTHON:
                driver, runtime = _import_cuda_python()
                version = _cuda_python_version()
                _, gpu = _cuda_python_gpu(driver, runtime, ordinal)
            else:
                import pycuda.driver as pycuda_driver

                version = _pycuda_version()
                _, gpu = _pycuda_gpu(pycuda_driver, ordinal)
            statuses.append(BindingStatus(name, version, gpu, None))
        except Exception as exc:  # noqa: BLE001 - whatever an optional binding raises means "not usable here"
            statuses.append(BindingStatus(name, version, None, _why_not(name, exc)))
    return statuses


def open_cuda(ordinal: int = 0) -> CudaBinding:
    """The first CUDA binding that works here (cuda-python, then pycuda); else a clear error saying why each does not."""
    problems = []
    for binding in (CudaPython, PyCuda):
        try:
            return binding(ordinal)
        except Exception as exc:  # noqa: BLE001 - a binding that fails in any way: try the next, say why at the end
            problems.append(f"{binding.name}: {_why_not(binding.name, exc)}")
    raise EdgeclsError("TensorRT needs a working CUDA binding for its buffers and none works here: " + "; ".join(problems))
