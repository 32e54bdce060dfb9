"""INT8 Q/DQ: TensorRT's rules read off the graph itself, the CPU form, calibration records and their reuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgecls.checkpoint import load_checkpoint
from edgecls.errors import EdgeclsError
from edgecls.export import ExportReport
from edgecls.formats import CalibrationRecord, ModelMetadata
from edgecls.models import MODELS
from edgecls.onnx_graph import consumers
from edgecls.onnx_graph import transposed_to_conv
from edgecls.quantize import CalibrationSettings, PreparedModel, calibration_indices, quantize_int8, trt_violations


@pytest.fixture(scope="session")
def fp32_file(exported_models: Callable[[str], "ExportReport"]) -> Callable[[str], Path]:
    """Factory: the fp32 ONNX export of a briefly trained model (the shared export fixture's)."""
    return lambda model_name: exported_models(model_name).files["fp32"]


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def producer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if tensor in node.output), None)


def pytorch_agreement(path: Path, reference_path: Path, images: np.ndarray) -> float:
    preprocess = ModelMetadata.read(path).preprocess
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": preprocess(images)})[0]
    reference = np.load(reference_path)["logits"]
    return float(np.mean(logits.argmax(1) == reference.argmax(1)))


@pytest.mark.parametrize("model_name", list(MODELS))
def test_trt_target_follows_tensorrt_rules(model_name, fp32_file, tiny_cifar, tmp_path):
    out = tmp_path / f"{model_name}.int8.onnx"
    quantize_int8(fp32_file(model_name), out, data=tiny_cifar, record_path=tmp_path / "record.json",
                  settings=CalibrationSettings(size=200))
    model = onnx.load(str(out))
    values = arrays(model)
    qdq = [node for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        scale, zero_point = values[node.input[1]], values[node.input[2]]
        assert np.all(scale > 0), node.name
        assert zero_point.dtype == np.int8 and np.all(zero_point == 0), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in values:
            assert values[node.input[0]].dtype == np.int8, f"{node.name}: only int8 (never int32 bias) constants"
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm")]
    expected_transposed = 2 if model_name.startswith("new") else 0
    assert sum(node.op_type == "ConvTranspose" for node in layers) == expected_transposed
    for node in layers:
        if len(node.input) > 2:  # biases stay float constants
            assert node.input[2] in values and values[node.input[2]].dtype == np.float32, node.name
        weight_dq = producer_of(model, node.input[1])
        if node.output[0] == model.graph.output[0].name or "images" in node.input:
            assert weight_dq is None  # the first layer and the logits layer stay float
            continue
        assert weight_dq is not None and weight_dq.op_type == "DequantizeLinear", f"{node.name} weights not quantized"
        scale = values[weight_dq.input[1]]
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        if node.op_type == "Conv":
            assert scale.shape == (values[weight_dq.input[0]].shape[0],) and axis == 0, node.name
        else:
            assert scale.size == 1, f"{node.name}: {node.op_type} weights must be per-tensor"
    assert trt_violations(model) == []
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((3, 3, 28, 28), np.float32)})[0].shape == (3, 10)


def test_cpu_target_uses_u8_activations_and_per_channel_s8_weights(fp32_file, tiny_cifar, tmp_path):
    out = tmp_path / "new2.int8.onnx"
    quantize_int8(fp32_file("new2"), out, data=tiny_cifar, record_path=tmp_path / "record.json",
                  settings=CalibrationSettings(target="cpu", size=200))
    model = onnx.load(str(out))
    values = arrays(model)
    activations = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert activations and all(values[node.input[2]].dtype == np.uint8 for node in activations)
    assert not any(node.op_type == "ConvTranspose" for node in model.graph.node)  # rewritten as Conv
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convolutions) == 6 and "images" in convolutions[0].input
    assert producer_of(model, convolutions[0].input[1]) is None  # the first layer stays float
    for node in convolutions[1:]:
        weight_dq = producer_of(model, node.input[1])
        assert values[weight_dq.input[0]].dtype == np.int8 and values[weight_dq.input[1]].size > 1
    assert trt_violations(model)  # this form is not for TensorRT, and the checker sees why
    assert ModelMetadata.read(out).quantization["target"] == "cpu"
    reference = fp32_file("new2").with_name("new2.reference.npz")
    assert pytorch_agreement(out, reference, tiny_cifar.test_images) >= 0.9


def test_transposed_to_conv_is_exact(fp32_file):
    original = onnx.load(str(fp32_file("new2")))
    rewritten = onnx.load(str(fp32_file("new2")))
    assert transposed_to_conv(rewritten) == 2
    assert [node.op_type for node in rewritten.graph.node].count("Conv") == 6
    onnx.checker.check_model(rewritten, full_check=True)
    inputs = np.random.default_rng(0).normal(size=(5, 3, 28, 28)).astype(np.float32)
    expected, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, {"images": inputs})[0] for m in (original, rewritten))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_calibration_reuse_gives_identical_scales(fp32_file, tiny_cifar, tmp_path):
    record_path = tmp_path / "calibration" / "new2.percentile.json"
    fresh = quantize_int8(fp32_file("new2"), tmp_path / "fresh.onnx", data=tiny_cifar, record_path=record_path,
                          settings=CalibrationSettings(size=120, seed=3))
    assert not fresh.reused and fresh.record_path == record_path
    record = json.loads(record_path.read_text())
    assert record["split"] == "train" and (record["size"], record["seed"], record["method"]) == (120, 3, "percentile")
    assert record["indices"] == calibration_indices(len(tiny_cifar.train_images), 120, 3).tolist()
    assert record["data_fingerprint"] == tiny_cifar.fingerprint
    assert record["checkpoint_sha256"] == ModelMetadata.read(fp32_file("new2")).checkpoint_sha256

    reused = quantize_int8(fp32_file("new2"), tmp_path / "reused.onnx", data=None,
                           settings=CalibrationSettings(cache=record_path, size=999))
    assert reused.reused
    first, second = arrays(onnx.load(str(tmp_path / "fresh.onnx"))), arrays(onnx.load(str(tmp_path / "reused.onnx")))
    scale_names = [name for name in first if name.endswith(("_scale", "_zero_point"))]
    assert len(scale_names) > 10 and set(first) == set(second)
    for name in first:
        assert first[name].dtype == second[name].dtype and np.array_equal(first[name], second[name]), name
    # The file says which calibration it came from, even when reused with other options on the command line.
    assert ModelMetadata.read(tmp_path / "reused.onnx").quantization["calibration_size"] == 120

    other_seed = quantize_int8(fp32_file("new2"), tmp_path / "other.onnx", data=tiny_cifar,
                               record_path=tmp_path / "other.json", settings=CalibrationSettings(size=120, seed=4))
    assert json.loads(other_seed.record_path.read_text())["indices"] != record["indices"]


def test_bad_calibration_caches(fp32_file, tiny_cifar, tmp_path):
    record_path = tmp_path / "new2.minmax.json"
    quantize_int8(fp32_file("new2"), tmp_path / "a.onnx", data=tiny_cifar, record_path=record_path,
                  settings=CalibrationSettings(method="minmax", size=64))
    with pytest.raises(EdgeclsError, match="holds minmax ranges, not entropy"):
        quantize_int8(fp32_file("new2"), tmp_path / "b.onnx",
                      settings=CalibrationSettings(method="entropy", cache=record_path))
    with pytest.raises(EdgeclsError, match="computed for another checkpoint"):
        quantize_int8(fp32_file("new1"), tmp_path / "b.onnx",
                      settings=CalibrationSettings(method="minmax", cache=record_path))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{ not json")
    with pytest.raises(EdgeclsError, match="holds minmax ranges, not percentile"):
        quantize_int8(fp32_file("new2"), tmp_path / "b.onnx",
                      settings=CalibrationSettings(cache=record_path))  # percentile: the default
    with pytest.raises(EdgeclsError, match="unreadable or not JSON"):
        quantize_int8(fp32_file("new2"), tmp_path / "b.onnx", settings=CalibrationSettings(cache=garbage))
    with pytest.raises(EdgeclsError, match="does not exist"):
        quantize_int8(fp32_file("new2"), tmp_path / "b.onnx",
                      settings=CalibrationSettings(cache=tmp_path / "missing.json"))
    with pytest.raises(EdgeclsError, match="needs the training images"):
        quantize_int8(fp32_file("new2"), tmp_path / "b.onnx", data=None)
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_other_calibration_methods(method, fp32_file, tiny_cifar, tmp_path):
    out = tmp_path / "new2.int8.onnx"
    quantize_int8(fp32_file("new2"), out, data=tiny_cifar, record_path=tmp_path / "r.json",
                  settings=CalibrationSettings(method=method, size=128))
    assert trt_violations(onnx.load(str(out))) == []
    assert ModelMetadata.read(out).quantization["method"] == method
    reference = fp32_file("new2").with_name("new2.reference.npz")
    assert pytorch_agreement(out, reference, tiny_cifar.test_images) >= 0.9


def test_calibration_indices_are_a_seeded_subset():
    first = calibration_indices(1000, 100, 0)
    assert np.array_equal(first, calibration_indices(1000, 100, 0))
    assert len(np.unique(first)) == 100 and np.all(np.diff(first) > 0) and first.max() < 1000
    assert not np.array_equal(first, calibration_indices(1000, 100, 1))
    with pytest.raises(EdgeclsError, match="exceeds the 1000 training images"):
        calibration_indices(1000, 1001, 0)
    validation = np.arange(0, 1000, 4)
    outside = calibration_indices(1000, 100, 0, exclude=validation)
    assert np.array_equal(outside, calibration_indices(1000, 100, 0, exclude=validation))
    assert len(np.unique(outside)) == 100 and np.all(np.diff(outside) > 0) and not set(outside) & set(validation)
    with pytest.raises(EdgeclsError, match="size 751 exceeds the 750 training images outside the 250 validation images"):
        calibration_indices(1000, 751, 0, exclude=validation)


def test_export_calibrates_outside_the_validation_split(new2_export, trained_checkpoint, tiny_cifar):
    validation = load_checkpoint(trained_checkpoint("new2")).validation_indices(tiny_cifar)
    record = CalibrationRecord.read(new2_export.calibration)
    assert len(validation) == 40 and len(record.indices) == 200
    assert not set(record.indices) & set(validation.tolist())


@pytest.mark.parametrize("target", ["trt", "cpu"])
def test_a_float_layer_between_int8_layers_stays_float_in_onnx_runtime(target, fp32_file, tiny_cifar, tmp_path):
    """ONNX Runtime's optimizer gives a Conv that reads a DequantizeLinear output int8 weights of its own when it loads
    the file; a float layer must therefore read (and write) float tensors, while its neighbours stay int8."""
    fp32 = fp32_file("new2")
    prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), target, tmp_path)
    ranges = prepared.calibrate(tiny_cifar.train_images[:64], "minmax")
    middle = prepared.layers[2].name  # conv3, between conv2 and conv4
    model = prepared.quantize(ranges, "minmax", [middle], fp32)
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for graph in (model, onnx.load(str(optimized))):
        node = next(node for node in graph.graph.node if node.name == middle)
        assert node.input[1] in arrays(graph) and arrays(graph)[node.input[1]].dtype == np.float32
        assert producer_of(graph, node.input[0]).op_type != "DequantizeLinear"
    neighbours = [prepared.layers[1].name, prepared.layers[3].name]
    for node in model.graph.node:
        if node.name in neighbours:
            assert producer_of(model, node.input[1]).op_type == "DequantizeLinear", node.name
            assert producer_of(model, node.input[0]).op_type == "DequantizeLinear", node.name
    # The int8 layer before the float one writes float: no 8-bit grid of its own pre-ReLU range on the way.
    before = next(node for node in model.graph.node if node.name == neighbours[0])
    assert not [user for user in consumers(model.graph)[before.output[0]] if user.op_type == "QuantizeLinear"]
    # With every layer int8, the logits still come out of the last layer in float, not through an 8-bit grid.
    everything = prepared.quantize(ranges, "minmax", [], fp32)
    assert producer_of(everything, "logits").op_type == "Gemm"
    assert producer_of(everything, producer_of(everything, "logits").input[1]).op_type == "DequantizeLinear"
