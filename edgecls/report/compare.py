"""The figures of the Accuracy and Parity sections: the original model's answers (from its reference logits)
and each artifact's answers beside them, image by image.

An ONNX file is run here, with the deployment runtime, on the test images the reference was computed on (matched
by image digest), so its confusion matrix and its flipped images can be shown. A TensorRT plan only runs on its
device; its figures come from a bench file written there, which holds the totals but not image by image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecls.bench import model_logits
from edgecls.formats import BenchResult
from edgecls.metrics import accuracy, parity, per_class_accuracy
from edgecls.reference import Reference
from edgecls.runtime import Classifier

RIGHT_TO_WRONG, WRONG_TO_RIGHT, WRONG_TO_WRONG = "right → wrong", "wrong → right", "wrong → other wrong"


@dataclass
class Answers:
    """One model's answers on the reference images: the figures every section draws from."""

    name: str  # the file's name (the Parity section's table of artifacts has their paths)
    precision: str
    source: str  # where the figures come from
    accuracy: float
    per_class: dict[str, float | None]
    parity: dict[str, Any] | None  # `edgecls.metrics.Parity` as a dict; None for the original itself
    confusion: np.ndarray | None  # classes x classes, rows true class, columns answer; None when not run here
    predicted: np.ndarray | None  # the top-1 class per reference image; None when not run here


@dataclass
class Flip:
    """A test image on which an artifact's answer differs from the original's."""

    row: int  # row of the reference (position in the test split the reference was made on)
    image: np.ndarray  # uint8 H x W x 3
    label: int
    original: int
    artifact: int

    @property
    def kind(self) -> str:
        if self.original == self.label:
            return RIGHT_TO_WRONG
        return WRONG_TO_RIGHT if self.artifact == self.label else WRONG_TO_WRONG


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, answer) pairs: row = true class, column = answer."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def original_answers(reference: Reference, class_names: Sequence[str]) -> Answers:
    return _answers("original (PyTorch)", "fp32", str(reference.source), reference.logits, reference, class_names,
                    None)


def artifact_answers(name: str, precision: str, source: str, logits: np.ndarray, reference: Reference,
                     class_names: Sequence[str]) -> Answers:
    """Answers of logits whose rows are the reference's images, in the reference's order."""
    figures = asdict(parity(logits, reference.logits, reference.labels, str(reference.source)))
    return _answers(name, precision, source, logits, reference, class_names, figures)


def _answers(name: str, precision: str, source: str, logits: np.ndarray, reference: Reference,
             class_names: Sequence[str], parity_figures: dict[str, Any] | None) -> Answers:
    predicted = logits.argmax(axis=1)
    return Answers(name, precision, source, accuracy(logits, reference.labels),
                   per_class_accuracy(logits, reference.labels, class_names), parity_figures,
                   confusion_matrix(predicted, reference.labels, len(class_names)), predicted)


def run_onnx(path: Path, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """Logits of an exported file on these images, through the deployment runtime, in bounded chunks."""
    with Classifier.load(path) as classifier:
        return model_logits(classifier, images, progress)


def bench_answers(name: str, result: BenchResult, source: Path) -> Answers:
    """An artifact's figures as a bench file recorded them (no per-image answers)."""
    return Answers(name, result.model["precision"], str(source), result.accuracy, dict(result.per_class),
                   result.parity, None, None)


def flips(original: Answers, artifact: Answers, images: np.ndarray, labels: np.ndarray) -> list[Flip]:
    """Every image whose answer changed: right → wrong first (what a reviewer must see), then the others."""
    rows = np.flatnonzero(original.predicted != artifact.predicted)
    found = [Flip(int(row), images[row], int(labels[row]), int(original.predicted[row]),
                  int(artifact.predicted[row])) for row in rows]
    order = (RIGHT_TO_WRONG, WRONG_TO_RIGHT, WRONG_TO_WRONG)
    return sorted(found, key=lambda flip: order.index(flip.kind))
