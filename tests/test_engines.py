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
from edgecls.engines import BuildOptions, build_command, build_engine, build_options, parse_batch, unavailable_reason
from edgecls.errors import EdgeclsError
from edgecls.formats import EngineManifest, ModelMetadata


@pytest.mark.parametrize("version, precision, expected", [
    ("8.5.2.2", "int8", BuildOptions(("EXPLICIT_BATCH",), ("INT8",))),  # JetPack 5.1: weakly typed, flags needed
    ("8.5.2.2", "fp16", BuildOptions(("EXPLICIT_BATCH",), ("FP16",))),
    ("8.6.1", "fp32", BuildOptions(("EXPLICIT_BATCH",), ())),
    ("9.3.0", "int8", BuildOptions(("STRONGLY_TYPED",), ())),
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


def test_build_rejects_a_bad_plan_name_before_tensorrt(new2_files, tmp_path):
    with pytest.raises(EdgeclsError, match=r"should end in \.plan"):
        build_engine(new2_files["fp32"], tmp_path / "engine.bin")


def test_build_refuses_the_cpu_int8_form(new2_files, tiny_cifar, tmp_path):
    from edgecls.quantize import quantize_int8

    cpu_file = quantize_int8(new2_files["fp32"], tmp_path / "new2.int8.onnx", data=tiny_cifar, target="cpu", size=64,
                             record_path=tmp_path / "record.json").path
    result = CliRunner().invoke(main, ["build", str(cpu_file), "-o", str(tmp_path / "new2.int8.plan")])
    assert result.exit_code == 2 and "--target trt" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "new2.int8.plan").exists()


# ------------------------------------------------------------------------------------------- real builds

@pytest.mark.skipif(unavailable_reason() is not None, reason=f"no TensorRT build here: {unavailable_reason()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_build_and_inference(precision, new2_files, tiny_cifar, tmp_path):
    import tensorrt as trt
    import torch

    from edgecls.preprocess import Preprocessing

    onnx_path = new2_files[precision]
    plan = build_engine(onnx_path, tmp_path / f"new2.{precision}.plan", batch=(1, 16, 32), workspace_mib=256)
    manifest = json.loads(Path(str(plan) + ".json").read_text())
    assert manifest["tensorrt_version"] == trt.__version__ and manifest["precision"] == precision
    assert manifest["onnx_sha256"] == sha256_file(onnx_path) and manifest["plan_sha256"] == sha256_file(plan)
    assert manifest["batch"] == {"min": 1, "opt": 16, "max": 32}
    assert manifest["edgecls"] == ModelMetadata.read(onnx_path).to_dict()
    assert manifest["gpu_name"] and "." in manifest["compute_capability"]
    assert EngineManifest.read(plan).to_dict() == manifest

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None
    context = engine.create_execution_context()
    record = manifest["edgecls"]
    images = tiny_cifar.test_images[:32]
    inputs = torch.from_numpy(Preprocessing.from_dict(record["preprocess"])(images)).cuda()
    outputs = torch.empty((len(images), 10), dtype=torch.float32, device="cuda")
    context.set_input_shape(record["input_name"], tuple(inputs.shape))
    context.set_tensor_address(record["input_name"], inputs.data_ptr())
    context.set_tensor_address(record["output_name"], outputs.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    reference = np.load(onnx_path.with_name("new2.reference.npz"))["logits"][:32]
    agreement = np.mean(outputs.cpu().numpy().argmax(1) == reference.argmax(1))
    assert agreement >= {"fp32": 1.0, "fp16": 0.95, "int8": 0.9}[precision]
