"""ONNX export: parity with PyTorch for every model, metadata, reference logits, bad inputs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import run_cli
from edgecls.artifacts import sha256_file
from edgecls.checkpoint import load_checkpoint, save_checkpoint
from edgecls.cli import main
from edgecls.data import image_digests
from edgecls.errors import EdgeclsError
from edgecls.evaluate import torch_logits
from edgecls.export import ExportRequest, check_parity, export_model
from edgecls.formats import ExportSet, ModelMetadata
from edgecls.models import MODELS
from edgecls.quantize import CalibrationSettings
from edgecls.runtime import load as load_runtime

ALL_MODELS = list(MODELS)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_fp32_matches_pytorch_on_random_and_real_looking_inputs(model_name, exported_models, trained_checkpoint, tiny_cifar):
    report = exported_models(model_name)
    assert report.passed and set(report.files) == {"fp32", "fp16", "int8"}
    model = load_checkpoint(trained_checkpoint(model_name)).build_model()
    onnx_session = session(report.files["fp32"])
    preprocess = load_checkpoint(trained_checkpoint(model_name)).preprocess
    random_inputs = np.random.default_rng(1).normal(0, 1.5, size=(7, 3, 28, 28)).astype(np.float32)  # odd batch: dynamic
    real_inputs = preprocess(tiny_cifar.test_images[:64])
    for inputs in (random_inputs, real_inputs):
        with torch.no_grad():
            expected = model(torch.from_numpy(inputs)).numpy()
        got = onnx_session.run(["logits"], {"images": inputs})[0]
        assert got.shape == (len(inputs), 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))
        assert np.all(got.argmax(1) == expected.argmax(1))


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_fp16_and_int8_files_run_on_onnxruntime_cpu(model_name, exported_models, tiny_cifar):
    report = exported_models(model_name)
    reference = np.load(report.reference)["logits"]
    inputs = ModelMetadata.read(report.files["fp32"]).preprocess(tiny_cifar.test_images)
    for precision in ("fp16", "int8"):
        onnx_session = session(report.files[precision])
        assert onnx_session.get_inputs()[0].type == "tensor(float)"  # float32 I/O whatever the inside
        logits = onnx_session.run(["logits"], {"images": inputs})[0]
        assert logits.dtype == np.float32 and logits.shape == reference.shape
        agreement = np.mean(logits.argmax(1) == reference.argmax(1))
        assert agreement >= 0.9, f"{precision}: only {agreement:.1%} top-1 agreement with PyTorch"
    fp16_model = onnx.load(str(report.files["fp16"]))
    # Every weight is float16 (a converter that kept float32 weights would still run, at fp32 cost).
    types = [init.data_type for init in fp16_model.graph.initializer]
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
    # The parity lines printed by export measured the same thing on the whole test split.
    by_precision = {result.precision: result.parity for result in report.parity}
    assert by_precision["fp32"].agreement == 100.0 and by_precision["fp32"].max_abs_logit_diff < 1e-3
    assert by_precision["fp16"].max_abs_logit_diff > 0  # really computed in float16


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_metadata_round_trip(model_name, exported_models, trained_checkpoint):
    checkpoint = load_checkpoint(trained_checkpoint(model_name))
    report = exported_models(model_name)
    for precision, path in report.files.items():
        metadata = ModelMetadata.read(path)
        record = json.loads(session(path).get_modelmeta().custom_metadata_map["edgecls"])
        assert record == metadata.to_dict() and record["format_version"] == 1
        assert ModelMetadata.from_dict(record, "round trip") == metadata
        assert metadata.precision == precision and metadata.model == model_name
        assert metadata.checkpoint_sha256 == sha256_file(checkpoint.path)
        assert metadata.data_fingerprint == checkpoint.data_fingerprint
        assert metadata.preprocess == checkpoint.preprocess
        assert (metadata.input_name, metadata.output_name) == ("images", "logits")
        assert ("quantization" in record) == (precision == "int8")
    quantization = ModelMetadata.read(report.files["int8"]).quantization
    fp32 = onnx.load(str(report.files["fp32"]))
    first_and_last = sorted(node.name for node in fp32.graph.node if "images" in node.input or "logits" in node.output)
    assert quantization == {"target": "trt", "method": "percentile", "calibration_size": 200, "calibration_seed": 0,
                            "calibration_split": "train", "float_layers": first_and_last, "budget": None}
    assert fp32.opset_import[0].version == 17
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    onnx.checker.check_model(fp32, full_check=True)


def test_reference_logits_are_the_pytorch_model_on_the_test_split(new2_export, trained_checkpoint, tiny_cifar):
    checkpoint = load_checkpoint(trained_checkpoint("new2"))
    with np.load(new2_export.reference, allow_pickle=False) as saved:
        logits, labels, digests, meta = saved["logits"], saved["labels"], saved["digests"], json.loads(str(saved["meta"]))
    expected = torch_logits(checkpoint.build_model(), tiny_cifar.test_images, checkpoint.preprocess)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(labels, tiny_cifar.test_labels)
    assert [bytes(row) for row in digests] == image_digests(tiny_cifar.test_images)
    assert meta == {"format_version": 1, "model": "new2", "checkpoint_sha256": checkpoint.sha256,
                    "data_fingerprint": tiny_cifar.fingerprint, "split": "test"}


def test_parity_gate_fails_beyond_float_rounding(new2_export):
    report = new2_export
    reference = np.load(report.reference)["logits"]
    labels = np.load(report.reference)["labels"]
    close = check_parity(report.files["fp32"], "fp32", reference + 1e-6, reference, labels)
    assert close.verdict and close.parity.agreement == 100.0
    scale = max(1.0, float(np.abs(reference).max()))
    # The tolerance is float rounding: 1e-3 of the logits' scale passes, 3e-3 (no flips at all) fails.
    assert check_parity(report.files["fp32"], "fp32", reference + 0.9e-3 * scale, reference, labels).verdict
    drifted = check_parity(report.files["fp32"], "fp32", reference + 3e-3 * scale, reference, labels)
    assert not drifted.verdict and drifted.parity.flips == 0
    swapped = reference.copy()
    swapped[:5] = -swapped[:5]  # five predictions change
    broken = check_parity(report.files["fp32"], "fp32", swapped, reference, labels)
    assert not broken.verdict and broken.parity.agreement == pytest.approx(100.0 * (1 - 5 / len(reference)))
    assert "FAILED" in broken.line()
    assert check_parity(report.files["int8"], "int8", swapped, reference, labels).verdict  # only fp32 gates


def test_cli_export_end_to_end(trained_checkpoint, tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(trained_checkpoint("new1")), "--data",
                                       str(tiny_data_dir), "--out", str(out), "--fp16", "--int8", "--calibration-size",
                                       "100", "--calibration-dir", str(calibration)])
    assert result.exit_code == 0, result.output
    members = ["new1.fp16.onnx", "new1.int8.onnx", "new1.onnx", "new1.reference.npz"]
    assert sorted(p.name for p in out.iterdir()) == ["new1.export.json", *members]
    record = ExportSet.read(out / "new1.export.json")  # the set, complete, with each file's bytes
    assert record.complete and record.model == "new1" and sorted(record.files) == members
    assert all(record.files[name] == sha256_file(out / name) for name in members)
    assert [p.name for p in calibration.iterdir()] == ["new1.percentile.json"]
    for name in ("new1.onnx (fp32)", "new1.fp16.onnx (fp16)", "new1.int8.onnx (int8)"):
        assert f"{name}: top-1 agreement" in result.output
    from edgecls.engines import unavailable_reason

    if unavailable_reason() is not None:  # no TensorRT here: the commands to run on the device are printed
        assert f"edgecls build {out / 'new1.int8.onnx'} -o engines/new1.int8.plan" in result.output


# ------------------------------------------------------------------------------------------------ bad input

def assert_one_line_error(code: int, output: str, *fragments: str) -> None:
    assert code == 2, output
    # Progress bars (the data loader's) may precede it; the error itself is the one last line.
    lines = [line for line in output.strip().split("\n") if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_bad_checkpoints(tmp_path, trained_checkpoint, tiny_data_dir):
    good = trained_checkpoint("new2").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    out = tmp_path / "export"
    for path, fragment in ((tmp_path / "missing.pt", "does not exist"), (truncated, "unreadable"),
                           (foreign, "not an edgecls checkpoint")):
        code, output = run_cli("export", "--checkpoint", str(path), "--data", str(tiny_data_dir), "--out", str(out))
        assert_one_line_error(code, output, str(path), fragment)
    assert not out.exists() or not any(out.iterdir())


def test_not_onnx_and_inconsistent_input_shape(tmp_path, new2_export):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 this is not a protobuf \xff" * 10)
    code, output = run_cli("build", str(garbage))
    assert_one_line_error(code, output, str(garbage), "not a readable ONNX model")

    model = onnx.load(str(new2_export.files["fp32"]))
    metadata = ModelMetadata.read(new2_export.files["fp32"])
    ModelMetadata.from_dict({**metadata.to_dict(), "preprocess": {**metadata.preprocess.to_dict(), "crop_size": 32}},
                            "test").embed(model)  # the graph takes 28x28
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    with pytest.raises(EdgeclsError, match=r"has shape \['batch', 3, 28, 28\].*\[batch, 3, 32, 32\]"):
        ModelMetadata.read(lying)
    with pytest.raises(EdgeclsError, match=r"has shape \['batch', 3, 28, 28\].*\[batch, 3, 32, 32\]"):
        load_runtime(lying)  # the runtime reads it through ONNX Runtime and applies the same check
    code, output = run_cli("build", str(lying))
    assert_one_line_error(code, output, str(lying), "input 'images'")

    del model.metadata_props[:]
    anonymous = tmp_path / "anonymous.onnx"
    onnx.save(model, str(anonymous))
    code, output = run_cli("build", str(anonymous))
    assert_one_line_error(code, output, "no edgecls metadata")

    versionless = tmp_path / "versionless.onnx"  # a record without format_version is not one this edgecls wrote
    record = metadata.to_dict()
    del record["format_version"]
    model.metadata_props.add(key="edgecls", value=json.dumps(record))
    onnx.save(model, str(versionless))
    for read in (ModelMetadata.read, load_runtime):
        with pytest.raises(EdgeclsError, match="format version None, this edgecls reads version 1"):
            read(versionless)


def test_output_folder_not_writable(tmp_path, trained_checkpoint, tiny_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, output = run_cli("export", "--checkpoint", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir),
                           "--out", str(blocker / "export"))
    assert_one_line_error(code, output, f"cannot write {blocker / 'export'}: {blocker} is a file, not a folder")


def test_calibration_data_missing_or_wrong_size_keeps_earlier_artifacts(tmp_path, trained_checkpoint, tiny_cifar,
                                                                       monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    out.mkdir()
    earlier = out / "new2.onnx"
    earlier.write_bytes(b"an earlier export")
    checkpoint = trained_checkpoint("new2")
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8", "--calibration-dir", str(calibration)]

    code, output = run_cli(*args, "--data", str(tmp_path / "no_such_data"))
    assert_one_line_error(code, output, "no_such_data")

    small_tree = tmp_path / "small_images"
    for split in ("train", "test"):
        for label, name in enumerate(tiny_cifar.class_names):
            (small_tree / split / name).mkdir(parents=True)
            Image.fromarray(tiny_cifar.train_images[label, :24, :24]).save(small_tree / split / name / "0.png")
    # Images of any size are brought to the model's input now: data other than the checkpoint's is refused since the
    # checkpoint's held-out validation images are not in it.
    code, output = run_cli(*args, "--data", str(small_tree))
    assert_one_line_error(code, output, "pass the data it was trained on")

    # A model trained on other image sizes than the data's: refused before any file is written.
    record = torch.load(checkpoint, weights_only=True)
    record["preprocess"] = {**record["preprocess"], "input_size": 36}
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in record.items() if k not in ("format", "format_version")})
    with pytest.raises(EdgeclsError, match="images are 32x32x3, but the model expects 36x36x3"):
        export_model(ExportRequest(other, out, int8=True, calibration_dir=calibration), data=tiny_cifar, progress=False)

    # The failed runs installed nothing, replaced nothing and left no staging folder or temporary file behind.
    assert [p.name for p in out.iterdir()] == ["new2.onnx"] and earlier.read_bytes() == b"an earlier export"
    assert not calibration.exists() or not any(calibration.iterdir())


def test_failure_after_staging_leaves_nothing_behind(tmp_path, trained_checkpoint, tiny_cifar):
    out = tmp_path / "export"
    out.mkdir()
    (out / "new2.onnx").write_bytes(b"an earlier export")
    with pytest.raises(EdgeclsError, match="calibration size 5000 exceeds the 400 training images"):
        request = ExportRequest(trained_checkpoint("new2"), out, fp16=True, int8=True,
                                calibration=CalibrationSettings(size=5000), calibration_dir=tmp_path / "calibration")
        export_model(request, data=tiny_cifar, progress=False)
    assert [p.name for p in out.iterdir()] == ["new2.onnx"] and (out / "new2.onnx").read_bytes() == b"an earlier export"
