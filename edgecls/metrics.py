"""Accuracy and parity figures computed from logits, and the gate that judges them (numpy only, so device-side
code can use them without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgecls.errors import EdgeclsError


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == labels))


@dataclass
class Parity:
    """How closely a model's answers follow the reference (original PyTorch) answers on the same images."""

    reference: str  # where the reference logits came from
    images: int
    agreement: float  # percent of images with the same top-1 class
    flips: int  # images whose top-1 class differs
    right_to_wrong: int  # flips where the reference was right and the model is wrong
    wrong_to_right: int  # flips where the reference was wrong and the model is right
    accuracy: float  # the model's accuracy on these images, percent
    reference_accuracy: float
    accuracy_delta: float  # points, model minus reference
    max_abs_logit_diff: float
    mean_abs_logit_diff: float


def parity(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray, reference: str = "") -> Parity:
    """Compare two sets of logits for the same images (rows in the same order) with the true labels."""
    if logits.shape != reference_logits.shape or len(labels) != len(logits):
        raise EdgeclsError(
            f"cannot compare logits of shape {logits.shape} with reference {reference or ''} of shape "
            f"{reference_logits.shape} ({len(labels)} labels); the reference belongs to other data or another model"
        )
    predicted, expected = logits.argmax(axis=1), reference_logits.argmax(axis=1)
    right, reference_right = predicted == labels, expected == labels
    flipped = predicted != expected
    diff = np.abs(np.subtract(logits, reference_logits, dtype=np.float64))  # float32 would round small differences
    accuracy, reference_accuracy = 100.0 * right.mean(), 100.0 * reference_right.mean()
    return Parity(
        reference=reference,
        images=len(labels),
        agreement=100.0 * float((~flipped).mean()),
        flips=int(flipped.sum()),
        right_to_wrong=int((flipped & reference_right & ~right).sum()),
        wrong_to_right=int((flipped & ~reference_right & right).sum()),
        accuracy=float(accuracy),
        reference_accuracy=float(reference_accuracy),
        accuracy_delta=float(accuracy - reference_accuracy),
        max_abs_logit_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if diff.size else 0.0,
    )


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    predicted = logits.argmax(axis=1)
    return {name: (float(100.0 * (predicted[labels == c] == c).mean()) if np.any(labels == c) else None)
            for c, name in enumerate(class_names)}


@dataclass(frozen=True)
class Gate:
    """Limits a `Parity` must keep: export's "fp32 within float rounding", bench's `--max-drop` /
    `--min-agreement`, and the int8 search's budget are all one of these. None means no limit."""

    max_logit_diff: float | None = None  # largest allowed |logit - reference logit|
    max_drop: float | None = None  # accuracy points the model may lose against the reference
    min_agreement: float | None = None  # percent of images with the reference's top-1 class

    def __post_init__(self) -> None:
        # Limits come from the command line (bench and export): a meaningless one is refused before any work.
        if self.max_drop is not None and not self.max_drop >= 0:  # `not >=` also refuses NaN
            raise EdgeclsError(f"--max-drop {self.max_drop:g} must be at least 0 (accuracy points the model may lose "
                               "against the reference)")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise EdgeclsError(f"--min-agreement {self.min_agreement:g} must lie between 0 and 100 (percent of images "
                               "with the reference's top-1 class)")
        if self.max_logit_diff is not None and not self.max_logit_diff >= 0:
            raise EdgeclsError(f"the largest allowed |Δ logit| must be at least 0, got {self.max_logit_diff:g}")

    @property
    def active(self) -> bool:
        return any(limit is not None for limit in (self.max_logit_diff, self.max_drop, self.min_agreement))

    def check(self, found: Parity | None, missing: str = "no reference to compare with") -> "GateResult":
        """The verdict on `found`; without figures (None) an active gate fails with the reason `missing`."""
        if not self.active:
            return GateResult(self)
        if found is None:
            return GateResult(self, (missing,))
        failures = []
        # Accuracies are multiples of 100/N: rounding away float noise makes a figure exactly at a limit pass.
        drop = round(found.reference_accuracy - found.accuracy, 9)
        if self.max_drop is not None and drop > self.max_drop:
            failures.append(f"accuracy dropped {drop:.2f} points (more than --max-drop {self.max_drop:g})")
        if self.min_agreement is not None and round(found.agreement, 9) < self.min_agreement:
            failures.append(f"top-1 agreement {found.agreement:.2f}% is below --min-agreement {self.min_agreement:g}%")
        if self.max_logit_diff is not None and found.max_abs_logit_diff > self.max_logit_diff:
            failures.append(f"max |Δ logit| {found.max_abs_logit_diff:.3g} exceeds {self.max_logit_diff:.3g}")
        return GateResult(self, tuple(failures))


@dataclass(frozen=True)
class GateResult:
    """A gate's verdict: truthy when every limit held."""

    gate: Gate
    failures: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return {"max_drop": self.gate.max_drop, "min_agreement": self.gate.min_agreement,
                "max_logit_diff": self.gate.max_logit_diff, "passed": self.passed, "failures": list(self.failures)}
