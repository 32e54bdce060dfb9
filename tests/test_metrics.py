"""Parity figures, gates and timing primitives on constructed inputs whose answers are known."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgecls.metrics import Gate, accuracy, parity
from edgecls.timing import measure


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


def test_measured_latency_matches_a_known_sleep():
    result = measure(lambda: time.sleep(0.02), batch_size=4, duration=0.2, warmup=0.0, min_calls=5)
    assert 19.5 <= result["p50_ms"] <= 40 and result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["calls"] >= 5
    assert result["images_per_s"] == pytest.approx(4 * 1e3 / result["mean_ms"], rel=1e-6)
    assert 100 <= result["images_per_s"] <= 205  # 4 images per 20-40 ms


def test_pipelined_throughput_counts_the_final_wait_once():
    from edgecls.timing import measure_pipelined

    events = []
    launch = lambda: (events.append("launch"), time.sleep(0.01))  # noqa: E731
    wait = lambda: (events.append("wait"), time.sleep(0.1))  # noqa: E731
    result = measure_pipelined(launch, wait, batch_size=8, duration=0.2, warmup=0.0, min_calls=5)
    calls = result["pipelined_calls"]
    timed = events[events.index("wait") + 1 :]  # after the warm-up's launch, launch, wait
    assert timed == ["launch"] * calls + ["wait"] and calls >= 5
    # the final wait is inside the measured time: at most 8 images per (10 ms per launch, + 100 ms once)
    assert 0 < result["pipelined_images_per_s"] <= 8 * calls / (0.01 * calls + 0.1)
    assert result["pipelined_images_per_s"] >= 8 * calls / (0.2 + 0.1 + 1.0)  # loose: a busy machine is slower
