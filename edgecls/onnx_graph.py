"""Loading, checking, saving and walking ONNX graphs, and every rewrite edgecls makes to one, each a named function
of its own that changes the graph in place (or returns a new one) and says how much it changed:

    fold_batchnorm                 BatchNormalization into the Conv / ConvTranspose before it (export)
    transposed_to_conv             stride-1 ConvTranspose as the equivalent Conv (the cpu int8 target)
    unquantize_float_side_outputs  no Q/DQ pair on an int8 layer's output that only float nodes read (int8)
    drop_unused_opsets             only the operator domains the graph uses (int8)
    drop_unused_initializers       only the constants some node reads (after any rewrite)
    from_node, with_outputs        a graph from one node on, or with more outputs (the int8 sensitivity pass)
    fold_normalization_for_nvinfer 1/std into the first Conv, the centre crop as a Slice, a Softmax at the end
                                   (deploy deepstream)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecls.artifacts import atomic_write
from edgecls.errors import EdgeclsError, first_line
from edgecls.preprocess import Preprocessing

WEIGHTED_LAYERS = ("Conv", "ConvTranspose", "Gemm")  # the layers int8 quantization applies to


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, or raise one line saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"ONNX file {path} does not exist; write it with `edgecls export`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError... depending on the bytes
        raise EdgeclsError(f"{path} is not a readable ONNX model ({type(exc).__name__}); "
                           "re-export it with `edgecls export`") from exc


def save_checked(model: onnx.ModelProto, out_path: str | os.PathLike) -> Path:
    """Run onnx's full check (strict shape inference included), then write the file atomically."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # the full check infers shapes
        raise EdgeclsError(f"the exported graph for {out_path} fails onnx.checker: {first_line(exc)}") from exc
    with atomic_write(out_path) as handle:
        handle.write(model.SerializeToString())
    return Path(out_path)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (a node reading a tensor twice is listed twice)."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder the graph's nodes so that every node comes after the producers of its inputs (stable)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise EdgeclsError(f"graph {graph.name!r} has a cycle or a dangling input; re-export it")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [node for node in pending if node not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


# ----------------------------------------------------------------------------------------------- rewrites

def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into the Conv / ConvTranspose (group 1) that alone feeds it. Returns the count."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    users = consumers(graph)
    graph_outputs = {value.name for value in graph.output}
    folded = 0
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(users.get(bn.input[0], [])) != 1 \
                or bn.input[0] in graph_outputs or len(bn.output) != 1:
            continue
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if conv.op_type == "ConvTranspose" and group != 1:
            continue  # its weight is (in, out/group, k, k): a per-output scale is not one axis
        if not all(name in initializers for name in [*bn.input[1:], *conv.input[1:]]):
            continue
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (_float64(initializers[n]) for n in bn.input[1:])
        scale = gamma / np.sqrt(var + epsilon)
        weight = _float64(initializers[conv.input[1]])
        out_axis = 1 if conv.op_type == "ConvTranspose" else 0
        shape = [1] * weight.ndim
        shape[out_axis] = scale.size
        bias = _float64(initializers[conv.input[2]]) if len(conv.input) > 2 else 0.0
        weight_name, bias_name = conv.input[1], f"{conv.name or conv.output[0]}.folded_bias"
        initializers[weight_name].CopyFrom(numpy_helper.from_array((weight * scale.reshape(shape)).astype(np.float32),
                                                                    weight_name))
        graph.initializer.append(numpy_helper.from_array(((bias - mean) * scale + beta).astype(np.float32), bias_name))
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded += 1
    drop_unused_initializers(graph)
    return folded


def _float64(initializer: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(initializer).astype(np.float64)  # pragma: no mutate (astype(None) is float64 too)


def transposed_to_conv(model: onnx.ModelProto) -> int:
    """Rewrite each stride-1, dilation-1, group-1 ConvTranspose as the equivalent Conv; returns how many.

    With stride 1, ConvTranspose(x, W, pads p) == Conv(x, W', pads k-1-p) where W' swaps W's input and output
    channel axes and flips it spatially. Output names, biases and shapes are unchanged.
    """
    weights = {init.name: init for init in model.graph.initializer}
    users = consumers(model.graph)
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in weights or len(users[node.input[1]]) != 1:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(weights[node.input[1]])
        spatial = weight.ndim - 2
        kernel = list(weight.shape[2:])  # what kernel_shape, if given, must say
        pads = list(attrs.get("pads", [0, 0] * spatial))
        if attrs.get("group", 1) != 1 or any(v != 1 for v in attrs.get("strides", [1] * spatial)) \
                or any(v != 1 for v in attrs.get("dilations", [1] * spatial)) \
                or any(attrs.get("output_padding", [0] * spatial)) or "output_shape" in attrs \
                or attrs.get("auto_pad", b"NOTSET") != b"NOTSET" \
                or any(pad > k - 1 for pad, k in zip(pads, kernel + kernel)):
            continue
        flipped = np.flip(weight.swapaxes(0, 1), axis=tuple(range(2, weight.ndim)))
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(flipped), node.input[1]))
        node.op_type = "Conv"
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("kernel_shape", kernel),
                               helper.make_attribute("pads", [k - 1 - pad for pad, k in zip(pads, kernel + kernel)]),
                               helper.make_attribute("strides", [1] * spatial),
                               helper.make_attribute("dilations", [1] * spatial),
                               helper.make_attribute("group", 1)])
        rewritten += 1
    return rewritten


def drop_unused_opsets(model: onnx.ModelProto) -> int:
    """Keep only the operator domains the graph uses (quant_pre_process declares every one ONNX Runtime knows);
    returns how many were dropped."""
    used = {node.domain for node in model.graph.node} | {""}  # "": the default domain, also named "ai.onnx"
    kept = [opset for opset in model.opset_import if opset.domain in used or opset.domain == "ai.onnx"]
    dropped = len(model.opset_import) - len(kept)
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return dropped


def unquantize_float_side_outputs(model: onnx.ModelProto, float_side: Collection[str]) -> int:
    """Remove the Quantize/Dequantize pairs ONNX Runtime puts on an int8 layer's output when only float-side nodes
    (`float_side`: the float layers and the nodes around them) or the graph's output read it; returns how many.

    Between int8 layers the pair stays: there the ReLU that follows shares the next layer's input scale, and the
    CPU provider fuses Dequantize-Conv-Quantize into an integer convolution. Before a float layer it would only
    quantize the pre-ReLU range on a scale of its own, coarser, and at the output it would make 8-bit logits,
    which turn near-ties into flipped predictions.
    """
    users = consumers(model.graph)
    producers = {tensor: node for node in model.graph.node for tensor in node.output}
    graph_outputs = {value.name for value in model.graph.output}
    removed = 0
    for quantize in [node for node in model.graph.node if node.op_type == "QuantizeLinear"]:
        layer = producers.get(quantize.input[0])
        dequantizers = users.get(quantize.output[0], [])
        if layer is None or layer.op_type not in WEIGHTED_LAYERS or layer.name in float_side \
                or not all(node.op_type == "DequantizeLinear" for node in dequantizers):
            continue
        readers = [node for dq in dequantizers for node in users.get(dq.output[0], [])]
        if not all(reader.name in float_side for reader in readers):
            continue
        exposed = [dq.output[0] for dq in dequantizers if dq.output[0] in graph_outputs]
        if len(exposed) > 1:
            continue
        source = quantize.input[0]
        if exposed:  # the layer writes the graph's output itself again, under its name
            for node in model.graph.node:
                node.input[:] = [exposed[0] if name == source else name for name in node.input]
            layer.output[list(layer.output).index(source)] = exposed[0]
            source = exposed[0]
        for reader in readers:
            reader.input[:] = [source if name in {dq.output[0] for dq in dequantizers} else name
                               for name in reader.input]
        for node in (quantize, *dequantizers):
            model.graph.node.remove(node)
        removed += 1
    drop_unused_initializers(model.graph)
    return removed


def cut_inputs(model: onnx.ModelProto, start: int) -> list[str]:
    """The tensors the nodes from `start` on read that the graph's input or earlier nodes make."""
    nodes = model.graph.node
    made = {value.name for value in model.graph.input} | {name for node in nodes[:start] for name in node.output}
    made -= {init.name for init in model.graph.initializer}
    return list(dict.fromkeys(name for node in nodes[start:] for name in node.input if name in made))


def from_node(model: onnx.ModelProto, start: int, inputs: list[str]) -> onnx.ModelProto:
    """The part of `model` from node `start` on, reading `inputs` as its graph inputs."""
    part = onnx.ModelProto()
    part.CopyFrom(model)
    types = {value.name: value for value in [*model.graph.input, *model.graph.value_info]}
    del part.graph.node[:start]
    del part.graph.input[:]
    part.graph.input.extend(types[name] for name in inputs)
    kept_info = [value for value in part.graph.value_info if value.name not in inputs]
    del part.graph.value_info[:]
    part.graph.value_info.extend(kept_info)
    drop_unused_initializers(part.graph)
    return part


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names`."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    types = {value.name: value for value in model.graph.value_info}
    augmented.graph.output.extend(types[name] for name in names)
    return augmented


def fold_normalization_for_nvinfer(model: onnx.ModelProto, preprocess: Preprocessing, input_name: str,
                                   output_name: str, probabilities_name: str = "probabilities",
                                   crop_in_graph: bool = True) -> onnx.ModelProto:
    """The network rewritten for DeepStream's nvinfer, which normalizes with one net-scale-factor (1/255) and per-channel
    offsets (255 * mean) (edgecls/deepstream.py's docstring says why this is exact): the
    first Conv's weights divided by std per input channel, the centre crop as a Slice at the input (`crop_in_graph`;
    the input is then input_size square), a Softmax at the output named `probabilities_name`. A new model: `model` is
    unchanged, and the result carries no edgecls metadata (its input is not edgecls's, so the runtime must not
    take it for an edgecls export)."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.name = f"{graph.name or 'edgecls'}_nvinfer"
    initializers = {init.name: init for init in graph.initializer}
    readers = [node for node in graph.node if input_name in node.input]
    if len(readers) != 1 or readers[0].op_type != "Conv" or readers[0].input[0] != input_name:
        found = ", ".join(node.op_type for node in readers) or "nothing"
        raise EdgeclsError(f"the input '{input_name}' feeds {found}, not one Conv: its normalization cannot be folded "
                           "into it; give the fp32 export (--precision fp16 makes the fp16 engine from it) or an int8 "
                           "export whose first layer stayed float")
    conv = readers[0]
    weight_name = conv.input[1]
    if weight_name not in initializers or sum(weight_name in node.input for node in graph.node) != 1:
        raise EdgeclsError(f"the first Conv's weights '{weight_name}' are not a constant of that Conv alone (a "
                           "quantized first layer?); give the fp32 export or an int8 export whose first layer stayed "
                           "float")
    weight = numpy_helper.to_array(initializers[weight_name])
    if weight.ndim != 4 or weight.shape[1] != 3 or not np.issubdtype(weight.dtype, np.floating):
        raise EdgeclsError(f"the first Conv's weights have shape {list(weight.shape)} ({weight.dtype}), not float "
                           "[out, 3, k, k]; this graph cannot be folded")
    inv_std = 1.0 / np.array(preprocess.std)  # float64: the product is computed in float64 too
    folded = (weight * inv_std.reshape(3, 1, 1)).astype(weight.dtype)  # per input channel (axis 1 of 4)
    initializers[weight_name].CopyFrom(numpy_helper.from_array(folded, weight_name))

    size = preprocess.input_size if crop_in_graph else preprocess.crop_size
    graph_input = next(value for value in graph.input if value.name == input_name)
    dims = graph_input.type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].dim_value = size  # in place of a named size ("height") if there was one
    if crop_in_graph and preprocess.input_size < preprocess.crop_size:
        raise EdgeclsError(f"the preprocessing crops {preprocess.crop_size} from {preprocess.input_size} pixels; "
                           "re-export the model")
    if crop_in_graph and preprocess.input_size > preprocess.crop_size:
        start = (preprocess.input_size - preprocess.crop_size) // 2  # preprocess.center_crop's offsets
        cropped = f"{input_name}_center_crop"
        graph.initializer.extend([
            helper.make_tensor("center_crop_starts", TensorProto.INT64, [2], [start, start]),
            helper.make_tensor("center_crop_ends", TensorProto.INT64, [2], [start + preprocess.crop_size] * 2),
            helper.make_tensor("center_crop_axes", TensorProto.INT64, [2], [2, 3])])
        graph.node.insert(0, helper.make_node("Slice", [input_name, "center_crop_starts", "center_crop_ends",
                                                        "center_crop_axes"], [cropped], name="center_crop"))
        conv.input[0] = cropped

    logits = next((value for value in graph.output if value.name == output_name), None)
    if logits is None:
        raise EdgeclsError(f"the graph has no output '{output_name}'; re-export the model")
    graph.node.append(helper.make_node("Softmax", [output_name], [probabilities_name], name="softmax", axis=1))
    classes = logits.type.tensor_type.shape.dim[1].dim_value
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(probabilities_name, TensorProto.FLOAT, ["batch", classes]))
    rewritten = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="edgecls",
                                  doc_string=f"{model.doc_string} for DeepStream nvinfer: net-scale-factor 1/255, "
                                             "offsets 255*mean, 1/std folded into the first Conv")
    rewritten.ir_version = model.ir_version
    return rewritten
