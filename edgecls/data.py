"""CIFAR-10, or the user's own classes and photos, as uint8 arrays, from whichever form the user has, with a cache
of the decoded pixels (torch-free).

Accepted forms (`load_cifar10` works out which one it was given):

- the official python form: the extracted `cifar-10-batches-py/` folder (or a folder holding it), or
  `cifar-10-python.tar.gz` itself (or a folder holding it): pickled `data_batch_1..5`, `test_batch`, `batches.meta`;
- an image-folder tree `train/<class>/*` and, optionally, `test/<class>/*` (or a folder holding exactly one such
  tree): two classes or more, images of any size in any format the decoder reads (`IMAGE_SUFFIXES`). Each image is
  brought to the model's input size (32x32) as it is decoded, by the resize and crop `edgecls predict` applies to a
  photo (`Preprocessing.fit`), so the cache holds what the model will see. Without test images, a seeded
  `TEST_SPLIT_PERCENT` of each class is held out as the test split;
- a `.tar` / `.tar.gz` of such a tree, with `train/` (and `test/`) at its root or inside one top-level folder
  (the form of ../shared/data/cifar10-jpeg.tar.gz). Archives are streamed, never extracted.

Images are read and decoded a chunk at a time, so memory holds the decoded 32x32 arrays and a few chunks of encoded
files, whatever the size of the photos.

The location is `--data`, else `$EDGECLS_DATA`, else `DEFAULT_DATA_DIR`. Decoded arrays are cached as .npz under
`$EDGECLS_CACHE` (default `~/.cache/edgecls`), one file per source path, so a second run does not decode 60,000
JPEGs again; the cache is rebuilt when the source's size or modification time changes.
"""

from __future__ import annotations

import bz2
import concurrent.futures
import functools
import gzip
import hashlib
import io
import json
import lzma
import multiprocessing
import os
import pickle
import re
import sys
import tarfile
import zipfile
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Tuple

import numpy as np

from edgecls.artifacts import atomic_write, check_regular_file, end_with_parent, read_at_most
from edgecls.defaults import DEFAULT_VAL_SPLIT, VAL_SPLIT_PERCENT
from edgecls.errors import EdgeclsError, first_line
from edgecls.imaging import IMAGE_SUFFIXES, decode
from edgecls.preprocess import Preprocessing, fit_image
from edgecls.progress import progress_bar

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

DEFAULT_DATA_DIR = Path("data")
"""Where the data is looked for when neither --data nor $EDGECLS_DATA says: ./data, relative to the working folder."""

DATA_ENV = "EDGECLS_DATA"
CACHE_ENV = "EDGECLS_CACHE"
CACHE_VERSION = 2  # bump when the cached arrays' meaning changes, so old cache files are ignored

IMAGE_SIZE = 32  # the model's input size: every image of a data set is brought to it when decoded
# A tree without test images: this share of each class (seeded, fixed, so that every command reading the data finds
# the same split) becomes the test split; a class needs MIN_CLASS_IMAGES images for it.
TEST_SPLIT_PERCENT = 20
TEST_SPLIT_SEED = 0
MIN_CLASS_IMAGES = 5
# A class with fewer than 1/IMBALANCE_RATIO of the largest class's training images is reported.
IMBALANCE_RATIO = 3
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_OFFICIAL_DIR = "cifar-10-batches-py"
_OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_BATCH_FILES = (*_TRAIN_BATCHES, "test_batch", "batches.meta")
_SPLITS = ("train", "test")
# An image member of a tree archive: [top/]train|test/<class>/<file>
_TREE_MEMBER = re.compile(r"(?:([^/]+)/)?(train|test)/([^/]+)/([^/]+)")
_DECODE_CHUNK = 1000
_DECODE_CHUNK_BYTES = 16 << 20  # a chunk ends at this many encoded bytes too (large photos)
# Sizes beyond which a file cannot be data, checked before it is read (an archive member's header gives its size before
# a byte of it is decompressed): a CIFAR-10 batch file takes 31 MB, the whole data 180 MB; an image file may hold up to
# the decoder's 64 megapixels (a BMP of them takes 192 MB).
MAX_IMAGE_BYTES = 256 << 20
MAX_BATCH_BYTES = 64 << 20
MAX_ARCHIVE_BYTES = 2 << 30  # the sum of every member, skipped ones too, so that reading an archive ends soon
MAX_ARCHIVE_MEMBERS = 300_000  # CIFAR-10 has 60,000 images (CINIC-10, its larger cousin, 270,000)
_POOL_MIN_IMAGES = 8192  # below this, starting worker processes costs more than it saves
_POOL_MIN_ARCHIVE_BYTES = 8 << 20  # the same for an archive, whose image count is known only once it is read

_HOW_TO_GET = (
    f"run with --download, or fetch {CIFAR10_URL} (or an image-folder tree) and pass its path with --data "
    f"or ${DATA_ENV}"
)

# (name, bytes) of one encoded image, or of one batch file; the name is what error messages show.
_Blob = Tuple[str, bytes]  # typing.Tuple: evaluated at import, and JetPack 5 runs Python 3.8
# (split, class name, file name) of one image of a tree
_TreeKey = Tuple[str, str, str]


@dataclass(eq=False)
class Cifar10:
    """The data set in memory: images N x 32 x 32 x 3 uint8 RGB (C-contiguous), labels int64 indexing class_names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str = ""
    # How an image-folder tree was read (JSON-ready): "test_split" ("test/" or the held-out share and seed), "resized"
    # (images that were not 32x32), "smallest" / "largest" (width x height of the files); empty for other forms.
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(name) for name in self.class_names]
        for split in _SPLITS:
            images = np.ascontiguousarray(getattr(self, f"{split}_images"))
            labels = np.ascontiguousarray(getattr(self, f"{split}_labels"), dtype=np.int64)
            if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
                raise ValueError(f"{split} images must be uint8 N x 32 x 32 x 3, got {images.dtype} {images.shape}")
            if labels.shape != (len(images),):
                raise ValueError(f"{split} labels must be shaped ({len(images)},), got {labels.shape}")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(f"{split} labels must lie in 0..{len(self.class_names) - 1}")
            setattr(self, f"{split}_images", images)
            setattr(self, f"{split}_labels", labels)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Short sha256 of class names and each split's (label, pixels) pairs.

        The pairs are hashed as a sorted multiset, so the same images give the same fingerprint whatever form
        they were read from (pickled batches keep CIFAR-10's order, image folders group by class).
        """
        digest = hashlib.sha256(json.dumps(self.class_names).encode())
        for split in _SPLITS:
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            digest.update(f"|{split}:{len(labels)}|".encode())
            pairs = sorted(
                int(label).to_bytes(4, "little") + digest for label, digest in zip(labels, image_digests(images))
            )
            digest.update(b"".join(pairs))
        return digest.hexdigest()[:16]

    def check_fits(self, preprocess: Preprocessing, model: str | os.PathLike) -> None:
        """Refuse data that `model` was not trained for: other classes, or images of another size."""
        if list(self.class_names) != list(preprocess.class_names):
            raise EdgeclsError(f"the data has classes {list(self.class_names)}, but {model} was trained on "
                               f"{list(preprocess.class_names)}; pass the data it was trained on with --data")
        size = preprocess.input_size
        for split in _SPLITS:
            shape = getattr(self, f"{split}_images").shape[1:]
            if shape != (size, size, 3):
                raise EdgeclsError(f"the {split} images are {'x'.join(map(str, shape))}, but the model expects "
                                   f"{size}x{size}x3 ({model}); pass the data it was trained on with --data")

    def hold_out(self, indices: np.ndarray) -> tuple["Cifar10", np.ndarray, np.ndarray]:
        """The data set without the training images at `indices` (the test split unchanged), and those images
        with their labels: a validation split that training never sees."""
        keep = np.setdiff1d(np.arange(len(self.train_labels)), indices)
        rest = Cifar10(self.train_images[keep], self.train_labels[keep], self.test_images, self.test_labels,
                       list(self.class_names), source=f"{self.source} (without {len(indices)} validation images)",
                       details=dict(self.details))
        left = np.bincount(rest.train_labels, minlength=len(self.class_names))
        emptied = [f"{name} ({count})" for name, count, kept in zip(self.class_names, self.class_counts(), left)
                   if count and not kept]
        if emptied:
            raise EdgeclsError(f"the {len(indices):,} validation images would take every training image of "
                               f"{', '.join(emptied)}: too few images to split; add images to that class or pass "
                               "a smaller --val-split")
        return rest, self.train_images[indices], self.train_labels[indices]

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class in `split`, in class order."""
        return np.bincount(getattr(self, f"{split}_labels"), minlength=len(self.class_names)).tolist()

    def summary(self) -> dict[str, Any]:
        """What a checkpoint records about its data (JSON-ready): source, images per class in each split, and how a
        tree was read (`details`)."""
        return {"source": self.source, "class_names": list(self.class_names),
                "train_per_class": self.class_counts("train"), "test_per_class": self.class_counts("test"),
                **self.details}

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "Cifar10":
        """A smaller copy with `train` / `test` images (None: all), stratified by class, chosen with `seed`.

        Each class keeps its share of the split (largest remainders get the rounding, the earlier class on a tie), and
        the chosen images keep their original relative order.
        """
        rng = np.random.default_rng(check_seed(seed))
        train_index = _stratified_indices(self.train_labels, train, len(self.class_names), rng)
        test_index = _stratified_indices(self.test_labels, test, len(self.class_names), rng)
        return Cifar10(
            train_images=self.train_images[train_index],
            train_labels=self.train_labels[train_index],
            test_images=self.test_images[test_index],
            test_labels=self.test_labels[test_index],
            class_names=list(self.class_names),
            source=f"{self.source} (subset: {len(train_index)} train / {len(test_index)} test, seed {seed})",
            details=dict(self.details),
        )


def image_digests(images: np.ndarray) -> list[bytes]:
    """A 16-byte digest of each image's pixels: names an image whatever order or form the data came in."""
    return [hashlib.blake2b(row, digest_size=16).digest() for row in images.reshape(len(images), -1)]


def digest_rows(images: np.ndarray) -> np.ndarray:
    """`image_digests` as an N x 16 uint8 array, the form files store them in."""
    return np.frombuffer(b"".join(image_digests(images)), dtype=np.uint8).reshape(len(images), 16)


def find_images(images: np.ndarray, digests: np.ndarray) -> list[int | None]:
    """The position in `images` of each image named by a row of `digests` (None where it is not there); identical
    images are matched in turn, so each position is used once."""
    positions: dict[bytes, list[int]] = {}
    for i, digest in enumerate(image_digests(images)):
        positions.setdefault(digest, []).append(i)
    return [positions[bytes(row)].pop(0) if positions.get(bytes(row)) else None for row in digests]


MAX_SEED = 2**32 - 1


def check_seed(seed: int, what: str = "seed") -> int:
    """Seeds are whole numbers from 0 up (numpy's generators refuse negative ones)."""
    if seed < 0:
        raise EdgeclsError(f"{what} {seed} is negative; use a whole number from 0 up")
    if seed > MAX_SEED:  # numpy's legacy generators and the data order take 32-bit seeds
        raise EdgeclsError(f"{what} {seed} is too large; use a whole number from 0 to {MAX_SEED}")
    return seed


def seeded_subset(total: int, size: int, seed: int) -> np.ndarray:
    """`size` of `total` positions, chosen with `seed` and sorted: the same arguments always give the same images."""
    generator = np.random.default_rng(check_seed(seed))
    return np.sort(generator.choice(total, size=size, replace=False)).astype(np.int64)


def default_val_split(total: int) -> int:
    """Training images held out for validation when --val-split is not given: VAL_SPLIT_PERCENT of them, at most
    DEFAULT_VAL_SPLIT (CIFAR-10's 50,000 give the paper's 5,000)."""
    return min(DEFAULT_VAL_SPLIT, total * VAL_SPLIT_PERCENT // 100)


def imbalance_warning(data: Cifar10) -> str | None:
    """A warning line naming the classes with fewer than 1/IMBALANCE_RATIO of the largest class's training images,
    with their counts; None when the classes are balanced enough."""
    counts = data.class_counts("train")
    largest = max(counts)
    small = [(name, count) for name, count in zip(data.class_names, counts) if count * IMBALANCE_RATIO < largest]
    if not small:
        return None
    big = data.class_names[counts.index(largest)]
    listed = ", ".join(f"{name} {count:,}" for name, count in small)
    return (f"warning: the classes are strongly imbalanced: {big} has {largest:,} training images, {listed} "
            f"(fewer than 1/{IMBALANCE_RATIO} of that); the model will favour the large classes: add images to the "
            "small ones, and read the per-class accuracy (edgecls eval)")


def resolve_data_path(data: str | os.PathLike | None) -> Path:
    """The data location: `data` (the --data option), else $EDGECLS_DATA, else DEFAULT_DATA_DIR."""
    if data is not None and str(data) != "":
        return Path(data).expanduser()
    from_env = os.environ.get(DATA_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_DATA_DIR


def load_cifar10(data: str | os.PathLike | None = None, download: bool = False, cache: bool = True) -> Cifar10:
    """Read CIFAR-10 from the location `resolve_data_path(data)` names, in any form this module accepts.

    download: when nothing is at the location yet, fetch the official form there with torchvision first.
    cache: reuse (and write) the decoded arrays under $EDGECLS_CACHE or ~/.cache/edgecls.
    Every problem with the data is an EdgeclsError naming the file at fault.
    """
    location = resolve_data_path(data)
    try:
        source = _locate(location)
        if source is None and download:
            _download(location)
            source = _locate(location)
        if source is None:
            raise _no_data_error(location)
        kind, path = source
        if not cache:
            return _read_source(kind, path)
        cache_file = cache_path_for(path)
        signature = _source_signature(path)
        cached = _read_cache(cache_file, signature)
        if cached is not None:
            return cached
        dataset = _read_source(kind, path)
    except OSError as exc:  # an unreadable file or folder anywhere in the data: one line naming it
        where = exc.filename or location
        raise EdgeclsError(f"cannot read {where} ({exc.strerror or first_line(exc)}); check that the data is readable "
                           "(permissions) and pass it with --data") from exc
    _write_cache(cache_file, signature, dataset)
    return dataset


def cache_dir() -> Path:
    """$EDGECLS_CACHE, else ~/.cache/edgecls."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgecls").expanduser()


def cache_path_for(source: Path) -> Path:
    """The cache file of one data source: one per resolved path, overwritten when the source changes."""
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / f"cifar10-{key}.npz"


# --- finding the data ------------------------------------------------------------------------------------------


def _locate(location: Path) -> tuple[str, Path] | None:
    """("batches" | "tree" | "archive", path) for what is at `location`, or None when no CIFAR-10 data is there."""
    if location.is_file():
        if location.name.lower().endswith(_ARCHIVE_SUFFIXES):
            return "archive", location
        raise EdgeclsError(
            f"{location} is neither a folder nor a .tar/.tar.gz archive; "
            f"pass the data folder or archive with --data"
        )
    if not location.is_dir():
        return None
    for folder in (location, location / _OFFICIAL_DIR):
        if any((folder / name).is_file() for name in _BATCH_FILES):
            return "batches", folder
    if _is_tree(location):
        return "tree", location
    if (location / _OFFICIAL_ARCHIVE).is_file():
        return "archive", location / _OFFICIAL_ARCHIVE
    subfolders = [entry for entry in location.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    if len(subfolders) == 1 and _is_tree(subfolders[0]):
        return "tree", subfolders[0]
    return None


def _is_tree(folder: Path) -> bool:
    return any((folder / split).is_dir() for split in _SPLITS)


def _no_data_error(location: Path) -> EdgeclsError:
    if not location.exists():
        return EdgeclsError(f"no CIFAR-10 data at {location}: {_HOW_TO_GET}")
    entries = [entry for entry in location.iterdir() if not entry.name.startswith(".")]
    if not entries:
        return EdgeclsError(f"data folder {location} is empty: {_HOW_TO_GET}")
    archives = sorted(entry.name for entry in entries if entry.name.lower().endswith(_ARCHIVE_SUFFIXES))
    class_folders = sorted(entry.name for entry in entries
                           if entry.is_dir() and any(_is_image(file.name) for file in entry.iterdir()))
    if archives:
        hint = f"; to use {archives[0]}, pass {location / archives[0]} with --data"
    elif class_folders:  # the most common layout of one's own photos: class folders without train/
        hint = (f"; it holds class folders ({', '.join(class_folders[:4])}{', ...' if len(class_folders) > 4 else ''}) "
                f"directly: move them into {location / 'train'}/ (a test split is then held out of them)")
    else:
        hint = f"; {_HOW_TO_GET}"
    return EdgeclsError(
        f"{location} holds no CIFAR-10 data or image folders (expected {_OFFICIAL_DIR}/, {_OFFICIAL_ARCHIVE}, or "
        f"train/<class>/ image folders, and optionally test/<class>/){hint}"
    )


def _download(folder: Path) -> None:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as exc:
        raise EdgeclsError(
            f"--download needs torchvision (pip install torchvision); or fetch {CIFAR10_URL} by hand"
        ) from exc
    try:
        folder.mkdir(parents=True, exist_ok=True)
        CIFAR10(root=str(folder), train=True, download=True)
    except Exception as exc:  # network, TLS, disk and checksum failures all leave the user the same choices
        raise EdgeclsError(
            f"downloading CIFAR-10 into {folder} failed ({first_line(exc, 300)}); fetch {CIFAR10_URL} by hand and pass it "
            f"with --data (or put it in {folder})"
        ) from exc


def _read_source(kind: str, path: Path) -> Cifar10:
    if kind == "batches":
        return _read_batch_folder(path)
    if kind == "tree":
        return _read_tree_folder(path)
    return _read_archive(path)


# --- the official python form ----------------------------------------------------------------------------------


def _read_batch_folder(folder: Path) -> Cifar10:
    blobs = {}
    for name in _BATCH_FILES:
        file = folder / name
        if not file.is_file():
            raise EdgeclsError(
                f"{folder} lacks {name}: the CIFAR-10 batches are incomplete; "
                f"fetch {CIFAR10_URL} again or use --download"
            )
        blobs[name] = (str(file), _read_file(file, MAX_BATCH_BYTES))
    return _from_batches(blobs, f"CIFAR-10 python batches in {folder}")


def _from_batches(blobs: dict[str, _Blob], source: str) -> Cifar10:
    """Build the data set from the six pickled files, keyed by their base names."""
    meta_name, meta_bytes = blobs["batches.meta"]
    meta = _unpickle(meta_bytes, meta_name)
    try:
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, "label_names")]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise _not_a_batch(meta_name, "no label_names") from exc
    splits = {}
    for split, names in (("train", _TRAIN_BATCHES), ("test", ("test_batch",))):
        parts = [_parse_batch(*blobs[name], num_classes=len(class_names)) for name in names]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return Cifar10(*splits["train"], *splits["test"], class_names=class_names, source=source)


def _parse_batch(name: str, data: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, name)
    try:
        pixels = np.asarray(_field(batch, "data"))
        labels = np.asarray(_field(batch, "labels"), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise _not_a_batch(name, "no data/labels") from exc
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise _not_a_batch(name, f"data is {pixels.dtype} {pixels.shape}, expected uint8 N x 3072")
    if labels.shape != (len(pixels),) or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise _not_a_batch(name, f"labels do not match the {len(pixels)} images and {num_classes} classes")
    # Each row holds the red, green and blue planes of one image, each 32 x 32 row-major.
    images = pixels.reshape(len(pixels), 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _field(record: object, key: str) -> object:
    """Python 2 pickles read with encoding='bytes' have bytes keys; accept str keys too."""
    if not isinstance(record, dict):
        raise TypeError("not a dict")  # pragma: no mutate (each caller says what is wrong in its own words)
    return record[key.encode()] if key.encode() in record else record[key]


def _not_a_batch(name: str, why: str) -> EdgeclsError:
    return EdgeclsError(f"{name} is not a CIFAR-10 batch file ({why}); fetch {CIFAR10_URL} again or use --download")


class _BatchUnpickler(pickle.Unpickler):
    """Allows only what CIFAR-10 batches hold (numpy arrays in dicts and lists), so a doctored file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> object:
        # The official files were written by numpy 1, which named the module numpy.core; numpy 2 moved it.
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module.replace("numpy.core.", "numpy._core."), name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> object:
    try:
        return _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # unpickling a damaged file can raise almost anything
        raise EdgeclsError(
            f"{name} is corrupt or truncated ({first_line(exc, 300)}); fetch {CIFAR10_URL} again or use --download"
        ) from exc


# --- image folders and archives --------------------------------------------------------------------------------


def _read_tree_folder(root: Path) -> Cifar10:
    if not (root / "train").is_dir():
        raise EdgeclsError(f"{root} has no train/ folder: an image-folder data set needs train/<class>/ (and "
                           "optionally test/<class>/) folders of images")
    files: list[tuple[_TreeKey, Path]] = []
    class_folders: dict[str, list[str]] = {}
    for split in _SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue  # no test/: a test split is held out of train/
        class_dirs = [entry for entry in sorted(folder.iterdir()) if entry.is_dir() and not entry.name.startswith(".")]
        class_folders[split] = [class_dir.name for class_dir in class_dirs]
        files.extend(((split, class_dir.name, str(file)), file)
                     for class_dir in class_dirs for file in sorted(class_dir.iterdir()) if _is_image(file.name))
    blobs = ((str(file), _read_file(file, MAX_IMAGE_BYTES)) for _, file in files)  # read as the decoder asks
    pixels, sizes = _decode_stream(blobs, len(files))
    return _from_tree([key for key, _ in files], pixels, sizes, class_folders, str(root), f"image folders in {root}")


def _read_archive(path: Path) -> Cifar10:
    """One streaming pass over the archive: batch files are kept in memory, tree images are decoded as they come;
    nothing is extracted."""
    batches: dict[str, _Blob] = {}
    keys: list[_TreeKey] = []
    tops: set[str] = set()

    def tree_images() -> Iterator[_Blob]:
        total = 0
        _check_tar_end(path)
        with _open_decompressed(path) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for count, member in enumerate(archive, 1):
                if count > MAX_ARCHIVE_MEMBERS:  # each costs a header to parse and a record tarfile keeps (~450 B)
                    raise EdgeclsError(f"archive {path} has more than {MAX_ARCHIVE_MEMBERS:,} members, far more than "
                                       "CIFAR-10; it is not CIFAR-10 data or is damaged")
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                base = name.rpartition("/")[2]
                match = _TREE_MEMBER.fullmatch(name)
                wanted = member.isfile()  # hidden files (._* macOS metadata): _is_image skips them
                batch, image = wanted and base in _BATCH_FILES, wanted and match is not None and _is_image(base)
                # Sizes come from the member's header, before a byte of it is decompressed.
                limit = MAX_BATCH_BYTES if batch else MAX_IMAGE_BYTES if image else None
                if limit is not None and member.size > limit:
                    raise _too_large(f"{path}:{name}", member.size, limit)
                total += member.size
                if total > MAX_ARCHIVE_BYTES:  # skipping members costs their decompression too
                    raise EdgeclsError(f"archive {path} unpacks to more than {MAX_ARCHIVE_BYTES >> 30} GB (at {name}), "
                                       "far more than CIFAR-10; it is not CIFAR-10 data or is damaged")
                if batch:
                    batches[base] = (f"{path}:{name}", _read_member(archive, member))
                elif image:
                    top, split, class_name, _ = match.groups()
                    tops.add(top or "")
                    keys.append((split, class_name, f"{path}:{name}"))
                    yield f"{path}:{name}", _read_member(archive, member)

    try:
        large = path.stat().st_size >= _POOL_MIN_ARCHIVE_BYTES  # its image count is known only at the end
        pixels, sizes = _decode_stream(tree_images(), None, None if large else 1)
    except PermissionError:
        raise  # not damage: load_cifar10 says which file cannot be read
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise EdgeclsError(
            f"archive {path} is corrupt or truncated ({first_line(exc, 300)}); download or copy it again"
        ) from exc
    if batches:
        missing = [name for name in _BATCH_FILES if name not in batches]
        if missing:
            raise EdgeclsError(
                f"archive {path} lacks {', '.join(missing)}: it is incomplete; fetch {CIFAR10_URL} again"
            )
        return _from_batches(batches, f"CIFAR-10 python batches in {path}")
    if not keys:
        raise EdgeclsError(
            f"archive {path} holds no CIFAR-10 data: expected {_OFFICIAL_DIR}/ batches or train/<class>/ (and "
            f"test/<class>/) images, at its root or inside one folder"
        )
    if len(tops) > 1:
        raise EdgeclsError(
            f"archive {path} has images under several top-level folders ({', '.join(sorted(tops))}); "
            f"keep train/ and test/ at its root or inside one folder"
        )
    prefix = next(iter(tops))
    return _from_tree(keys, pixels, sizes, None, f"{path}:{prefix}" if prefix else str(path),
                      f"image-folder archive {path}")


# The compressed forms of tar archives read, by their first bytes (gzip, bzip2, xz), and their readers.
_DECOMPRESSORS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ", lzma.open))


def _open_decompressed(path: Path) -> Any:
    """The archive's tar bytes as a file object that decompresses in bounded steps.

    Not tarfile's own stream mode ("r|*"): it keeps all it has decompressed in one buffer and copies the rest of that
    buffer at every 512-byte header, so an archive that compresses very well (a flood of tiny members) cost time in
    proportion to its members times its compression ratio (300,000 empty members: 35 s instead of 8 s).
    """
    with open(path, "rb") as handle:
        magic = handle.read(6)
    opener = next((open_ for prefix, open_ in _DECOMPRESSORS if magic.startswith(prefix)), None)
    return opener(path, "rb") if opener else open(path, "rb")


def _check_tar_end(path: Path) -> None:
    """Raise tarfile.ReadError when an uncompressed tar lacks its end marker (two zero blocks): it was cut short.

    tarfile stops quietly at a header cut short; compressed archives need no check, their decompressor raises.
    """
    with open(path, "rb") as handle:
        if handle.read(6).startswith(tuple(prefix for prefix, _ in _DECOMPRESSORS)):
            return
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - 1024, 0))
        tail = handle.read()
    if size % 512 or size < 1024 or tail.count(0) != len(tail):
        raise tarfile.ReadError("no end-of-archive marker")


def _read_file(path: Path, limit: int) -> bytes:
    size = check_regular_file(path, "data file").st_size  # a FIFO named x.jpg would block, /dev/zero never end
    if size > limit:
        raise _too_large(str(path), size, limit)
    with open(path, "rb") as handle:
        data = read_at_most(handle, limit)  # bounded even if the file grows meanwhile
    if len(data) > limit:
        raise _too_large(str(path), len(data), limit)
    return data


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None  # regular files always have contents
    return handle.read()  # a member cut short raises tarfile.ReadError ("unexpected end of data")


def _too_large(name: str, size: int, limit: int) -> EdgeclsError:
    if limit == MAX_IMAGE_BYTES:
        return EdgeclsError(f"{name} is {size:,} bytes, far more than any image edgecls reads (at most {limit:,}); "
                            "the file is damaged or is not an image: remove it")
    return EdgeclsError(f"{name} is {size:,} bytes, far more than any CIFAR-10 file (at most {limit:,}); "
                        "the data is damaged or is not CIFAR-10")


def _is_image(name: str) -> bool:
    """An image file of a tree: one suffix list with `edgecls predict` (edgecls.imaging.IMAGE_SUFFIXES); hidden files
    (macOS's ._* metadata among them) are not."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _from_tree(keys: list[_TreeKey], pixels: np.ndarray, sizes: np.ndarray, class_folders: dict[str, list[str]] | None,
               where: str, source: str) -> Cifar10:
    """The data set of a tree's decoded images: `keys[i]` names `pixels[i]` (its original `sizes[i]`, height and
    width); `class_folders` lists each split's class folders, empty ones included (None: the classes that hold images).

    Images are ordered by split, class and file name, whatever order they were read in. Without test images, a
    seeded TEST_SPLIT_PERCENT of each class is held out as the test split.
    """
    counts = Counter((split, class_name) for split, class_name, _ in keys)
    folders = {split: set(names) for split, names in (class_folders or {}).items()}
    for split, class_name in counts:
        folders.setdefault(split, set()).add(class_name)
    if not any(split == "train" for split, _ in counts):
        raise EdgeclsError(f"no images in {where}/train/<class>/; put the training images there, one folder per "
                           f"class ({', '.join(sorted(IMAGE_SUFFIXES))})")
    test_given = any(split == "test" for split, _ in counts)
    class_names = _class_order(folders["train"], folders["test"] if test_given else folders["train"], where)
    if len(class_names) < 2:
        raise EdgeclsError(f"{where}/train/ has one class folder ({class_names[0]}); a classifier needs two classes "
                           "or more: add a folder of images per class")
    for split in _SPLITS if test_given else ("train",):
        empty = [name for name in class_names if not counts[split, name]]
        if empty:
            raise EdgeclsError(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} in {where}/{split}/ "
                               f"{'hold' if len(empty) > 1 else 'holds'} no images; add images or remove the folder")
    position = {name: label for label, name in enumerate(class_names)}
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0] != "train", position[keys[i][1]], keys[i][2]))
    pixels, sizes = pixels[order], sizes[order]
    labels = np.array([position[keys[i][1]] for i in order], dtype=np.int64)
    n_train = sum(counts["train", name] for name in class_names)
    test = np.arange(n_train, len(order))
    details: dict[str, Any] = {"test_split": "test/"}
    if not test_given:
        test = _held_out_test(labels, class_names, where)
        details["test_split"] = {"held_out_percent": TEST_SPLIT_PERCENT, "seed": TEST_SPLIT_SEED}
        source += f" (no test images: {len(test):,} held out of train/, {TEST_SPLIT_PERCENT}% of each class)"
    train = np.setdiff1d(np.arange(len(order)), test)
    area = sizes[:, 0] * sizes[:, 1]  # at most the decoder's 64 megapixels: no overflow
    details.update(resized=int((sizes != IMAGE_SIZE).any(axis=1).sum()),
                   smallest=[int(v) for v in sizes[area.argmin(), ::-1]],
                   largest=[int(v) for v in sizes[area.argmax(), ::-1]])
    return Cifar10(pixels[train], labels[train], pixels[test], labels[test], class_names, source, details)


def _held_out_test(labels: np.ndarray, class_names: list[str], where: str) -> np.ndarray:
    """Positions of the test split of a tree without test images: TEST_SPLIT_PERCENT of each class (at least one),
    chosen with TEST_SPLIT_SEED; a class of fewer than MIN_CLASS_IMAGES images is refused, naming it."""
    counts = np.bincount(labels, minlength=len(class_names))
    few = [f"{name} ({count})" for name, count in zip(class_names, counts) if count < MIN_CLASS_IMAGES]
    if few:
        raise EdgeclsError(f"too few images to split off a test set in {where}/train/: {', '.join(few)}; each class "
                           f"needs at least {MIN_CLASS_IMAGES} images, or give test/<class>/ folders of test images")
    rng = np.random.default_rng(TEST_SPLIT_SEED)
    chosen = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.permutation(members)[: max(1, count * TEST_SPLIT_PERCENT // 100)])
    return np.sort(np.concatenate(chosen))


def _class_order(train: Iterable[str], test: Iterable[str], where: str) -> list[str]:
    """CIFAR-10's label order when the class names are exactly CIFAR-10's, else sorted names."""
    train_names, test_names = set(train), set(test)
    if train_names != test_names:
        only_train = ", ".join(sorted(train_names - test_names)) or "none"
        only_test = ", ".join(sorted(test_names - train_names)) or "none"
        raise EdgeclsError(
            f"class folders differ between train/ and test/ in {where} (only in train: {only_train}; only in test: "
            f"{only_test}); give both the same class folders"
        )
    if train_names == set(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return sorted(train_names)


def decode_images(blobs: list[_Blob], workers: int | None = None) -> np.ndarray:
    """Decode images of any size and format to N x 32 x 32 x 3 uint8 RGB, each brought to 32x32 as `edgecls predict`
    brings a photo to the model's input (`Preprocessing.fit`), with a progress bar.

    workers: processes to decode with (None: one per core, up to 8, for large sets; 1 below _POOL_MIN_IMAGES or
    where processes cannot be forked).
    """
    return _decode_stream(iter(blobs), len(blobs), workers)[0]


def _decode_stream(blobs: Iterator[_Blob], expected: int | None,
                   workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N x 32 x 32 x 3 fitted pixels, N x 2 original height and width) of the images `blobs` yields, consumed a chunk
    at a time, so that only a few chunks of encoded files are in memory at once. `expected`: how many there are (None:
    not known until the end, as in an archive), the progress bar's total; many, or None, start worker processes unless
    `workers` says how many."""
    if workers is None:
        large = expected is None or expected >= _POOL_MIN_IMAGES
        workers = min(_usable_cores(), 8) if large and "fork" in multiprocessing.get_all_start_methods() else 1
    decoded: list[tuple[np.ndarray, np.ndarray]] = []
    with progress_bar(total=expected or None, desc="decoding images", unit="img") as bar:
        if workers <= 1:
            for chunk in _chunks(blobs):
                decoded.append(_decode_chunk(chunk))
                bar.update(len(chunk))
        else:
            # fork, not spawn/forkserver: those re-run the caller's __main__, which breaks scripts without a main
            # guard. The children only decode with Pillow, so threads the parent may run (torch) are no danger to them.
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                          initializer=end_with_parent, initargs=(os.getpid(),))
            pending: deque = deque()
            try:
                for chunk in _chunks(blobs):
                    pending.append(pool.submit(_decode_chunk, chunk))
                    if len(pending) >= 2 * workers:  # bounded: the oldest chunk is collected before more are read
                        decoded.append(pending.popleft().result())
                        bar.update(len(decoded[-1][0]))
                while pending:
                    decoded.append(pending.popleft().result())
                    bar.update(len(decoded[-1][0]))
            finally:
                pool.shutdown(cancel_futures=True)
    if not decoded:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.empty((0, 2), np.int64)
    pixels = np.concatenate([chunk_pixels for chunk_pixels, _ in decoded])
    return pixels, np.concatenate([chunk_sizes for _, chunk_sizes in decoded])


def _chunks(blobs: Iterator[_Blob]) -> Iterator[list[_Blob]]:
    """`blobs` in lists of at most _DECODE_CHUNK images and about _DECODE_CHUNK_BYTES encoded bytes."""
    chunk: list[_Blob] = []
    size = 0
    for blob in blobs:
        chunk.append(blob)
        size += len(blob[1])
        if len(chunk) >= _DECODE_CHUNK or size >= _DECODE_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _decode_chunk(blobs: list[_Blob]) -> tuple[np.ndarray, np.ndarray]:
    decoded = [_decode_image(data, name) for name, data in blobs]
    return np.stack([pixels for pixels, _ in decoded]), np.array([size for _, size in decoded], dtype=np.int64)


def _decode_image(data: bytes, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """One encoded image of the data set, by the decoder `edgecls predict` uses, brought to 32x32 by the resize and
    crop it applies (`Preprocessing.fit`); with its original height and width."""
    image = decode(data, name)
    return fit_image(image, IMAGE_SIZE), image.shape[:2]


# --- the cache -------------------------------------------------------------------------------------------------


def _source_signature(path: Path) -> str:
    """What identifies the source's contents cheaply: path, and sizes and mtimes of its files (for a folder, all), and
    for a single file its inode too, so that a file replaced by another (a rename over it) is never taken for it."""
    resolved = path.resolve()
    if resolved.is_file():
        stat = resolved.stat()
        files = [("", stat.st_size, stat.st_mtime_ns, stat.st_ino)]
    else:
        files = []
        for folder, subfolders, names in os.walk(resolved):
            subfolders.sort()
            for name in sorted(names):
                stat = os.stat(os.path.join(folder, name))
                files.append((os.path.relpath(os.path.join(folder, name), resolved), stat.st_size, stat.st_mtime_ns))
    listing = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return json.dumps({"version": CACHE_VERSION, "path": str(resolved), "files": listing})


def _read_cache(cache_file: Path, signature: str) -> Cifar10 | None:
    """The cached data set, or None when there is none for this signature or the file is damaged."""
    try:
        if not cache_file.is_file():
            return None
        with np.load(cache_file, allow_pickle=False) as stored:
            if str(stored["signature"]) != signature:
                return None
            return Cifar10(
                train_images=stored["train_images"],
                train_labels=stored["train_labels"],
                test_images=stored["test_images"],
                test_labels=stored["test_labels"],
                class_names=[str(name) for name in stored["class_names"]],
                source=str(stored["source"]),
                details=json.loads(str(stored["details"])),
            )
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        print(f"warning: ignoring the data cache {cache_file}, which is unreadable or damaged ({first_line(exc, 300)}); "
              "rebuilding it", file=sys.stderr)
        return None


def _write_cache(cache_file: Path, signature: str, dataset: Cifar10) -> None:
    try:
        with atomic_write(cache_file, "wb") as handle:
            np.savez(
                handle,
                signature=np.array(signature),
                train_images=dataset.train_images,
                train_labels=dataset.train_labels,
                test_images=dataset.test_images,
                test_labels=dataset.test_labels,
                class_names=np.array(dataset.class_names),
                source=np.array(dataset.source),
                details=np.array(json.dumps(dataset.details)),
            )
    except (EdgeclsError, OSError) as exc:  # a missing cache only costs time, so it must not stop the run
        print(
            f"warning: could not write the data cache {cache_file} ({first_line(exc, 300)}); "
            f"set ${CACHE_ENV} to a writable folder",
            file=sys.stderr,
        )


# --- helpers ---------------------------------------------------------------------------------------------------


def _stratified_indices(
    labels: np.ndarray, count: int | None, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    if count < 0:
        raise EdgeclsError(f"a subset needs a size of 0 or more images, got {count}")
    members = [np.flatnonzero(labels == label) for label in range(num_classes)]
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    quota, remainder = np.divmod(count * sizes, len(labels))
    # Integer shares round down; the images that leaves over go to the classes with the largest remainders.
    quota[np.argsort(-remainder, kind="stable")[: count - int(quota.sum())]] += 1
    chosen = [rng.permutation(m)[:q] for m, q in zip(members, quota)]
    return np.sort(np.concatenate(chosen))


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on, not all the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "DEFAULT_DATA_DIR",
    "Cifar10",
    "cache_dir",
    "cache_path_for",
    "decode_images",
    "default_val_split",
    "imbalance_warning",
    "load_cifar10",
    "resolve_data_path",
]
