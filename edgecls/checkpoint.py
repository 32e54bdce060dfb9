"""Checkpoint files: everything later stages need, in one torch.save'd dict (docs/FORMATS.md)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecls.artifacts import atomic_write, sha256_file
from edgecls.errors import EdgeclsError
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
    data_fingerprint: str
    train_args: dict[str, Any]
    versions: dict[str, str]
    epoch: int
    epochs: int
    sha256: str
    resume: dict[str, Any] | None = field(default=None, repr=False)

    def build_model(self) -> nn.Module:
        """The trained model in eval mode, on the CPU."""
        model = create_model(self.model_name, **self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


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
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EdgeclsError(
            f"checkpoint {path} is unreadable (truncated, or not a PyTorch file: {type(exc).__name__}); "
            "re-train or copy it again"
        ) from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise EdgeclsError(f"{path} is not an edgecls checkpoint (no '{FORMAT}' marker); pass a file written by `edgecls train`")
    if record.get("format_version") != FORMAT_VERSION:
        raise EdgeclsError(
            f"checkpoint {path} has format version {record.get('format_version')}, this edgecls reads {FORMAT_VERSION}; "
            "use the edgecls version that wrote it"
        )
    try:
        return Checkpoint(
            path=path,
            model_name=record["model"],
            model_config=dict(record["model_config"]),
            state_dict=record["state_dict"],
            preprocess=Preprocessing.from_dict(record["preprocess"]),
            test_accuracy=record.get("test_accuracy"),
            data_fingerprint=record["data_fingerprint"],
            train_args=dict(record.get("train_args", {})),
            versions=dict(record.get("versions", {})),
            epoch=int(record["epoch"]),
            epochs=int(record["epochs"]),
            sha256=sha256_file(path),
            resume=record.get("resume"),
        )
    except KeyError as exc:
        raise EdgeclsError(f"checkpoint {path} lacks the field {exc.args[0]!r}; it is damaged or from another tool") from exc
