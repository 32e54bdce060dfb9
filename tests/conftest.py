"""Shared fixtures: a small synthetic CIFAR-like data set and briefly trained checkpoints of each model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
from PIL import Image

from edgecls.data import Cifar10

if TYPE_CHECKING:
    from edgecls.export import ExportReport

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_cifar(train_per_class: int = 40, test_per_class: int = 10, seed: int = 0) -> Cifar10:
    """Each class is a smooth random colour pattern; images are noisy, shifted copies of it, so it is learnable."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(40, 215, size=(10, 4, 4, 3))
    patterns = patterns.repeat(8, axis=1).repeat(8, axis=2)  # 32 x 32 blocks

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        shifts = rng.integers(-2, 3, size=(len(labels), 2))
        images = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts)])
        images = images + rng.normal(0, 20, size=images.shape)
        order = rng.permutation(len(labels))
        return np.clip(images, 0, 255).astype(np.uint8)[order], labels[order].astype(np.int64)

    train_images, train_labels = draw(train_per_class)
    test_images, test_labels = draw(test_per_class)
    return Cifar10(train_images=train_images, train_labels=train_labels, test_images=test_images,
                   test_labels=test_labels, class_names=list(CLASS_NAMES), source="synthetic")


def write_image_folder(data: Cifar10, root: Path, suffix: str = ".png") -> Path:
    for split, images, labels in (("train", data.train_images, data.train_labels), ("test", data.test_images, data.test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}{suffix}")
    return root


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the decoded-data cache of the tests out of the user's ~/.cache."""
    os.environ["EDGECLS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_cifar() -> Cifar10:
    return synthetic_cifar()


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_cifar: Cifar10, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_cifar as a PNG image-folder tree (lossless, so loading it gives tiny_cifar's exact pixels)."""
    return write_image_folder(tiny_cifar, tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_cifar: Cifar10, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: the path of a checkpoint of `model_name` trained for a few CPU epochs on tiny_cifar (cached)."""
    from edgecls.train import TrainRequest, train

    made: dict[str, Path] = {}

    def make(model_name: str = "new2") -> Path:
        if model_name not in made:
            out = tmp_path_factory.mktemp(f"ckpt_{model_name}")
            request = TrainRequest(model_name, epochs=3, batch_size=50, lr=0.05, val_split=40, device="cpu", out_dir=out,
                                   progress=False)
            made[model_name] = train(request, tiny_cifar).checkpoint
        return made[model_name]

    return make


@pytest.fixture(scope="session")
def exported_models(trained_checkpoint: Callable[[str], Path], tiny_cifar: Cifar10,
                    tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], "ExportReport"]:
    """Factory: the fp32 + fp16 + int8 (trt) export of a briefly trained model on tiny_cifar, made once per model
    for the whole session. Tests only read these files; a test that changes one works on a copy."""
    from edgecls.export import export_model

    made: dict[str, "ExportReport"] = {}

    def make(model_name: str) -> "ExportReport":
        if model_name not in made:
            root = tmp_path_factory.mktemp(f"export_{model_name}")
            made[model_name] = export_model(trained_checkpoint(model_name), root / "export", data=tiny_cifar, fp16=True,
                                            int8=True, calibration_size=200, calibration_dir=root / "calibration",
                                            progress=False)
        return made[model_name]

    return make


@pytest.fixture(scope="session")
def new2_export(exported_models: Callable[[str], "ExportReport"]) -> "ExportReport":
    """The shared export of new2: `.files[precision]`, `.reference` (the .npz), all in one export/ folder."""
    return exported_models("new2")
