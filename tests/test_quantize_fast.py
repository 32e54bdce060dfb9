"""edgecls.quantize without torch: option checks, calibration images, the calibration record and its refusals, the
quantizer's options per target, which nodes stay float, and TensorRT's Q/DQ rules, on the tiny ONNX classifier of
tests/tiny_classifier.py and on small Q/DQ graphs built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import refusal
from edgecls import quantize
from edgecls.data import seeded_subset
from edgecls.defaults import CALIBRATION_METHODS
from edgecls.formats import CalibrationRecord, ModelMetadata
from edgecls.quantize import (CalibrationSettings, ImageBatches, Int8Result, PreparedModel, QuantizableLayer,
                              around_float_layers, calibration_indices, check_ranges, default_float_layers,
                              fp32_metadata, load_calibration_record, new_calibration_record, ort_method,
                              quantizable_layers, quantization_options, quantization_record, quantize_int8, save_int8,
                              trt_violations, validate_options)
from tiny_classifier import CHECKPOINT_SHA, LAYERS, classifier, tiny_data, write_classifier


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory):
    return write_classifier(data, tmp_path_factory.mktemp("tiny") / "tiny.onnx", fragile=False)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if tensor in node.output), None)


def weight_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Layer -> 'float' (a float constant weight) or the dtype of the constant its DequantizeLinear reads."""
    constants = initializers(model)
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            weight = node.input[1]
            kinds[node.name] = "float" if weight in constants else str(constants[producer(model, weight).input[0]].dtype)
    return kinds


def logits(model: onnx.ModelProto | Path, inputs: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"images": inputs})[0]


# ----------------------------------------------------------------------------------------------- options

def test_settings_are_checked_when_made():
    assert refusal(CalibrationSettings, "gpu") == "unknown quantization target 'gpu'; choose one of trt, cpu"
    assert refusal(CalibrationSettings, "trt", "median") == (
        "unknown calibration method 'median'; choose one of percentile, minmax, entropy")
    assert refusal(CalibrationSettings, "cpu", None, 0) == "calibration size must be at least 1, got 0"
    assert refusal(CalibrationSettings, "cpu", None, None, -1) == (
        "calibration seed -1 is negative; use a whole number from 0 up")
    assert refusal(CalibrationSettings, "cpu", None, None, 2**32) == (
        f"calibration seed {2**32} is too large; use a whole number from 0 to {2**32 - 1}")
    settings = CalibrationSettings("cpu", "minmax", 1, 2**32 - 1, "calib/x.json")
    assert (settings.target, settings.method, settings.size, settings.seed, settings.cache) == (
        "cpu", "minmax", 1, 2**32 - 1, Path("calib/x.json"))
    assert settings.chosen_method == "minmax" and settings.methods == ("minmax",)
    default = CalibrationSettings()
    assert (default.target, default.method, default.size, default.seed, default.cache) == ("trt", None, None, 0, None)
    assert default.chosen_method == "percentile" and default.methods == tuple(CALIBRATION_METHODS)
    for target in ("trt", "cpu"):
        for method in CALIBRATION_METHODS:
            validate_options(target, method, None)
    assert refusal(validate_options, "trt", None, 5) == (
        "unknown calibration method None; choose one of percentile, minmax, entropy")


def test_ort_method_names_onnx_runtimes_calibrators():
    from onnxruntime.quantization import CalibrationMethod
    assert [ort_method(m) for m in ("minmax", "entropy", "percentile")] == [
        CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile]


def test_calibration_indices_default_size_leaves_out_the_validation_images(monkeypatch):
    assert np.array_equal(calibration_indices(50, None, 3), seeded_subset(50, 50, 3))
    exclude = np.array([1, 1, 2, 3, 4])  # four distinct
    allowed = np.setdiff1d(np.arange(50), exclude)
    assert np.array_equal(calibration_indices(50, None, 3, exclude), allowed[seeded_subset(46, 46, 3)])
    assert np.array_equal(calibration_indices(50, None, 3, np.array([], np.int64)), seeded_subset(50, 50, 3))
    assert np.array_equal(calibration_indices(50, 50, 3), seeded_subset(50, 50, 3))  # exactly every image
    assert np.array_equal(calibration_indices(50, 46, 3, exclude), allowed[seeded_subset(46, 46, 3)])
    monkeypatch.setattr(quantize, "DEFAULT_CALIBRATION_SIZE", 10)
    assert np.array_equal(calibration_indices(50, None, 5, exclude), allowed[seeded_subset(46, 10, 5)])
    assert refusal(calibration_indices, 4, None, 0, np.arange(4)) == (
        "the 4 training images leave none for calibration outside the validation split; train with a smaller "
        "--val-split")
    assert len(calibration_indices(4, None, 0, np.arange(3))) == 1
    assert refusal(calibration_indices, 50, 51, 0) == (
        "calibration size 51 exceeds the 50 training images; pass a smaller --calibration-size")
    assert refusal(calibration_indices, 50, 47, 0, exclude) == (
        "calibration size 47 exceeds the 46 training images outside the 4 validation images; pass a smaller "
        "--calibration-size")


def test_image_batches_are_equal_sized_divisors_of_the_image_count():
    inputs = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
    batches = ImageBatches(inputs, "x", batch_size=5)
    sizes = []
    while (batch := batches.get_next()) is not None:
        assert list(batch) == ["x"]
        sizes.append(batch["x"])
    assert [len(b) for b in sizes] == [4, 4, 4] and np.array_equal(np.concatenate(sizes), inputs)
    assert [len(b["x"]) for b in iter(ImageBatches(inputs[:7], "x").get_next, None)] == [7]  # default 64
    assert [len(b["x"]) for b in iter(ImageBatches(inputs[:7], "x", batch_size=6).get_next, None)] == [1] * 7
    assert [len(b["x"]) for b in iter(ImageBatches(inputs, "x", batch_size=12).get_next, None)] == [12]
    assert ImageBatches(inputs, "x", batch_size=12).get_next()["x"] is not None


# ----------------------------------------------------------------------------------------------- the record

def test_a_record_needs_the_training_images_and_notes_the_calibration(data, fp32):
    metadata = ModelMetadata.read(fp32)
    assert refusal(new_calibration_record, metadata, None, fp32, "minmax", 10, 0, None) == (
        "int8 calibration needs the training images: pass --data (or set EDGECLS_DATA), or --calibration-cache "
        "with a record from an earlier export")
    exclude = np.arange(0, 120, 2)
    record = new_calibration_record(metadata, data, fp32, "entropy", 12, 5, exclude)
    assert (record.model, record.checkpoint_sha256, record.data_fingerprint, record.method, record.size,
            record.seed, record.ranges, record.split) == ("tiny", CHECKPOINT_SHA, data.fingerprint, "entropy", 12, 5,
                                                           {}, "train")
    assert record.indices == calibration_indices(120, 12, 5, exclude).tolist() and record.created_at
    assert {"onnxruntime", "onnx", "numpy"} <= set(record.versions)
    other = tiny_data(train_per_class=2, test_per_class=1)
    other.class_names[9] = "lorry"
    message = refusal(new_calibration_record, metadata, other, fp32, "minmax", 10, 0, None)
    assert message.startswith("the data has classes ") and f"but {fp32} was trained on" in message


def test_quantization_record_is_the_int8_files_metadata_entry(data, fp32):
    record = new_calibration_record(ModelMetadata.read(fp32), data, fp32, "minmax", 7, 3, None)
    assert quantization_record("cpu", record, {"b", "a"}, {"max_drop": 1.0}) == {
        "target": "cpu", "method": "minmax", "calibration_size": 7, "calibration_seed": 3,
        "calibration_split": "train", "float_layers": ["a", "b"], "budget": {"max_drop": 1.0}}
    assert quantization_record("trt", record, [])["budget"] is None


def test_only_an_fp32_file_is_quantized(data, fp32, tmp_path):
    fp16 = classifier(data)
    ModelMetadata.read(fp32).with_precision("fp16").embed(fp16)
    onnx.save(fp16, str(tmp_path / "tiny.fp16.onnx"))
    assert refusal(fp32_metadata, tmp_path / "tiny.fp16.onnx") == (
        f"{tmp_path / 'tiny.fp16.onnx'} is fp16, quantize the fp32 file instead")
    assert fp32_metadata(fp32) == ModelMetadata.read(fp32)


def ranges_record(data: dict) -> dict:
    return {"data": data}


def test_check_ranges_refuses_what_onnx_runtime_would_turn_into_nan():
    check_ranges(ranges_record({"a": {"lowest": -1.0, "highest": 2.0}, "b": {"lowest": {"data": [0.5]},
                                                                             "highest": {"data": [0.5]}},
                                  "c": {"lowest": [0.0, 5.0], "highest": [1.0, -2.0]}}), "src")  # the first of each
    for bad in (None, [], {}, {"data": {}}, {"data": []}):
        assert refusal(check_ranges, bad, "src") == "src holds no tensor ranges; drop --calibration-cache to recalibrate"
    for entry, shown in (({"lowest": 2.0, "highest": 1.0}, "2.0 to 1.0"),
                         ({"lowest": float("nan"), "highest": 1.0}, "nan to 1.0"),
                         ({"lowest": 0.0, "highest": float("inf")}, "0.0 to inf"),
                         ({"lowest": -float("inf"), "highest": 0.0}, "-inf to 0.0"),
                         ({"lowest": "x", "highest": 1.0}, "'x' to 1.0"),
                         ({"lowest": [], "highest": 1.0}, "[] to 1.0"),
                         ({"lowest": None, "highest": 1.0}, "None to 1.0"),
                         ({"lowest": {"data": [3.0]}, "highest": {"data": [1.0]}}, "[3.0] to [1.0]"),
                         ({"highest": 1.0}, "None to 1.0"),
                         ([1.0, 2.0], "None to None")):
        assert refusal(check_ranges, ranges_record({"ok": {"lowest": 0, "highest": 1}, "t": entry}), "src") == (
            f"src: tensor 't' has the range {shown}, not two finite numbers, lowest first; drop "
            "--calibration-cache to recalibrate")


def test_a_calibration_record_must_be_this_models_and_methods(data, fp32, tmp_path):
    metadata = ModelMetadata.read(fp32)
    record = new_calibration_record(metadata, data, fp32, "minmax", 7, 3, None)
    good = {"data": {"t": {"lowest": 0.0, "highest": 1.0}}}
    path = CalibrationRecord(**{**record.__dict__, "ranges": good}).write(tmp_path / "r.json")
    assert load_calibration_record(path, metadata, "minmax").ranges == good
    assert refusal(load_calibration_record, path, metadata, "entropy") == (
        f"calibration cache {path} holds minmax ranges, not entropy; pass --method minmax or drop "
        "--calibration-cache")
    other = metadata.__class__(**{**metadata.__dict__, "checkpoint_sha256": "d" * 64})
    assert refusal(load_calibration_record, path, other, "minmax") == (
        f"calibration cache {path} was computed for another checkpoint ({'c' * 12}...); drop --calibration-cache to "
        "recalibrate")
    empty = CalibrationRecord(**{**record.__dict__, "ranges": {"data": {}}}).write(tmp_path / "e.json")
    assert refusal(load_calibration_record, empty, metadata, "minmax") == (
        f"calibration cache {empty} holds no tensor ranges; drop --calibration-cache to recalibrate")


# ----------------------------------------------------------------------------------------------- the graph

def test_quantizable_and_default_float_layers(data):
    computed = classifier(data)
    computed.graph.node.insert(0, helper.make_node("Identity", ["w1"], ["w1_copy"], name="copy"))
    computed.graph.node[1].input[1] = "w1_copy"  # conv1's weight is no constant now: its bias alone counts
    assert quantizable_layers(computed)[0] == QuantizableLayer("conv1", "Conv", 4)
    model = classifier(data)
    assert quantizable_layers(model) == [QuantizableLayer("conv1", "Conv", 112), QuantizableLayer("conv2", "Conv", 148),
                                         QuantizableLayer("deconv", "ConvTranspose", 148),
                                         QuantizableLayer("fc", "Gemm", 2570)]
    assert default_float_layers(model) == ["conv1", "fc"]


def test_around_float_layers_are_the_nodes_between_a_float_layer_and_its_neighbours(data):
    model = classifier(data)
    assert around_float_layers(model, ["deconv"]) == ["relu3", "flatten", "relu2"]
    assert around_float_layers(model, ["conv1"]) == ["relu1"]  # nothing before it but the graph's input
    assert around_float_layers(model, ["fc"]) == ["flatten", "relu3"]
    assert around_float_layers(model, ["conv1", "conv2"]) == ["relu2", "relu1"]
    assert around_float_layers(model, []) == []


def test_quantization_options_per_target(data):
    from onnxruntime.quantization import QuantType
    model = classifier(data)
    assert quantization_options(model, "cpu", ["conv1"]) == {
        "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "per_channel": True,
        "reduce_range": False, "nodes_to_exclude": ["conv1", "relu1"]}
    assert quantization_options(model, "trt", ["fc"]) == {
        "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "per_channel": True,
        "reduce_range": False, "nodes_to_exclude": ["fc", "flatten", "relu3"],
        "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                          "TensorQuantOverrides": {"w3": [{"symmetric": True}]}}}
    assert quantization_options(model, "trt", [])["extra_options"]["TensorQuantOverrides"] == {
        "w3": [{"symmetric": True}], "w4": [{"symmetric": True}]}


@pytest.fixture(scope="module")
def prepared(fp32, data, tmp_path_factory):
    """Both targets prepared and calibrated with min-max on 24 training images."""
    made = {}
    for target in ("trt", "cpu"):
        model = PreparedModel.create(fp32, ModelMetadata.read(fp32), target, tmp_path_factory.mktemp(target))
        made[target] = (model, model.calibrate(data.train_images[:24], "minmax"))
    return made


def test_prepared_model_keeps_the_exported_layer_ops_and_runs_the_cpu_deconv_as_conv(prepared, fp32, data):
    inputs = ModelMetadata.read(fp32).preprocess(data.test_images)
    for target, rewritten in (("trt", "ConvTranspose"), ("cpu", "Conv")):
        model, _ = prepared[target]
        assert model.path == model.work_dir / "prepared.onnx" and model.target == target
        assert [(layer.name, layer.op) for layer in model.layers] == list(zip(LAYERS, ("Conv", "Conv", "ConvTranspose",
                                                                                      "Gemm")))
        on_disk = onnx.load(str(model.path))
        assert next(n for n in on_disk.graph.node if n.name == "deconv").op_type == rewritten
        assert next(n for n in model.model.graph.node if n.name == "deconv").op_type == rewritten
        np.testing.assert_allclose(logits(model.path, inputs), logits(fp32, inputs), rtol=1e-4, atol=1e-4)


def test_calibration_gives_a_range_per_tensor(prepared, data):
    model, ranges = prepared["trt"]
    assert {"images", "c1", "r1", "c2", "logits"} <= set(ranges["data"])
    low, high = ranges["data"]["r1"]["lowest"], ranges["data"]["r1"]["highest"]
    low, high = (float(np.asarray(v["data"] if isinstance(v, dict) else v).reshape(-1)[0]) for v in (low, high))
    assert low == 0.0 and high > 0  # after a ReLU
    again = model.calibrate(data.train_images[:24], "minmax")
    assert again == ranges and (model.work_dir / "calibration.minmax.json").is_file()


def test_quantize_leaves_the_float_layers_float_and_the_rest_int8(prepared, fp32, data):
    inputs = ModelMetadata.read(fp32).preprocess(data.test_images)
    model, ranges = prepared["trt"]
    trt = model.quantize(ranges, "minmax", ["conv1", "fc"], fp32)
    assert weight_kinds(trt) == {"conv1": "float", "conv2": "int8", "deconv": "int8", "fc": "float"}
    assert trt_violations(trt) == [] and producer(trt, "logits").op_type == "Gemm"
    # The int8 deconv's output only float nodes read (on to the float fc): no Q/DQ pair of its own there.
    assert not [node for node in trt.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "c3"]
    # Between int8 layers the pair stays: the deconv reads conv2's ReLU through a DequantizeLinear.
    assert producer(trt, next(n for n in trt.graph.node if n.name == "deconv").input[0]).op_type == "DequantizeLinear"
    assert {opset.domain for opset in trt.opset_import} <= {"", "ai.onnx"}
    agreement = (logits(trt, inputs).argmax(1) == logits(fp32, inputs).argmax(1)).mean()
    assert agreement >= 0.9
    cpu_model, cpu_ranges = prepared["cpu"]
    cpu = cpu_model.quantize(cpu_ranges, "minmax", [], fp32)
    assert weight_kinds(cpu) == {name: "int8" for name in LAYERS}
    assert producer(cpu, "logits").op_type == "Gemm"  # no 8-bit grid on the logits
    assert trt_violations(cpu)  # u8 activations, int32 biases: the cpu form
    assert (logits(cpu, inputs).argmax(1) == logits(fp32, inputs).argmax(1)).mean() >= 0.9
    assert refusal(model.quantize, {"data": {"nowhere": {"lowest": 0.0, "highest": 1.0}}}, "minmax", [], fp32) \
        .startswith(f"quantization of {fp32} failed (")


def test_quantize_int8_writes_the_file_and_its_record(fp32, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exclude = np.arange(0, 120, 2)
    settings = CalibrationSettings(method="minmax", size=20, seed=2)
    work_dirs = []
    create = PreparedModel.create.__func__

    def spied(cls, fp32_path, metadata, target, work_dir):
        work_dirs.append(work_dir)
        return create(cls, fp32_path, metadata, target, work_dir)

    monkeypatch.setattr(PreparedModel, "create", classmethod(spied))
    result = quantize_int8(str(fp32), str(tmp_path / "out.onnx"), data, settings, exclude=exclude,
                           work_dir=tmp_path)
    # Intermediate files go to a temporary folder inside work_dir, removed once done.
    assert work_dirs[0].parent == tmp_path and work_dirs[0].name.startswith("edgecls-quant-")
    assert result == Int8Result(tmp_path / "out.onnx", Path("calibration/tiny.minmax.json"), "tiny.minmax.json", False)
    record = CalibrationRecord.read(result.record_path)
    assert record.indices == calibration_indices(120, 20, 2, exclude).tolist() and record.ranges["data"]
    metadata = ModelMetadata.read(result.path)
    assert metadata.precision == "int8" and metadata.quantization == quantization_record("trt", record,
                                                                                         ["conv1", "fc"])
    assert weight_kinds(onnx.load(str(result.path))) == {"conv1": "float", "conv2": "int8", "deconv": "int8",
                                                         "fc": "float"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration", "out.onnx"]  # no work files left
    # Reusing the record gives the same file without the images, and writes no record.
    again = quantize_int8(fp32, tmp_path / "again.onnx", None, CalibrationSettings(method="minmax",
                                                                                   cache=result.record_path))
    assert again == Int8Result(tmp_path / "again.onnx", result.record_path, "tiny.minmax.json", True)
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "out.onnx").read_bytes()
    # A record of another graph's tensors: one line, and the earlier file stays.
    foreign = CalibrationRecord(**{**record.__dict__, "ranges": {"data": {"elsewhere": {"lowest": 0.0,
                                                                                        "highest": 1.0}}}})
    foreign_path = foreign.write(tmp_path / "foreign.json")
    message = refusal(quantize_int8, fp32, tmp_path / "again.onnx", None,
                      CalibrationSettings(method="minmax", cache=foreign_path))
    assert message == (f"calibration cache {foreign_path} does not fit the graph of tiny ('calibration_method'); "
                       "drop --calibration-cache to recalibrate")  # the cause's line: ONNX Runtime's KeyError
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "out.onnx").read_bytes()


def test_a_failure_without_a_calibration_record_is_reported_as_it_is(fp32, data, tmp_path, monkeypatch):
    foreign = {"data": {"elsewhere": {"lowest": 0.0, "highest": 1.0}}}  # ranges of another graph
    monkeypatch.setattr(PreparedModel, "calibrate", lambda self, images, method: foreign)
    assert refusal(quantize_int8, fp32, tmp_path / "o.onnx", data, CalibrationSettings(method="minmax", size=8),
                   tmp_path / "r.json") == (
        f"quantization of {fp32} failed ('calibration_method'); if you passed --calibration-cache, it belongs to "
        "another model: drop it")
    assert listing_of(tmp_path) == []


def listing_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_quantize_int8_checks_tensorrts_rules_for_trt_only(fp32, data, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "trt_violations", lambda model: ["q: one", "q: two"])
    settings = CalibrationSettings(method="minmax", size=8)
    assert refusal(quantize_int8, fp32, tmp_path / "o.onnx", data, settings, tmp_path / "r.json") == (
        "the int8 graph breaks TensorRT's Q/DQ rules: q: one (and 1 more)")
    assert listing_of(tmp_path) == []
    cpu = CalibrationSettings("cpu", "minmax", 8)
    assert quantize_int8(fp32, tmp_path / "o.onnx", data, cpu, tmp_path / "r.json").path == tmp_path / "o.onnx"


def test_data_of_other_classes_is_refused_naming_the_model(fp32, tmp_path):
    other = tiny_data(train_per_class=2, test_per_class=1)
    other.class_names[0] = "plane"
    message = refusal(quantize_int8, fp32, tmp_path / "o.onnx", other, CalibrationSettings(size=4))
    assert message.startswith("the data has classes ['plane', ") and f"but {fp32} was trained on" in message


def test_calibration_prints_nothing_of_its_own(prepared, data, capsys):
    model, _ = prepared["trt"]
    ranges = model.calibrate(data.train_images[:8], "entropy")
    assert ranges["data"] and capsys.readouterr().out == ""


def test_quantize_int8_cpu_target_to_an_explicit_record(fp32, data, tmp_path):
    result = quantize_int8(fp32, tmp_path / "cpu.onnx", data, CalibrationSettings("cpu", "minmax", 16),
                           record_path=str(tmp_path / "rec" / "r.json"))
    assert result.record_path == tmp_path / "rec" / "r.json" and result.record_path.is_file()
    model = onnx.load(str(result.path))
    assert next(n for n in model.graph.node if n.name == "deconv").op_type == "Conv"
    assert ModelMetadata.read(result.path).quantization["target"] == "cpu"
    assert CalibrationRecord.read(result.record_path).method == "minmax"


# ----------------------------------------------------------------------------------------------- TensorRT's rules

def qdq_graph(*, weight_dtype=np.int8, zero=0, scale=0.1, axis=None, user="Conv", weight_scales=1,
              bias_quantized=False, domain="") -> onnx.ModelProto:
    """x -> Q -> DQ -> user(x, DQ(weight) [, DQ(bias)]) -> y."""
    channels = 2
    weight = np.ones((channels, channels, 1, 1) if user != "Gemm" else (channels, channels), weight_dtype)
    w_scale = np.full(weight_scales, 0.5, np.float32) if weight_scales > 1 else np.float32(0.5)
    w_zero = np.zeros(weight_scales, weight_dtype) if weight_scales > 1 else np.array(0, weight_dtype)
    inits = [numpy_helper.from_array(weight, "w_q"), numpy_helper.from_array(np.asarray(w_scale), "w_scale"),
             numpy_helper.from_array(w_zero, "w_zero"),
             numpy_helper.from_array(np.array(scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(zero, np.int8 if weight_dtype is np.int8 else weight_dtype), "x_zero"),
             numpy_helper.from_array(np.ones(channels, np.int32 if bias_quantized else np.float32),
                                     "b_q" if bias_quantized else "b")]
    dq_attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q_x", domain=domain),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", **dq_attrs)]
    bias = "b"
    if bias_quantized:
        inits.append(numpy_helper.from_array(np.float32(0.05), "b_scale"))
        inits.append(numpy_helper.from_array(np.array(0, np.int32), "b_zero"))
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["bd"], name="dq_b"))
        bias = "bd"
    nodes.append(helper.make_node(user, ["xd", "w", bias], ["y"], name="layer"))
    shape = [1, channels] if user == "Gemm" else [1, channels, 1, 1]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_trt_violations_name_each_broken_rule():
    assert trt_violations(qdq_graph()) == []
    assert trt_violations(qdq_graph(weight_scales=2, axis=0)) == []
    assert trt_violations(qdq_graph(domain="com.microsoft")) == [
        "q_x: com.microsoft domain instead of the standard ONNX one"]
    assert trt_violations(qdq_graph(domain="ai.onnx")) == []
    assert trt_violations(qdq_graph(scale=0.0)) == ["q_x: scale is not a constant > 0", "dq_x: scale is not a constant > 0"]
    assert trt_violations(qdq_graph(scale=-1.0))[0] == "q_x: scale is not a constant > 0"
    assert trt_violations(qdq_graph(zero=3)) == [
        "q_x: zero point must be an int8 constant 0 (symmetric)", "dq_x: zero point must be an int8 constant 0 (symmetric)"]
    assert trt_violations(qdq_graph(weight_dtype=np.uint8)) == [
        f"{name}: zero point must be an int8 constant 0 (symmetric)" for name in ("q_x", "dq_x", "dq_w")]
    assert trt_violations(qdq_graph(bias_quantized=True)) == [
        "dq_b: zero point must be an int8 constant 0 (symmetric)",
        "dq_b: bias of layer is quantized (int32); TensorRT needs float biases"]
    assert trt_violations(qdq_graph(weight_scales=2)) == trt_violations(qdq_graph(weight_scales=2, axis=1)) == [
        "dq_w: Conv weight scales on axis 1, TensorRT needs axis 0"]
    assert trt_violations(qdq_graph(user="ConvTranspose", weight_scales=2, axis=0)) == [
        "dq_w: ConvTranspose weight is per-channel; per-tensor is the safe form"]
    assert trt_violations(qdq_graph(user="Gemm", weight_scales=2, axis=0)) == [
        "dq_w: Gemm weight is per-channel; per-tensor is the safe form"]
    assert trt_violations(qdq_graph(user="ConvTranspose")) == [] and trt_violations(qdq_graph(user="Gemm")) == []


def test_trt_violations_judge_weights_and_biases_only_and_read_the_whole_graph():
    for user in ("ConvTranspose", "Gemm"):
        assert trt_violations(qdq_graph(user=user, bias_quantized=True)) == [
            "dq_b: zero point must be an int8 constant 0 (symmetric)",
            "dq_b: bias of layer is quantized (int32); TensorRT needs float biases"]
    model = qdq_graph(zero=3)
    model.graph.node.insert(0, helper.make_node("Identity", ["x0"], ["unused"], name="first"))  # a plain node first
    assert trt_violations(model)[:1] == ["q_x: zero point must be an int8 constant 0 (symmetric)"]
    no_bias = qdq_graph(weight_scales=2, axis=0)
    del no_bias.graph.node[-1].input[2]  # a layer without a bias
    assert trt_violations(no_bias) == []
    dangling = qdq_graph()
    dangling.graph.node.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["nobody"],
                                                name="dq_unread"))
    assert trt_violations(dangling) == []
    # Per-channel scales on an activation (not a weight) are not the weight rules' business.
    activation = qdq_graph(user="Gemm")
    activation.graph.initializer.extend([numpy_helper.from_array(np.full(2, 0.1, np.float32), "x_scales"),
                                         numpy_helper.from_array(np.zeros(2, np.int8), "x_zeros")])
    for node in activation.graph.node[:2]:
        node.input[1:] = ["x_scales", "x_zeros"]
        node.attribute.append(helper.make_attribute("axis", 1))
    assert trt_violations(activation) == []


def test_trt_violations_need_constant_scales_and_zero_points():
    model = qdq_graph()
    node = model.graph.node[0]
    node.input[1] = "computed_scale"
    del node.input[2]
    assert trt_violations(model)[:2] == ["q_x: scale is not a constant > 0",
                                        "q_x: zero point must be an int8 constant 0 (symmetric)"]


def test_save_int8_refuses_a_graph_tensorrt_would_reject_for_trt_only(tmp_path):
    broken = qdq_graph(zero=3, bias_quantized=True)
    assert refusal(save_int8, broken, "trt", tmp_path / "a.onnx") == (
        "the int8 graph breaks TensorRT's Q/DQ rules: q_x: zero point must be an int8 constant 0 (symmetric) "
        "(and 3 more)")
    assert not (tmp_path / "a.onnx").exists()
    assert save_int8(qdq_graph(), "trt", tmp_path / "b.onnx") == tmp_path / "b.onnx"
    assert onnx.load(str(tmp_path / "b.onnx")) == qdq_graph()
    assert save_int8(broken, "cpu", str(tmp_path / "c.onnx")) == tmp_path / "c.onnx"
