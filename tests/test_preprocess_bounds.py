"""The preprocessing record's limits, each at its edge (the smallest and largest sizes taken, one step past them
refused with a message naming the value), and the resize at its edges: an image one pixel thick, a batch already at
the input size. Tiny arrays only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import refusal
from edgecls.preprocess import MAX_INPUT_SIZE, Preprocessing, resize_shorter_side

GOOD = dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), class_names=("cat", "dog"), input_size=32, crop_size=28,
            channel_order="RGB", layout="NCHW")  # in the record's field order


def made(**changes: object) -> Preprocessing:
    return Preprocessing(**{**GOOD, **changes})


def refused(**changes: object) -> str:
    return refusal(Preprocessing, *{**GOOD, **changes}.values())


@pytest.mark.parametrize("name, value, shown", [
    ("mean", [0.5, 0.5, 0.5], "[0.5, 0.5, 0.5]"),  # a list is not the record's tuple
    ("mean", (0.5, 0.5), "[0.5, 0.5]"),
    ("mean", (0.5, math.nan, 0.5), "[0.5, nan, 0.5]"),
    ("std", (0.25, math.inf, 0.25), "[0.25, inf, 0.25]"),
    ("std", (0.25, "0.24", 0.25), "[0.25, '0.24', 0.25]"),
    ("std", "0.25", "'0.25'"),
])
def test_mean_and_std_must_be_three_finite_numbers(name, value, shown):
    assert refused(**{name: value}) == (f"preprocessing {name} must be 3 finite numbers (one per RGB channel), "
                                              f"got {shown}")


def test_std_must_be_above_zero_for_every_channel():
    assert refused(std=(0.25, 0.0, 0.25)) == \
        "preprocessing std must be above 0 for every channel, got [0.25, 0.0, 0.25]"
    assert made(std=(1e-6, 1e-6, 1e-6)).std == (1e-6, 1e-6, 1e-6)


@pytest.mark.parametrize("names", [(), ("cat", 5)])
def test_class_names_must_be_a_non_empty_list_of_names(names):
    assert refused(class_names=names) == "preprocessing class_names must be a non-empty list of names"


@pytest.mark.parametrize("input_size, crop_size", [(1, 1), (28, 28), (MAX_INPUT_SIZE, 1), (MAX_INPUT_SIZE,
                                                                                            MAX_INPUT_SIZE)])
def test_the_sizes_at_their_limits_are_taken(input_size, crop_size):
    record = made(input_size=input_size, crop_size=crop_size)
    assert (record.input_size, record.crop_size) == (input_size, crop_size)


@pytest.mark.parametrize("input_size, crop_size", [(32, 0), (27, 28), (MAX_INPUT_SIZE + 1, 28), (32, 28.0),
                                                   (32, True)])
def test_sizes_past_their_limits_or_not_whole_numbers_are_refused(input_size, crop_size):
    assert refused(input_size=input_size, crop_size=crop_size) == (
        f"preprocessing sizes must satisfy 1 <= crop_size <= input_size <= {MAX_INPUT_SIZE}, got input_size "
        f"{input_size!r}, crop_size {crop_size!r}")


@pytest.mark.parametrize("channel_order, layout", [("BGR", "NCHW"), ("RGB", "NHWC")])
def test_only_rgb_nchw_is_applied(channel_order, layout):
    assert refused(channel_order=channel_order, layout=layout) == (
        f"preprocessing channel order {channel_order!r} and layout {layout!r}: this edgecls applies only RGB and NCHW")


def test_a_batch_at_the_input_size_is_cropped_whole_without_per_image_work(monkeypatch):
    record = made()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(Preprocessing, "fit", lambda self, image: pytest.fail("resized one image at a time"))
    crops = record.crop_batch(images)
    assert crops.shape == (3, 28, 28, 3) and np.shares_memory(crops, images)  # a view: nothing copied
    np.testing.assert_array_equal(crops, images[:, 2:30, 2:30])


@pytest.mark.parametrize("shape", [(1, 40, 3), (40, 1, 3)])
def test_an_image_one_pixel_thick_enlarges_into_identical_rows_or_columns(shape):
    # Samples past the last row read that row alone, with nothing of a row beyond it: every output row is the same.
    for seed in range(3):
        image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        out = resize_shorter_side(image, 28)
        along = out if shape[0] == 1 else out.transpose(1, 0, 2)
        assert along.shape[0] == 28 and (along == along[0]).all()
