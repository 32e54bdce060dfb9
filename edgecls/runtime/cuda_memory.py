"""The little CUDA the TensorRT backend needs: page-locked host + device buffers, one stream, copies, and the
GPU's name and compute capability. cuda-python (`cuda.bindings`, or `cuda.cudart` in older releases, as in
NVIDIA's current samples) is preferred; pycuda is the fallback found on older Jetson images."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecls.errors import EdgeclsError


@dataclass
class Buffer:
    """A page-locked host array and a device allocation of the same size (bytes)."""

    host: np.ndarray
    device: int  # device pointer
    nbytes: int


class CudaPython:
    """CUDA runtime API through cuda-python; every call returns (error, *values)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python before 12.6
        self.cudart = cudart
        self.stream = self._call(cudart.cudaStreamCreate())
        self._host_pointers: list[int] = []
        self._device_pointers: list[int] = []

    def _call(self, result: tuple[Any, ...]) -> Any:
        error, values = result[0], result[1:]
        if error != self.cudart.cudaError_t.cudaSuccess:
            _, text = self.cudart.cudaGetErrorString(error)
            text = text.decode() if isinstance(text, bytes) else text
            raise EdgeclsError(f"CUDA call failed: {text}; check the GPU and driver")
        return values[0] if len(values) == 1 else values

    def device_info(self) -> tuple[str, str]:
        device = self._call(self.cudart.cudaGetDevice())
        props = self._call(self.cudart.cudaGetDeviceProperties(device))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        host_pointer = int(self._call(self.cudart.cudaMallocHost(nbytes)))
        self._host_pointers.append(host_pointer)
        device_pointer = int(self._call(self.cudart.cudaMalloc(nbytes)))
        self._device_pointers.append(device_pointer)
        raw = (ctypes.c_byte * nbytes).from_address(host_pointer)
        return Buffer(np.frombuffer(raw, dtype=dtype).reshape(shape), device_pointer, nbytes)

    def to_device(self, buffer: Buffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.cudart.cudaMemcpyAsync(buffer.device, buffer.host.ctypes.data, nbytes, kind, self.stream))

    def to_host(self, buffer: Buffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.cudart.cudaMemcpyAsync(buffer.host.ctypes.data, buffer.device, nbytes, kind, self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._call(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for pointer in self._device_pointers:
            self.cudart.cudaFree(pointer)
        for pointer in self._host_pointers:
            self.cudart.cudaFreeHost(pointer)
        self._device_pointers, self._host_pointers = [], []
        self.cudart.cudaStreamDestroy(self.stream)


class PyCuda:
    """The same through pycuda, on the device's primary context (the one TensorRT uses too)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as driver

        try:
            import pycuda.autoprimaryctx  # noqa: F401  (pycuda >= 2021.1)
        except ImportError:
            import pycuda.autoinit  # noqa: F401
        self.driver = driver
        self.stream = driver.Stream()
        self._allocations: list[Any] = []

    def device_info(self) -> tuple[str, str]:
        device = self.driver.Context.get_device()
        major, minor = device.compute_capability()
        return device.name(), f"{major}.{minor}"

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        host = self.driver.pagelocked_empty(shape, dtype)
        device = self.driver.mem_alloc(host.nbytes)
        self._allocations.append(device)  # keeps the allocation alive; freed in close()
        return Buffer(host, int(device), host.nbytes)

    def to_device(self, buffer: Buffer, nbytes: int) -> None:
        self.driver.memcpy_htod_async(buffer.device, buffer.host.reshape(-1).view(np.uint8)[:nbytes], self.stream)

    def to_host(self, buffer: Buffer, nbytes: int) -> None:
        self.driver.memcpy_dtoh_async(buffer.host.reshape(-1).view(np.uint8)[:nbytes], buffer.device, self.stream)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        for allocation in self._allocations:
            allocation.free()
        self._allocations = []


def open_cuda() -> CudaPython | PyCuda:
    """cuda-python when importable, else pycuda; a clear error when neither is."""
    try:
        return CudaPython()
    except ImportError:
        pass
    try:
        return PyCuda()
    except ImportError as exc:
        raise EdgeclsError(
            "TensorRT needs cuda-python or pycuda for GPU memory; `pip install cuda-python` (or pycuda on old JetPacks)"
        ) from exc
