"""One's own data set: a folder of photos of any size and format, with one folder per class, made here with numpy and
Pillow, trained on with no option and taken through export (int8 within a budget), bench, predict and report."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import refusal
from edgecls.cli import main
from edgecls.data import MIN_CLASS_IMAGES, Cifar10, default_val_split, imbalance_warning, load_cifar10
from edgecls.defaults import DEFAULT_VAL_SPLIT
from edgecls.imaging import decode
from edgecls.preprocess import Preprocessing


CLASSES = {"meadow": (60, 170, 60), "sea": (40, 90, 200), "sunset": (230, 120, 40)}
# (width, height) of the photos and the format each is saved in, taken in turn: none of them is the model's 32x32 but
# the first, and the large ones are shrunk by more than 2 (the box filter's path) before the bilinear step.
SIZES = [(32, 32), (48, 40), (64, 64), (100, 60), (40, 90), (150, 110)]
FORMATS = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 92}), ("webp", "WEBP", {"quality": 90}), ("bmp", "BMP", {})]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))


def photo(colour: tuple[int, int, int], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A smooth picture in its class's colour: a tilted gradient, a bright disc somewhere, a little noise."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    tilt = rng.uniform(-60, 60, 2)
    cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
    disc = ((y - cy * height / max(width, height)) ** 2 + (x - cx * width / max(width, height)) ** 2) < radius**2
    image = np.array(colour, float) + (tilt[0] * x + tilt[1] * y)[..., None] + 50 * disc[..., None]
    image += rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_photos(root: Path, counts: dict[str, int], split: str = "train", seed: int = 0) -> list[Path]:
    """`counts[class]` photos per class under root/split/<class>/, of the SIZES and FORMATS in turn."""
    rng = np.random.default_rng(seed)
    written = []
    for name, count in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            suffix, kind, options = FORMATS[i % len(FORMATS)]
            path = folder / f"{name}_{i:03d}.{suffix}"
            photo(CLASSES[name], SIZES[i % len(SIZES)], rng).save(path, kind, **options)
            written.append(path)
    return written


# --- reading --------------------------------------------------------------------------------------------------


def test_photos_of_any_size_and_format_become_what_predict_would_feed_the_model(tmp_path: Path) -> None:
    files = make_photos(tmp_path / "photos", {"meadow": 10, "sea": 10, "sunset": 10})
    data = load_cifar10(tmp_path / "photos", cache=False)
    assert data.class_names == ["meadow", "sea", "sunset"]
    assert data.class_counts("train") == [8, 8, 8] and data.class_counts("test") == [2, 2, 2]  # 20% held out
    assert data.details["resized"] == 24 and data.details["smallest"] == [32, 32]  # 4 of each 5 are not 32x32
    assert data.details["largest"] == [150, 110]
    # Each image is exactly what `edgecls predict` brings that file to (Preprocessing.fit, whatever the mean/std)
    fit = Preprocessing(mean=(0.5,) * 3, std=(0.2,) * 3, class_names=("a", "b", "c")).fit
    expected = {fit(decode(path)).tobytes(): path.parent.name for path in files}
    for split in ("train", "test"):
        for image, label in zip(getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")):
            assert expected.pop(image.tobytes()) == data.class_names[label]
    assert not expected  # every photo, once, with its own class

    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "photos" / "train", arcname="photos/train")
    from_archive = load_cifar10(archive, cache=False)  # the same data set, the same held-out split
    assert from_archive.fingerprint == data.fingerprint and from_archive.details == data.details


def test_a_given_test_folder_is_used_as_it_is(tmp_path: Path) -> None:
    make_photos(tmp_path / "photos", {"meadow": 6, "sea": 4})
    make_photos(tmp_path / "photos", {"meadow": 1, "sea": 2}, split="test", seed=1)
    data = load_cifar10(tmp_path / "photos", cache=False)
    assert data.class_counts("train") == [6, 4] and data.class_counts("test") == [1, 2]
    assert data.details["test_split"] == "test/" and "held out" not in data.source


def test_data_that_cannot_make_a_classifier_is_refused_naming_the_class(tmp_path: Path) -> None:
    make_photos(tmp_path / "one", {"sea": 8})
    assert "one class folder (sea)" in refusal(lambda: load_cifar10(tmp_path / "one", cache=False))

    make_photos(tmp_path / "few", {"meadow": 8, "sea": MIN_CLASS_IMAGES - 1, "sunset": 2})
    message = refusal(lambda: load_cifar10(tmp_path / "few", cache=False))
    assert "too few images to split" in message and "sea (4)" in message and "sunset (2)" in message
    assert "meadow" not in message and "test/<class>/" in message

    make_photos(tmp_path / "empty", {"meadow": 3, "sea": 3})
    make_photos(tmp_path / "empty", {"meadow": 1}, split="test")
    (tmp_path / "empty" / "test" / "sea").mkdir()
    message = refusal(lambda: load_cifar10(tmp_path / "empty", cache=False))
    assert "class folder sea in" in message and "test/ holds no images" in message

    make_photos(tmp_path / "flat", {"meadow": 3, "sea": 3})  # class folders without train/ above them
    for folder in (tmp_path / "flat" / "train").iterdir():
        folder.rename(tmp_path / "flat" / folder.name)
    (tmp_path / "flat" / "train").rmdir()
    message = refusal(lambda: load_cifar10(tmp_path / "flat", cache=False))
    assert "meadow, sea" in message and f"move them into {tmp_path / 'flat' / 'train'}" in message


def test_a_validation_split_that_would_empty_a_class_is_refused_naming_it() -> None:
    images = np.zeros((12, 32, 32, 3), np.uint8)
    labels = np.array([0] * 10 + [1] * 2)
    data = Cifar10(images, labels, images[:2], np.array([0, 1]), ["many", "two"])
    message = refusal(lambda: data.hold_out(np.array([0, 10, 11])))
    assert "two (2)" in message and "--val-split" in message and "many" not in message
    rest, held_images, held_labels = data.hold_out(np.array([0, 1, 10]))
    assert rest.class_counts() == [8, 1] and held_labels.tolist() == [0, 0, 1]


def test_the_default_validation_split_is_a_tenth_capped_and_cifar10_s_5000() -> None:
    assert default_val_split(50_000) == 5_000  # CIFAR-10: the paper's split, exactly as before
    assert default_val_split(2_000) == 200 and default_val_split(45) == 4 and default_val_split(9) == 0
    assert default_val_split(1_000_000) == DEFAULT_VAL_SPLIT == 5_000


def test_a_small_data_set_gets_a_batch_that_gives_each_epoch_steps_and_cifar10_keeps_its_recipe() -> None:
    from edgecls.train import TrainRequest

    def images(count: int) -> Cifar10:
        pixels = np.zeros((count, 32, 32, 3), np.uint8)  # untouched zero pages: 50,000 of them cost no memory
        return Cifar10(pixels, np.arange(count) % 10, pixels[:10], np.arange(10), [str(i) for i in range(10)])

    request = TrainRequest("new2", device="cpu")
    cifar10 = request.for_data(images(50_000))
    assert (cifar10.val_split, cifar10.batch_size, cifar10.plan.batch_size, cifar10.plan.lr) == (5_000, None, 1024, 0.4)
    assert cifar10.train_args() == TrainRequest("new2", device="cpu", val_split=5_000).train_args()
    photos = request.for_data(images(2_000))  # 1,800 after validation: 1,024 would make one step an epoch
    assert (photos.val_split, photos.plan.batch_size, photos.plan.lr) == (200, 64, pytest.approx(0.4 * 64 / 1024))
    assert TrainRequest("new2", device="cpu", batch_size=512).for_data(images(2_000)).plan.batch_size == 512
    assert request.for_data(images(100)).plan.batch_size == 32  # never below 32


def test_a_strong_imbalance_is_reported_naming_classes_and_counts() -> None:
    def with_counts(*counts: int) -> Cifar10:
        labels = np.repeat(np.arange(len(counts)), counts)
        images = np.zeros((len(labels), 32, 32, 3), np.uint8)
        return Cifar10(images, labels, images[:1], labels[:1], ["cat", "dog", "eel"][: len(counts)])

    assert imbalance_warning(with_counts(100, 40, 34)) is None  # within 3x of the largest
    warning = imbalance_warning(with_counts(100, 40, 30))
    assert warning.startswith("warning:") and "\n" not in warning
    assert "cat has 100" in warning and "eel 30" in warning and "dog" not in warning


# --- the whole journey ----------------------------------------------------------------------------------------


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_own_photos_train_with_no_option_export_int8_within_a_budget_bench_predict_and_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos", {"meadow": 40, "sea": 36, "sunset": 12})  # sunset: 10 of 35 training images
    out = run("train", "--data", "photos", "--model", "new1", "--epochs", "4", "--batch-size", "16", "--lr", "0.05")
    assert "warning: the classes are strongly imbalanced: meadow has 32 training images, sunset 10" in out

    from edgecls.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "new1.pt")
    assert checkpoint.preprocess.class_names == ("meadow", "sea", "sunset")
    assert checkpoint.model_config["num_classes"] == 3 and checkpoint.build_model().classifier[-1].out_features == 3
    assert checkpoint.validation["size"] == checkpoint.train_args["val_split"] == 7  # 10% of 71, with no option
    assert checkpoint.data["train_per_class"] == [32, 29, 10] and checkpoint.data["resized"] == 73
    assert checkpoint.test_accuracy > 60  # 18 test images of 3 classes: chance is 33%

    out = run("export", "--checkpoint", "checkpoints/new1.pt", "--data", "photos", "--int8", "--target", "cpu",
              "--max-drop", "10", "--min-agreement", "80")  # no --calibration-size: a small set calibrates on all
    from edgecls.formats import Int8Report, ModelMetadata

    report = Int8Report.read(tmp_path / "calibration" / "new1.int8-report.json")
    assert report.passed and report.validation["size"] == 7 and not report.validation["seen_in_training"]
    assert report.calibration["size"] == 71 - 7  # every training image outside the validation split
    for name in ("new1.onnx", "new1.int8.onnx"):  # the class names travel in the ONNX metadata
        assert ModelMetadata.read(tmp_path / "export" / name).preprocess == checkpoint.preprocess

    bench_json = tmp_path / "results" / "new1-int8.json"
    run("bench", "--engine", "export/new1.int8.onnx", "--data", "photos", "--batch-sizes", "1,8", "--duration", "0.05",
        "--warmup", "0", "--json", str(bench_json))
    figures = json.loads(bench_json.read_text())
    assert "meadow" in json.dumps(figures) and "sunset" in json.dumps(figures)

    photo_file = next((tmp_path / "photos" / "train" / "sea").glob("*.webp"))
    out = run("predict", str(photo_file), "--engine", "export/new1.onnx", "--top-k", "3")
    line = next(line for line in out.splitlines() if line.startswith(f"{photo_file}: "))
    names = line.split(": ", 1)[1].split()[::2]
    assert sorted(names) == ["meadow", "sea", "sunset"]

    pytest.importorskip("matplotlib")
    run("report", "checkpoints/new1.pt", "--data", "photos", "-o", "reports/new1.html")
    html = (tmp_path / "reports" / "new1.html").read_text()
    assert all(name in html for name in ("meadow", "sea", "sunset"))
