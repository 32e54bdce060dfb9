"""Accuracy, parity figures and the gates that judge them, on constructed logits whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.errors import EdgeclsError
from edgecls.metrics import Gate, GateResult, accuracy, parity, per_class_accuracy


def logits_for(predictions: list[int]) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[predictions]


def test_a_gate_passes_exactly_at_its_limits_and_fails_just_beyond():
    labels = np.arange(10) % 10
    reference = logits_for(list(range(10)))  # 100% right
    three_wrong = logits_for([1, 2, 3] + list(range(3, 10)))  # 70%: 30 points down, 70% agreement
    found = parity(three_wrong, reference, labels)
    assert found.accuracy_delta == pytest.approx(-30.0) and found.agreement == pytest.approx(70.0)
    assert Gate(max_drop=30.0).check(found) and Gate(min_agreement=70.0).check(found)
    assert not Gate(max_drop=29.99).check(found) and not Gate(min_agreement=70.01).check(found)
    verdict = Gate(max_drop=29.0, min_agreement=71.0).check(found)
    assert not verdict and len(verdict.failures) == 2
    assert "accuracy dropped 30.00 points" in verdict.failures[0] and "below --min-agreement 71" in verdict.failures[1]
    assert verdict.to_dict()["passed"] is False and verdict.to_dict()["max_drop"] == 29.0


def test_a_logit_gate_and_a_gate_without_figures():
    labels = np.zeros(4, dtype=np.int64)
    reference = np.zeros((4, 10), np.float32)
    shifted = reference + 0.5
    found = parity(shifted, reference, labels)
    assert Gate(max_logit_diff=0.5).check(found) and not Gate(max_logit_diff=0.49).check(found)
    assert Gate().check(None)  # no limits: nothing to fail
    missing = Gate(min_agreement=99).check(None, "no reference here")
    assert not missing and missing.failures == ("no reference here",)


def test_accuracy_is_top1_in_percent():
    assert accuracy(logits_for([0, 1, 2, 9]), np.array([0, 1, 2, 3])) == pytest.approx(75.0)


def test_parity_counts_every_kind_of_flip_and_the_logit_differences():
    labels = np.array([0, 1, 2, 3, 4, 5])
    reference = logits_for([0, 1, 2, 9, 9, 9])  # right, right, right, wrong, wrong, wrong
    model = logits_for([0, 7, 2, 3, 8, 9]) * 2  # same, right -> wrong, same, wrong -> right, wrong -> wrong, same
    found = parity(model, reference, labels, reference="new2.reference.npz")
    assert found.reference == "new2.reference.npz" and found.images == 6
    assert (found.flips, found.right_to_wrong, found.wrong_to_right) == (3, 1, 1)
    assert found.agreement == pytest.approx(50.0)
    assert found.accuracy == pytest.approx(50.0) and found.reference_accuracy == pytest.approx(50.0)
    assert found.accuracy_delta == 0.0
    # Each row of model - reference: +2 at the model's class, -1 at the reference's unless they are the same (+1).
    assert found.max_abs_logit_diff == 2.0 and found.mean_abs_logit_diff == pytest.approx((3 * 1 + 3 * 3) / 60)
    better = parity(logits_for([0, 1, 2, 3, 4, 9]), reference, labels)
    assert (better.flips, better.wrong_to_right, better.right_to_wrong) == (2, 2, 0)
    assert better.accuracy == pytest.approx(500 / 6) and better.reference_accuracy == pytest.approx(50.0)
    assert better.accuracy_delta == pytest.approx(500 / 6 - 50.0) and better.reference == ""


def test_logit_differences_are_computed_in_float64_so_small_ones_are_not_rounded_away():
    model = np.array([[1.0, 0.0]], np.float32)
    reference = np.array([[1e-8, 0.0]], np.float32)  # in float32, 1.0 - 1e-8 rounds to 1.0
    found = parity(model, reference, np.zeros(1, np.int64))
    assert found.max_abs_logit_diff == 1.0 - float(np.float32(1e-8)) < 1.0
    assert found.mean_abs_logit_diff == (1.0 - float(np.float32(1e-8))) / 2


def test_parity_of_no_images_has_no_logit_difference():
    nothing = np.zeros((0, 10), np.float32)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):  # the accuracy of no images is not a number
        found = parity(nothing, nothing, np.zeros(0, np.int64))
    assert (found.images, found.flips, found.max_abs_logit_diff, found.mean_abs_logit_diff) == (0, 0, 0.0, 0.0)


def test_parity_refuses_logits_of_other_images_naming_the_reference():
    ten, nine = np.zeros((10, 10)), np.zeros((9, 10))
    labels = np.zeros(10, np.int64)
    with pytest.raises(EdgeclsError) as info:
        parity(ten, nine, labels, reference="ref.npz")
    assert str(info.value) == ("cannot compare logits of shape (10, 10) with reference ref.npz of shape (9, 10) "
                               "(10 labels); the reference belongs to other data or another model")
    with pytest.raises(EdgeclsError) as info:
        parity(ten, ten, labels[:9])
    assert str(info.value) == ("cannot compare logits of shape (10, 10) with reference  of shape (10, 10) (9 labels); "
                               "the reference belongs to other data or another model")


def test_per_class_accuracy_and_classes_without_images():
    names = ["cat", "dog", "frog"]
    labels = np.array([0, 0, 0, 0, 1])
    found = per_class_accuracy(np.eye(3)[[0, 0, 0, 1, 1]], labels, names)
    assert found == {"cat": 75.0, "dog": 100.0, "frog": None}


def test_limits_are_judged_on_the_exact_figures_not_their_float_noise():
    # 6 images: the reference gets 5 right, the model 2, so the drop is 50 points, which floats compute as
    # 50.000000000000014; 100 images with 57 agreeing give 56.99999999999999% agreement. Both sit exactly at a limit.
    labels = np.arange(6)
    found = parity(logits_for([0, 1, 9, 9, 9, 9]), logits_for([0, 1, 2, 3, 4, 9]), labels)
    assert found.reference_accuracy - found.accuracy > 50.0
    assert Gate(max_drop=50.0).check(found) and not Gate(max_drop=49.99).check(found)
    agreeing = np.array([0] * 57 + [1] * 43)
    found = parity(logits_for(list(agreeing)), logits_for([0] * 100), np.zeros(100, np.int64))
    assert found.agreement < 57.0
    assert Gate(min_agreement=57.0).check(found) and not Gate(min_agreement=57.01).check(found)


def test_limits_compare_fractions_of_a_point():
    # 8 images: one flip is 12.5 points of accuracy and of agreement.
    labels = np.zeros(8, np.int64)
    found = parity(logits_for([1] + [0] * 7), logits_for([0] * 8), labels)
    assert found.accuracy_delta == -12.5 and found.agreement == 87.5
    verdict = Gate(max_drop=12.0, min_agreement=88.0).check(found)
    assert verdict.failures == ("accuracy dropped 12.50 points (more than --max-drop 12)",
                                "top-1 agreement 87.50% is below --min-agreement 88%")
    assert Gate(max_drop=13.0, min_agreement=87.0).check(found).passed


def test_a_logit_gate_names_the_difference_and_the_limit():
    labels = np.zeros(2, np.int64)
    found = parity(np.full((2, 10), 0.25), np.zeros((2, 10)), labels)
    verdict = Gate(max_logit_diff=1e-3).check(found)
    assert not verdict.passed and verdict.failures == ("max |Δ logit| 0.25 exceeds 0.001",)
    assert verdict.to_dict() == {"max_drop": None, "min_agreement": None, "max_logit_diff": 1e-3, "passed": False,
                                 "failures": ["max |Δ logit| 0.25 exceeds 0.001"]}


def test_a_gate_without_limits_passes_anything_and_reports_itself():
    for found in (None, parity(logits_for([1]), logits_for([0]), np.zeros(1, np.int64))):
        verdict = Gate().check(found)
        assert verdict and verdict.passed and verdict.gate == Gate()
        assert verdict.to_dict() == {"max_drop": None, "min_agreement": None, "max_logit_diff": None, "passed": True,
                                     "failures": []}
    assert not Gate().active and Gate(max_drop=0.0).active and Gate(min_agreement=0.0).active
    assert Gate(max_logit_diff=0.0).active
    missing = Gate(max_drop=1.0).check(None)
    assert missing.gate == Gate(max_drop=1.0) and missing.failures == ("no reference to compare with",)
    assert missing.to_dict()["max_drop"] == 1.0
    assert bool(GateResult(Gate(), ("a failure",))) is False


def test_meaningless_limits_are_refused_in_one_line_saying_what_they_mean():
    def refusal(**limits: float) -> str:
        with pytest.raises(EdgeclsError) as info:
            Gate(**limits)
        return str(info.value)

    assert refusal(max_drop=-1.0) == ("--max-drop -1 must be at least 0 (accuracy points the model may lose against "
                                      "the reference)")
    assert refusal(max_drop=float("nan")).startswith("--max-drop nan must be at least 0")
    for agreement in (-0.5, 100.5, 101.0):
        assert refusal(min_agreement=agreement) == (f"--min-agreement {agreement:g} must lie between 0 and 100 "
                                                    "(percent of images with the reference's top-1 class)")
    assert refusal(max_logit_diff=-0.1) == "the largest allowed |Δ logit| must be at least 0, got -0.1"
    assert Gate(max_drop=0.0, min_agreement=100.0).active and Gate(min_agreement=0.0).active  # the ends are limits
