"""edgecls.runtime on ONNX files export_dir from a briefly trained model; TensorRT where it and a GPU exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgecls.errors import EdgeclsError
from edgecls.preprocess import Preprocessing
from edgecls.runtime import Classifier, load, softmax
from edgecls.runtime.onnx_backend import OnnxRunner
from edgecls.formats import EngineManifest
from edgecls.runtime.tensorrt_backend import NUMPY_DTYPES, check_compatibility, check_input, numpy_dtype


def raw_ort_logits(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": batch})[0]


def test_import_does_not_pull_in_torch():
    code = ("import edgecls.runtime, edgecls.runtime.onnx_backend, edgecls.runtime.tensorrt_backend, sys; "
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predictions_equal_raw_onnxruntime(export_dir, tiny_cifar):
    images = tiny_cifar.test_images
    with load(export_dir / "new2.onnx") as classifier:
        predictions = classifier.classify(images)
    preprocess = Preprocessing.from_dict(json.loads(
        ort.InferenceSession(str(export_dir / "new2.onnx")).get_modelmeta().custom_metadata_map["edgecls"])["preprocess"])
    expected = raw_ort_logits(export_dir / "new2.onnx", preprocess(images))
    np.testing.assert_array_equal(predictions.logits, expected)
    np.testing.assert_array_equal(predictions.indices, expected.argmax(axis=1))
    assert predictions.names == [tiny_cifar.class_names[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    exp = np.exp(expected.astype(np.float64) - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(predictions.probabilities, exp / exp.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    top = predictions.top_k(3)[0]
    assert [name for name, _ in top][0] == predictions.names[0]
    assert top[0][1] >= top[1][1] >= top[2][1]
    # The model learned something: the check above compares meaningful outputs, not noise.
    assert (predictions.indices == tiny_cifar.test_labels).mean() > 0.5


def test_preprocessing_equals_training_evaluation(export_dir, tiny_cifar, trained_checkpoint):
    from edgecls.checkpoint import load_checkpoint
    from edgecls.evaluate import torch_logits

    checkpoint = load_checkpoint(trained_checkpoint("new2"))
    torch_side = torch_logits(checkpoint.build_model(), tiny_cifar.test_images, checkpoint.preprocess)
    with load(export_dir / "new2.onnx") as classifier:
        assert classifier.preprocess == checkpoint.preprocess  # read back from the ONNX metadata
        runtime_side = classifier.logits(tiny_cifar.test_images)
    np.testing.assert_allclose(runtime_side, torch_side, rtol=1e-4, atol=1e-4)
    assert (runtime_side.argmax(axis=1) == torch_side.argmax(axis=1)).all()


class CountingRunner(OnnxRunner):
    """The real ONNX runner, accepting only `fixed` images per call (like an engine with a static batch)."""

    def __init__(self, path: Path, fixed: int) -> None:
        super().__init__(path)
        self.fixed, self.calls = fixed, []

    def _open(self) -> None:
        super()._open()
        self.min_batch = self.max_batch = self.fixed

    def infer(self, feed):
        self.calls.append(len(feed["images"]))
        return super().infer(feed)


def test_batches_are_split_and_padded_to_what_the_engine_accepts(export_dir, tiny_cifar):
    images = tiny_cifar.test_images[:23]
    with load(export_dir / "new2.onnx") as classifier:
        whole = classifier.logits(images)
    with Classifier(CountingRunner(export_dir / "new2.onnx", fixed=5)) as classifier:
        split = classifier.logits(images)
        assert classifier.runner.calls == [5] * 5  # 23 images: 4 full batches and one padded from 3 to 5
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    with load(export_dir / "new2.onnx", batch_size=8) as classifier:
        np.testing.assert_allclose(classifier.logits(images), whole, rtol=1e-5, atol=1e-5)


def test_images_of_any_size_gray_and_rgba(export_dir, tiny_cifar):
    image = tiny_cifar.test_images[3]
    gray = image[:, :, 1]
    with load(export_dir / "new2.onnx") as classifier:
        reference = classifier.logits(image[None])
        # Each pixel doubled: a half-pixel-centred bilinear resize back to 32 x 32 gives the original exactly.
        doubled = image.repeat(2, axis=0).repeat(2, axis=1)
        rgba = np.concatenate([image, np.full((32, 32, 1), 7, np.uint8)], axis=2)
        mixed = classifier.logits([doubled, rgba, image, gray, gray[:, :, None]])
        as_rgb = classifier.logits(np.repeat(gray[:, :, None], 3, axis=2)[None])
        rgba_batch = classifier.logits(rgba[None])
    np.testing.assert_allclose(mixed[:3], np.repeat(reference, 3, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[3:], np.repeat(as_rgb, 2, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rgba_batch, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((32, 32, 2), np.uint8), np.zeros((32, 32, 5), np.uint8),
                                 np.zeros((32, 32, 3), np.float32), np.zeros((32,), np.uint8)])
def test_unexpected_images_are_refused(export_dir, bad):
    with load(export_dir / "new2.onnx") as classifier, pytest.raises(EdgeclsError) as info:
        classifier.classify([bad])
    assert "\n" not in str(info.value)


def test_a_float_batch_of_the_model_size_is_refused_too(export_dir):
    with load(export_dir / "new2.onnx") as classifier, pytest.raises(EdgeclsError, match="must be uint8"):
        classifier.classify(np.full((2, 32, 32, 3), 0.5, np.float32))


def test_bad_onnx_files(export_dir, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((export_dir / "new2.onnx").read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model" * 50)
    for path in (truncated, garbage):
        with pytest.raises(EdgeclsError, match="not a readable ONNX model"):
            load(path)
    with pytest.raises(EdgeclsError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(EdgeclsError, match="unknown model type"):
        load(tmp_path / "model.tflite")


def test_onnx_without_edgecls_metadata(export_dir, tmp_path):
    import onnx

    model = onnx.load(str(export_dir / "new2.onnx"))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(EdgeclsError, match="no edgecls metadata"):
        load(foreign)


def fake_plan(folder: Path, export_dir: Path) -> Path:
    """A plan file with a manifest as `edgecls build` writes it; the bytes are not a real engine, which the
    checks below never reach (they happen before TensorRT would read the plan)."""
    from edgecls.artifacts import sha256_file

    plan = folder / "new2.plan"
    plan.write_bytes(b"\x00" * 4096)
    metadata = json.loads(ort.InferenceSession(str(export_dir / "new2.onnx")).get_modelmeta()
                          .custom_metadata_map["edgecls"])
    manifest = {"format_version": 1, "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
                "onnx_path": str(export_dir / "new2.onnx"), "onnx_sha256": sha256_file(export_dir / "new2.onnx"),
                "plan_sha256": sha256_file(plan), "precision": "fp32",
                "batch": {"min": 1, "opt": 64, "max": 256}, "edgecls": metadata}
    (folder / "new2.plan.json").write_text(json.dumps(manifest))
    return plan


def test_plan_truncated_or_without_manifest(export_dir, tmp_path):
    plan = fake_plan(tmp_path, export_dir)
    assert EngineManifest.read(plan).tensorrt_version == "10.3.0"
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(EdgeclsError, match="does not match its manifest"):
        load(plan)
    (tmp_path / "new2.plan.json").unlink()
    with pytest.raises(EdgeclsError, match="has no manifest"):
        load(plan)
    (tmp_path / "new2.plan.json").write_text("{not json")
    with pytest.raises(EdgeclsError, match="unreadable"):
        load(plan)


def test_plan_for_another_tensorrt_or_gpu_names_both(export_dir, tmp_path):
    """A plan runs only with the TensorRT build and the GPU model that made it: the full version string, the GPU name
    and the compute capability must all match the manifest, and the message says which one differs."""
    manifest = EngineManifest.read(fake_plan(tmp_path, export_dir))  # built with 10.3.0 on Orin, compute 8.7
    check_compatibility(Path("new2.plan"), manifest, "10.3.0", "Orin", "8.7")  # the same: accepted
    cases = {("10.3.0.30", "Orin", "8.7"): "the TensorRT version differs",  # JetPack 5 says 8.5.2.2, not 8.5.2
             ("10.13.2", "Orin", "8.7"): "the TensorRT version differs",
             ("10.3.0", "NVIDIA Jetson AGX Xavier", "8.7"): "the GPU differs",
             ("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"): "the GPU and the compute capability differ"}
    for (version, gpu, capability), differs in cases.items():
        with pytest.raises(EdgeclsError) as info:
            check_compatibility(Path("new2.plan"), manifest, version, gpu, capability)
        message = str(info.value)
        assert differs in message and "rebuild" in message, message
        assert "TensorRT 10.3.0 for Orin (compute 8.7)" in message and f"TensorRT {version} on {gpu}" in message


def test_manifest_of_another_format_version_or_garbled_dla_core_is_refused(export_dir, tmp_path):
    plan = fake_plan(tmp_path, export_dir)
    manifest_file = tmp_path / "new2.plan.json"
    record = json.loads(manifest_file.read_text())
    for key, value, expected in (("format_version", 2, "format version 2"), ("dla_core", -1, "dla_core -1"),
                                 ("dla_core", "0", "dla_core '0'")):
        manifest_file.write_text(json.dumps({**record, key: value}))
        with pytest.raises(EdgeclsError, match=expected):
            load(plan)
    manifest_file.write_text(json.dumps({**record, "dla_core": 1}))
    assert EngineManifest.read(plan).dla_core == 1


@pytest.mark.parametrize("batch, expected", [
    (np.zeros((4, 3, 1, 1), np.float32), r"shape \(N, 3, 28, 28\), got \(4, 3, 1, 1\)"),  # np.copyto would broadcast
    (np.zeros((3, 28, 28), np.float32), r"shape \(N, 3, 28, 28\), got \(3, 28, 28\)"),
    (np.zeros((0, 3, 28, 28), np.float32), "batches of 1 to 64 images, got 0"),
    (np.zeros((65, 3, 28, 28), np.float32), "batches of 1 to 64 images, got 65"),
    (np.zeros((2, 3, 28, 28), np.complex64), "takes float32 input, got complex64"),
])
def test_engine_input_of_the_wrong_shape_size_or_type_is_refused(batch, expected):
    with pytest.raises(EdgeclsError, match=expected):
        check_input(Path("new2.plan"), batch, (3, 28, 28), np.dtype(np.float32), 1, 64)
    check_input(Path("new2.plan"), np.zeros((64, 3, 28, 28), np.float32), (3, 28, 28), np.dtype(np.float32), 1, 64)


def test_tensorrt_types_map_to_numpy_by_name_in_every_version():
    """Every DataType member of each supported TensorRT version (tools/api lists) maps to its numpy type or is refused
    in one line; trt.nptype is not used (8.5's fails with numpy >= 1.24: tests/test_api_contract.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "api"))
    import apicheck

    expected = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                "UINT8": np.uint8, "INT64": np.int64}
    for version in apicheck.TENSORRT_LISTS:
        for member in apicheck.load_list(version)["enums"]["DataType"]["members"]:
            if member in expected:
                assert numpy_dtype(member, "images", Path("x.plan")) == np.dtype(expected[member])
            else:  # BF16, FP8, INT4, FP4, E8M0: numpy has no such type
                with pytest.raises(EdgeclsError, match=f"TensorRT type {member}, which numpy cannot hold"):
                    numpy_dtype(member, "images", Path("x.plan"))
    assert set(NUMPY_DTYPES) == set(expected)


def test_softmax_is_stable_for_large_logits():
    probabilities = softmax(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(probabilities).all() and probabilities[0, 0] == pytest.approx(1.0)


def _tensorrt_unavailable() -> str | None:
    from edgecls.engines import unavailable_reason

    return unavailable_reason()


@pytest.mark.skipif(_tensorrt_unavailable() is not None, reason=f"TensorRT runtime test: {_tensorrt_unavailable()}")
def test_tensorrt_plan_matches_onnxruntime(export_dir, tiny_cifar, tmp_path):
    from edgecls.engines import build_engine

    plan = build_engine(export_dir / "new2.onnx", tmp_path / "new2.plan", batch=(1, 16, 64))
    images = tiny_cifar.test_images  # 100 images: split into batches of at most 64
    with load(export_dir / "new2.onnx") as onnx_classifier:
        expected = onnx_classifier.logits(images)
    with load(plan) as classifier:
        assert classifier.batch_size == 64
        got = classifier.logits(images)
        timed = classifier.runner.model_only({"images": classifier.preprocess(images[:8])})
        timed()
        with pytest.raises(EdgeclsError, match=r"got \(4, 3, 1, 1\)"):  # np.copyto would have broadcast it
            classifier.run_preprocessed(np.zeros((4, 3, 1, 1), np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.99

    manifest_file = tmp_path / "new2.plan.json"
    built = json.loads(manifest_file.read_text())
    for key, value in (("tensorrt_version", built["tensorrt_version"] + ".1"), ("gpu_name", "Another GPU")):
        manifest_file.write_text(json.dumps({**built, key: value}))
        with pytest.raises(EdgeclsError, match="differs; rebuild"):
            load(plan)


@pytest.mark.skipif(_tensorrt_unavailable() is not None, reason=f"TensorRT runtime test: {_tensorrt_unavailable()}")
def test_tensorrt_classifier_across_threads(export_dir, tiny_cifar, tmp_path):
    """The threading contract on the GPU: a classifier opened in one thread answers correctly in others (its CUDA
    context is pushed per call), shared by several threads each call gets its own results, and classifiers of their
    own run side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecls.engines import build_engine

    plan = build_engine(export_dir / "new2.onnx", tmp_path / "new2.plan", batch=(1, 8, 32))
    parts = [tiny_cifar.test_images[i::4] for i in range(4)]
    with load(plan) as shared:
        expected = [shared.logits(part) for part in parts]
        with ThreadPoolExecutor(4) as pool:
            for result, want in zip(pool.map(shared.logits, parts * 3), expected * 3):
                np.testing.assert_array_equal(result, want)

    def own_classifier(part: np.ndarray) -> np.ndarray:
        with load(plan) as mine:
            return mine.logits(part)

    with ThreadPoolExecutor(4) as pool:
        for result, want in zip(pool.map(own_classifier, parts), expected):
            np.testing.assert_allclose(result, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_tensorrt_unavailable() is not None, reason=f"TensorRT runtime test: {_tensorrt_unavailable()}")
def test_tensorrt_runner_never_closed_frees_its_memory_when_collected(export_dir, tmp_path):
    import gc

    from edgecls.engines import build_engine

    plan = build_engine(export_dir / "new2.onnx", tmp_path / "new2.plan", batch=(1, 8, 32))
    classifier = load(plan)
    runner_release, cuda_release = classifier.runner._release, classifier.runner.cuda._release
    assert runner_release.alive and cuda_release.alive
    del classifier
    gc.collect()
    assert not runner_release.alive and not cuda_release.alive  # engine, buffers, stream and context released


def test_one_classifier_shared_by_threads_gives_each_call_its_own_results(export_dir, tiny_cifar):
    from concurrent.futures import ThreadPoolExecutor

    images = tiny_cifar.test_images
    parts = [images[i::4] for i in range(4)]  # four different inputs, of different sizes
    with load(export_dir / "new2.onnx", batch_size=7) as classifier:
        expected = [classifier.logits(part) for part in parts]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                got = list(pool.map(classifier.logits, parts * 2))
                for result, want in zip(got, expected * 2):
                    np.testing.assert_array_equal(result, want)


def test_a_closed_classifier_says_so(export_dir, tiny_cifar):
    classifier = load(export_dir / "new2.onnx")
    classifier.close()
    with pytest.raises(EdgeclsError, match="is closed"):
        classifier.classify(tiny_cifar.test_images[:2])


def test_memory_does_not_grow_with_the_number_of_images(export_dir):
    """Classifying many large images holds only one batch of them at a time (measured with tracemalloc)."""
    import tracemalloc

    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def peak(count: int) -> int:
        images = [photo] * count  # the same array: the input list itself costs nothing
        tracemalloc.start()
        try:
            with load(export_dir / "new2.onnx", batch_size=16) as classifier:
                classifier.logits(images)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(16), peak(160)
    assert large < small * 1.5 + 2_000_000, (small, large)
