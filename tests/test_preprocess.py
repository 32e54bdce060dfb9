import numpy as np

from edgecls.preprocess import resize_shorter_side


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
