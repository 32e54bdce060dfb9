"""Checkpoint files: everything later stages need, in one torch.save'd dict (docs/FORMATS.md)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecls.artifacts import atomic_write, sha256_file
from edgecls.data import Cifar10, digest_rows, find_images
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import ModelMetadata
from edgecls.models import create_model
from edgecls.preprocess import Preprocessing

FORMAT = "edgecls-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    model_name: str
    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    preprocess: Preprocessing
    test_accuracy: float | None
    val_accuracy: float | None
    data_fingerprint: str
    train_args: dict[str, Any]
    versions: dict[str, str]
    epoch: int
    epochs: int
    sha256: str
    device: str | None  # what trained it: "cpu" or the GPU's name
    resume: dict[str, Any] | None = field(default=None, repr=False)
    # The training images held out for validation: {"seed", "size", "digests": uint8 N x 16 tensor}; None when the
    # checkpoint was trained on every training image.
    validation: dict[str, Any] | None = field(default=None, repr=False)
    # What it was trained on (`Cifar10.summary`: source, images per class, how an image-folder tree was read);
    # None in checkpoints written before it was recorded.
    data: dict[str, Any] | None = field(default=None, repr=False)

    def build_model(self) -> nn.Module:
        """The trained model in eval mode, on the CPU."""
        try:
            model = create_model(self.model_name, **self.model_config)
            model.load_state_dict(self.state_dict)
        except (TypeError, RuntimeError, ValueError) as exc:  # other config, shapes or keys than the model's
            raise EdgeclsError(f"checkpoint {self.path}: its weights do not fit model {self.model_name!r} "
                               f"({first_line(exc, 120)}); it is damaged or was edited, re-train it") from exc
        return model.eval()

    def validation_indices(self, data: Cifar10) -> np.ndarray | None:
        """Where the held-out validation images are in `data`'s training split (None: no split was recorded)."""
        if self.validation is None:
            return None
        found = find_images(data.train_images, self.validation["digests"].numpy())
        if None in found:
            raise EdgeclsError(f"{found.count(None)} of the validation images of {self.path} are not in the training "
                               f"split of {data.source}; pass the data it was trained on with --data")
        return np.asarray(found, dtype=np.int64)

    def model_metadata(self, precision: str = "fp32") -> ModelMetadata:
        """The record an export of this checkpoint carries (docs/FORMATS.md)."""
        return ModelMetadata(model=self.model_name, precision=precision, preprocess=self.preprocess,
                             checkpoint_sha256=self.sha256, data_fingerprint=self.data_fingerprint)


def validation_record(seed: int, images: np.ndarray) -> dict[str, Any]:
    """The `validation` field: which training images were held out, named by digest so they are found again in
    any form or order of the data."""
    return {"seed": seed, "size": len(images), "digests": torch.from_numpy(digest_rows(images).copy())}


def save_checkpoint(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a checkpoint atomically: an earlier file at `path` survives any failure."""
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **record}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; every failure is one EdgeclsError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"checkpoint {path} does not exist; train one with `edgecls train` or pass --checkpoint")
    unreadable = f"checkpoint {path} is unreadable (truncated, or not a PyTorch file"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise EdgeclsError(f"{unreadable}); re-train or copy it again")
    try:
        # weights_only: tensors and plain data only, so a doctored checkpoint cannot run code when loaded
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EdgeclsError(f"checkpoint {path} holds objects other than weights and plain data, which edgecls "
                           "refuses to load (a checkpoint could run code that way); re-train it or use one "
                           "written by `edgecls train`") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EdgeclsError(f"{unreadable}: {type(exc).__name__}); re-train or copy it again") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise EdgeclsError(f"{path} is not an edgecls checkpoint (no '{FORMAT}' marker); pass a file written by `edgecls train`")
    if record.get("format_version") != FORMAT_VERSION:
        raise EdgeclsError(
            f"checkpoint {path} has format version {record.get('format_version')}, this edgecls reads {FORMAT_VERSION}; "
            "use the edgecls version that wrote it"
        )
    try:
        checkpoint = Checkpoint(
            path=path,
            model_name=record["model"],
            model_config=dict(record["model_config"]),
            state_dict=record["state_dict"],
            preprocess=Preprocessing.from_dict(record["preprocess"]),
            test_accuracy=record.get("test_accuracy"),
            val_accuracy=record.get("val_accuracy"),
            data_fingerprint=record["data_fingerprint"],
            train_args=dict(record.get("train_args", {})),
            versions=dict(record.get("versions", {})),
            epoch=int(record["epoch"]),
            epochs=int(record["epochs"]),
            sha256=sha256_file(path),
            device=record.get("device"),
            resume=record.get("resume"),
            validation=record.get("validation"),
            data=record.get("data"),
        )
    except KeyError as exc:
        raise EdgeclsError(f"checkpoint {path} lacks the field {exc.args[0]!r}; it is damaged or from another tool") from exc
    outputs = checkpoint.model_config.get("num_classes", 10)
    if outputs != len(checkpoint.preprocess.class_names):  # every later stage names logit i by class_names[i]
        raise EdgeclsError(f"checkpoint {path} names {len(checkpoint.preprocess.class_names)} classes but its model has "
                           f"{outputs} outputs; it is damaged or was edited, re-train it")
    return checkpoint
