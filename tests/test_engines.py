"""TensorRT engines: the version-dependent network declaration, the CLI without TensorRT, and real builds.

The real builds run only where `tensorrt` imports and a GPU is visible; elsewhere they are skipped with
the reason. Nothing here stands in for TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecls.artifacts import sha256_file
from edgecls.cli import main
from edgecls.engines import (BuildOptions, JetsonRelease, build_command, build_engine, build_options, check_dla_request,
                             dla_cores, dla_unsupported, parse_batch, parse_l4t_release, unavailable_reason)
from edgecls.errors import EdgeclsError
from edgecls.formats import EngineManifest, ModelMetadata
from edgecls.runtime.cuda_memory import open_cuda, probe


@pytest.mark.parametrize("version, precision, expected", [
    ("8.5.2.2", "int8", BuildOptions(("EXPLICIT_BATCH",), ("INT8",))),  # JetPack 5.1: weakly typed, flags needed
    ("8.5.2.2", "fp16", BuildOptions(("EXPLICIT_BATCH",), ("FP16",))),
    ("8.6.1", "fp32", BuildOptions(("EXPLICIT_BATCH",), ())),
    ("9.1.0", "fp32", BuildOptions(("EXPLICIT_BATCH", "STRONGLY_TYPED"), ())),  # 9.x still needs explicit batch
    ("9.3.0", "int8", BuildOptions(("EXPLICIT_BATCH", "STRONGLY_TYPED"), ())),
    ("10.3.0", "fp16", BuildOptions(("STRONGLY_TYPED",), ())),  # JetPack 6
    ("10.16.1", "int8", BuildOptions(("STRONGLY_TYPED",), ())),
    ("11.4.0", "int8", BuildOptions((), ())),  # strongly typed always; EXPLICIT_BATCH and precision flags are gone
])
def test_build_options_follow_the_tensorrt_version(version, precision, expected):
    assert build_options(version, precision) == expected


def test_build_options_reject_what_cannot_work():
    with pytest.raises(EdgeclsError, match="too old"):
        build_options("7.1.3", "int8")
    with pytest.raises(EdgeclsError, match="cannot read the TensorRT version"):
        build_options("unknown", "int8")
    with pytest.raises(EdgeclsError, match="unknown ONNX precision"):
        build_options("10.3.0", "bf16")


@pytest.mark.parametrize("version, supported", [
    ("8.5.2.2", True), ("10.3.0", True), ("10.7.0.23", True),  # JetPack 5 and 6 have DLA
    ("10.8.0", False), ("10.13.2.6", False), ("11.0.0", False), ("11.4.0", False),  # dropped after 10.7 ...
    ("11.4.1", True), ("11.5.0", True),  # ... and back for AGX Orin in 11.4.1 (JetPack 7.2.2+)
])
def test_dla_support_follows_the_tensorrt_version(version, supported):
    reason = dla_unsupported(version)
    assert (reason is None) == supported
    if reason:
        assert version in reason and "--dla" in reason


def test_dla_requests_that_cannot_run_are_refused_before_tensorrt():
    check_dla_request(None, "fp32", (1, 64, 256), "x.onnx")  # no DLA: nothing to check
    check_dla_request(0, "int8", (16, 16, 16), "x.onnx")
    with pytest.raises(EdgeclsError, match="fp32, which a DLA does not run"):
        check_dla_request(0, "fp32", (16, 16, 16), "x.onnx")
    with pytest.raises(EdgeclsError, match="--batch 8:8:8"):
        check_dla_request(1, "fp16", (1, 8, 32), "x.onnx")
    with pytest.raises(EdgeclsError, match="numbered from 0"):
        check_dla_request(-1, "fp16", (8, 8, 8), "x.onnx")


@pytest.mark.parametrize("text, release, jetpack", [
    # /etc/nv_tegra_release as JetPack 5.1.2 and 6.2 write it
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC "
     "2023\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n", "35.4.1", "5.x"),
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC "
     "2025\n", "36.4.3", "6.x"),
    ("", "", ""),
    ("not a release file", "", ""),
])
def test_l4t_release_and_jetpack(text, release, jetpack):
    assert parse_l4t_release(text) == release
    assert JetsonRelease(board="", l4t=release).jetpack == jetpack


def _driver_library_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _cuda_python_importable() -> bool:
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        return False
    return True


def test_probe_never_raises_and_says_why_each_binding_fails():
    statuses = {status.name: status for status in probe()}
    assert set(statuses) == {"cuda-python", "pycuda"}
    for status in statuses.values():
        assert (status.gpu is None) == (status.problem is not None), status
        if status.problem:
            assert "\n" not in status.problem and len(status.problem) < 400, status.problem


@pytest.mark.skipif(not _cuda_python_importable() or _driver_library_loads(),
                    reason="needs cuda-python installed on a machine without the NVIDIA driver (as here)")
def test_cuda_python_without_a_driver_falls_back_to_pycuda_and_says_why():
    """cuda-python imports without a driver, then its driver calls raise RuntimeError: that must become a reason,
    and pycuda must still be tried (the audit's JetPack 5 case: cuda-python installed but unusable)."""
    status = {status.name: status for status in probe()}["cuda-python"]
    assert not status.works and status.version and "driver" in status.problem
    with pytest.raises(EdgeclsError) as info:
        open_cuda()
    message = str(info.value)
    assert "cuda-python: cannot reach the NVIDIA driver" in message and "pycuda: " in message, message
    reason = unavailable_reason()  # must not raise either
    assert reason is not None and "\n" not in reason


def test_parse_batch():
    assert parse_batch("1:64:256") == (1, 64, 256)
    assert parse_batch("8:8:8") == (8, 8, 8)
    for bad in ("64", "0:1:2", "4:2:8", "1:a:3", "1:2:3:4"):
        with pytest.raises(EdgeclsError, match="MIN:OPT:MAX"):
            parse_batch(bad)


def test_build_command_names_the_default_plan():
    assert build_command(Path("export/new2.int8.onnx")) == "edgecls build export/new2.int8.onnx -o engines/new2.int8.plan"


@pytest.fixture(scope="module")
def new2_files(new2_export) -> dict[str, Path]:
    return new2_export.files


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and a GPU are present: the real build runs instead")
def test_build_without_tensorrt_is_one_line_and_non_zero(new2_files, tmp_path):
    plan = tmp_path / "engines" / "new2.int8.plan"
    result = CliRunner().invoke(main, ["build", str(new2_files["int8"]), "-o", str(plan)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "TensorRT" in lines[0] and "device" in lines[0]
    assert not plan.exists() and not any(plan.parent.glob("*.tmp"))


def test_build_dla_checks_come_before_tensorrt(new2_files, tmp_path):
    """--dla refuses fp32 and a batch range in one line; with no --batch, a DLA build gets a fixed batch and gets as
    far as TensorRT (here: absent, one line; on a device: the build)."""
    runner = CliRunner()
    fp32 = runner.invoke(main, ["build", str(new2_files["fp32"]), "--dla", "0", "-o", str(tmp_path / "a.plan")])
    assert fp32.exit_code == 2 and "fp32, which a DLA does not run" in fp32.output
    assert len(fp32.output.strip().splitlines()) == 1
    ranged = runner.invoke(main, ["build", str(new2_files["int8"]), "--dla", "0", "--batch", "1:8:16",
                                  "-o", str(tmp_path / "b.plan")])
    assert ranged.exit_code == 2 and "--batch 8:8:8" in ranged.output
    if unavailable_reason() is not None:
        fixed = runner.invoke(main, ["build", str(new2_files["int8"]), "--dla", "0", "-o", str(tmp_path / "c.plan")])
        assert fixed.exit_code == 2 and "batch" not in fixed.output and "TensorRT" in fixed.output, fixed.output
    assert not list(tmp_path.glob("*.plan*"))


def test_build_rejects_a_bad_plan_name_before_tensorrt(new2_files, tmp_path):
    with pytest.raises(EdgeclsError, match=r"should end in \.plan"):
        build_engine(new2_files["fp32"], tmp_path / "engine.bin")


def test_build_refuses_the_cpu_int8_form(new2_files, tiny_cifar, tmp_path):
    from edgecls.quantize import CalibrationSettings, quantize_int8

    cpu_file = quantize_int8(new2_files["fp32"], tmp_path / "new2.int8.onnx", data=tiny_cifar,
                             settings=CalibrationSettings(target="cpu", size=64), record_path=tmp_path / "record.json").path
    result = CliRunner().invoke(main, ["build", str(cpu_file), "-o", str(tmp_path / "new2.int8.plan")])
    assert result.exit_code == 2 and "--target trt" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "new2.int8.plan").exists()


# ------------------------------------------------------------------------------------------- real builds

@pytest.mark.skipif(unavailable_reason() is not None, reason=f"no TensorRT build here: {unavailable_reason()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_build_and_inference(precision, new2_files, tiny_cifar, tmp_path):
    """The plan and manifest `edgecls build` writes, run with TensorRT directly (not through edgecls' runner), with
    buffers and stream from the CUDA binding the runtime uses: no PyTorch (Jetson's is a special wheel)."""
    import tensorrt as trt

    from edgecls.preprocess import Preprocessing

    onnx_path = new2_files[precision]
    plan = build_engine(onnx_path, tmp_path / f"new2.{precision}.plan", batch=(1, 16, 32), workspace_mib=256)
    manifest = json.loads(Path(str(plan) + ".json").read_text())
    assert manifest["tensorrt_version"] == trt.__version__ and manifest["precision"] == precision
    assert manifest["onnx_sha256"] == sha256_file(onnx_path) and manifest["plan_sha256"] == sha256_file(plan)
    assert manifest["batch"] == {"min": 1, "opt": 16, "max": 32} and manifest["dla_core"] is None
    assert manifest["edgecls"] == ModelMetadata.read(onnx_path).to_dict()
    assert manifest["gpu_name"] and "." in manifest["compute_capability"] and manifest["cuda_binding"]
    assert EngineManifest.read(plan).to_dict() == manifest

    record = manifest["edgecls"]
    images = tiny_cifar.test_images[:32]
    inputs = Preprocessing.from_dict(record["preprocess"])(images)
    cuda = open_cuda()
    try:
        with cuda.current():
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
            assert engine is not None
            context = engine.create_execution_context()
            source = cuda.allocate(inputs.shape, np.float32)
            target = cuda.allocate((len(images), 10), np.float32)
            source.host[:] = inputs
            cuda.to_device(source, source.nbytes)
            assert context.set_input_shape(record["input_name"], inputs.shape)
            assert context.set_tensor_address(record["input_name"], source.device)
            assert context.set_tensor_address(record["output_name"], target.device)
            assert context.execute_async_v3(cuda.stream_handle)
            cuda.to_host(target, target.nbytes)
            cuda.synchronize()
            outputs = target.host.copy()
            del context, engine
    finally:
        cuda.close()
    reference = np.load(onnx_path.with_name("new2.reference.npz"))["logits"][:32]
    agreement = np.mean(outputs.argmax(1) == reference.argmax(1))
    assert agreement >= {"fp32": 1.0, "fp16": 0.95, "int8": 0.9}[precision]


@pytest.mark.skipif(unavailable_reason() is not None or not dla_cores(),
                    reason=f"needs TensorRT and a Jetson DLA: {unavailable_reason() or 'this GPU has no DLA core'}")
def test_real_dla_build_runs_and_is_recorded(new2_files, tiny_cifar, tmp_path):
    from edgecls.runtime import load

    plan = build_engine(new2_files["fp16"], tmp_path / "new2.fp16.dla0.plan", batch=(16, 16, 16), dla_core=0)
    assert EngineManifest.read(plan).dla_core == 0
    with load(new2_files["fp16"]) as onnx_classifier:
        expected = onnx_classifier.logits(tiny_cifar.test_images)
    with load(plan) as classifier:
        assert classifier.describe()["device"] == "dla:0"
        got = classifier.logits(tiny_cifar.test_images)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.95
    too_many = dla_cores()
    with pytest.raises(EdgeclsError, match=f"--dla {too_many}: this device has"):
        build_engine(new2_files["fp16"], tmp_path / "x.plan", batch=(16, 16, 16), dla_core=too_many)
