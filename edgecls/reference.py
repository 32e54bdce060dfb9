"""The original model's answers that every other file is compared with: loaded from a checkpoint (computed here
with PyTorch) or from the reference logits saved at export, checked to belong to the model and data at hand, and
aligned to the rows of the test split as it was read this time. Pure functions: each returns a new object."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgecls.data import Cifar10, find_images
from edgecls.errors import EdgeclsError
from edgecls.formats import ExportSet, ModelMetadata, ReferenceLogits


@dataclass(frozen=True)
class Reference:
    """Reference logits of the original model on (part of) the test split, and what they were made from."""

    source: str
    logits: np.ndarray
    labels: np.ndarray
    model: str
    checkpoint_sha256: Optional[str]
    data_fingerprint: Optional[str]  # the data the logits were computed on
    trained_on: Optional[str] = None  # the data the reference model was trained on, when known
    digests: Optional[np.ndarray] = None  # N x 16: the digest of each row's image (saved references)
    indices: Optional[np.ndarray] = None  # each row's position in the test split at hand, once aligned

    @property
    def aligned(self) -> bool:
        return self.indices is not None


def from_checkpoint(path: str | Path, dataset: Cifar10, device: Optional[str] = None) -> Reference:
    """The checkpoint's logits on the whole test split, through the training-time evaluation path (aligned)."""
    from edgecls.checkpoint import load_checkpoint
    from edgecls.device import pick_device
    from edgecls.evaluate import torch_logits

    checkpoint = load_checkpoint(path)
    dev = pick_device(device)
    logits = torch_logits(checkpoint.build_model().to(dev), dataset.test_images, checkpoint.preprocess)  # on dev
    return Reference(str(path), logits, dataset.test_labels, checkpoint.model_name,  # int64: Cifar10 makes them so
                     checkpoint.sha256, dataset.fingerprint, trained_on=checkpoint.data_fingerprint,
                     indices=np.arange(len(dataset.test_labels)))


def from_file(path: str | Path) -> Reference:
    """`<model>.reference.npz` as written by `edgecls export` (not yet aligned to any test split), refused when it is
    not part of a complete export set (`ExportSet.check_member`)."""
    saved = ReferenceLogits.read(path)
    ExportSet.check_member(path, saved.model)
    return Reference(str(path), saved.logits, saved.labels, saved.model, saved.checkpoint_sha256,
                     saved.data_fingerprint, digests=saved.digests)


def load(path: str | Path, dataset: Cifar10, device: Optional[str] = None) -> Reference:
    """A checkpoint (.pt) or saved reference logits (.npz)."""
    path = Path(path)
    if path.suffix == ".pt":
        return from_checkpoint(path, dataset, device)
    if path.suffix == ".npz":
        return from_file(path)
    raise EdgeclsError(f"reference {path} is neither a checkpoint (.pt) nor reference logits (.npz)")


def find(model_path: Path, model: str, onnx_path: Optional[str] = None) -> Optional[Path]:
    """`<model>.reference.npz` beside the model, beside the ONNX file a plan was built from, or in export/."""
    name = ExportSet.member_name(model, "reference")
    folders = [model_path.parent, model_path.parent.parent / "export", Path("export")]
    if onnx_path:
        folders.insert(1, Path(onnx_path).parent)
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def check(reference: Reference, metadata: ModelMetadata, model_path: Path, dataset: Cifar10) -> None:
    """Refuse a reference that belongs to another model, checkpoint or data set: its parity would be meaningless."""
    where = reference.source
    if reference.model != metadata.model:
        raise EdgeclsError(f"reference {where} is for model {reference.model}, but {model_path} is "
                           f"{metadata.model}; pass the reference of this model")
    ours = metadata.checkpoint_sha256
    if ours and reference.checkpoint_sha256 and ours != reference.checkpoint_sha256:
        raise EdgeclsError(f"reference {where} comes from checkpoint {reference.checkpoint_sha256[:12]}, but "
                           f"{model_path} from checkpoint {ours[:12]}; pass the matching reference or export again")
    if reference.data_fingerprint and reference.data_fingerprint != dataset.fingerprint:
        raise EdgeclsError(f"reference {where} was computed on another data set (fingerprint "
                           f"{reference.data_fingerprint[:12]}) than the test data here ({dataset.fingerprint[:12]}); "
                           "pass the data it was made with (--data)")
    trained_on = metadata.data_fingerprint
    if reference.trained_on and trained_on and reference.trained_on != trained_on:
        raise EdgeclsError(f"reference {where} was trained on another data set ({reference.trained_on[:12]}) than "
                           f"{model_path} ({trained_on[:12]}); pass the reference of this model")
    classes = len(metadata.preprocess.class_names)
    if reference.logits.shape[1] != classes:
        raise EdgeclsError(f"reference {where} has {reference.logits.shape[1]} classes, {model_path} has {classes}; "
                           "pass the reference of this model")


def align(reference: Reference, dataset: Cifar10) -> Reference:
    """The reference with each row's position in this test split, found by image digest whatever the order."""
    where, count = reference.source, len(dataset.test_labels)
    indices = reference.indices
    if reference.digests is not None:
        found = find_images(dataset.test_images, reference.digests)
        if None in found:
            raise EdgeclsError(f"reference {where}: {found.count(None)} of its images are not in this test split; "
                               "pass the data it was made with (--data)")
        indices = np.asarray(found, dtype=np.int64)
    if indices is None or len(indices) != len(reference.labels) or (len(indices) and (
            indices.min() < 0 or indices.max() >= count or np.any(dataset.test_labels[indices] != reference.labels))):
        raise EdgeclsError(f"reference {where} does not match this test split ({count} images); "
                           "pass the data it was made with (--data)")
    return replace(reference, indices=indices)


def resolve(reference: Any, metadata: ModelMetadata, model_path: Path, dataset: Cifar10,
            device: Optional[str] = None) -> Reference:
    """A reference path or object, loaded, checked against this model and data, and aligned."""
    if not isinstance(reference, Reference):
        reference = load(reference, dataset, device)
    check(reference, metadata, model_path, dataset)
    return align(reference, dataset)


def covers(reference: Reference, checkpoint_sha256: str, dataset: Cifar10) -> bool:
    """Whether `reference` holds this checkpoint's own logits on the whole test split in order: then bench --all
    needs no second pass of PyTorch over the test set (the slowest part on a CPU)."""
    count = len(dataset.test_labels)
    return (reference.checkpoint_sha256 == checkpoint_sha256 and reference.indices is not None
            and bool(np.array_equal(reference.indices, np.arange(count))))
