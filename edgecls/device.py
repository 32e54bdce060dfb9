"""The PyTorch side shared by training, evaluation and the bench: which device to run on, the calls that must name
that device (with `--device cuda:1`, a bare `torch.cuda.synchronize()` waits on the wrong GPU), the backend flags
that change what "fp32" means, and the deployment preprocessing done on the device (the same arithmetic as
`edgecls.preprocess`, on tensors)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from edgecls.errors import EdgeclsError

DEVICE_TYPES = ("cpu", "cuda")


def pick_device(requested: str | None = None) -> torch.device:
    """The device asked for (checked to exist), else CUDA when available, else the CPU. A CUDA device always carries
    its index, so every call that takes it acts on that GPU and not on whichever is current."""
    if not requested:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise EdgeclsError(f"--device {requested!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if device.type not in DEVICE_TYPES:
        raise EdgeclsError(f"--device {requested}: edgecls runs on the CPU or a CUDA GPU, not on {device.type}; "
                           "use --device cpu, cuda or cuda:N")
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None and torch.cuda.is_available() else device.index
        if not (torch.cuda.is_available() and (index or 0) < torch.cuda.device_count()):
            raise EdgeclsError(f"--device {requested}: no such CUDA device here; use --device cpu or leave it out")
        return torch.device("cuda", index)
    return device


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished the work queued on it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make `device` the current CUDA device while inside, for the library calls that use the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@contextlib.contextmanager
def backend_flags(*, cudnn_benchmark: bool | None = None, tf32: bool | None = None) -> Iterator[None]:
    """Set PyTorch's process-wide cuDNN benchmark mode and TF32 permission while inside (None: leave as is), then
    restore them. PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa) by default, so a figure
    labelled fp32 is only fp32 with `tf32=False`. Only flags that differ are written (and written back): writing
    one rewrites PyTorch's newer fp32_precision settings too, and an unchanged flag should leave them alone."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    wanted = ([(cudnn, "benchmark", cudnn_benchmark)] +
              [(cudnn, "allow_tf32", tf32), (matmul, "allow_tf32", tf32)])
    changes = [(owner, name, value, getattr(owner, name)) for owner, name, value in wanted
               if value is not None and getattr(owner, name) != value]
    try:
        for owner, name, value, _ in changes:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, _, previous in reversed(changes):
            setattr(owner, name, previous)


def exact_fp32() -> contextlib.AbstractContextManager:
    """Float32 convolutions and matrix products in full float32 (no TF32) while inside."""
    return backend_flags(tf32=False)


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W on any device -> float32 standardized; the same arithmetic as Preprocessing.normalize."""
    return (images.float() * (1 / 255) - mean.view(1, 3, 1, 1)) * (1 / std).view(1, 3, 1, 1)


def center_crop_nchw(images: torch.Tensor, size: int) -> torch.Tensor:
    """The same offsets as `edgecls.preprocess.center_crop`: (H - size) // 2."""
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size]
