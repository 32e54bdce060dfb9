"""edgecls.data's checks and helpers, each message exact: the data set's own checks, seeds and subsets, the held-out
splits, class order, the imbalance warning, where data and cache are looked for, the bounded readers and the archive
end check, on arrays, tiny files and tiny archives made in tmp_path (tests/test_data.py reads every form end to end)."""

from __future__ import annotations

import concurrent.futures
import io
import os
import pickle
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import refusal, use_private_cache
from edgecls import data as data_module
from edgecls.data import (CIFAR10_CLASSES, CIFAR10_URL, DEFAULT_DATA_DIR, MAX_SEED, Cifar10, cache_dir,
                          cache_path_for, check_seed, default_val_split, digest_rows, find_images, image_digests,
                          imbalance_warning, resolve_data_path, seeded_subset)
from edgecls.preprocess import Preprocessing

HOW_TO_GET = (f"run with --download, or fetch {CIFAR10_URL} (or an image-folder tree) and pass its path with --data "
              "or $EDGECLS_DATA")


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def dataset(train_labels: list[int], test_labels: list[int] = (0, 1), names: list[str] = ("a", "b", "c"),
            source: str = "here", details: dict | None = None) -> Cifar10:
    return Cifar10(images(len(train_labels)), np.array(train_labels), images(len(test_labels), 1),
                   np.array(test_labels), list(names), source, details or {})


# ----------------------------------------------------------------------------------------------- the data set

def test_the_data_set_checks_its_arrays():
    made = Cifar10(images(2), [1, 0], images(1), np.array([2], np.int32), ("a", 1, "c"))
    assert made.class_names == ["a", "1", "c"] and made.train_labels.dtype == np.int64
    assert made.test_labels.dtype == np.int64 and made.source == "" and made.details == {}
    assert made.train_images.flags.c_contiguous
    strided = images(4)[::2]
    assert Cifar10(strided, [0, 1], images(0), np.array([], np.int64), ["a", "b"]).train_images.flags.c_contiguous
    with pytest.raises(ValueError) as info:
        Cifar10(images(2).astype(np.int16), [0, 1], images(1), [0], ["a", "b"])
    assert str(info.value) == "train images must be uint8 N x 32 x 32 x 3, got int16 (2, 32, 32, 3)"
    with pytest.raises(ValueError) as info:
        Cifar10(images(2), [0, 1], images(1)[:, :16], [0], ["a", "b"])
    assert str(info.value) == "test images must be uint8 N x 32 x 32 x 3, got uint8 (1, 16, 32, 3)"
    with pytest.raises(ValueError) as info:
        Cifar10(images(2), [0], images(1), [0], ["a", "b"])
    assert str(info.value) == "train labels must be shaped (2,), got (1,)"
    with pytest.raises(ValueError) as info:
        Cifar10(images(2), [0, 1], images(1), [2], ["a", "b"])
    assert str(info.value) == "test labels must lie in 0..1"
    with pytest.raises(ValueError) as info:
        Cifar10(images(2), [-1, 1], images(1), [1], ["a", "b"])
    assert str(info.value) == "train labels must lie in 0..1"
    Cifar10(images(2), [0, 1], images(0), np.array([], np.int64), ["a", "b"])  # an empty split is fine


def test_check_fits_refuses_other_classes_or_sizes():
    data = dataset([0, 1, 2])
    fits = Preprocessing((0.5,) * 3, (0.5,) * 3, ("a", "b", "c"))
    data.check_fits(fits, "m.pt")
    assert refusal(data.check_fits, Preprocessing((0.5,) * 3, (0.5,) * 3, ("a", "b", "x")), "m.pt") == (
        "the data has classes ['a', 'b', 'c'], but m.pt was trained on ['a', 'b', 'x']; pass the data it was "
        "trained on with --data")
    bigger = Preprocessing((0.5,) * 3, (0.5,) * 3, ("a", "b", "c"), input_size=40, crop_size=36)
    assert refusal(data.check_fits, bigger, Path("m.onnx")) == (
        "the train images are 32x32x3, but the model expects 40x40x3 (m.onnx); pass the data it was trained on "
        "with --data")
    data.test_images = np.zeros((1, 40, 40, 3), np.uint8)  # only reachable by changing a loaded set
    assert refusal(data.check_fits, fits, "m.pt").startswith("the test images are 40x40x3, but the model expects "
                                                             "32x32x3")


def test_hold_out_takes_validation_images_out_of_training_only():
    data = dataset([0, 1, 2, 0, 1, 2], details={"k": 1})
    rest, held_images, held_labels = data.hold_out(np.array([1, 3]))
    assert np.array_equal(held_images, data.train_images[[1, 3]]) and held_labels.tolist() == [1, 0]
    assert np.array_equal(rest.train_images, data.train_images[[0, 2, 4, 5]]) and rest.train_labels.tolist() == [
        0, 2, 1, 2]
    assert rest.test_images is data.test_images or np.array_equal(rest.test_images, data.test_images)
    assert rest.class_names == ["a", "b", "c"] and rest.details == {"k": 1} and rest.details is not data.details
    assert rest.source == "here (without 2 validation images)"
    uneven = dataset([0, 0, 1, 2, 2], names=("a", "b", "c", "d"))
    assert refusal(uneven.hold_out, np.array([2])) == (
        "the 1 validation images would take every training image of b (1): too few images to split; add images "
        "to that class or pass a smaller --val-split")
    assert refusal(uneven.hold_out, np.array([0, 1, 2])).startswith(
        "the 3 validation images would take every training image of a (2), b (1): ")
    assert refusal(dataset([0, 1, 2, 2]).hold_out, np.array([2, 3])).startswith(
        "the 2 validation images would take every training image of c (2): ")  # the last class too
    many = dataset([0] * 1500 + [1], names=("a", "b"))
    assert refusal(many.hold_out, np.arange(1500)).startswith("the 1,500 validation images would take every "
                                                              "training image of a (1500)")


def test_counts_and_summary():
    data = dataset([2, 2, 0], [1, 1, 1, 0], details={"test_split": "test/"})
    assert data.class_counts() == [1, 0, 2] and data.class_counts("test") == [1, 3, 0]
    assert data.summary() == {"source": "here", "class_names": ["a", "b", "c"], "train_per_class": [1, 0, 2],
                              "test_per_class": [1, 3, 0], "test_split": "test/"}


def test_subset_keeps_each_class_share_and_says_so():
    data = dataset([0] * 6 + [1] * 3 + [2] * 1, [0, 0, 1, 1, 2, 2], details={"x": 2})
    small = data.subset(train=5, test=3, seed=1)
    assert small.class_counts() == [3, 2, 0] and small.class_counts("test") == [1, 1, 1]
    assert small.source == "here (subset: 5 train / 3 test, seed 1)" and small.details == {"x": 2}
    assert small.class_names == ["a", "b", "c"]
    assert np.all(np.diff([int(np.flatnonzero((data.train_images == img).all(axis=(1, 2, 3)))[0])
                           for img in small.train_images]) > 0)  # original relative order
    rng = np.random.default_rng(1)
    expected = data_module._stratified_indices(data.train_labels, 5, 3, rng)
    assert np.array_equal(small.train_images, data.train_images[expected])
    assert data.subset(train=10).class_counts() == [6, 3, 1]  # everything
    assert data.subset(train=0).class_counts() == [0, 0, 0]
    assert refusal(data.subset, -2) == "a subset needs a size of 0 or more images, got -2"
    assert refusal(data.subset, 2, None, -1) == "seed -1 is negative; use a whole number from 0 up"
    # The rounding leftovers go to the largest remainders: 7 of 6/3/1 -> 4.2, 2.1, 0.7 -> 4, 2, 1.
    assert data.subset(train=7, seed=0).class_counts() == [4, 2, 1]
    default = data.subset(train=7)
    assert default.source == "here (subset: 7 train / 6 test, seed 0)"
    assert np.array_equal(default.train_images, data.subset(train=7, seed=0).train_images)
    assert data.subset(train=9, seed=0).class_counts() == [5, 3, 1]
    # Asking for every training image cuts nothing: the test images are those chosen when train is not cut at all.
    assert np.array_equal(data.subset(train=10, test=3).test_images, data.subset(test=3).test_images)


def test_subset_rounding_ties_go_to_the_earlier_class():
    """20 classes of 1 and 2 images in turn (30): 5 of them are 1/6 and 1/3 of an image a class, so all 5 are
    leftovers; the ten 2-image classes tie for them, and the first five get them, whatever the number of classes."""
    data = dataset([label for label in range(20) for _ in range(1 + label % 2)], names=[f"c{i}" for i in range(20)])
    assert data.subset(train=5).class_counts() == [0, 1] * 5 + [0] * 10


# ----------------------------------------------------------------------------------------------- small helpers

def test_digests_name_images_whatever_their_order():
    pictures = images(3)
    pictures[2] = pictures[0]
    digests = image_digests(pictures)
    assert len(digests) == 3 and all(len(d) == 16 for d in digests) and digests[0] == digests[2] != digests[1]
    rows = digest_rows(pictures)
    assert rows.shape == (3, 16) and rows.dtype == np.uint8 and bytes(rows[1]) == digests[1]
    assert find_images(pictures, rows[[1, 0, 0, 0]]) == [1, 0, 2, None]
    assert find_images(pictures, digest_rows(images(1, 9))) == [None]


def test_seeds_are_whole_numbers_from_0_to_2_32():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED and MAX_SEED == 2**32 - 1
    assert refusal(check_seed, -1) == "seed -1 is negative; use a whole number from 0 up"
    assert refusal(check_seed, MAX_SEED + 1, "data seed") == (
        f"data seed {MAX_SEED + 1} is too large; use a whole number from 0 to {MAX_SEED}")
    subset = seeded_subset(10, 4, 3)
    assert subset.dtype == np.int64 and subset.tolist() == sorted(np.random.default_rng(3).choice(10, 4, replace=False))
    assert seeded_subset(10, 10, 0).tolist() == list(range(10))
    assert refusal(seeded_subset, 10, 2, -5) == "seed -5 is negative; use a whole number from 0 up"


def test_default_validation_split_is_a_tenth_up_to_5000():
    assert [default_val_split(n) for n in (0, 9, 10, 19, 2000, 50_000, 60_000)] == [0, 0, 1, 1, 200, 5000, 5000]


def test_imbalance_warning_names_the_small_classes():
    assert imbalance_warning(dataset([0] * 3 + [1] * 1 + [2] * 2)) is None  # 1 * 3 is not below 3
    warning = imbalance_warning(dataset([0] * 7 + [1] * 2 + [2] * 3, names=("big", "small", "ok")))
    assert warning == ("warning: the classes are strongly imbalanced: big has 7 training images, small 2 (fewer "
                       "than 1/3 of that); the model will favour the large classes: add images to the small ones, "
                       "and read the per-class accuracy (edgecls eval)")
    many = imbalance_warning(dataset([1] * 3100 + [0] * 1000 + [2] * 5, names=("x", "y", "z")))
    assert many.startswith("warning: the classes are strongly imbalanced: y has 3,100 training images, x 1,000, z 5 ")


def test_the_data_location_is_the_option_then_the_environment_then_data(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGECLS_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_path(None) == DEFAULT_DATA_DIR == Path("data") and resolve_data_path("") == Path("data")
    assert resolve_data_path("~/x") == tmp_path / "x" and resolve_data_path(Path("y")) == Path("y")
    monkeypatch.setenv("EDGECLS_DATA", "~/env")
    assert resolve_data_path(None) == tmp_path / "env" and resolve_data_path("opt") == Path("opt")
    monkeypatch.setenv("EDGECLS_DATA", "")
    assert resolve_data_path(None) == Path("data")


def test_the_cache_lives_under_edgecls_cache_or_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EDGECLS_CACHE", "~/c")
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("EDGECLS_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "edgecls"
    monkeypatch.delenv("EDGECLS_CACHE")
    assert cache_dir() == tmp_path / ".cache" / "edgecls"
    monkeypatch.chdir(tmp_path)
    one = cache_path_for(Path("data"))
    assert one == cache_path_for(tmp_path / "data") and one.parent == tmp_path / ".cache" / "edgecls"
    assert one.name.startswith("cifar10-") and one.suffix == ".npz" and len(one.stem) == len("cifar10-") + 16
    assert cache_path_for(tmp_path / "other") != one


def test_image_names_and_sizes():
    assert [data_module._is_image(n) for n in ("a.PNG", "b.jpeg", "c.txt", ".d.png", "e", "f.webp")] == [
        True, True, False, False, False, data_module._is_image("x.webp")]
    image_limit, batch_limit = data_module.MAX_IMAGE_BYTES, data_module.MAX_BATCH_BYTES
    assert str(data_module._too_large("x.png", 1_000_000, image_limit)) == (
        f"x.png is 1,000,000 bytes, far more than any image edgecls reads (at most {image_limit:,}); the file is "
        "damaged or is not an image: remove it")
    assert str(data_module._too_large("b", 70_000_000, batch_limit)) == (
        f"b is 70,000,000 bytes, far more than any CIFAR-10 file (at most {batch_limit:,}); the data is damaged or "
        "is not CIFAR-10")


def test_usable_cores_are_this_processes(monkeypatch):
    assert data_module._usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert data_module._usable_cores() == 1  # the one core it may run on, not the machine's 8
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert data_module._usable_cores() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert data_module._usable_cores() == 6


def test_chunks_end_at_a_count_or_a_size(monkeypatch):
    monkeypatch.setattr(data_module, "_DECODE_CHUNK", 3)
    monkeypatch.setattr(data_module, "_DECODE_CHUNK_BYTES", 10)
    blobs = [(str(i), b"x" * size) for i, size in enumerate([1, 1, 1, 1, 9, 1, 4, 5, 2])]
    assert [[name for name, _ in chunk] for chunk in data_module._chunks(iter(blobs))] == [
        ["0", "1", "2"], ["3", "4"], ["5", "6", "7"], ["8"]]
    assert list(data_module._chunks(iter([]))) == []
    monkeypatch.setattr(data_module, "_DECODE_CHUNK_BYTES", 4)
    assert [[name for name, _ in c] for c in data_module._chunks(iter(blobs[:3] + [("big", b"y" * 4)]))] == [
        ["0", "1", "2"], ["big"]]
    monkeypatch.setattr(data_module, "_DECODE_CHUNK", 100)
    monkeypatch.setattr(data_module, "_DECODE_CHUNK_BYTES", 10)
    blobs = [(str(i), b"x" * size) for i, size in enumerate([5, 4, 1, 6, 3, 1, 2])]
    assert [[name for name, _ in c] for c in data_module._chunks(iter(blobs))] == [["0", "1", "2"], ["3", "4", "5"],
                                                                                    ["6"]]  # 10 bytes each


# ----------------------------------------------------------------------------------------------- splits and classes

def test_class_order_is_cifar10s_or_sorted_and_splits_must_agree():
    assert data_module._class_order(reversed(CIFAR10_CLASSES), CIFAR10_CLASSES, "w") == list(CIFAR10_CLASSES)
    assert data_module._class_order(["b", "a"], ["a", "b"], "w") == ["a", "b"]
    assert refusal(data_module._class_order, ["a", "b", "c"], ["a", "d"], "root") == (
        "class folders differ between train/ and test/ in root (only in train: b, c; only in test: d); give both "
        "the same class folders")
    assert refusal(data_module._class_order, ["a"], ["a", "d"], "root") == (
        "class folders differ between train/ and test/ in root (only in train: none; only in test: d); give both "
        "the same class folders")
    assert "(only in train: d; only in test: none)" in refusal(data_module._class_order, ["a", "d"], ["a"], "r")
    assert "(only in train: none; only in test: d, e)" in refusal(data_module._class_order, ["a"], ["a", "e", "d"], "r")


def test_held_out_test_is_a_seeded_fifth_of_each_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 14)
    chosen = data_module._held_out_test(labels, ["a", "b", "c"], "w")
    assert np.bincount(labels[chosen], minlength=3).tolist() == [2, 1, 2] and np.all(np.diff(chosen) > 0)
    rng = np.random.default_rng(0)
    expected = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n]
                                       for c, n in enumerate((2, 1, 2))]))
    assert np.array_equal(chosen, expected)
    assert "c (0)" in refusal(data_module._held_out_test, np.array([0] * 5 + [1] * 5), ["a", "b", "c"], "root")
    assert refusal(data_module._held_out_test, np.array([0] * 4 + [1] * 5 + [2] * 1), ["a", "b", "c"], "root") == (
        "too few images to split off a test set in root/train/: a (4), c (1); each class needs at least 5 images, "
        "or give test/<class>/ folders of test images")


def keys_of(counts: dict[tuple[str, str], int]) -> list[tuple[str, str, str]]:
    return [(split, name, f"{split}/{name}/{i:02d}.png") for (split, name), n in counts.items() for i in range(n)]


def test_a_trees_images_are_ordered_by_split_class_and_name():
    keys = keys_of({("test", "b"): 1, ("train", "b"): 2, ("train", "a"): 1, ("test", "a"): 2})
    keys[1], keys[2] = keys[2], keys[1]  # read out of order
    pixels = images(len(keys))
    sizes = np.array([[32, 32], [64, 48], [32, 32], [10, 14], [30, 5], [100, 200]])  # height, width
    data = data_module._from_tree(keys, pixels, sizes, None, "root", "src")
    order = [3, 2, 1, 4, 5, 0]  # train a, train b (by file name), test a, test b
    assert np.array_equal(np.concatenate([data.train_images, data.test_images]), pixels[order])
    assert data.train_labels.tolist() == [0, 1, 1] and data.test_labels.tolist() == [0, 0, 1]
    assert data.class_names == ["a", "b"] and data.source == "src"
    assert data.details == {"test_split": "test/", "resized": 4, "smallest": [14, 10], "largest": [200, 100]}


def test_a_tree_without_test_images_needs_five_images_a_class():
    keys = keys_of({("train", "a"): 5, ("train", "b"): 4})
    assert refusal(data_module._from_tree, keys, images(9), np.full((9, 2), 32), None, "root", "s").startswith(
        "too few images to split off a test set in root/train/: b (4); ")


def test_a_tree_without_test_images_holds_a_share_out():
    keys = keys_of({("train", "a"): 5, ("train", "b"): 10})
    data = data_module._from_tree(keys, images(15), np.full((15, 2), 32), {"train": ["a", "b"]}, "root", "src")
    assert data.class_counts() == [4, 8] and data.class_counts("test") == [1, 2]
    assert data.details["test_split"] == {"held_out_percent": 20, "seed": 0} and data.details["resized"] == 0
    assert data.source == "src (no test images: 3 held out of train/, 20% of each class)"


def test_a_tree_needs_training_images_in_two_classes_or_more():
    sizes = np.full((6, 2), 32)
    assert refusal(data_module._from_tree, keys_of({("test", "a"): 3, ("test", "b"): 3}), images(6), sizes, None,
                   "root", "s") == ("no images in root/train/<class>/; put the training images there, one folder "
                                    f"per class ({', '.join(sorted(data_module.IMAGE_SUFFIXES))})")
    assert refusal(data_module._from_tree, keys_of({("train", "a"): 6}), images(6), sizes, None, "root", "s") == (
        "root/train/ has one class folder (a); a classifier needs two classes or more: add a folder of images per "
        "class")
    one_empty = keys_of({("train", "a"): 3, ("train", "b"): 3})
    assert refusal(data_module._from_tree, one_empty, images(6), sizes, {"train": ["a", "b", "c"]}, "root", "s") == (
        "class folder c in root/train/ holds no images; add images or remove the folder")
    assert refusal(data_module._from_tree, one_empty, images(6), sizes, {"train": ["a", "b", "c", "d"]}, "root",
                   "s") == "class folders c, d in root/train/ hold no images; add images or remove the folder"
    test_empty = keys_of({("train", "a"): 2, ("train", "b"): 2, ("test", "a"): 2})
    assert refusal(data_module._from_tree, test_empty, images(6), sizes, {"train": ["a", "b"], "test": ["a", "b"]},
                   "root", "s") == "class folder b in root/test/ holds no images; add images or remove the folder"


# ----------------------------------------------------------------------------------------------- finding data

def test_no_data_errors_say_what_is_there_and_what_to_do(tmp_path):
    assert str(data_module._no_data_error(tmp_path / "absent")) == (
        f"no CIFAR-10 data at {tmp_path / 'absent'}: {HOW_TO_GET}")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    assert str(data_module._no_data_error(empty)) == f"data folder {empty} is empty: {HOW_TO_GET}"
    expected = ("{} holds no CIFAR-10 data or image folders (expected cifar-10-batches-py/, cifar-10-python.tar.gz, "
                "or train/<class>/ image folders, and optionally test/<class>/){}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert str(data_module._no_data_error(other)) == expected.format(other, f"; {HOW_TO_GET}")
    (other / "z.tgz").write_text("x")
    (other / "b.tar").write_text("x")
    assert str(data_module._no_data_error(other)) == expected.format(
        other, f"; to use b.tar, pass {other / 'b.tar'} with --data")
    photos = tmp_path / "photos"
    for name in ("cat", "dog", "eel", "fox", "gnu"):
        (photos / name).mkdir(parents=True)
        (photos / name / "1.jpg").write_bytes(b"")
    (photos / "empty").mkdir()
    assert str(data_module._no_data_error(photos)) == expected.format(
        photos, f"; it holds class folders (cat, dog, eel, fox, ...) directly: move them into {photos / 'train'}/ "
                "(a test split is then held out of them)")
    (photos / "gnu" / "1.jpg").unlink()
    assert str(data_module._no_data_error(photos)).endswith("; it holds class folders (cat, dog, eel, fox) directly: "
                                                            f"move them into {photos / 'train'}/ (a test split is then "
                                                            "held out of them)")  # four: no "..."
    for name in ("eel", "fox"):
        (photos / name / "1.jpg").unlink()
    assert str(data_module._no_data_error(photos)).endswith("; it holds class folders (cat, dog) directly: move them "
                                                            f"into {photos / 'train'}/ (a test split is then held "
                                                            "out of them)")


def test_locate_finds_each_form(tmp_path):
    locate = data_module._locate
    assert locate(tmp_path / "absent") is None
    archive = tmp_path / "x.TGZ"
    archive.write_bytes(b"")
    assert locate(archive) == ("archive", archive)
    (tmp_path / "x.zip").write_bytes(b"")
    assert refusal(locate, tmp_path / "x.zip") == (
        f"{tmp_path / 'x.zip'} is neither a folder nor a .tar/.tar.gz archive; pass the data folder or archive with "
        "--data")
    batches = tmp_path / "b"
    (batches / "cifar-10-batches-py").mkdir(parents=True)
    (batches / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    assert locate(batches) == ("batches", batches / "cifar-10-batches-py")
    (batches / "batches.meta").write_bytes(b"")
    assert locate(batches) == ("batches", batches)
    tree = tmp_path / "t"
    (tree / "test").mkdir(parents=True)
    assert locate(tree) == ("tree", tree)
    official = tmp_path / "o"
    official.mkdir()
    (official / "cifar-10-python.tar.gz").write_bytes(b"")
    assert locate(official) == ("archive", official / "cifar-10-python.tar.gz")
    holder = tmp_path / "h"
    (holder / "inner" / "train").mkdir(parents=True)
    (holder / ".git").mkdir()
    (holder / "file.txt").write_text("x")
    assert locate(holder) == ("tree", holder / "inner")
    (holder / "second").mkdir()
    assert locate(holder) is None
    lone = tmp_path / "l"
    (lone / "inner").mkdir(parents=True)
    assert locate(lone) is None


def test_a_tree_folder_needs_train(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    assert refusal(data_module._read_tree_folder, tmp_path) == (
        f"{tmp_path} has no train/ folder: an image-folder data set needs train/<class>/ (and optionally "
        "test/<class>/) folders of images")


def test_a_batch_folder_needs_every_file(tmp_path):
    for name in ("data_batch_1", "data_batch_2"):
        (tmp_path / name).write_bytes(b"")
    assert refusal(data_module._read_batch_folder, tmp_path) == (
        f"{tmp_path} lacks data_batch_3: the CIFAR-10 batches are incomplete; fetch {CIFAR10_URL} again or use "
        "--download")


# ----------------------------------------------------------------------------------------------- batch files

def test_batch_fields_accept_bytes_or_str_keys():
    assert data_module._field({b"labels": 1, "labels": 2}, "labels") == 1
    assert data_module._field({"labels": 2}, "labels") == 2
    with pytest.raises(TypeError):
        data_module._field([1], "labels")
    with pytest.raises(KeyError):
        data_module._field({}, "labels")


def batch_bytes(pixels, labels) -> bytes:
    return pickle.dumps({b"data": pixels, b"labels": labels}, protocol=2)


def test_parse_batch_refuses_what_is_no_batch():
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    pictures, labels = data_module._parse_batch("b1", batch_bytes(rows, [1, 2]), 3)
    assert pictures.shape == (2, 32, 32, 3) and pictures.flags.c_contiguous and labels.tolist() == [1, 2]
    assert pictures[0, 0, 1].tolist() == [rows[0, 1], rows[0, 1024 + 1], rows[0, 2048 + 1]]
    suffix = f"; fetch {CIFAR10_URL} again or use --download"
    for pixels, labels, why in ((rows.astype(np.int16), [1, 2], "data is int16 (2, 3072), expected uint8 N x 3072"),
                                (rows[:, :100], [1, 2], "data is uint8 (2, 100), expected uint8 N x 3072"),
                                (rows[0], [1], "data is uint8 (3072,), expected uint8 N x 3072"),
                                (rows, [1], "labels do not match the 2 images and 3 classes"),
                                (rows, [1, 3], "labels do not match the 2 images and 3 classes"),
                                (rows, [-1, 0], "labels do not match the 2 images and 3 classes")):
        assert refusal(data_module._parse_batch, "b1", batch_bytes(pixels, labels), 3) == (
            f"b1 is not a CIFAR-10 batch file ({why}){suffix}")
    assert refusal(data_module._parse_batch, "b1", pickle.dumps({b"data": rows}, protocol=2), 3) == (
        f"b1 is not a CIFAR-10 batch file (no data/labels){suffix}")
    assert refusal(data_module._parse_batch, "b1", pickle.dumps([1], protocol=2), 3) == (
        f"b1 is not a CIFAR-10 batch file (no data/labels){suffix}")
    assert refusal(data_module._parse_batch, "b1", batch_bytes(rows, [b"cat", b"dog"]), 3) == (
        f"b1 is not a CIFAR-10 batch file (no data/labels){suffix}")  # labels that are no numbers


def test_unpickling_allows_only_numpy_arrays():
    blob = pickle.dumps({b"a": np.arange(3, dtype=np.uint8), b"b": np.float64(2.5)}, protocol=2)
    loaded = data_module._unpickle(blob, "f")
    assert loaded[b"a"].tolist() == [0, 1, 2] and loaded[b"b"] == 2.5
    message = refusal(data_module._unpickle, pickle.dumps(Path("x"), protocol=2), "f")
    assert message.startswith("f is corrupt or truncated (refusing to load pathlib") and message.endswith(
        f"); fetch {CIFAR10_URL} again or use --download")
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert data_module._unpickle(old, "f")[b"a"].tolist() == [0, 1, 2]
    unpickler = data_module._BatchUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is np._core.multiarray._reconstruct
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    with pytest.raises(pickle.UnpicklingError) as info:
        unpickler.find_class("os", "system")
    assert str(info.value) == "refusing to load os.system"
    with pytest.raises(pickle.UnpicklingError) as info:
        unpickler.find_class("numpy.core.multiarray", "system")
    assert str(info.value) == "refusing to load numpy._core.multiarray.system"  # numpy 1's name read as numpy 2's
    module = "m" * 400  # a doctored file's long global name: the message keeps 300 characters of the cause
    assert refusal(data_module._unpickle, b"c" + module.encode() + b"\nf\n.", "f") == (
        f"f is corrupt or truncated ({('refusing to load ' + module)[:300]}); fetch {CIFAR10_URL} again or use "
        "--download")


def test_the_unpickler_allows_numpy_1s_names_under_numpy_1(monkeypatch):
    """numpy 1 (JetPack 5's) has no numpy._core: its own numpy.core names are allowed as they are, nothing more."""
    monkeypatch.setattr(data_module, "np", types.SimpleNamespace())  # the module's view of numpy: no _core
    unpickler = data_module._BatchUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is np._core.multiarray._reconstruct
    with pytest.raises(pickle.UnpicklingError) as info:
        unpickler.find_class("numpy.core.multiarray", "system")
    assert str(info.value) == "refusing to load numpy.core.multiarray.system"


def test_from_batches_needs_label_names():
    assert refusal(data_module._from_batches, {"batches.meta": ("m", b"garbage")}, "src").startswith(
        "m is corrupt or truncated (")
    meta = ("m", pickle.dumps({b"other": 1}, protocol=2))
    assert refusal(data_module._from_batches, {"batches.meta": meta}, "src") == (
        f"m is not a CIFAR-10 batch file (no label_names); fetch {CIFAR10_URL} again or use --download")
    rows = np.zeros((1, 3072), np.uint8)
    blobs = {name: (name, batch_bytes(rows, [i % 2])) for i, name in enumerate(data_module._BATCH_FILES[:-1])}
    blobs["batches.meta"] = ("m", pickle.dumps({b"label_names": [b"x", "y"]}, protocol=2))
    data = data_module._from_batches(blobs, "src")
    assert data.class_names == ["x", "y"] and data.train_labels.tolist() == [0, 1, 0, 1, 0]
    assert data.test_labels.tolist() == [1] and data.source == "src"


# ----------------------------------------------------------------------------------------------- bounded reading

def test_read_file_is_bounded(tmp_path):
    small = tmp_path / "a.png"
    small.write_bytes(b"12345")
    assert data_module._read_file(small, 5) == b"12345"
    assert refusal(data_module._read_file, small, 4) == (
        f"{small} is 5 bytes, far more than any CIFAR-10 file (at most 4); the data is damaged or is not CIFAR-10")
    fifo = tmp_path / "b.png"
    os.mkfifo(fifo)
    assert refusal(data_module._read_file, fifo, 100).startswith(f"data file {fifo} is ")


def test_read_file_is_bounded_even_when_the_file_grows_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(b"12345")
    monkeypatch.setattr(data_module, "read_at_most", lambda handle, limit: b"x" * (limit + 1))
    assert refusal(data_module._read_file, path, 5) == (
        f"{path} is 6 bytes, far more than any CIFAR-10 file (at most 5); the data is damaged or is not CIFAR-10")


def tar_with(members: dict[str, bytes], path: Path, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return path


def test_an_uncompressed_tar_must_end_with_its_marker(tmp_path):
    whole = tar_with({"a.txt": b"x" * 700}, tmp_path / "a.tar")
    data_module._check_tar_end(whole)
    blob = whole.read_bytes()
    for cut, name in ((blob[:1536], "short.tar"), (blob[:-1], "odd.tar"), (blob[:512], "tiny.tar"),
                      (blob[:-1024] + b"\x01" * 1024, "garbled.tar"), (b"", "empty.tar")):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(tarfile.ReadError) as info:
            data_module._check_tar_end(tmp_path / name)
        assert str(info.value) == "no end-of-archive marker", name
    data_module._check_tar_end(tar_with({"a.txt": b"x"}, tmp_path / "b.tar.gz", "w:gz"))
    (tmp_path / "c.tar.bz2").write_bytes(b"BZh91AY&SY")  # compressed: the decompressor raises, not this check
    data_module._check_tar_end(tmp_path / "c.tar.bz2")
    (tmp_path / "d.tar.xz").write_bytes(b"\xfd7zXZ\x00")
    data_module._check_tar_end(tmp_path / "d.tar.xz")
    zeros = tmp_path / "zeros.tar"
    zeros.write_bytes(bytes(1024))
    data_module._check_tar_end(zeros)
    zeros.write_bytes(b"\x01" + bytes(1023))  # exactly 1024 bytes, not all zero
    with pytest.raises(tarfile.ReadError):
        data_module._check_tar_end(zeros)


def test_archive_members_are_bounded_before_they_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "MAX_IMAGE_BYTES", 10)
    big = tar_with({"train/a/1.png": b"x" * 11}, tmp_path / "big.tar")
    assert refusal(data_module._read_archive, big) == (
        f"{big}:train/a/1.png is 11 bytes, far more than any image edgecls reads (at most 10); the file is damaged "
        "or is not an image: remove it")
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_BYTES", 2 << 30)
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_MEMBERS", 2)
    many = tar_with({"a": b"", "b": b"", "c": b""}, tmp_path / "many.tar")
    assert refusal(data_module._read_archive, many) == (
        f"archive {many} has more than 2 members, far more than CIFAR-10; it is not CIFAR-10 data or is damaged")
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_MEMBERS", 300_000)
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_BYTES", 5)
    heavy = tar_with({"./readme": b"abc", "notes": b"abc"}, tmp_path / "heavy.tar")
    assert refusal(data_module._read_archive, heavy) == (
        f"archive {heavy} unpacks to more than 0 GB (at notes), far more than CIFAR-10; it is not CIFAR-10 data or "
        "is damaged")


def test_archives_with_no_data_or_several_tops(tmp_path):
    nothing = tar_with({"train/a/._1.png": b"x", "readme.txt": b"x", "x/y/train/a/1.png": b"x"},
                       tmp_path / "nothing.tar")
    assert refusal(data_module._read_archive, nothing) == (
        f"archive {nothing} holds no CIFAR-10 data: expected cifar-10-batches-py/ batches or train/<class>/ (and "
        "test/<class>/) images, at its root or inside one folder")
    from PIL import Image
    encoded = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(encoded, "PNG")
    png = encoded.getvalue()
    two = tar_with({"one/train/a/1.png": png, "two/train/b/1.png": png}, tmp_path / "two.tar")
    assert refusal(data_module._read_archive, two) == (
        f"archive {two} has images under several top-level folders (one, two); keep train/ and test/ at its root "
        "or inside one folder")
    partial = tar_with({"cifar-10-batches-py/data_batch_1": b"x", "cifar-10-batches-py/batches.meta": b"x"},
                       tmp_path / "partial.tar")
    assert refusal(data_module._read_archive, partial) == (
        f"archive {partial} lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch: it is "
        f"incomplete; fetch {CIFAR10_URL} again")
    names = [f"{top}/{split}/{cls}/{i}.png" for top in ("./root",) for split in ("train", "test") for cls in ("a", "b")
             for i in range(2)]
    nested = tar_with({name: png for name in names}, tmp_path / "nested.tar")
    data = data_module._read_archive(nested)
    assert data.class_counts() == [2, 2] and data.class_counts("test") == [2, 2]
    assert data.source == f"image-folder archive {nested}"


def test_a_member_cut_short_is_a_read_error(tmp_path):
    path = tar_with({"a": b"12345"}, tmp_path / "a.tar")
    with tarfile.open(path) as archive:
        member = archive.getmember("a")
        assert data_module._read_member(archive, member) == b"12345"
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:512 + 3])  # the header and 3 of the 5 bytes
    with tarfile.open(cut, "r|") as archive:
        member = next(iter(archive))
        with pytest.raises(tarfile.ReadError, match="unexpected end of data"):  # tarfile's own check
            data_module._read_member(archive, member)


# ----------------------------------------------------------------------------------------------- the cache

def test_the_source_signature_follows_contents_and_replacement(tmp_path):
    folder = tmp_path / "tree"
    (folder / "train" / "a").mkdir(parents=True)
    (folder / "train" / "a" / "1.png").write_bytes(b"1")
    first = data_module._source_signature(folder)
    assert '"version": 2' in first and f'"path": "{folder.resolve()}"' in first
    assert data_module._source_signature(folder) == first
    (folder / "train" / "a" / "1.png").write_bytes(b"12")
    assert data_module._source_signature(folder) != first
    file = tmp_path / "a.tar"
    file.write_bytes(b"x")
    one = data_module._source_signature(file)
    twin = tmp_path / "b.tar"
    twin.write_bytes(b"x")
    stat = file.stat()
    os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(twin, file)  # same size and time, another inode
    assert data_module._source_signature(file) != one


def test_the_cache_round_trip_and_what_it_ignores(tmp_path, capsys):
    data = dataset([0, 1, 2], details={"test_split": {"seed": 0}})
    cache = tmp_path / "c" / "x.npz"
    data_module._write_cache(cache, "sig", data)
    back = data_module._read_cache(cache, "sig")
    assert back.fingerprint == data.fingerprint and back.source == "here" and back.details == data.details
    assert back.class_names == ["a", "b", "c"] and data_module._read_cache(cache, "other") is None
    assert data_module._read_cache(tmp_path / "none.npz", "sig") is None and capsys.readouterr().err == ""
    cache.write_bytes(b"garbage")
    assert data_module._read_cache(cache, "sig") is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: ignoring the data cache {cache}, which is unreadable or damaged (")
    assert err.endswith("); rebuilding it\n") and "(None)" not in err and "\n" not in err[:-1]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    data_module._write_cache(blocked / "x.npz", "sig", data)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: could not write the data cache {blocked / 'x.npz'} (") and err.endswith(
        "); set $EDGECLS_CACHE to a writable folder\n") and "(None)" not in err


# ----------------------------------------------------------------------------------------------- load_cifar10

@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    return use_private_cache(monkeypatch, tmp_path / "cache")


def test_load_downloads_only_when_nothing_is_there(tmp_path, private_cache, monkeypatch):
    from test_data import make_reference, write_batches
    reference = make_reference()
    fetched = []

    def download(folder):
        fetched.append(folder)
        write_batches(reference, folder / "cifar-10-batches-py")

    monkeypatch.setattr(data_module, "_download", download)
    assert refusal(data_module.load_cifar10, tmp_path / "none") == f"no CIFAR-10 data at {tmp_path / 'none'}: {HOW_TO_GET}"
    loaded = data_module.load_cifar10(tmp_path / "d", download=True)
    assert fetched == [tmp_path / "d"] and loaded.fingerprint == reference.fingerprint
    assert data_module.load_cifar10(tmp_path / "d", download=True).fingerprint == reference.fingerprint
    assert fetched == [tmp_path / "d"]  # there now: not fetched again


def test_load_reads_the_cache_and_writes_it_only_when_asked(tmp_path, private_cache, monkeypatch):
    from test_data import make_reference, write_batches
    reference = make_reference()
    folder = write_batches(reference, tmp_path / "cifar-10-batches-py")
    assert data_module.load_cifar10(folder, cache=False).fingerprint == reference.fingerprint
    assert not private_cache.exists()
    first = data_module.load_cifar10(str(folder))
    assert list(private_cache.iterdir()) == [cache_path_for(folder)]
    monkeypatch.setattr(data_module, "_read_source", lambda kind, path: pytest.fail("read the source again"))
    again = data_module.load_cifar10(folder)
    assert again.fingerprint == first.fingerprint and again.source == f"CIFAR-10 python batches in {folder}"


def test_an_unreadable_file_in_the_data_is_one_line_naming_it(tmp_path, private_cache, monkeypatch):
    import errno
    from test_data import make_reference, write_batches
    folder = write_batches(make_reference(), tmp_path / "cifar-10-batches-py")
    errors = iter([OSError(errno.EACCES, "Permission denied", str(folder / "test_batch")), OSError("odd failure")])

    def unreadable(kind, path):
        raise next(errors)

    monkeypatch.setattr(data_module, "_read_source", unreadable)
    assert refusal(data_module.load_cifar10, folder) == (
        f"cannot read {folder / 'test_batch'} (Permission denied); check that the data is readable (permissions) and "
        "pass it with --data")
    assert refusal(data_module.load_cifar10, folder, False, False) == (
        f"cannot read {folder} (odd failure); check that the data is readable (permissions) and pass it with --data")


# ----------------------------------------------------------------------------------------------- archives, in detail

def png() -> bytes:
    from PIL import Image
    encoded = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(encoded, "PNG")
    return encoded.getvalue()


def test_archive_limits_are_inclusive(tmp_path, monkeypatch):
    image = png()
    monkeypatch.setattr(data_module, "MAX_IMAGE_BYTES", len(image))
    monkeypatch.setattr(data_module, "MAX_BATCH_BYTES", 12)
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_BYTES", len(image) + 12 + len(image) + 1)
    monkeypatch.setattr(data_module, "MAX_ARCHIVE_MEMBERS", 3)
    # An image member of exactly its limit, a batch file of exactly its own, a larger non-data member, three members
    # and every byte counted: all within the limits (the archive then lacks the other batch files).
    edge = tar_with({"train/a/1.png": image, "cifar-10-batches-py/data_batch_1": b"y" * 12,
                     "readme": b"z" * (len(image) + 1)}, tmp_path / "edge.tar")
    assert refusal(data_module._read_archive, edge).startswith(f"archive {edge} lacks data_batch_2")
    big_batch = tar_with({"data_batch_1": b"y" * 13}, tmp_path / "batch.tar")
    assert refusal(data_module._read_archive, big_batch) == (
        f"{big_batch}:data_batch_1 is 13 bytes, far more than any CIFAR-10 file (at most 12); the data is damaged or "
        "is not CIFAR-10")


def test_archive_member_names_at_the_root_inside_a_folder_or_with_dot_slash(tmp_path):
    image = png()
    folders = {"train/a/1.png": image, "train/a/2.png": image, "test/a/1.png": image}
    root = tar_with({**{f"./{name}": blob for name, blob in folders.items()}}, tmp_path / "root.tar")
    assert refusal(data_module._read_archive, root) == (
        f"{root}/train/ has one class folder (a); a classifier needs two classes or more: add a folder of images per "
        "class")
    inside = tar_with({f"top/{name}": blob for name, blob in folders.items()}, tmp_path / "inside.tar")
    assert refusal(data_module._read_archive, inside).startswith(f"{inside}:top/train/ has one class folder (a)")
    with tarfile.open(tmp_path / "dirs.tar", "w") as archive:  # a folder named like an image is no image
        info = tarfile.TarInfo("train/a/folder.png")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    assert "holds no CIFAR-10 data" in refusal(data_module._read_archive, tmp_path / "dirs.tar")


def test_a_damaged_archive_says_what_the_decompressor_found(tmp_path):
    import gzip
    whole = gzip.compress(tar_with({"train/a/1.png": png()}, tmp_path / "a.tar").read_bytes(), mtime=0)
    (tmp_path / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])
    assert refusal(data_module._read_archive, tmp_path / "cut.tar.gz") == (
        f"archive {tmp_path / 'cut.tar.gz'} is corrupt or truncated (Compressed file ended before the end-of-stream "
        "marker was reached); download or copy it again")


def test_the_official_archive_names_itself_as_the_source(tmp_path):
    from test_data import make_reference, write_official_tar
    path = write_official_tar(make_reference(), tmp_path / "cifar-10-python.tar.gz")
    assert data_module._read_archive(path).source == f"CIFAR-10 python batches in {path}"


def test_the_end_marker_is_the_last_1024_bytes_exactly(tmp_path):
    blob = tar_with({"a": b"x" * 512}, tmp_path / "a.tar").read_bytes()[:1024] + bytes(1024)
    (tmp_path / "exact.tar").write_bytes(blob)  # header, one full data block, the marker: nothing more
    data_module._check_tar_end(tmp_path / "exact.tar")


def test_decode_images_gives_the_pixels(tmp_path):
    decoded = data_module.decode_images([("a.png", png()), ("b.png", png())])
    assert decoded.shape == (2, 32, 32, 3) and decoded.dtype == np.uint8 and not decoded.any()


def test_the_source_signature_does_not_depend_on_the_working_folder(tmp_path, monkeypatch):
    folder = tmp_path / "tree"
    (folder / "train" / "a").mkdir(parents=True)
    (folder / "train" / "a" / "1.png").write_bytes(b"1")
    first = data_module._source_signature(folder)
    monkeypatch.chdir(folder / "train")
    assert data_module._source_signature(folder) == first
    stat = (folder / "train" / "a" / "1.png").stat()
    (folder / "train" / "a" / "1.png").rename(folder / "train" / "a" / "2.png")  # same size and time, new name
    os.utime(folder / "train" / "a" / "2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data_module._source_signature(folder) != first


def test_download_calls_torchvision_and_says_what_failed(tmp_path, monkeypatch):
    """torchvision's CIFAR10 (which downloads from the network, unreachable here) replaced by a recorder."""
    import sys
    import types
    calls = []

    class CIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if failure is not None:
                raise failure

    package, datasets = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = CIFAR10
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    failure = None
    data_module._download(tmp_path / "a" / "b")
    assert calls == [(str(tmp_path / "a" / "b"), True, True)] and (tmp_path / "a" / "b").is_dir()
    data_module._download(tmp_path / "a" / "b")  # into a folder that is already there
    assert len(calls) == 2
    failure = OSError("network unreachable\nsecond line")
    assert refusal(data_module._download, tmp_path / "c") == (
        f"downloading CIFAR-10 into {tmp_path / 'c'} failed (network unreachable second line); fetch {CIFAR10_URL} by "
        f"hand and pass it with --data (or put it in {tmp_path / 'c'})")
    failure = RuntimeError("x" * 400)
    assert f"failed ({'x' * 300}); fetch" in refusal(data_module._download, tmp_path / "d")  # 300 characters
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)  # not installed
    assert refusal(data_module._download, tmp_path / "e") == (
        f"--download needs torchvision (pip install torchvision); or fetch {CIFAR10_URL} by hand")


def small_tree(root: Path, classes: dict[str, int], split: str = "train") -> Path:
    from PIL import Image
    for name, count in classes.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.fromarray(np.full((32, 32, 3), index * 10, np.uint8)).save(root / split / name / f"{index}.png")
    return root


def test_a_tree_folder_skips_hidden_folders_and_loose_files(tmp_path, capsys):
    root = small_tree(tmp_path / "t", {"a": 5, "b": 5, ".hidden": 2})
    (root / "train" / "notes.txt").write_text("not a class")
    data = data_module._read_tree_folder(root)
    assert " 0/10 [" in capsys.readouterr().err.splitlines()[0]  # the bar's total: the images found, hidden ones not
    assert data.class_names == ["a", "b"] and data.class_counts() == [4, 4] and data.class_counts("test") == [1, 1]
    assert data.details == {"test_split": {"held_out_percent": 20, "seed": 0}, "resized": 0, "smallest": [32, 32],
                            "largest": [32, 32]}
    assert data.source == f"image folders in {root} (no test images: 2 held out of train/, 20% of each class)"
    (root / "train" / "c").mkdir()
    assert refusal(data_module._read_tree_folder, root) == (
        f"class folder c in {root}/train/ holds no images; add images or remove the folder")


class InlineExecutor:
    """concurrent.futures.ProcessPoolExecutor's place: runs each chunk at once, and records how it was made, when
    chunks are submitted and their results collected, and how it was shut down."""

    made: list = []
    events: list = []

    def __init__(self, workers, mp_context=None, initializer=None, initargs=()):
        InlineExecutor.made.append((workers, mp_context, initializer, initargs))

    def submit(self, function, *args):
        InlineExecutor.events.append("submit")
        future = RecordedFuture()
        try:
            future.set_result(function(*args))
        except Exception as exc:  # a process pool hands the chunk's error to whoever collects it
            future.set_exception(exc)
        return future

    def shutdown(self, cancel_futures=False):
        InlineExecutor.events.append(f"shutdown(cancel_futures={cancel_futures})")


class RecordedFuture(concurrent.futures.Future):
    def result(self, timeout=None):
        InlineExecutor.events.append("collect")
        return super().result(timeout)


def test_large_sets_decode_in_up_to_8_forked_processes(monkeypatch):
    import concurrent.futures
    import multiprocessing
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    monkeypatch.setattr(data_module, "_POOL_MIN_IMAGES", 3)
    InlineExecutor.made = []
    blobs = [(f"{i}.png", png()) for i in range(3)]
    for cores, expected in ((12, 8), (3, 3)):
        monkeypatch.setattr(data_module, "_usable_cores", lambda: cores)
        pixels, sizes = data_module._decode_stream(iter(blobs), 3)
        assert pixels.shape == (3, 32, 32, 3) and sizes.tolist() == [[32, 32]] * 3
        assert InlineExecutor.made[-1] == (expected, multiprocessing.get_context("fork"), data_module.end_with_parent,
                                           (os.getpid(),))  # fork itself, whatever the platform's default
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)  # Linux's default from Python 3.14 on
    try:
        data_module._decode_stream(iter(blobs), 3)
    finally:
        multiprocessing.set_start_method(previous, force=True)
    assert InlineExecutor.made[-1][1] is multiprocessing.get_context("fork")
    made = len(InlineExecutor.made)
    assert data_module._decode_stream(iter(blobs[:2]), 2)[0].shape == (2, 32, 32, 3)  # below the threshold: here
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert data_module._decode_stream(iter(blobs), 3)[0].shape == (3, 32, 32, 3)  # no fork: here too
    assert len(InlineExecutor.made) == made
    empty_pixels, empty_sizes = data_module._decode_stream(iter([]), 0)
    assert empty_pixels.shape == (0, 32, 32, 3) and empty_pixels.dtype == np.uint8 and empty_sizes.shape == (0, 2)
    assert empty_sizes.dtype == sizes.dtype == np.int64


def test_the_pool_holds_at_most_two_chunks_a_worker_and_cancels_the_rest_on_an_error(monkeypatch):
    """Memory stays bounded: the oldest chunk is collected before a fifth is read (2 workers); a damaged image stops
    the decoding, naming it, and the chunks not yet decoded are cancelled."""
    import concurrent.futures
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    monkeypatch.setattr(data_module, "_DECODE_CHUNK", 1)
    InlineExecutor.events = []
    pixels, sizes = data_module._decode_stream(iter([(f"{i}.png", png()) for i in range(6)]), 6, workers=2)
    assert pixels.shape == (6, 32, 32, 3) and sizes.shape == (6, 2)
    assert InlineExecutor.events == ["submit"] * 4 + ["collect", "submit"] * 2 + ["collect"] * 4 + [
        "shutdown(cancel_futures=True)"]
    InlineExecutor.events = []
    blobs = [("0.png", png()), ("broken.png", b"not an image"), ("2.png", png())]
    assert "broken.png" in refusal(data_module._decode_stream, iter(blobs), 3, 2)
    assert InlineExecutor.events == ["submit"] * 3 + ["collect"] * 2 + ["shutdown(cancel_futures=True)"]


def test_a_large_archive_decodes_in_worker_processes_and_its_bar_counts_without_a_total(tmp_path, monkeypatch,
                                                                                        capsys):
    """An archive's image count is known only once it is read: its size decides the pool, and the bar shows a count
    (no made-up total such as "60000/8192")."""
    import concurrent.futures
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    monkeypatch.setattr(data_module, "_usable_cores", lambda: 3)
    names = [f"{split}/{name}/{i}.png" for split in ("train", "test") for name in ("a", "b") for i in range(2)]
    archive = tar_with({name: png() for name in names}, tmp_path / "t.tar")
    for threshold, pooled in ((archive.stat().st_size + 1, False), (archive.stat().st_size, True)):
        monkeypatch.setattr(data_module, "_POOL_MIN_ARCHIVE_BYTES", threshold)
        InlineExecutor.made = []
        data = data_module._read_archive(archive)
        assert data.class_counts() == [2, 2] and data.class_counts("test") == [2, 2]
        assert [made[0] for made in InlineExecutor.made] == ([3] if pooled else [])
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("decoding images: 0img [") and lines[-1].startswith("decoding images: 8img [")


def test_decode_images_uses_the_workers_asked_for(monkeypatch):
    import concurrent.futures
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    monkeypatch.setattr(data_module, "_usable_cores", lambda: 4)
    InlineExecutor.made = []
    two = [("a.png", png()), ("b.png", png())]
    assert data_module.decode_images(two, workers=2).shape == (2, 32, 32, 3)
    assert [made[0] for made in InlineExecutor.made] == [2]
    assert data_module.decode_images(two).shape == (2, 32, 32, 3)
    assert len(InlineExecutor.made) == 1  # by default, 2 images decode here: too few for worker processes


def test_an_archive_that_is_no_tar_says_so(tmp_path):
    import gzip
    text = tmp_path / "text.tar.gz"
    text.write_bytes(gzip.compress(b"not a tar archive\n" * 100, mtime=0))
    assert refusal(data_module._read_archive, text) == (
        f"archive {text} is corrupt or truncated (invalid header); download or copy it again")


def test_an_archive_gone_when_read_keeps_300_characters_of_the_cause(tmp_path):
    gone = tmp_path / ("d" * 200) / ("e" * 200) / "x.tar"
    cause = f"[Errno 2] No such file or directory: '{gone}'"
    assert len(cause) > 300
    assert refusal(data_module._read_archive, gone) == (
        f"archive {gone} is corrupt or truncated ({cause[:300]}); download or copy it again")


def test_a_member_claiming_gigabytes_is_refused_from_its_header(tmp_path):
    """A header says 3 GB: refused before a byte of it is read (the archive holds only the header)."""
    info = tarfile.TarInfo("readme")
    info.size = 3 << 30
    claim = tmp_path / "claim.tar"
    claim.write_bytes(info.tobuf() + bytes(1024))
    assert refusal(data_module._read_archive, claim) == (
        f"archive {claim} unpacks to more than 2 GB (at readme), far more than CIFAR-10; it is not CIFAR-10 data or is "
        "damaged")


def test_the_compression_is_told_from_the_first_bytes_alone(tmp_path):
    """Opening an archive reads its first bytes, not the whole of it (archives may take gigabytes)."""
    import tracemalloc
    plain = tmp_path / "plain.tar"
    plain.write_bytes(bytes(16 << 20))
    tracemalloc.start()
    try:
        with data_module._open_decompressed(plain) as stream:
            assert stream.read(4) == bytes(4)
        data_module._check_tar_end(plain)  # reads the first bytes and the last 1024 (zeros: a tar's end marker)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_cache_warnings_keep_300_characters_of_the_cause(tmp_path, capsys):
    from edgecls.artifacts import atomic_write
    from edgecls.errors import EdgeclsError
    odd = tmp_path / "odd.npz"  # a cache whose images are no pixels: a 400-letter field names their type
    wrong = np.zeros(1, dtype=[("f" * 400, "u1")])
    np.savez(odd, signature=np.array("sig"), train_images=wrong, train_labels=np.zeros(1, np.int64),
             test_images=images(0), test_labels=np.zeros(0, np.int64), class_names=np.array(["a", "b"]),
             source=np.array("s"), details=np.array("{}"))
    assert data_module._read_cache(odd, "sig") is None
    cause = " ".join(f"train images must be uint8 N x 32 x 32 x 3, got {wrong.dtype} (1,)".split())
    assert capsys.readouterr().err == (f"warning: ignoring the data cache {odd}, which is unreadable or damaged "
                                       f"({cause[:300]}); rebuilding it\n")
    blocked = tmp_path / ("d" * 200) / ("e" * 200) / "file"  # a file where the cache folder should be
    blocked.parent.mkdir(parents=True)
    blocked.write_text("x")
    with pytest.raises((EdgeclsError, OSError)) as info:
        with atomic_write(blocked / "x.npz"):
            pass
    cause = " ".join(str(info.value).split())
    assert len(cause) > 300
    data_module._write_cache(blocked / "x.npz", "sig", dataset([0, 1, 2]))
    assert capsys.readouterr().err == (f"warning: could not write the data cache {blocked / 'x.npz'} ({cause[:300]}); "
                                       "set $EDGECLS_CACHE to a writable folder\n")


def test_the_source_signature_is_a_stable_key(tmp_path):
    """The cache key of a file: its path and a hash of its size, time and inode; the format is kept across releases
    (a change would make every user decode their data again), so it is pinned here. CACHE_VERSION is what changes it."""
    import hashlib
    import json
    file = tmp_path / "a.tar"
    file.write_bytes(b"xyz")
    os.utime(file, ns=(1_000_000_000, 2_000_000_000))
    listing = hashlib.sha256(json.dumps([["", 3, 2_000_000_000, file.stat().st_ino]]).encode()).hexdigest()
    assert data_module._source_signature(file) == (
        f'{{"version": 2, "path": "{file.resolve()}", "files": "{listing}"}}')
