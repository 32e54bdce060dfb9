"""The CIFAR-10 loader: every accepted form, written small in tmp_path, read back; the cache; each bad input."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import refusal, use_private_cache
from edgecls import data as data_module
from edgecls.data import (
    CIFAR10_CLASSES,
    CIFAR10_URL,
    DEFAULT_DATA_DIR,
    Cifar10,
    cache_path_for,
    decode_images,
    image_digests,
    load_cifar10,
    resolve_data_path,
)
from edgecls.errors import EdgeclsError


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache folder and no inherited $EDGECLS_DATA."""
    return use_private_cache(monkeypatch, tmp_path / "cache")


def make_reference(class_names: list[str] = list(CIFAR10_CLASSES), train_per_class: int = 3, test_per_class: int = 2,
                   seed: int = 0) -> Cifar10:
    """Smooth colour gradients (so JPEG keeps them close), classes interleaved as in the official batches."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 32)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(len(class_names)), per_class))
        base = rng.uniform(30, 150, size=(len(labels), 1, 1, 3))
        slope = rng.uniform(-60, 60, size=(len(labels), 1, 1, 3))
        images = base + slope * (ramp[None, :, None, None] + ramp[None, None, :, None]) / 2 + 40
        return np.clip(images, 0, 255).astype(np.uint8), labels

    train_images, train_labels = draw(train_per_class)
    test_images, test_labels = draw(test_per_class)
    return Cifar10(train_images, train_labels, test_images, test_labels, class_names, source="reference")


def by_class(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order an image-folder tree yields: grouped by class, file names (= original positions) within a class."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


# --- writers of each form --------------------------------------------------------------------------------------


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose opcode table can be changed
    """Pickles as Python 2's cPickle wrote the official batches: str and bytes both as BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump_batch(obj: dict, path: Path, style: str = "python2") -> None:
    """python2: as the official files (BINSTRING, numpy 1's module name numpy.core); python3: pickle.dumps."""
    if style == "python2":
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(obj)
        blob = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    else:
        blob = pickle.dumps(obj, protocol=2)
    path.write_bytes(blob)


def write_batches(ref: Cifar10, folder: Path, style: str = "python2") -> Path:
    folder.mkdir(parents=True)

    def batch(images: np.ndarray, labels: np.ndarray, label: str) -> dict:
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane per row
        return {b"batch_label": label.encode(), b"labels": [int(x) for x in labels], b"data": rows,
                b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}

    for number, index in enumerate(np.array_split(np.arange(len(ref.train_labels)), 5), start=1):
        dump_batch(batch(ref.train_images[index], ref.train_labels[index], f"training batch {number} of 5"),
                   folder / f"data_batch_{number}", style)
    dump_batch(batch(ref.test_images, ref.test_labels, "testing batch 1 of 1"), folder / "test_batch", style)
    meta = {b"label_names": [name.encode() for name in ref.class_names], b"num_cases_per_batch": 10, b"num_vis": 3072}
    dump_batch(meta, folder / "batches.meta", style)
    return folder


def write_official_tar(ref: Cifar10, path: Path) -> Path:
    folder = write_batches(ref, path.parent / "staging" / "cifar-10-batches-py")
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    return path


def write_tree(ref: Cifar10, root: Path, suffix: str = ".png") -> Path:
    for split in ("train", "test"):
        images, labels = getattr(ref, f"{split}_images"), getattr(ref, f"{split}_labels")
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / ref.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:04d}{suffix}", quality=95)
    return root


def write_tree_tar(root: Path, path: Path, top: str | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as archive:
        for split in ("train", "test"):
            archive.add(root / split, arcname=f"{top}/{split}" if top else split)
    return path


def assert_same(loaded: Cifar10, images: np.ndarray, labels: np.ndarray, split: str = "train") -> None:
    got = getattr(loaded, f"{split}_images")
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(getattr(loaded, f"{split}_labels"), labels)


# --- every form gives the same data ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["python2", "python3"])
def test_batch_folder_exact(tmp_path: Path, style: str) -> None:
    ref = make_reference()
    folder = write_batches(ref, tmp_path / "cifar-10-batches-py", style)
    for location in (folder, tmp_path):  # the folder itself, or the folder holding it
        loaded = load_cifar10(str(location), cache=False)
        assert_same(loaded, ref.train_images, ref.train_labels, "train")
        assert_same(loaded, ref.test_images, ref.test_labels, "test")
        assert loaded.class_names == list(CIFAR10_CLASSES)
        assert loaded.train_labels.dtype == np.int64
        assert loaded.fingerprint == ref.fingerprint


def test_official_tar_gz_exact(tmp_path: Path) -> None:
    ref = make_reference()
    archive = write_official_tar(ref, tmp_path / "dl" / "cifar-10-python.tar.gz")
    for location in (archive, archive.parent):  # the archive, or the folder holding it
        loaded = load_cifar10(location, cache=False)
        assert_same(loaded, ref.train_images, ref.train_labels, "train")
        assert_same(loaded, ref.test_images, ref.test_labels, "test")
        assert loaded.fingerprint == ref.fingerprint


@pytest.mark.parametrize("form", ["folder", "folder holding it", "tar", "tar.gz with top folder"])
def test_png_tree_exact_in_every_form(tmp_path: Path, form: str) -> None:
    ref = make_reference()
    root = write_tree(ref, tmp_path / "holder" / "cifar-png")
    location = {
        "folder": root,
        "folder holding it": root.parent,
        "tar": write_tree_tar(root, tmp_path / "cifar.tar"),
        "tar.gz with top folder": write_tree_tar(root, tmp_path / "cifar.tar.gz", top="cifar-png"),
    }[form]
    loaded = load_cifar10(location, cache=False)
    assert loaded.class_names == list(CIFAR10_CLASSES)
    assert_same(loaded, *by_class(ref.train_images, ref.train_labels), "train")
    assert_same(loaded, *by_class(ref.test_images, ref.test_labels), "test")
    assert loaded.fingerprint == ref.fingerprint  # same pixels, other order: same fingerprint


def test_jpeg_tree_close_and_same_from_folder_or_tar(tmp_path: Path) -> None:
    ref = make_reference()
    root = write_tree(ref, tmp_path / "jpeg", suffix=".jpg")
    from_folder = load_cifar10(root, cache=False)
    from_tar = load_cifar10(write_tree_tar(root, tmp_path / "jpeg.tar.gz"), cache=False)
    for split in ("train", "test"):
        images, labels = by_class(getattr(ref, f"{split}_images"), getattr(ref, f"{split}_labels"))
        np.testing.assert_array_equal(getattr(from_folder, f"{split}_labels"), labels)
        error = np.abs(getattr(from_folder, f"{split}_images").astype(int) - images.astype(int))
        assert error.mean() < 2.0 and error.max() < 40
        assert_same(from_tar, getattr(from_folder, f"{split}_images"), labels, split)
    assert from_tar.fingerprint == from_folder.fingerprint
    assert from_folder.fingerprint != ref.fingerprint  # JPEG changed the pixels


def test_other_class_names_are_sorted(tmp_path: Path) -> None:
    ref = make_reference(class_names=["zebra", "apple", "mango"])
    loaded = load_cifar10(write_tree(ref, tmp_path / "tree"), cache=False)
    assert loaded.class_names == ["apple", "mango", "zebra"]
    relabel = np.array([2, 0, 1])  # zebra -> 2, apple -> 0, mango -> 1
    for split in ("train", "test"):
        images, labels = getattr(ref, f"{split}_images"), relabel[getattr(ref, f"{split}_labels")]
        assert_same(loaded, *by_class(images, labels), split)


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    rgba = np.dstack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30, 0)])  # fully transparent: alpha dropped
    for split in ("train", "test"):
        Image.fromarray(gray, "L").save(_mkdir(tmp_path / split / "cat") / "a.png")
        Image.fromarray(rgba, "RGBA").save(_mkdir(tmp_path / split / "dog") / "b.png")
    loaded = load_cifar10(tmp_path, cache=False)
    assert loaded.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(loaded.train_images[0], np.dstack([gray] * 3))
    np.testing.assert_array_equal(loaded.train_images[1], rgba[:, :, :3])


def test_decoding_in_processes_gives_the_same_pixels(tmp_path: Path) -> None:
    ref = make_reference()
    root = write_tree(ref, tmp_path / "jpeg", suffix=".jpg")
    blobs = [(str(p), p.read_bytes()) for p in sorted(root.rglob("*.jpg"))]
    np.testing.assert_array_equal(decode_images(blobs, workers=2), decode_images(blobs, workers=1))
    blobs[-1] = ("broken.jpg", b"not an image")  # a worker's error reaches the caller intact
    assert "broken.jpg" in refusal(lambda: decode_images(blobs, workers=2))


# --- the cache -------------------------------------------------------------------------------------------------


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = data_module._decode_image

    def counting(blob: bytes, name: str) -> np.ndarray:
        calls.append(name)
        return real(blob, name)

    monkeypatch.setattr(data_module, "_decode_image", counting)
    return calls


def test_second_load_reads_the_cache_not_the_jpegs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  private_cache: Path) -> None:
    ref = make_reference()
    archive = write_tree_tar(write_tree(ref, tmp_path / "jpeg", suffix=".jpg"), tmp_path / "jpeg.tar.gz")
    calls = count_decodes(monkeypatch)
    first = load_cifar10(archive)
    assert len(calls) == len(ref.train_labels) + len(ref.test_labels)
    assert cache_path_for(archive).is_file() and cache_path_for(archive).parent == private_cache
    calls.clear()
    second = load_cifar10(archive)
    assert calls == []
    assert_same(second, first.train_images, first.train_labels, "train")
    assert_same(second, first.test_images, first.test_labels, "test")
    assert second.class_names == first.class_names and second.source == first.source
    assert second.fingerprint == first.fingerprint


def test_cache_follows_changes_to_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = make_reference()
    root = write_tree(ref, tmp_path / "tree")
    load_cifar10(root)
    changed = next((root / "test").rglob("*.png"))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
    calls = count_decodes(monkeypatch)
    reloaded = load_cifar10(root)
    assert len(calls) == len(ref.train_labels) + len(ref.test_labels)
    assert (reloaded.test_images == 0).all(axis=(1, 2, 3)).sum() == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_cache_is_ignored_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    ref = make_reference()
    root = write_tree(ref, tmp_path / "tree")
    first = load_cifar10(root)
    cache_file = cache_path_for(root)
    blob = cache_file.read_bytes()
    cache_file.write_bytes(b"not a zip file" if damage == "garbage" else blob[: len(blob) // 2])
    calls = count_decodes(monkeypatch)
    again = load_cifar10(root)
    assert len(calls) > 0
    assert_same(again, first.train_images, first.train_labels, "train")
    calls.clear()
    load_cifar10(root)  # the rewritten cache is whole again
    assert calls == []


def test_no_cache_writes_nothing(tmp_path: Path, private_cache: Path) -> None:
    load_cifar10(write_batches(make_reference(), tmp_path / "b"), cache=False)
    assert not private_cache.exists() or not any(private_cache.iterdir())


# --- where the data is looked for ------------------------------------------------------------------------------


def test_location_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_path("some/where") == Path("some/where")
    assert resolve_data_path(None) == DEFAULT_DATA_DIR == Path("data")
    monkeypatch.setenv("EDGECLS_DATA", str(tmp_path / "env"))
    assert resolve_data_path(None) == tmp_path / "env"
    assert resolve_data_path("explicit") == Path("explicit")  # --data wins over the environment


def test_load_from_env_and_from_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = make_reference()
    write_batches(ref, tmp_path / "work" / "data" / "cifar-10-batches-py")
    monkeypatch.chdir(tmp_path / "work")
    assert load_cifar10().fingerprint == ref.fingerprint  # ./data
    other = make_reference(seed=1)
    monkeypatch.setenv("EDGECLS_DATA", str(write_official_tar(other, tmp_path / "env" / "c.tar.gz")))
    assert load_cifar10().fingerprint == other.fingerprint != ref.fingerprint


def test_download_is_skipped_when_data_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")

    def must_not_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although the data was there")

    monkeypatch.setattr(torchvision_datasets, "CIFAR10", must_not_download)
    ref = make_reference()
    assert load_cifar10(write_batches(ref, tmp_path / "b"), download=True).fingerprint == ref.fingerprint


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")

    def offline(root: str, train: bool, download: bool) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision_datasets, "CIFAR10", offline)
    message = refusal(lambda: load_cifar10(tmp_path / "new", download=True))
    assert "downloading CIFAR-10" in message and "name resolution" in message and CIFAR10_URL in message


# --- Cifar10 itself --------------------------------------------------------------------------------------------


def test_fingerprint_depends_on_content_not_order() -> None:
    ref = make_reference()
    order = np.random.default_rng(5).permutation(len(ref.train_labels))
    shuffled = Cifar10(ref.train_images[order], ref.train_labels[order], ref.test_images, ref.test_labels,
                       ref.class_names)
    assert shuffled.fingerprint == ref.fingerprint and len(ref.fingerprint) == 16
    pixel = ref.train_images.copy()
    pixel[3, 4, 5, 1] ^= 1
    relabelled = ref.train_labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    renamed = ref.class_names[:-1] + ["lorry"]
    variants = [
        Cifar10(pixel, ref.train_labels, ref.test_images, ref.test_labels, ref.class_names),
        Cifar10(ref.train_images, relabelled, ref.test_images, ref.test_labels, ref.class_names),
        Cifar10(ref.train_images, ref.train_labels, ref.test_images, ref.test_labels, renamed),
        # the splits swapped
        Cifar10(ref.test_images, ref.test_labels, ref.train_images, ref.train_labels, ref.class_names),
    ]
    assert len({ref.fingerprint, *(v.fingerprint for v in variants)}) == 5


def test_subset_is_stratified_seeded_and_keeps_pairs() -> None:
    ref = make_reference(train_per_class=20, test_per_class=10)
    small = ref.subset(train=50, test=25, seed=3)
    assert (len(small.train_labels), len(small.test_labels)) == (50, 25)
    assert np.bincount(small.train_labels, minlength=10).tolist() == [5] * 10
    assert sorted(np.bincount(small.test_labels, minlength=10).tolist()) == [2] * 5 + [3] * 5
    for image, label in zip(small.train_images, small.train_labels):  # each image keeps its own label
        matches = np.flatnonzero((ref.train_images == image).all(axis=(1, 2, 3)))
        assert ref.train_labels[matches].tolist() == [label]
    assert small.subset().fingerprint == small.fingerprint  # None keeps everything
    assert ref.subset(50, 25, seed=3).fingerprint == small.fingerprint
    assert ref.subset(50, 25, seed=4).fingerprint != small.fingerprint
    assert ref.subset(train=None, test=10**6).fingerprint == ref.fingerprint
    with pytest.raises(EdgeclsError, match="-1"):
        ref.subset(train=-1)


# --- bad input: one clear line naming the culprit --------------------------------------------------------------


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_nothing_there_says_how_to_get_data(tmp_path: Path) -> None:
    message = refusal(lambda: load_cifar10(tmp_path / "absent"))
    assert str(tmp_path / "absent") in message
    assert "--download" in message and CIFAR10_URL in message and "--data" in message and "EDGECLS_DATA" in message


def test_empty_and_unrelated_folders(tmp_path: Path) -> None:
    empty = _mkdir(tmp_path / "empty")
    message = refusal(lambda: load_cifar10(empty))
    assert "empty" in message and str(empty) in message and "--download" in message
    other = _mkdir(tmp_path / "other")
    (other / "notes.txt").write_text("hello")
    (other / "images.tar.gz").write_bytes(b"")
    message = refusal(lambda: load_cifar10(other))
    assert "holds no CIFAR-10 data" in message and str(other / "images.tar.gz") in message
    (tmp_path / "file.txt").write_text("x")
    assert "file.txt" in refusal(lambda: load_cifar10(tmp_path / "file.txt"))


def test_missing_truncated_corrupt_and_foreign_batch_files(tmp_path: Path) -> None:
    folder = write_batches(make_reference(), tmp_path / "cifar-10-batches-py")
    intact = (folder / "data_batch_3").read_bytes()

    (folder / "data_batch_3").write_bytes(intact[: len(intact) // 2])
    message = refusal(lambda: load_cifar10(folder, cache=False))
    assert "data_batch_3" in message and "corrupt or truncated" in message

    (folder / "data_batch_3").write_bytes(b"\x00garbage" * 50)
    assert "data_batch_3" in refusal(lambda: load_cifar10(folder, cache=False))

    dump_batch({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, folder / "data_batch_3")
    message = refusal(lambda: load_cifar10(folder, cache=False))
    assert "data_batch_3" in message and "not a CIFAR-10 batch" in message

    (folder / "data_batch_3").unlink()
    message = refusal(lambda: load_cifar10(folder, cache=False))
    assert "lacks data_batch_3" in message


class _Touch:
    """A pickle that would create a file when loaded: the loader must refuse it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_pickle_asking_for_code_is_refused(tmp_path: Path) -> None:
    folder = write_batches(make_reference(), tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Touch(marker)}, protocol=2))
    message = refusal(lambda: load_cifar10(folder, cache=False))
    assert "test_batch" in message and not marker.exists()


def test_truncated_and_corrupt_archives(tmp_path: Path) -> None:
    root = write_tree(make_reference(), tmp_path / "tree", suffix=".jpg")
    for name in ("tree.tar.gz", "tree.tar"):
        archive = write_tree_tar(root, tmp_path / name)
        blob = archive.read_bytes()
        archive.write_bytes(blob[: len(blob) // 2])
        message = refusal(lambda: load_cifar10(archive, cache=False))
        assert str(archive) in message and "corrupt or truncated" in message
    (tmp_path / "noise.tar.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "noise.tar.gz" in refusal(lambda: load_cifar10(tmp_path / "noise.tar.gz", cache=False))


def test_archives_without_usable_data(tmp_path: Path) -> None:
    official = write_official_tar(make_reference(), tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(official) as source, tarfile.open(tmp_path / "partial.tar.gz", "w:gz") as partial:
        for member in source.getmembers():
            if not member.name.endswith("test_batch"):
                partial.addfile(member, source.extractfile(member) if member.isfile() else None)
    message = refusal(lambda: load_cifar10(tmp_path / "partial.tar.gz", cache=False))
    assert "partial.tar.gz" in message and "test_batch" in message

    with tarfile.open(tmp_path / "unrelated.tar", "w") as unrelated:
        info = tarfile.TarInfo("readme.txt")
        info.size = 5
        unrelated.addfile(info, io.BytesIO(b"hello"))
    message = refusal(lambda: load_cifar10(tmp_path / "unrelated.tar", cache=False))
    assert "unrelated.tar" in message and "holds no CIFAR-10 data" in message


def test_class_folders_differ_between_splits(tmp_path: Path) -> None:
    root = write_tree(make_reference(), tmp_path / "tree")
    (root / "test" / "cat").rename(root / "test" / "kitten")
    message = refusal(lambda: load_cifar10(root, cache=False))
    assert "only in train: cat" in message and "only in test: kitten" in message and str(root) in message


def test_tree_without_test_images_holds_out_a_seeded_share_of_each_class(tmp_path: Path) -> None:
    ref = make_reference(train_per_class=3)
    root = write_tree(ref, tmp_path / "tree")
    for file in (root / "test").rglob("*.png"):
        file.unlink()
    message = refusal(lambda: load_cifar10(root, cache=False))  # 3 images per class cannot be split
    assert "too few images to split" in message and "airplane (3)" in message and "truck (3)" in message

    ref = make_reference(train_per_class=10)
    root = write_tree(ref, tmp_path / "tree10")
    for file in (root / "test").rglob("*.png"):
        file.unlink()
    loaded = load_cifar10(root, cache=False)
    assert loaded.class_counts("test") == [2] * 10 and loaded.class_counts("train") == [8] * 10  # 20% of each class
    assert "held out" in loaded.source and loaded.details["test_split"] == {"held_out_percent": 20, "seed": 0}
    together = np.concatenate([loaded.train_images, loaded.test_images])
    assert sorted(image_digests(together)) == sorted(image_digests(ref.train_images))  # every image, in one split
    again = load_cifar10(root, cache=False)
    assert again.fingerprint == loaded.fingerprint  # the same split at every load: export and bench find it again


@pytest.mark.parametrize("problem", ["garbage", "truncated jpeg", "too large"])
def test_bad_images_are_named(tmp_path: Path, problem: str) -> None:
    root = write_tree(make_reference(), tmp_path / "tree", suffix=".jpg")
    culprit = root / "train" / "dog" / "bad.jpg"
    if problem == "garbage":
        culprit.write_bytes(b"this is not a jpeg")
    elif problem == "truncated jpeg":
        encoded = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).save(encoded, "JPEG")
        culprit.write_bytes(encoded.getvalue()[:200])
    else:  # a header claiming more pixels than the decoder's cap
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(culprit, "PNG")
        blob = bytearray(culprit.read_bytes())
        blob[16:24] = struct.pack(">II", 10000, 10000)  # IHDR width and height, and the chunk's checksum
        blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))
        culprit.write_bytes(bytes(blob))
    message = refusal(lambda: load_cifar10(root, cache=False))
    assert str(culprit) in message
    assert "10000x10000" in message if problem == "too large" else "cannot decode" in message
    archive = write_tree_tar(root, tmp_path / "tree.tar.gz", top="tree")  # inside an archive: archive:member
    assert f"{archive}:tree/train/dog/bad.jpg" in refusal(lambda: load_cifar10(archive, cache=False))


def test_class_order_does_not_follow_the_archive_order(tmp_path: Path) -> None:
    """Classes get CIFAR-10's label order (or sorted names), whatever order the archive lists its folders in."""
    for class_names, expected in ((list(CIFAR10_CLASSES), list(CIFAR10_CLASSES)),
                                  (["zebra", "apple", "mango"], ["apple", "mango", "zebra"])):
        ref = make_reference(class_names=class_names)
        root = write_tree(ref, tmp_path / f"tree{len(class_names)}")
        archive_path = tmp_path / f"reversed{len(class_names)}.tar"
        with tarfile.open(archive_path, "w") as archive:  # classes added last-name-first
            for split in ("train", "test"):
                for class_dir in sorted((root / split).iterdir(), reverse=True):
                    archive.add(class_dir, arcname=f"{split}/{class_dir.name}")
        loaded = load_cifar10(archive_path, cache=False)
        assert loaded.class_names == expected
        for split in ("train", "test"):
            names = [loaded.class_names[label] for label in getattr(loaded, f"{split}_labels")]
            original = [ref.class_names[label] for label in getattr(ref, f"{split}_labels")]
            assert sorted(names) == sorted(original)
            for image, name in zip(getattr(loaded, f"{split}_images"), names):  # each image kept its class
                matches = [i for i, img in enumerate(getattr(ref, f"{split}_images")) if np.array_equal(img, image)]
                assert any(ref.class_names[getattr(ref, f"{split}_labels")[i]] == name for i in matches)


def test_an_archive_replaced_at_the_same_path_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_ref, second_ref = make_reference(), make_reference(seed=1)
    archive = write_tree_tar(write_tree(first_ref, tmp_path / "a"), tmp_path / "data.tar")
    before = archive.stat()
    load_cifar10(archive)
    replacement = write_tree_tar(write_tree(second_ref, tmp_path / "b"), tmp_path / "replacement.tar")
    os.replace(replacement, archive)  # same path and, below, the same modification time
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    calls = count_decodes(monkeypatch)
    reloaded = load_cifar10(archive)
    assert len(calls) == len(second_ref.train_labels) + len(second_ref.test_labels)
    assert_same(reloaded, *by_class(second_ref.train_images, second_ref.train_labels), "train")
