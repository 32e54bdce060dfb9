"""edgecls predict: top-k labels for image files and folders, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from edgecls.formats import EngineManifest, ModelMetadata
from edgecls.runtime import load


@pytest.fixture(scope="module")
def fp32_onnx(new2_export) -> Path:
    return new2_export.files["fp32"]


@pytest.fixture(scope="module")
def photos(tiny_cifar, tmp_path_factory) -> Path:
    """Five test images as PNG (lossless), one of them grayscale, one RGBA, one enlarged to 64 x 48."""
    folder = tmp_path_factory.mktemp("photos")
    images = tiny_cifar.test_images
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).save(folder / "b.png")
    Image.fromarray(images[2][:, :, 0]).save(folder / "c_gray.png")
    rgba = np.concatenate([images[3], np.full((32, 32, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(folder / "d_rgba.png")
    Image.fromarray(images[4]).resize((64, 48), Image.BILINEAR).save(folder / "e_large.png")
    (folder / "notes.txt").write_text("not an image, and not picked up from the folder")
    return folder


def predict(*args: str) -> tuple[int, str]:
    return run_cli("predict", *args)


def parse(output: str) -> dict[str, list[tuple[str, float]]]:
    """`path: name prob  name prob ...` lines -> {file name: [(name, prob), ...]}."""
    parsed = {}
    for line in output.strip().splitlines():
        path, ranked = line.split(": ", 1)
        fields = ranked.split()
        parsed[Path(path).name] = [(fields[i], float(fields[i + 1])) for i in range(0, len(fields), 2)]
    return parsed


def test_predict_files_and_folders(fp32_onnx, photos, tiny_cifar):
    code, output = predict(str(photos), "--engine", str(fp32_onnx), "--top-k", "3")
    assert code == 0, output
    got = parse(output)
    assert sorted(got) == ["a.png", "b.png", "c_gray.png", "d_rgba.png", "e_large.png"]
    images = tiny_cifar.test_images
    gray = images[2][:, :, 0]
    with load(fp32_onnx) as classifier:
        expected = classifier.classify([images[0], images[1], np.stack([gray] * 3, axis=2), images[3]])
    for name, ranked in zip(["a.png", "b.png", "c_gray.png", "d_rgba.png"], expected.top_k(3)):
        assert [label for label, _ in got[name]] == [label for label, _ in ranked]
        np.testing.assert_allclose([p for _, p in got[name]], [p for _, p in ranked], atol=5e-4)
    assert all(len(ranked) == 3 and ranked[0][1] >= ranked[1][1] >= ranked[2][1] for ranked in got.values())

    code, output = predict(str(photos / "a.png"), "--engine", str(fp32_onnx), "--top-k", "1")
    assert code == 0 and parse(output)["a.png"] == got["a.png"][:1]


def test_unreadable_and_non_image_files(fp32_onnx, photos, tmp_path):
    # Not an image at all: refused from its header, before the model runs or anything is printed.
    code, output = predict(str(photos / "a.png"), str(photos / "notes.txt"), "--engine", str(fp32_onnx))
    assert code == 2 and output.strip().splitlines() == [
        f"error: cannot decode image {photos / 'notes.txt'} (not an image format Pillow reads); check, replace or "
        "remove the file"]
    # A PNG cut after its header: found while decoding its batch (here the only one), so nothing is printed but that.
    broken = tmp_path / "broken.png"
    whole = (photos / "a.png").read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    code, output = predict(str(photos / "a.png"), str(broken), "--engine", str(fp32_onnx))
    assert code == 2 and output.strip().splitlines() == [
        f"error: cannot decode image {broken} (image file is truncated); check, replace or remove the file"]


def test_missing_paths_and_empty_folders(fp32_onnx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    code, output = predict(str(empty), "--engine", str(fp32_onnx))
    assert code == 2 and f"directory {empty} holds no image files" in output
    code, output = predict(str(tmp_path / "nope.jpg"), "--engine", str(fp32_onnx))
    assert code == 2 and "does not exist" in output


def test_16_bit_images_are_scaled_not_clipped_and_float_images_refused(fp32_onnx, tiny_cifar, tmp_path):
    gray = tiny_cifar.test_images[5][:, :, 1]
    eight = tmp_path / "eight.png"
    Image.fromarray(gray).save(eight)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)  # the same picture on the 0..65535 scale
    assert Image.open(sixteen).mode == "I;16"
    code, output = predict(str(eight), str(sixteen), "--engine", str(fp32_onnx))
    got = parse(output)
    assert code == 0 and got["sixteen.png"] == got["eight.png"]

    floating = tmp_path / "float.tif"
    Image.fromarray(gray.astype(np.float32) / 255).save(floating)
    code, output = predict(str(floating), "--engine", str(fp32_onnx))
    assert code == 2 and f"image {floating} has floating-point pixels" in output
    assert len(output.strip().splitlines()) == 1


def test_bad_engines(fp32_onnx, photos, tmp_path):
    image = str(photos / "a.png")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(fp32_onnx.read_bytes()[:4000])
    not_onnx = tmp_path / "photo.onnx"
    shutil.copy(photos / "a.png", not_onnx)
    for engine in (truncated, not_onnx):
        code, output = predict(image, "--engine", str(engine))
        assert code == 2 and "not a readable ONNX model" in output and len(output.strip().splitlines()) == 1

    plan = tmp_path / "new2.plan"
    plan.write_bytes(b"\x01" * 100)
    code, output = predict(image, "--engine", str(plan))
    assert code == 2 and "has no manifest" in output
    (tmp_path / "new2.plan.json").write_text(json.dumps({"tensorrt_version": "10.3.0", "edgecls": {},
                                                          "plan_sha256": "0" * 64}))
    code, output = predict(image, "--engine", str(plan))
    assert code == 2 and "format version None" in output and len(output.strip().splitlines()) == 1
    metadata = ModelMetadata.read(fp32_onnx)
    manifest = EngineManifest("10.3.0", "Orin", "8.7", str(fp32_onnx), "0" * 64, "0" * 64, "fp32",
                              {"min": 1, "opt": 8, "max": 64}, metadata)
    manifest.write(plan)
    code, output = predict(image, "--engine", str(plan))
    assert code == 2 and "does not match its manifest" in output
