"""A tiny edgecls classifier built with onnx.helper (no torch): fixed random weights, edgecls metadata, an 8x8 crop of
the 32x32 images, and one deliberately fragile layer. The fast int8 tests quantize and search it in seconds.

    images -> conv1 (Conv 3->4) -> Relu -> conv2 (Conv 4->4, FRAGILE) -> Relu -> deconv (ConvTranspose 4->4, stride 1)
           -> Relu -> Flatten -> fc (Gemm 256->10) -> logits

conv1's channel 0 is dead (zero weights, bias -1: the ReLU after it always gives 0), and every conv2 weight reading
that channel is 1000x the largest weight: the float model never feels them, but in int8 each of conv2's per-channel
weight scales is set by its outlier and its other weights round to zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
# What edgecls imports lazily when it quantizes or converts, imported with the tests: mutmut forks each mutant's run
# from a process that collected them, so these load once instead of once per mutant (onnxruntime.tools imports torch
# when it is installed, which ONNX Runtime's quant_pre_process then uses: seconds).
import onnxruntime.quantization  # noqa: F401
import onnxruntime.quantization.shape_inference  # noqa: F401
import onnxruntime.tools  # noqa: F401
import onnxruntime.transformers.float16  # noqa: F401
import tqdm  # noqa: F401
from onnx import TensorProto, helper, numpy_helper

from conftest import CLASS_NAMES, synthetic_cifar
from edgecls.data import Cifar10
from edgecls.formats import ModelMetadata
from edgecls.preprocess import Preprocessing

CROP = 8
LAYERS = ("conv1", "conv2", "deconv", "fc")
OPS = ("Conv", "Conv", "ConvTranspose", "Gemm")
FRAGILE = "conv2"
CHECKPOINT_SHA = "c" * 64


def preprocessing() -> Preprocessing:
    return Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=tuple(CLASS_NAMES),
                         input_size=32, crop_size=CROP)


def metadata(data: Cifar10, precision: str = "fp32") -> ModelMetadata:
    return ModelMetadata(model="tiny", precision=precision, preprocess=preprocessing(),
                         checkpoint_sha256=CHECKPOINT_SHA, data_fingerprint=data.fingerprint)


def weights(seed: int = 0, fragile: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {"w1": rng.normal(0, 0.5, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
              "w2": rng.normal(0, 0.3, (4, 4, 3, 3)), "b2": rng.normal(0.1, 0.1, 4),
              "w3": rng.normal(0, 0.3, (4, 4, 3, 3)), "b3": rng.normal(0.1, 0.1, 4),
              "w4": rng.normal(0, 0.2, (10, 4 * CROP * CROP)), "b4": rng.normal(0, 0.1, 10)}
    if fragile:
        values["w1"][0], values["b1"][0] = 0.0, -1.0
        values["w2"][:, 0] = 1000 * np.abs(values["w2"]).max()
    return {name: value.astype(np.float32) for name, value in values.items()}


def classifier(data: Cifar10, seed: int = 0, fragile: bool = True) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("ConvTranspose", ["r2", "w3", "b3"], ["c3"], name="deconv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Flatten", ["r3"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w4", "b4"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, CROP, CROP])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(value, name) for name, value in weights(seed, fragile).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata(data).embed(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_classifier(data: Cifar10, path: Path, **options) -> Path:
    onnx.save(classifier(data, **options), str(path))
    return path


def tiny_data(train_per_class: int = 12, test_per_class: int = 4) -> Cifar10:
    return synthetic_cifar(train_per_class=train_per_class, test_per_class=test_per_class, seed=1)
