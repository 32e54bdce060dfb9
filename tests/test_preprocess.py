"""edgecls.preprocess: the deployment preprocessing, checked pixel by pixel on constructed images."""

import numpy as np
from PIL import Image

from conftest import refusal
from edgecls.preprocess import Preprocessing, center_crop, resize_shorter_side, to_rgb


def test_shrinking_a_large_image_averages_instead_of_aliasing():
    # A one-pixel checkerboard: any sampling resize sees only black or only white, averaging sees grey.
    rows, cols = np.indices((480, 640))
    board = np.where((rows + cols) % 2 == 0, 0, 255).astype(np.uint8)[:, :, None].repeat(3, axis=2)
    small = resize_shorter_side(board, 32)
    assert small.shape[0] == 32 and small.shape[1] in (42, 43)  # 640 x 480 keeps its aspect
    assert np.all(np.abs(small.astype(int) - 128) <= 1)


def test_enlarging_keeps_the_range_and_the_content():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 200
    big = resize_shorter_side(image, 40)
    assert big.shape == (40, 40, 3)
    assert big[:, :18].max() == 0 and big[:, 22:].min() == 200


def test_resizing_rounds_to_the_nearest_value():
    # Two columns 0 and 255 enlarged 4x: the samples between them must round, not truncate.
    image = np.array([[[0] * 3, [255] * 3]] * 2, np.uint8)
    big = resize_shorter_side(image, 8)
    assert big.shape == (8, 8, 3)
    # Half-pixel centres: x = (j + 0.5) / 4 - 0.5 -> 0.125 and 0.375 of the way at j = 2 and j = 3.
    assert big[0, 2, 0] == 32 and big[0, 3, 0] == 96  # 31.875 and 95.625
    # The box filter's averages round too: each 2x2 block [[1, 2], [2, 2]] has mean 1.75.
    blocks = np.tile(np.array([[1, 2], [2, 2]], np.uint8), (2, 2))[:, :, None].repeat(3, axis=2)
    assert (resize_shorter_side(blocks, 2) == 2).all()


def test_enlarging_is_bilinear_with_half_pixel_centres_like_pillow():
    rng = np.random.default_rng(0)
    for height, width in ((5, 7), (7, 5), (9, 13)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ours = resize_shorter_side(image, 20)
        short, long = sorted((height, width))
        assert ours.dtype == np.uint8 and sorted(ours.shape[:2]) == [20, round(long * 20 / short)]
        theirs = np.asarray(Image.fromarray(image).resize(ours.shape[1::-1], Image.BILINEAR))
        assert np.abs(ours.astype(int) - theirs).max() <= 1  # Pillow rounds its fixed-point weights


def test_a_window_is_the_centre_of_the_whole_resized_image():
    rng = np.random.default_rng(1)
    for shape, size in (((5, 12, 3), 8), ((12, 5, 3), 8), ((45, 100, 3), 32), ((33, 33, 3), 32)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        whole = resize_shorter_side(image, size)
        windowed = resize_shorter_side(image, size, window=size)
        np.testing.assert_array_equal(windowed, center_crop(whole[None], size)[0])


def test_halving_averages_pairs_before_the_bilinear_step():
    # 66 -> 32: a box filter of 2 first (66 -> 33, every pixel grey), then bilinear 33 -> 32 (still grey). Bilinear
    # straight from 66 would weigh neighbours unevenly and leave a pattern.
    rows, cols = np.indices((66, 66))
    board = np.where((rows + cols) % 2 == 0, 0, 255).astype(np.uint8)[:, :, None].repeat(3, axis=2)
    small = resize_shorter_side(board, 32)
    assert small.shape == (32, 32, 3) and np.all(np.abs(small.astype(int) - 128) <= 1)


PREPROCESS = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1), class_names=("cat", "dog"), input_size=8,
                           crop_size=6)


def positions(height: int, width: int) -> np.ndarray:
    """An RGB image whose red channel is the row, green the column, blue a constant: where each pixel came from."""
    rows, cols = np.indices((height, width))
    return np.stack([rows, cols, np.full_like(rows, 200)], axis=-1).astype(np.uint8)


def test_the_preprocessing_record_round_trips_and_refuses_a_broken_one():
    record = PREPROCESS.to_dict()
    assert record == {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.1], "class_names": ["cat", "dog"],
                      "input_size": 8, "crop_size": 6, "channel_order": "RGB", "layout": "NCHW"}
    assert Preprocessing.from_dict(record) == PREPROCESS
    old = {key: value for key, value in record.items() if key not in ("channel_order", "layout")}
    assert Preprocessing.from_dict(old) == PREPROCESS
    other_layout = Preprocessing.from_dict({**record, "channel_order": "BGR", "layout": "NHWC"})
    assert (other_layout.channel_order, other_layout.layout) == ("BGR", "NHWC")
    strings = {**record, "mean": ["0.5", "0.4", "0.3"], "input_size": "8", "crop_size": 6.0, "class_names": [1, 2]}
    assert Preprocessing.from_dict(strings) == Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1),
                                                             class_names=("1", "2"), input_size=8, crop_size=6)
    for key in ("mean", "std", "class_names", "input_size", "crop_size"):
        broken = {k: v for k, v in record.items() if k != key}
        assert refusal(Preprocessing.from_dict, broken) == \
            f"preprocessing record is incomplete or malformed (KeyError({key!r})); re-export the model"
    assert refusal(Preprocessing.from_dict, {**record, "crop_size": "six"}).startswith(
        "preprocessing record is incomplete or malformed (ValueError(")
    assert "(TypeError(" in refusal(Preprocessing.from_dict, {**record, "std": None})


def test_network_input_is_the_standardized_centre_crop_in_nchw():
    image = positions(8, 8)
    batch = PREPROCESS(image)
    assert batch.shape == (1, 3, 6, 6) and batch.dtype == np.float32 and batch.flags.c_contiguous
    mean, std = np.array(PREPROCESS.mean)[:, None, None], np.array(PREPROCESS.std)[:, None, None]
    expected = (image[1:7, 1:7].transpose(2, 0, 1) / 255 - mean) / std
    np.testing.assert_allclose(batch[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(PREPROCESS(np.stack([image, image])), np.concatenate([batch, batch]))


def test_crop_batch_takes_every_form_of_images():
    square = positions(8, 8)
    np.testing.assert_array_equal(PREPROCESS.crop_batch(np.stack([square] * 3)), np.stack([square[1:7, 1:7]] * 3))
    np.testing.assert_array_equal(PREPROCESS.crop_batch(square), square[None, 1:7, 1:7])
    gray = square[:, :, 0]
    np.testing.assert_array_equal(PREPROCESS.crop_batch(gray), np.repeat(gray[None, 1:7, 1:7, None], 3, axis=3))
    large = positions(16, 24)  # shrunk by 2 to 8 x 12, then its centre
    expected = PREPROCESS.fit(large)[1:7, 1:7]
    np.testing.assert_array_equal(PREPROCESS.crop_batch(np.stack([large, large])), np.stack([expected] * 2))
    np.testing.assert_array_equal(PREPROCESS.crop_batch([square, large]), np.stack([square[1:7, 1:7], expected]))
    rgba = np.concatenate([np.stack([square] * 2), np.zeros((2, 8, 8, 1), np.uint8)], axis=3)
    np.testing.assert_array_equal(PREPROCESS.crop_batch(list(rgba)), np.stack([square[1:7, 1:7]] * 2))


def test_crop_batch_refuses_what_is_not_images():
    assert refusal(PREPROCESS.crop_batch, np.zeros((2, 8, 8, 3), np.float32)) == \
        "images must be uint8 (0..255), got float32; convert them before classifying"
    assert refusal(PREPROCESS.crop_batch, np.zeros((1, 2, 8, 8, 3), np.uint8)) == \
        "expected uint8 images shaped N x H x W x 3 or H x W x C, got shape (1, 2, 8, 8, 3)"
    assert refusal(PREPROCESS.crop_batch, np.zeros(8, np.uint8)).startswith("expected uint8 images shaped")
    assert refusal(PREPROCESS.crop_batch, []) == "no images to classify"
    assert refusal(PREPROCESS.crop_batch, np.zeros((0, 16, 16, 3), np.uint8)) == "no images to classify"
    assert refusal(PREPROCESS.fit, np.zeros((0, 8, 3), np.uint8)) == \
        "an image of 0x8 pixels has nothing to classify; remove it"
    assert refusal(PREPROCESS.fit, np.zeros((8, 0), np.uint8)) == \
        "an image of 8x0 pixels has nothing to classify; remove it"


def test_fit_keeps_an_image_of_the_input_size_and_resizes_any_other():
    square = positions(8, 8)
    np.testing.assert_array_equal(PREPROCESS.fit(square), square)
    wide = positions(4, 10)
    fitted = PREPROCESS.fit(wide)
    assert fitted.shape == (8, 8, 3)
    np.testing.assert_array_equal(fitted, resize_shorter_side(wide, 8, window=8))


def test_to_rgb_makes_three_channels_or_refuses():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for image in (gray, gray[:, :, None]):
        np.testing.assert_array_equal(to_rgb(image), np.stack([gray] * 3, axis=2))
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_rgb(rgba), rgba[:, :, :3])
    np.testing.assert_array_equal(to_rgb(rgba[:, :, :3]), rgba[:, :, :3])
    assert refusal(to_rgb, np.zeros((2, 3, 3), np.int16)) == \
        "images must be uint8 (0..255), got int16; convert them before classifying"
    for shape in ((2, 3, 2), (2, 3, 5), (1, 2, 3, 3), (6,)):
        assert refusal(to_rgb, np.zeros(shape, np.uint8)) == (f"cannot use an image of shape {shape}: expected H x W "
                                                             "with 1 (gray), 3 (RGB) or 4 (RGBA) channels")


def test_center_crop_offsets_and_a_crop_larger_than_the_image():
    image = positions(9, 12)[None]
    crop = center_crop(image, 6)
    assert crop[0, 0, 0, 0] == 1 and crop[0, 0, 0, 1] == 3 and crop.shape == (1, 6, 6, 3)  # (9-6)//2, (12-6)//2
    np.testing.assert_array_equal(center_crop(image, 9), image[:, :, 1:10])
    for height, width in ((5, 12), (12, 5)):
        assert refusal(center_crop, positions(height, width)[None], 6) == \
            f"image of {height}x{width} pixels is smaller than the 6x6 crop"
