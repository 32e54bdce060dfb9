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

from edgecls.artifacts import sha256_file
from edgecls.checkpoint import load_checkpoint, save_checkpoint
from edgecls.cli import main
from edgecls.data import image_digests
from edgecls.errors import EdgeclsError
from edgecls.evaluate import torch_logits
from edgecls.export import compare_logits, export_model, read_onnx_metadata, set_metadata
from edgecls.models import MODELS
from edgecls.preprocess import Preprocessing

ALL_MODELS = list(MODELS)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_fp32_matches_pytorch_on_random_and_real_looking_inputs(model_name, exported, trained_checkpoint, tiny_cifar):
    report = exported(model_name)
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
def test_fp16_and_int8_files_run_on_onnxruntime_cpu(model_name, exported, tiny_cifar):
    report = exported(model_name)
    reference = np.load(report.reference)["logits"]
    inputs = Preprocessing.from_dict(read_onnx_metadata(report.files["fp32"])["preprocess"])(tiny_cifar.test_images)
    for precision in ("fp16", "int8"):
        onnx_session = session(report.files[precision])
        assert onnx_session.get_inputs()[0].type == "tensor(float)"  # float32 I/O whatever the inside
        logits = onnx_session.run(["logits"], {"images": inputs})[0]
        assert logits.dtype == np.float32 and logits.shape == reference.shape
        agreement = np.mean(logits.argmax(1) == reference.argmax(1))
        assert agreement >= 0.9, f"{precision}: only {agreement:.1%} top-1 agreement with PyTorch"
    fp16_model = onnx.load(str(report.files["fp16"]))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in fp16_model.graph.initializer)
    # The parity lines printed by export measured the same thing on the whole test split.
    by_precision = {result.precision: result for result in report.parity}
    assert by_precision["fp32"].agreement == 100.0 and by_precision["fp32"].max_abs_diff < 1e-3
    assert by_precision["fp16"].max_abs_diff > 0  # really computed in float16


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_metadata_round_trip(model_name, exported, trained_checkpoint):
    checkpoint = load_checkpoint(trained_checkpoint(model_name))
    report = exported(model_name)
    for precision, path in report.files.items():
        record = read_onnx_metadata(path)
        via_ort = json.loads(session(path).get_modelmeta().custom_metadata_map["edgecls"])
        assert record == via_ort
        assert record["precision"] == precision and record["model"] == model_name
        assert record["checkpoint_sha256"] == sha256_file(checkpoint.path)
        assert record["data_fingerprint"] == checkpoint.data_fingerprint
        assert Preprocessing.from_dict(record["preprocess"]) == checkpoint.preprocess
        assert (record["input_name"], record["output_name"]) == ("images", "logits")
        assert ("quantization" in record) == (precision == "int8")
    quantization = read_onnx_metadata(report.files["int8"])["quantization"]
    assert quantization == {"target": "trt", "method": "percentile", "calibration_size": 200, "calibration_seed": 0,
                            "calibration_split": "train"}
    fp32 = onnx.load(str(report.files["fp32"]))
    assert fp32.opset_import[0].version == 17
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    onnx.checker.check_model(fp32, full_check=True)


def test_reference_logits_are_the_pytorch_model_on_the_test_split(exported, trained_checkpoint, tiny_cifar):
    checkpoint = load_checkpoint(trained_checkpoint("new2"))
    with np.load(exported("new2").reference, allow_pickle=False) as saved:
        logits, labels, digests, meta = saved["logits"], saved["labels"], saved["digests"], json.loads(str(saved["meta"]))
    expected = torch_logits(checkpoint.build_model(), tiny_cifar.test_images, checkpoint.preprocess)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(labels, tiny_cifar.test_labels)
    assert [bytes(row) for row in digests] == image_digests(tiny_cifar.test_images)
    assert meta == {"model": "new2", "checkpoint_sha256": checkpoint.sha256, "data_fingerprint": tiny_cifar.fingerprint,
                    "split": "test"}


def test_parity_gate_fails_beyond_float_rounding(exported):
    report = exported("new2")
    reference = np.load(report.reference)["logits"]
    labels = np.load(report.reference)["labels"]
    close = compare_logits(report.files["fp32"], "fp32", reference + 1e-6, reference, labels)
    assert close.passed and close.agreement == 100.0
    swapped = reference.copy()
    swapped[:5] = -swapped[:5]  # five predictions change
    broken = compare_logits(report.files["fp32"], "fp32", swapped, reference, labels)
    assert not broken.passed and broken.agreement == pytest.approx(100.0 * (1 - 5 / len(reference)))
    assert "FAILED" in broken.line()
    assert compare_logits(report.files["int8"], "int8", swapped, reference, labels).passed  # only fp32 gates


def test_cli_export_end_to_end(trained_checkpoint, tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(trained_checkpoint("new1")), "--data",
                                       str(tiny_data_dir), "--out", str(out), "--fp16", "--int8", "--calibration-size",
                                       "100", "--calibration-dir", str(calibration)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["new1.fp16.onnx", "new1.int8.onnx", "new1.onnx",
                                                      "new1.reference.npz"]
    assert [p.name for p in calibration.iterdir()] == ["new1.percentile.json"]
    for name in ("new1.onnx (fp32)", "new1.fp16.onnx (fp16)", "new1.int8.onnx (int8)"):
        assert f"{name}: top-1 agreement" in result.output
    from edgecls.engines import unavailable_reason

    if unavailable_reason() is not None:  # no TensorRT here: the commands to run on the device are printed
        assert f"edgecls build {out / 'new1.int8.onnx'} -o engines/new1.int8.plan" in result.output


# ------------------------------------------------------------------------------------------------ bad input

def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


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


def test_not_onnx_and_inconsistent_input_shape(tmp_path, exported):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 this is not a protobuf \xff" * 10)
    code, output = run_cli("build", str(garbage))
    assert_one_line_error(code, output, str(garbage), "not a readable ONNX model")

    model = onnx.load(str(exported("new2").files["fp32"]))
    record = read_onnx_metadata(exported("new2").files["fp32"])
    record["preprocess"]["crop_size"] = 32  # the graph takes 28x28
    set_metadata(model, record)
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    with pytest.raises(EdgeclsError, match=r"has shape \['batch', 3, 28, 28\].*\[batch, 3, 32, 32\]"):
        read_onnx_metadata(lying)
    code, output = run_cli("build", str(lying))
    assert_one_line_error(code, output, str(lying), "input 'images'")

    del model.metadata_props[:]
    anonymous = tmp_path / "anonymous.onnx"
    onnx.save(model, str(anonymous))
    code, output = run_cli("build", str(anonymous))
    assert_one_line_error(code, output, "no 'edgecls' metadata")


def test_output_folder_not_writable(tmp_path, trained_checkpoint, tiny_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, output = run_cli("export", "--checkpoint", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir),
                           "--out", str(blocker / "export"))
    assert_one_line_error(code, output, "cannot create output folder", str(blocker / "export"))


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
    code, output = run_cli(*args, "--data", str(small_tree))
    assert_one_line_error(code, output, "24x24")

    # A model trained on other image sizes than the data's: refused before any file is written.
    record = torch.load(checkpoint, weights_only=True)
    record["preprocess"] = {**record["preprocess"], "input_size": 36}
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in record.items() if k not in ("format", "format_version")})
    with pytest.raises(EdgeclsError, match="images are 32x32x3, but the model expects 36x36x3"):
        export_model(other, out, data=tiny_cifar, int8=True, calibration_dir=calibration, progress=False)

    # The failed runs installed nothing, replaced nothing and left no staging folder or temporary file behind.
    assert [p.name for p in out.iterdir()] == ["new2.onnx"] and earlier.read_bytes() == b"an earlier export"
    assert not calibration.exists() or not any(calibration.iterdir())


def test_failure_after_staging_leaves_nothing_behind(tmp_path, trained_checkpoint, tiny_cifar):
    out = tmp_path / "export"
    out.mkdir()
    (out / "new2.onnx").write_bytes(b"an earlier export")
    with pytest.raises(EdgeclsError, match="calibration size 5000 exceeds the 400 training images"):
        export_model(trained_checkpoint("new2"), out, data=tiny_cifar, fp16=True, int8=True, calibration_size=5000,
                     calibration_dir=tmp_path / "calibration", progress=False)
    assert [p.name for p in out.iterdir()] == ["new2.onnx"] and (out / "new2.onnx").read_bytes() == b"an earlier export"
