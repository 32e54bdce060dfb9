"""Checkpoint -> ONNX (fp32, fp16, int8), reference logits, and the parity check against PyTorch.

Precision lives in the ONNX file (DESIGN.md §2): one file per precision, each runnable on ONNX Runtime's
CPU provider, so every one of them is checked against the PyTorch model here before any GPU sees it.
Everything is staged in a hidden folder and installed only once the whole export succeeded, so a failed
run never leaves a half-written file nor replaces an earlier good one with a broken one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgecls.artifacts import atomic_write, ensure_writable_dir
from edgecls.data import image_digests
from edgecls.errors import EdgeclsError
from edgecls.metrics import parity
from edgecls.preprocess import Preprocessing

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "edgecls"
METADATA_VERSION = 1
DEFAULT_OPSET = 17  # the newest opset TensorRT 8.5 (JetPack 5) parses
PARITY_BATCH = 500
# fp32 ONNX vs PyTorch: both compute in float32, so only summation order differs. Anything beyond this
# (relative to the logits' magnitude) means the exported graph computes something else.
FP32_TOLERANCE = 1e-3


@dataclass
class ParityResult:
    """One ONNX file against the PyTorch model on the same images."""

    path: Path
    precision: str
    images: int
    agreement: float  # percent of images with the same top-1 class as PyTorch
    max_abs_diff: float  # max |ONNX logit - PyTorch logit|
    accuracy: float  # percent, on the test labels
    reference_accuracy: float
    passed: bool  # only gating for fp32: within float rounding of PyTorch

    def line(self) -> str:
        text = (f"{self.path.name} ({self.precision}): top-1 agreement {self.agreement:.2f}% with PyTorch, "
                f"max |Δ logit| {self.max_abs_diff:.2e}")
        text += f", accuracy {self.accuracy:.2f}% (PyTorch {self.reference_accuracy:.2f}%)"
        text += f" on {self.images:,} test images"
        if not self.passed:
            text += " -- FAILED: beyond float rounding"
        return text


@dataclass
class ExportReport:
    model: str
    files: dict[str, Path]  # precision -> installed ONNX file
    reference: Path | None
    parity: list[ParityResult]
    calibration: Path | None = None  # the calibration record used/written for int8
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.parity)


# ----------------------------------------------------------------------------------------------- metadata

def edgecls_metadata(model_name: str, precision: str, preprocess: Preprocessing, checkpoint_sha256: str,
                     data_fingerprint: str, quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `edgecls` metadata record of an ONNX file (docs/FORMATS.md)."""
    record = {"format_version": METADATA_VERSION, "model": model_name, "precision": precision,
              "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "preprocess": preprocess.to_dict(),
              "checkpoint_sha256": checkpoint_sha256, "data_fingerprint": data_fingerprint}
    if quantization is not None:
        record["quantization"] = quantization
    return record


def set_metadata(model: onnx.ModelProto, record: dict[str, Any]) -> None:
    """Replace the model's `edgecls` metadata entry with `record`."""
    kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(record))


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, or raise one line saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"ONNX file {path} does not exist; write it with `edgecls export`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError... depending on the bytes
        raise EdgeclsError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it with `edgecls export`") from exc


def read_onnx_metadata(path: str | os.PathLike, model: onnx.ModelProto | None = None) -> dict[str, Any]:
    """The `edgecls` metadata of an ONNX file, after checking the graph's input and output agree with it."""
    path = Path(path)
    model = model if model is not None else load_onnx(path)
    entries = {entry.key: entry.value for entry in model.metadata_props}
    if METADATA_KEY not in entries:
        raise EdgeclsError(f"{path} has no '{METADATA_KEY}' metadata, so its preprocessing is unknown; "
                           "export it with `edgecls export`")
    try:
        record = json.loads(entries[METADATA_KEY])
        preprocess = Preprocessing.from_dict(record["preprocess"])
        input_name, output_name = record["input_name"], record["output_name"]
    except (json.JSONDecodeError, KeyError, TypeError, EdgeclsError) as exc:
        raise EdgeclsError(f"{path}: the '{METADATA_KEY}' metadata is malformed ({exc!r}); re-export it") from exc
    inputs = {value.name: value for value in model.graph.input}
    outputs = {value.name for value in model.graph.output}
    if input_name not in inputs or output_name not in outputs:
        raise EdgeclsError(f"{path}: the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but its metadata "
                           f"names '{input_name}' -> '{output_name}'; re-export it")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[input_name].type.tensor_type.shape.dim]
    expected = [3, preprocess.crop_size, preprocess.crop_size]
    if len(dims) != 4 or dims[0] is not None or dims[1:] != expected:
        shown = ["batch" if d is None else d for d in dims]
        raise EdgeclsError(f"{path}: input '{input_name}' has shape {shown}, but its metadata says "
                           f"[batch, 3, {preprocess.crop_size}, {preprocess.crop_size}]; re-export it with `edgecls export`")
    return record


# ----------------------------------------------------------------------------------------------- fp32

def export_fp32(model: Any, crop_size: int, metadata: dict[str, Any], out_path: str | os.PathLike,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a PyTorch model (eval mode) to `out_path`: input `images` with a dynamic batch, output `logits`.

    The TorchScript exporter (`dynamo=False`) is used on purpose: it emits the requested opset directly,
    whereas the torch.export-based one builds opset 18 and converts down, and it folds every Conv + BatchNorm.
    BatchNorm after a ConvTranspose it leaves alone, so we fold that ourselves (fewer float ops around the
    int8 layers, and one less source of fp16 rounding).
    """
    import torch

    example = torch.zeros(2, 3, crop_size, crop_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the warning is noise for our users.
        warnings.simplefilter("ignore")
        raw_path = Path(tmp) / "raw.onnx"
        torch.onnx.export(model.eval(), (example,), str(raw_path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
        onnx_model = onnx.load(str(raw_path))
    fold_batchnorm(onnx_model)
    onnx_model.doc_string = f"edgecls {metadata['model']} ({metadata['precision']})"
    set_metadata(onnx_model, metadata)
    return save_checked(onnx_model, out_path)


def save_checked(model: onnx.ModelProto, out_path: str | os.PathLike) -> Path:
    """Run onnx's full check (strict shape inference included), then write the file atomically."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgeclsError(f"the exported graph for {out_path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    with atomic_write(out_path) as handle:
        handle.write(model.SerializeToString())
    return Path(out_path)


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into the Conv / ConvTranspose (group 1) that alone feeds it. Returns the count."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {value.name for value in graph.output}
    folded = 0
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or consumers.get(bn.input[0]) != 1 \
                or bn.input[0] in graph_outputs or len(bn.output) != 1:
            continue
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if conv.op_type == "ConvTranspose" and group != 1:
            continue  # its weight is (in, out/group, k, k): a per-output scale is not one axis
        if not all(name in initializers for name in [*bn.input[1:5], *conv.input[1:]]):
            continue
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:5])
        scale = gamma / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
        out_axis = 1 if conv.op_type == "ConvTranspose" else 0
        shape = [1] * weight.ndim
        shape[out_axis] = -1
        bias = numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 \
            else np.zeros_like(mean)
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
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return folded


# ----------------------------------------------------------------------------------------------- fp16

def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """float16 inside, float32 `images` and `logits`, from the fp32 file; metadata precision `fp16`.

    Uses ONNX Runtime's bundled converter (`onnxruntime.transformers.float16`, the maintained copy of
    onnxconverter-common's), so no extra package is needed.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = load_onnx(fp32_path)
    record = read_onnx_metadata(fp32_path, source)
    model = convert_float_to_float16(source, keep_io_types=True)
    # The converter appends its input/output Casts at the end of the node list; ONNX (and TensorRT's
    # parser, which reads nodes in order) need producers before consumers.
    topological_sort(model.graph)
    set_metadata(model, {**record, "precision": "fp16"})
    return save_checked(model, out_path)


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


# ----------------------------------------------------------------------------------------------- parity

def onnx_logits(path: str | os.PathLike, images_uint8: np.ndarray, batch_size: int = PARITY_BATCH) -> np.ndarray:
    """Logits of an exported file on ONNX Runtime's CPU provider, through the deployment runtime itself (so parity
    also covers the preprocessing it reads from the file's metadata)."""
    from edgecls.runtime import Classifier

    with Classifier.load(path, batch_size=batch_size) as classifier:
        return classifier.logits(images_uint8)


def compare_logits(path: Path, precision: str, logits: np.ndarray, reference: np.ndarray,
                   labels: np.ndarray) -> ParityResult:
    """Top-1 agreement, max |Δ logit| and accuracies; fp32 must stay within float rounding of the reference."""
    figures = parity(logits, reference, labels)
    scale = max(1.0, float(np.max(np.abs(reference))))
    passed = precision != "fp32" or figures.max_abs_logit_diff <= FP32_TOLERANCE * scale
    return ParityResult(path, precision, figures.images, figures.agreement, figures.max_abs_logit_diff,
                        figures.accuracy, figures.reference_accuracy, passed)


def check_parity(onnx_path: str | os.PathLike, images_uint8: np.ndarray, reference_logits: np.ndarray,
                 labels: np.ndarray) -> ParityResult:
    """Run an exported file on ORT CPU and compare it with the PyTorch logits of the same images."""
    path = Path(onnx_path)
    precision = read_onnx_metadata(path)["precision"]
    return compare_logits(path, precision, onnx_logits(path, images_uint8), reference_logits, labels)


def write_reference(path: str | os.PathLike, logits: np.ndarray, labels: np.ndarray, images: np.ndarray,
                    meta: dict[str, Any]) -> Path:
    """The PyTorch logits on the evaluation images, for parity checks on a device without PyTorch.

    Each row carries the digest of its image, so the bench can match rows to images even when it reads the
    same data set in another form or order.
    """
    digests = np.frombuffer(b"".join(image_digests(images)), dtype=np.uint8).reshape(len(images), -1)
    with atomic_write(path) as handle:
        np.savez(handle, logits=logits.astype(np.float32), labels=labels.astype(np.int64),
                 digests=digests, meta=np.array(json.dumps(meta)))
    return Path(path)


# ----------------------------------------------------------------------------------------------- all of it

def export_model(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike = "export", data: Any = None,
                 fp16: bool = False, int8: bool = False, target: str = "trt", method: str = "percentile",
                 calibration_size: int = 1024, calibration_seed: int = 0,
                 calibration_cache: str | os.PathLike | None = None,
                 calibration_dir: str | os.PathLike = "calibration", opset: int = DEFAULT_OPSET,
                 progress: bool = True) -> ExportReport:
    """Export a checkpoint to `<out_dir>/<model>.onnx` (+ `.fp16.onnx`, `.int8.onnx`) and `<model>.reference.npz`.

    `data` is a data location (str / None: resolved like training does) or an already loaded `Cifar10`.
    Each file is checked on ONNX Runtime against PyTorch on the test split. Files are staged and installed
    only when every step succeeded and the fp32 file is within float rounding of PyTorch.
    """
    from edgecls.checkpoint import load_checkpoint
    from edgecls.data import load_cifar10
    from edgecls.evaluate import torch_logits
    from edgecls.quantize import quantize_int8, validate_options

    started = time.perf_counter()
    validate_options(target, method, calibration_size)
    checkpoint = load_checkpoint(checkpoint_path)
    out = ensure_writable_dir(out_dir)
    if int8:
        ensure_writable_dir(calibration_dir)
    dataset = data if hasattr(data, "test_images") else load_cifar10(data)
    check_image_size(dataset.test_images, checkpoint.preprocess, "test")
    if list(dataset.class_names) != list(checkpoint.preprocess.class_names):
        raise EdgeclsError(f"the data has classes {list(dataset.class_names)}, but {checkpoint.path} was trained on "
                           f"{list(checkpoint.preprocess.class_names)}; pass the data it was trained on with --data")

    name = checkpoint.model_name
    model = checkpoint.build_model()
    metadata = edgecls_metadata(name, "fp32", checkpoint.preprocess, checkpoint.sha256, checkpoint.data_fingerprint)
    report = ExportReport(name, {}, None, [])
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as staging_dir:
        staging = Path(staging_dir)
        staged = {"fp32": export_fp32(model, checkpoint.preprocess.crop_size, metadata, staging / f"{name}.onnx", opset)}
        if fp16:
            staged["fp16"] = convert_fp16(staged["fp32"], staging / f"{name}.fp16.onnx")
        calibration_record = None
        if int8:
            result = quantize_int8(staged["fp32"], staging / f"{name}.int8.onnx", data=dataset, target=target,
                                   method=method, size=calibration_size, seed=calibration_seed,
                                   cache=calibration_cache, record_path=staging / "calibration.json")
            staged["int8"], calibration_record = result.path, result
        reference = torch_logits(model, dataset.test_images, checkpoint.preprocess, batch_size=PARITY_BATCH)
        labels = np.asarray(dataset.test_labels)
        iterator = staged.items()
        if progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, desc="parity", unit="file", leave=False)
        parity = {precision: check_parity(path, dataset.test_images, reference, labels) for precision, path in iterator}
        ref_meta = {"model": name, "checkpoint_sha256": checkpoint.sha256,
                    "data_fingerprint": dataset.fingerprint, "split": "test"}
        staged_reference = write_reference(staging / f"{name}.reference.npz", reference, labels,
                                           dataset.test_images, ref_meta)
        report.parity = [parity[p] for p in staged]
        if not report.passed:
            report.notes.append(f"nothing installed in {out}: the fp32 export does not match PyTorch")
            report.seconds = time.perf_counter() - started
            return report
        # Install: each file replaces its predecessor atomically, only now that all of them exist.
        for precision, path in staged.items():
            report.files[precision] = install(path, out / path.name)
        report.reference = install(staged_reference, out / staged_reference.name)
        if calibration_record is not None:
            report.calibration = calibration_record.record_path if calibration_record.reused else install(
                calibration_record.record_path, Path(calibration_dir) / calibration_record.record_name)
        for result in report.parity:
            result.path = report.files[result.precision]
    report.seconds = time.perf_counter() - started
    return report


def install(staged: Path, destination: Path) -> Path:
    """Copy a staged file to its final place atomically (calibration/ may be on another filesystem than export/)."""
    with atomic_write(destination) as handle:
        handle.write(staged.read_bytes())
    return destination


def check_image_size(images: np.ndarray, preprocess: Preprocessing, split: str) -> None:
    """The checkpoint was trained on input_size x input_size images; other sizes mean other data."""
    if images.ndim != 4 or images.shape[1:] != (preprocess.input_size, preprocess.input_size, 3):
        raise EdgeclsError(f"the {split} images are {'x'.join(map(str, images.shape[1:]))}, but the model expects "
                           f"{preprocess.input_size}x{preprocess.input_size}x3; pass the data it was trained on with --data")
