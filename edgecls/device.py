"""The PyTorch side shared by training, evaluation and the bench: which device to run on, and the deployment
preprocessing done on that device (the same arithmetic as `edgecls.preprocess`, on tensors)."""

from __future__ import annotations

import torch

from edgecls.errors import EdgeclsError


def pick_device(requested: str | None = None) -> torch.device:
    """The device asked for (checked to exist), else CUDA when available, else the CPU."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise EdgeclsError(f"--device {requested!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise EdgeclsError(f"--device {requested}: no such CUDA device here; use --device cpu or leave it out")
    return device


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W on any device -> float32 standardized; the same arithmetic as Preprocessing.normalize."""
    return (images.float() * (1 / 255) - mean.view(1, 3, 1, 1)) * (1 / std).view(1, 3, 1, 1)


def center_crop_nchw(images: torch.Tensor, size: int) -> torch.Tensor:
    """The same offsets as `edgecls.preprocess.center_crop`: (H - size) // 2."""
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size]
