"""edgecls.onnx_graph's rewrites on small graphs built with onnx.helper, each checked by running the graph in ONNX
Runtime before and after (numpy inputs) and by the exact structure it leaves: which nodes it rewrites, which it must
leave alone, and what it returns."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecls.onnx_graph import (cut_inputs, drop_unused_opsets, fold_batchnorm, from_node, transposed_to_conv,
                                unquantize_float_side_outputs, with_outputs)

RNG = np.random.default_rng(0)


def value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def model_of(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    return twin


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ----------------------------------------------------------------------------------------------- fold_batchnorm

def bn_params(prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [const(f"{prefix}.gamma", RNG.uniform(0.5, 2, channels)), const(f"{prefix}.beta", RNG.normal(0, 1, channels)),
            const(f"{prefix}.mean", RNG.normal(0, 1, channels)), const(f"{prefix}.var", RNG.uniform(0.5, 2, channels))]


def conv_bn(op: str = "Conv", bias: bool = True, group: int = 1, epsilon: float | None = None, name: str = "conv",
            extra_reader: bool = False, bn_is_output_input: bool = False) -> onnx.ModelProto:
    """x (1x4x5x5) -> op (4->4, k3) -> BatchNormalization -> y."""
    weight_shape = (4, 4 // group, 3, 3)
    inits = [const("w", RNG.normal(0, 0.5, weight_shape)), *bn_params("bn", 4)]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(const("b", RNG.normal(0, 0.5, 4)))
        conv_inputs.append("b")
    bn_attrs = {} if epsilon is None else {"epsilon": epsilon}
    nodes = [helper.make_node(op, conv_inputs, ["c"], name=name, pads=[1, 1, 1, 1], group=group),
             helper.make_node("BatchNormalization", ["c", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["y"],
                              name="bn", **bn_attrs)]
    outputs = [value("y", [1, 4, 5, 5])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        outputs.append(value("r", [1, 4, 5, 5]))
    if bn_is_output_input:
        outputs.append(value("c", [1, 4, 5, 5]))
    return model_of(nodes, [value("x", [1, 4, 5, 5])], outputs, inits)


@pytest.mark.parametrize("op, bias, epsilon, name", [("Conv", True, None, "conv"), ("Conv", False, 0.5, "conv"),
                                                     ("ConvTranspose", True, 1e-3, "deconv"),
                                                     ("ConvTranspose", False, None, "")])
def test_fold_batchnorm_folds_into_the_conv_exactly(op, bias, epsilon, name):
    original = conv_bn(op, bias, epsilon=epsilon, name=name)
    folded = copy(original)
    assert fold_batchnorm(folded) == 1
    assert ops(folded) == [op]
    conv = folded.graph.node[0]
    assert list(conv.output) == ["y"] and conv.input[2] == f"{name or 'c'}.folded_bias"
    assert sorted(init.name for init in folded.graph.initializer) == sorted(["w", f"{name or 'c'}.folded_bias"])
    onnx.checker.check_model(folded, full_check=True)
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x=x)[0], run(original, x=x)[0], rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_default_epsilon_is_onnxs():
    original = conv_bn(epsilon=None)
    for init in original.graph.initializer:
        if init.name == "bn.var":  # tiny variances make epsilon matter
            init.CopyFrom(const("bn.var", np.full(4, 1e-5)))
    folded = copy(original)
    assert fold_batchnorm(folded) == 1
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x=x)[0], run(original, x=x)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("case", ["grouped deconv", "two readers", "graph output", "relu before", "computed gamma",
                                  "computed weight", "two outputs"])
def test_fold_batchnorm_leaves_what_it_cannot_fold(case):
    model = {"grouped deconv": lambda: conv_bn("ConvTranspose", group=2),
             "two readers": lambda: conv_bn(extra_reader=True),
             "graph output": lambda: conv_bn(bn_is_output_input=True)}.get(case, conv_bn)()
    if case == "relu before":
        model.graph.node[0].op_type = "Relu"
    if case == "computed gamma":
        model.graph.node[1].input[1] = "x_gamma"
    if case == "computed weight":
        model.graph.node[0].input[1] = "x_weight"
    if case == "two outputs":
        model.graph.node[1].output.append("saved_mean")
    before = copy(model)
    assert fold_batchnorm(model) == 0
    assert model.graph.node == before.graph.node  # (an initializer no node reads any more is dropped)
    kept = {init.name: init for init in before.graph.initializer}
    assert all(init == kept[init.name] for init in model.graph.initializer)


def test_fold_batchnorm_folds_a_grouped_conv_and_counts_several():
    first = conv_bn(group=2)
    assert fold_batchnorm(copy(first)) == 1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", *[f"p.{n}" for n in ("gamma", "beta", "mean", "var")]],
                              ["y1"], name="bn1"),
             helper.make_node("Conv", ["y1", "w2"], ["c2"], name="b", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", *[f"q.{n}" for n in ("gamma", "beta", "mean", "var")]],
                              ["y"], name="bn2")]
    model = model_of(nodes, [value("x", [1, 4, 5, 5])], [value("y", [1, 4, 5, 5])],
                     [const("w1", RNG.normal(size=(4, 4, 3, 3))), const("w2", RNG.normal(size=(4, 4, 3, 3))),
                      *bn_params("p", 4), *bn_params("q", 4), const("unused", [1.0])])
    folded = copy(model)
    assert fold_batchnorm(folded) == 2 and ops(folded) == ["Conv", "Conv"]
    assert "unused" not in {init.name for init in folded.graph.initializer}
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x=x)[0], run(model, x=x)[0], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- transposed_to_conv

def deconv(kernel=(3, 3), pads=(1, 1, 1, 1), bias=True, **attrs) -> onnx.ModelProto:
    """x (1x3x6x6) -> ConvTranspose (3->2) -> y."""
    weight = RNG.normal(size=(3, 2, *kernel))
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    node_attrs = {"pads": list(pads), **attrs} if pads is not None else attrs
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="deconv", **node_attrs)
    inits = [const("w", weight)] + ([const("b", RNG.normal(size=2))] if bias else [])
    graph_model = model_of([node], [value("x", [1, 3, 6, 6])], [value("y", None)], inits)
    graph_model.graph.output[0].type.tensor_type.ClearField("shape")
    return graph_model


@pytest.mark.parametrize("kernel, pads, attrs", [
    ((3, 3), (1, 1, 1, 1), {}), ((3, 3), (0, 0, 0, 0), {}), ((3, 2), (2, 0, 0, 1), {}), ((2, 2), None, {}),
    ((3, 3), (1, 1, 1, 1), {"strides": [1, 1], "dilations": [1, 1], "group": 1, "auto_pad": "NOTSET",
                            "output_padding": [0, 0]})])
def test_a_stride_1_conv_transpose_becomes_the_same_conv(kernel, pads, attrs):
    original = deconv(kernel, pads, **attrs)
    rewritten = copy(original)
    assert transposed_to_conv(rewritten) == 1
    node = rewritten.graph.node[0]
    used = pads or (0, 0, 0, 0)
    assert node.op_type == "Conv" and list(node.input) == ["x", "w", "b"] and list(node.output) == ["y"]
    assert attributes(node) == {"kernel_shape": list(kernel), "strides": [1, 1], "dilations": [1, 1], "group": 1,
                                "pads": [k - 1 - p for p, k in zip(used, list(kernel) * 2)]}
    assert numpy_helper.to_array(rewritten.graph.initializer[0]).shape == (2, 3, *kernel)
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, x=x)[0], run(original, x=x)[0], rtol=1e-5, atol=1e-5)


def test_conv_transpose_without_bias_and_with_an_explicit_kernel_shape():
    original = deconv((3, 3), (1, 1, 1, 1), bias=False, kernel_shape=[3, 3])
    rewritten = copy(original)
    assert transposed_to_conv(rewritten) == 1 and list(rewritten.graph.node[0].input) == ["x", "w"]
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, x=x)[0], run(original, x=x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [{"strides": [2, 2]}, {"strides": [1, 2]}, {"dilations": [1, 2]}, {"group": 3},
                                   {"output_padding": [0, 1], "strides": [1, 1]}, {"output_shape": [6, 6]},
                                   {"auto_pad": "SAME_UPPER"}, {"pads": [0, 0, 3, 0]}, {"pads": [0, 3, 0, 0]}])
def test_conv_transposes_that_are_no_plain_conv_are_left_alone(attrs):
    attrs = dict(attrs)  # the parameter itself stays as it is, for a second run in the same process
    pads = attrs.pop("pads", (0, 0, 0, 0))
    model = deconv((3, 3), None if "auto_pad" in attrs or "output_shape" in attrs else pads, **attrs)
    if "group" in attrs:
        model.graph.initializer[0].CopyFrom(const("w", RNG.normal(size=(3, 1, 3, 3))))
    before = copy(model)
    assert transposed_to_conv(model) == 0 and model == before


def test_a_shared_or_computed_weight_is_left_alone():
    shared = deconv()
    shared.graph.node.append(helper.make_node("Identity", ["w"], ["w_copy"], name="reader"))
    before = copy(shared)
    assert transposed_to_conv(shared) == 0 and shared == before
    computed = deconv()
    computed.graph.node[0].input[1] = "x"
    assert transposed_to_conv(computed) == 0 and computed.graph.node[0].op_type == "ConvTranspose"
    other = deconv()
    other.graph.node[0].op_type = "Conv"
    assert transposed_to_conv(other) == 0


def test_several_conv_transposes_are_counted():
    nodes = [helper.make_node("ConvTranspose", ["x", "w1"], ["h"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h", "w2"], ["y"], name="b", pads=[1, 1, 1, 1])]
    model = model_of(nodes, [value("x", [1, 3, 6, 6])], [value("y", [1, 3, 6, 6])],
                     [const("w1", RNG.normal(size=(3, 3, 3, 3))), const("w2", RNG.normal(size=(3, 3, 3, 3)))])
    rewritten = copy(model)
    assert transposed_to_conv(rewritten) == 2 and ops(rewritten) == ["Conv", "Conv"]
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, x=x)[0], run(model, x=x)[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- Q/DQ side outputs

def qdq_model(readers: list[tuple[str, str]], exposed: int = 0, producer: str = "Conv",
              extra_quantize_user: bool = False) -> onnx.ModelProto:
    """x -> layer (Conv 2->2, 1x1) -> c -> Q -> DQ(s) -> readers [(name, op)] and/or `exposed` DQs writing outputs."""
    inits = [const("w", RNG.normal(size=(2, 2, 1, 1))), const("s", 0.05),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    layer_inputs = ["x", "w"] if producer == "Conv" else ["x"]
    nodes = [helper.make_node(producer, layer_inputs, ["c"], name="layer"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q")]
    outputs = []
    if readers:
        nodes.append(helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dq"))
        for index, (name, op) in enumerate(readers):
            nodes.append(helper.make_node(op, ["cd"], [f"out{index}"], name=name))
            outputs.append(value(f"out{index}", [1, 2, 3, 3]))
    for index in range(exposed):
        nodes.append(helper.make_node("DequantizeLinear", ["cq", "s", "z"], [f"logits{index}"], name=f"dq_out{index}"))
        outputs.append(value(f"logits{index}", [1, 2, 3, 3]))
    if extra_quantize_user:
        nodes.append(helper.make_node("Identity", ["cq"], ["raw"], name="raw"))
        outputs.append(helper.make_tensor_value_info("raw", TensorProto.INT8, [1, 2, 3, 3]))
    return model_of(nodes, [value("x", [1, 2, 3, 3])], outputs, inits)


def test_a_pair_only_float_nodes_read_is_removed():
    model = qdq_model([("relu", "Relu"), ("neg", "Neg")])
    original = copy(model)
    assert unquantize_float_side_outputs(model, {"relu", "neg"}) == 1
    assert ops(model) == ["Conv", "Relu", "Neg"]
    assert [list(node.input) for node in model.graph.node[1:]] == [["c"], ["c"]]
    assert sorted(init.name for init in model.graph.initializer) == ["w"]
    onnx.checker.check_model(model, full_check=True)
    x = RNG.normal(size=(1, 2, 3, 3)).astype(np.float32)
    relu, neg = run(model, x=x)
    float_conv = np.einsum("oi,bihw->bohw", numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0], x)
    np.testing.assert_allclose(relu, np.maximum(float_conv, 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(run(original, x=x)[1], neg, atol=1e-4)  # the pair did quantize


def test_the_graph_output_comes_from_the_layer_itself_again():
    model = qdq_model([], exposed=1)
    assert unquantize_float_side_outputs(model, set()) == 1
    assert ops(model) == ["Conv"] and list(model.graph.node[0].output) == ["logits0"]
    onnx.checker.check_model(model, full_check=True)
    both = qdq_model([("relu", "Relu")], exposed=1)
    assert unquantize_float_side_outputs(both, {"relu"}) == 1
    assert ops(both) == ["Conv", "Relu"] and list(both.graph.node[1].input) == ["logits0"]
    assert list(both.graph.node[0].output) == ["logits0"]
    onnx.checker.check_model(both, full_check=True)


@pytest.mark.parametrize("case", ["int8 reader", "float layer", "not a layer", "two outputs", "raw reader"])
def test_pairs_an_int8_node_reads_stay(case):
    model, float_side = {
        "int8 reader": (qdq_model([("relu", "Relu"), ("conv2", "Neg")]), {"relu"}),
        "float layer": (qdq_model([("relu", "Relu")]), {"relu", "layer"}),
        "not a layer": (qdq_model([("relu", "Relu")], producer="Relu"), {"relu"}),
        "two outputs": (qdq_model([], exposed=2), set()),
        "raw reader": (qdq_model([("relu", "Relu")], extra_quantize_user=True), {"relu", "raw"}),
    }[case]
    before = copy(model)
    assert unquantize_float_side_outputs(model, float_side) == 0 and model.graph.node == before.graph.node


def test_a_quantize_of_the_graph_input_is_left_alone():
    model = qdq_model([("relu", "Relu")])
    model.graph.node[1].input[0] = "x"  # no producer
    assert unquantize_float_side_outputs(model, {"relu"}) == 0


# ----------------------------------------------------------------------------------------------- opsets

def test_drop_unused_opsets_keeps_the_default_domain_and_the_used_ones():
    model = model_of([helper.make_node("Relu", ["x"], ["h"]),
                      helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft")],
                     [value("x", [2])], [value("y", [2])], [])
    model.opset_import.extend([helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3),
                               helper.make_opsetid("ai.onnx", 17), helper.make_opsetid("com.ms.internal.nhwc", 1)])
    assert drop_unused_opsets(model) == 2
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17), ("com.microsoft", 1), ("ai.onnx", 17)]
    plain = model_of([helper.make_node("Relu", ["x"], ["y"])], [value("x", [2])], [value("y", [2])], [])
    plain.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert drop_unused_opsets(plain) == 1 and [o.domain for o in plain.opset_import] == [""]
    assert drop_unused_opsets(plain) == 0


# ----------------------------------------------------------------------------------------------- parts of a graph

def three_steps() -> onnx.ModelProto:
    """x -> relu -> a; (a, x) -> add -> b; (b, a, k) -> sum -> y."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Add", ["a", "x"], ["b"], name="add"),
             helper.make_node("Sum", ["b", "a", "k"], ["y"], name="sum")]
    model = model_of(nodes, [value("x", [2, 3])], [value("y", [2, 3])], [const("k", np.full((2, 3), 0.5))])
    return onnx.shape_inference.infer_shapes(model)


def test_cut_inputs_are_what_the_rest_reads_from_before_it():
    model = three_steps()
    assert cut_inputs(model, 0) == ["x"]
    assert cut_inputs(model, 1) == ["a", "x"]
    assert cut_inputs(model, 2) == ["b", "a"]  # not the constant k


def test_from_node_computes_the_rest_from_the_cut():
    model = three_steps()
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    a = np.maximum(x, 0)
    for start, feeds in ((1, {"a": a, "x": x}), (2, {"b": a + x, "a": a})):
        part = from_node(model, start, cut_inputs(model, start))
        assert [node.name for node in part.graph.node] == ["relu", "add", "sum"][start:]
        assert [v.name for v in part.graph.input] == list(feeds)
        assert not {v.name for v in part.graph.value_info} & set(feeds)
        np.testing.assert_allclose(run(part, **feeds)[0], run(model, x=x)[0], rtol=1e-6)
    assert [init.name for init in from_node(model, 2, ["b", "a"]).graph.initializer] == ["k"]
    assert len(model.graph.node) == 3  # the model itself is untouched


def test_with_outputs_adds_intermediate_tensors():
    model = three_steps()
    augmented = with_outputs(model, ["b", "a"])
    assert [v.name for v in augmented.graph.output] == ["y", "b", "a"] and len(model.graph.output) == 1
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    y, b, a = run(augmented, x=x)
    np.testing.assert_allclose(a, np.maximum(x, 0)) and np.testing.assert_allclose(b, a + x, rtol=1e-6)
    assert augmented.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT


# ----------------------------------------------------------------------------------------------- nvinfer

def nvinfer_input(images: np.ndarray, mean: tuple) -> np.ndarray:
    """What nvinfer hands the network: net-scale-factor 1/255 * (pixel - offsets), offsets 255 * mean (NCHW)."""
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32)
    return (pixels - 255 * np.asarray(mean, np.float32).reshape(1, 3, 1, 1)) / 255


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny():
    """The tiny classifier, with a mean and a std of its own per channel."""
    from tiny_classifier import classifier, metadata, preprocessing, tiny_data
    data = tiny_data(train_per_class=1, test_per_class=2)
    preprocess = type(preprocessing())((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), preprocessing().class_names, 32, 8)
    model = classifier(data, fragile=False)
    type(metadata(data))(**{**metadata(data).__dict__, "preprocess": preprocess}).embed(model)
    return model, preprocess, data.test_images


def test_nvinfer_rewrite_gives_edgecls_probabilities_from_nvinfers_input(tiny):
    from edgecls.onnx_graph import fold_normalization_for_nvinfer
    model, preprocess, images = tiny
    original = copy(model)
    expected = softmax(run(model, images=preprocess(images))[0])
    rewritten = fold_normalization_for_nvinfer(model, preprocess, "images", "logits")
    assert model == original  # a new model
    assert [v.name for v in rewritten.graph.output] == ["probabilities"]
    assert [d.dim_param or d.dim_value for d in rewritten.graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]
    assert [d.dim_param or d.dim_value for d in rewritten.graph.input[0].type.tensor_type.shape.dim] == [
        "batch", 3, 32, 32]
    assert rewritten.graph.name == "tiny_nvinfer" and rewritten.producer_name == "edgecls"
    assert rewritten.doc_string == (f"{model.doc_string} for DeepStream nvinfer: net-scale-factor 1/255, offsets "
                                    "255*mean, 1/std folded into the first Conv")
    assert rewritten.ir_version == model.ir_version and list(rewritten.opset_import) == list(model.opset_import)
    assert not rewritten.metadata_props
    assert [node.name for node in rewritten.graph.node][:2] == ["center_crop", "conv1"]
    assert rewritten.graph.node[-1].name == "softmax" and attributes(rewritten.graph.node[-1]) == {"axis": 1}
    onnx.checker.check_model(rewritten, full_check=True)
    found = run(rewritten, images=nvinfer_input(images, preprocess.mean))[0]
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)


def test_nvinfer_rewrite_without_the_crop_and_with_another_output_name(tiny):
    from edgecls.onnx_graph import fold_normalization_for_nvinfer
    model, preprocess, images = tiny
    rewritten = fold_normalization_for_nvinfer(model, preprocess, "images", "logits", "scores", crop_in_graph=False)
    assert [v.name for v in rewritten.graph.output] == ["scores"] and "Slice" not in ops(rewritten)
    assert [d.dim_value for d in rewritten.graph.input[0].type.tensor_type.shape.dim][2:] == [8, 8]
    crops = images[:, 12:20, 12:20]
    np.testing.assert_allclose(run(rewritten, images=nvinfer_input(crops, preprocess.mean))[0],
                               softmax(run(model, images=preprocess(images))[0]), rtol=1e-4, atol=1e-6)
    full = copy(model)
    full.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    full.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 32
    same = type(preprocess)(preprocess.mean, preprocess.std, preprocess.class_names, 32, 32)
    full.graph.name = ""
    whole = fold_normalization_for_nvinfer(full, same, "images", "logits")
    assert "Slice" not in ops(whole) and whole.graph.name == "edgecls_nvinfer"


def test_nvinfer_rewrite_refuses_graphs_it_cannot_fold(tiny):
    from types import SimpleNamespace

    from edgecls.errors import EdgeclsError
    from edgecls.onnx_graph import fold_normalization_for_nvinfer
    model, preprocess, _ = tiny

    def refused(graph, *, output="logits", prep=preprocess) -> str:
        with pytest.raises(EdgeclsError) as info:
            fold_normalization_for_nvinfer(graph, prep, "images", output)
        return str(info.value)

    two = copy(model)
    two.graph.node.append(helper.make_node("Relu", ["images"], ["side"], name="side"))
    assert refused(two) == ("the input 'images' feeds Conv, Relu, not one Conv: its normalization cannot be folded "
                            "into it; give the fp32 export (--precision fp16 makes the fp16 engine from it) or an int8 "
                            "export whose first layer stayed float")
    none = copy(model)
    none.graph.node[0].input[0] = "elsewhere"
    assert refused(none).startswith("the input 'images' feeds nothing, not one Conv")
    relu = copy(model)
    relu.graph.node[0].op_type = "Relu"
    assert refused(relu).startswith("the input 'images' feeds Relu, not one Conv")
    second = copy(model)
    second.graph.node[0].input[:] = ["w1", "images", "b1"]
    assert refused(second).startswith("the input 'images' feeds Conv, not one Conv")
    shared = copy(model)
    shared.graph.node.append(helper.make_node("Identity", ["w1"], ["w1_copy"], name="reader"))
    assert refused(shared) == ("the first Conv's weights 'w1' are not a constant of that Conv alone (a quantized "
                               "first layer?); give the fp32 export or an int8 export whose first layer stayed float")
    computed = copy(model)
    computed.graph.node[0].input[1] = "r1"
    assert refused(computed).startswith("the first Conv's weights 'r1' are not a constant")
    for weight, shown in ((np.ones((4, 3, 3), np.float32), "[4, 3, 3] (float32)"),
                          (np.ones((4, 2, 3, 3), np.float32), "[4, 2, 3, 3] (float32)"),
                          (np.ones((4, 3, 3, 3), np.int8), "[4, 3, 3, 3] (int8)")):
        odd = copy(model)
        next(i for i in odd.graph.initializer if i.name == "w1").CopyFrom(numpy_helper.from_array(weight, "w1"))
        assert refused(odd) == (f"the first Conv's weights have shape {shown}, not float [out, 3, k, k]; this graph "
                                "cannot be folded")
    assert refused(model, output="probs") == "the graph has no output 'probs'; re-export the model"
    inverted = SimpleNamespace(std=preprocess.std, input_size=8, crop_size=32)
    assert refused(model, prep=inverted) == "the preprocessing crops 32 from 8 pixels; re-export the model"


def test_fold_batchnorm_goes_on_past_what_it_leaves():
    """A BatchNormalization after a Relu, one after a grouped ConvTranspose and one after a Conv whose weight is
    computed stay; one after a ConvTranspose that names no group (1 by default) is folded."""
    def bn(prefix, source, out):
        return helper.make_node("BatchNormalization", [source, *[f"{prefix}.{n}" for n in ("gamma", "beta", "mean",
                                                                                          "var")]], [out], name=prefix)

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), bn("p", "r", "a"),
             helper.make_node("ConvTranspose", ["a", "wg"], ["g"], name="grouped", pads=[1, 1, 1, 1], group=2),
             bn("q", "g", "b"),
             helper.make_node("Identity", ["wc"], ["computed"], name="identity"),
             helper.make_node("Conv", ["b", "computed"], ["d"], name="computed_weight", pads=[1, 1, 1, 1]),
             bn("t", "d", "e"),
             helper.make_node("ConvTranspose", ["e", "w"], ["c"], name="plain", pads=[1, 1, 1, 1]), bn("s", "c", "y")]
    model = model_of(nodes, [value("x", [1, 4, 5, 5])], [value("y", [1, 4, 5, 5])],
                     [const("wg", RNG.normal(size=(4, 2, 3, 3))), const("w", RNG.normal(size=(4, 4, 3, 3))),
                      const("wc", RNG.normal(size=(4, 4, 3, 3))),
                      *bn_params("p", 4), *bn_params("q", 4), *bn_params("t", 4), *bn_params("s", 4)])
    folded = copy(model)
    assert fold_batchnorm(folded) == 1
    assert ops(folded) == ["Relu", "BatchNormalization", "ConvTranspose", "BatchNormalization", "Identity", "Conv",
                           "BatchNormalization", "ConvTranspose"]
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x=x)[0], run(model, x=x)[0], rtol=1e-4, atol=1e-4)


def test_transposed_to_conv_goes_on_past_one_it_leaves():
    nodes = [helper.make_node("ConvTranspose", ["x", "w1"], ["h"], name="a", strides=[2, 2]),
             helper.make_node("ConvTranspose", ["h", "w2"], ["y"], name="b", pads=[1, 1, 1, 1])]
    model = model_of(nodes, [value("x", [1, 3, 6, 6])], [value("y", [1, 3, 13, 13])],
                     [const("w1", RNG.normal(size=(3, 3, 3, 3))), const("w2", RNG.normal(size=(3, 3, 3, 3)))])
    rewritten = copy(model)
    assert transposed_to_conv(rewritten) == 1 and ops(rewritten) == ["ConvTranspose", "Conv"]
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, x=x)[0], run(model, x=x)[0], rtol=1e-5, atol=1e-5)


def test_drop_unused_opsets_keeps_the_default_domain_even_when_no_node_uses_it():
    model = model_of([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], [value("x", [2])],
                     [value("y", [2])], [])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert drop_unused_opsets(model) == 0 and [o.domain for o in model.opset_import] == ["", "com.microsoft"]


def test_an_unread_quantize_of_a_layer_is_removed():
    model = qdq_model([])
    assert unquantize_float_side_outputs(model, set()) == 1 and ops(model) == ["Conv"]


def two_pairs(first_exposed: int) -> onnx.ModelProto:
    """conv a -> Q/DQ (exposed `first_exposed` times as graph outputs, else read by float relu_a), and conv b -> Q/DQ
    read by Add(b's DQ, x) (float) and, directly, by Neg."""
    inits = [const("wa", RNG.normal(size=(2, 2, 1, 1))), const("wb", RNG.normal(size=(2, 2, 1, 1))),
             const("s", 0.05), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ca"], name="a"),
             helper.make_node("QuantizeLinear", ["ca", "s", "z"], ["qa"], name="qa")]
    outputs = []
    if first_exposed:
        for index in range(first_exposed):
            nodes.append(helper.make_node("DequantizeLinear", ["qa", "s", "z"], [f"out_a{index}"], name=f"dqa{index}"))
            outputs.append(value(f"out_a{index}", [1, 2, 3, 3]))
    else:
        nodes += [helper.make_node("DequantizeLinear", ["qa", "s", "z"], ["da"], name="dqa"),
                  helper.make_node("Relu", ["da"], ["ra"], name="relu_a")]
        outputs.append(value("ra", [1, 2, 3, 3]))
    nodes += [helper.make_node("Conv", ["x", "wb"], ["cb"], name="b"),
              helper.make_node("QuantizeLinear", ["cb", "s", "z"], ["qb"], name="qb"),
              helper.make_node("DequantizeLinear", ["qb", "s", "z"], ["logits"], name="dqb"),
              helper.make_node("Add", ["logits", "x"], ["sum"], name="add"),
              helper.make_node("Neg", ["cb"], ["neg"], name="neg")]
    outputs += [value("logits", [1, 2, 3, 3]), value("sum", [1, 2, 3, 3]), value("neg", [1, 2, 3, 3])]
    return model_of(nodes, [value("x", [1, 2, 3, 3])], outputs, inits)


def test_every_removable_pair_is_counted_and_the_readers_follow():
    model = two_pairs(0)
    assert unquantize_float_side_outputs(model, {"relu_a", "add", "neg"}) == 2
    assert ops(model) == ["Conv", "Relu", "Conv", "Add", "Neg"]
    nodes = {node.name: node for node in model.graph.node}
    assert list(nodes["relu_a"].input) == ["ca"] and list(nodes["b"].output) == ["logits"]
    assert list(nodes["add"].input) == ["logits", "x"] and list(nodes["neg"].input) == ["logits"]
    onnx.checker.check_model(model, full_check=True)


def test_a_pair_exposed_twice_stays_and_the_next_one_goes():
    model = two_pairs(2)
    assert unquantize_float_side_outputs(model, {"add", "neg"}) == 1
    assert ops(model) == ["Conv", "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "Add", "Neg"]
