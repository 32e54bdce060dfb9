"""`edgecls doctor` on this machine as it is (no TensorRT or GPU faked), its probe models on ONNX Runtime, and, where
TensorRT and a GPU exist, its test engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.doctor import find_exports, make_probe_models, model_parity, run_doctor
from edgecls.engines import build_engine, unavailable_reason
from edgecls.errors import EdgeclsError
from edgecls.formats import ModelMetadata
from edgecls.runtime import load

UNAVAILABLE = unavailable_reason()


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are here: the ready case runs instead")
def test_doctor_here_says_plainly_what_is_missing_and_exits_1():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    verdict = lines[-1]
    assert verdict.startswith("NOT READY: ") and "no TensorRT engine can be built or run" in verdict
    table = {line.split()[0]: line for line in lines[: lines.index("")]}
    assert {"board", "Python", "numpy", "TensorRT", "cuda-python", "pycuda", "GPU", "ONNX"} <= set(table)
    missing = [name for name, line in table.items() if " MISSING " in line]
    fixes = lines[lines.index("to install or fix:") + 1:]
    for name in missing:  # each missing piece: one line saying what to install or do
        assert sum(line.startswith(f"- {name}: ") for line in fixes) == 1, (name, fixes)
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert "no TensorRT" in verdict and "python3-libnvinfer" in result.output
    if "GPU" in missing:
        assert "no GPU" in verdict


def test_doctor_json_has_every_fact(tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--json", "--no-build"])
    report = json.loads(result.output)
    names = [check["name"] for check in report["checks"]]
    assert {"board", "Python", "numpy", "TensorRT", "cuda-python", "pycuda", "GPU", "ONNX Runtime"} <= set(names)
    assert report["ready"] == (UNAVAILABLE is None) and result.exit_code == (0 if report["ready"] else 1)
    assert all(check["fix"] for check in report["checks"] if check["ok"] is False)
    onnxruntime_line = next(check for check in report["checks"] if check["name"] == "ONNX Runtime")["value"]
    assert "CPU" in onnxruntime_line  # the providers are listed


def test_probe_models_are_real_fp16_and_tensorrt_int8_files(tmp_path):
    """With no export on the device, the doctor builds engines from models it makes the way `edgecls export` does:
    they carry edgecls metadata, run on ONNX Runtime, and agree with each other (computed, not assumed)."""
    files = make_probe_models(tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    for precision, path in files.items():
        metadata = ModelMetadata.read(path)
        assert metadata.precision == precision
        assert (metadata.quantization or {}).get("target", "trt") == "trt"
    found = model_parity(files["fp16"], tmp_path / "doctor-probe.onnx", images)
    assert found.images == 64 and found.agreement >= 95 and found.max_abs_logit_diff < 0.1
    quantized = model_parity(files["int8"], tmp_path / "doctor-probe.onnx", images)
    assert 0 < quantized.max_abs_logit_diff < 5  # int8 computes something close, but not the same numbers
    import onnx

    ops = {node.op_type for node in onnx.load(str(files["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_doctor_finds_the_exported_files(new2_export):
    found = find_exports(new2_export.files["fp32"].parent)
    assert found == {"fp16": new2_export.files["fp16"], "int8": new2_export.files["int8"]}


def test_model_parity_compares_two_files_on_the_same_images(new2_export, tiny_cifar):
    found = model_parity(new2_export.files["fp16"], new2_export.files["fp32"], tiny_cifar.test_images,
                         tiny_cifar.test_labels)
    with load(new2_export.files["fp32"]) as classifier:
        reference = classifier.logits(tiny_cifar.test_images)
    assert found.images == len(tiny_cifar.test_labels)
    assert found.reference_accuracy == pytest.approx(100 * np.mean(reference.argmax(1) == tiny_cifar.test_labels))
    assert found.agreement >= 98 and 0 < found.max_abs_logit_diff < 0.1


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are here")
def test_probe_model_reaches_the_tensorrt_check_in_one_line(tmp_path):
    files = make_probe_models(tmp_path)
    with pytest.raises(EdgeclsError) as info:
        build_engine(files["int8"], tmp_path / "probe.plan")
    assert "\n" not in str(info.value) and not (tmp_path / "probe.plan").exists()


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"needs TensorRT and a GPU: {UNAVAILABLE}")
def test_doctor_on_a_ready_device_builds_and_runs_fp16_and_int8(new2_export, tmp_path):
    report = run_doctor(Path(new2_export.files["fp32"]).parent)
    assert report.ready, report.verdict()
    assert [engine.precision for engine in report.engines] == ["fp16", "int8"]
    for engine in report.engines:
        assert engine.built and engine.parity is not None and engine.parity.agreement >= 90, engine
    probes = run_doctor(tmp_path / "no-export-here")
    assert probes.ready and all(engine.probe_model for engine in probes.engines)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].startswith("READY")
