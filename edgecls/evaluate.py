"""PyTorch-side evaluation: logits and accuracy for a model on uint8 images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgecls.device import center_crop_nchw, exact_fp32, normalize_on_device, pick_device
from edgecls.metrics import accuracy, per_class_accuracy
from edgecls.preprocess import Preprocessing


@torch.no_grad()
def torch_logits(model: nn.Module, images: np.ndarray | torch.Tensor, preprocess: Preprocessing,
                 batch_size: int = 500, device: torch.device | str | None = None, mirror: bool = False) -> np.ndarray:
    """Float32 logits of `model` (eval mode) on uint8 images (N x H x W x 3 numpy, or N x 3 x H x W tensor).

    Images are center-cropped and standardized exactly as the deployment preprocessing does. With `mirror`,
    the logits of the crop and of its horizontal mirror are averaged. Computed in full float32 (no TF32 on a GPU):
    these logits are the reference every other precision is compared with.
    """
    device = torch.device(device or next(model.parameters()).device)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean = torch.tensor(preprocess.mean, device=device)
    std = torch.tensor(preprocess.std, device=device)
    model.eval()
    outputs = []
    with exact_fp32():
        for start in range(0, len(images), batch_size):
            batch = center_crop_nchw(images[start : start + batch_size].to(device), preprocess.crop_size)
            batch = normalize_on_device(batch, mean, std)
            logits = model(batch).float()
            if mirror:
                logits = (logits + model(batch.flip(-1)).float()) / 2
            outputs.append(logits.cpu())
    return torch.cat(outputs).numpy()


@dataclass
class EvalReport:
    model: str
    accuracy: float
    per_class: dict[str, float | None]
    images: int


def evaluate_checkpoint(checkpoint: str, data: str | None = None, *, mirror: bool = False,
                        device: str | None = None) -> EvalReport:
    """Test-split accuracy of a checkpoint; refuses data whose classes differ from the model's."""
    from edgecls.checkpoint import load_checkpoint
    from edgecls.data import load_cifar10

    saved = load_checkpoint(checkpoint)
    dev = pick_device(device)
    dataset = load_cifar10(data)
    dataset.check_fits(saved.preprocess, checkpoint)
    logits = torch_logits(saved.build_model().to(dev), dataset.test_images, saved.preprocess, device=dev, mirror=mirror)
    return EvalReport(saved.model_name, accuracy(logits, dataset.test_labels),
                      per_class_accuracy(logits, dataset.test_labels, dataset.class_names), len(dataset.test_labels))
