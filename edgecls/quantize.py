"""INT8 explicit quantization (QuantizeLinear/DequantizeLinear) of an exported fp32 ONNX file.

Calibration runs ONNX Runtime's calibrator on a seeded subset of the TRAINING split (never the validation images
a checkpoint holds out: those judge the int8 file), preprocessed by `edgecls.preprocess.Preprocessing` as
recorded in the ONNX metadata (the one truth for preprocessing), and `quantize_static` (QDQ format) turns the
ranges into Q/DQ nodes.
Two targets:

- `trt`: what TensorRT's explicit quantization accepts on every version from 8.5 on (DESIGN.md §4):
  symmetric int8 activations and weights (zero points 0, type int8), float biases (TensorRT's
  DequantizeLinear takes int8, not int32), per-channel Conv weights on axis 0, per-tensor weights for
  ConvTranspose and Gemm (per-channel support for those is not established across versions).
- `cpu`: the faster form for ONNX Runtime on x86: u8 activations, s8 per-channel weights, int32 biases.
  ONNX Runtime's CPU provider has no integer ConvTranspose, so a stride-1 ConvTranspose would run in
  float between a Dequantize and a Quantize; it is first rewritten as the equivalent Conv (transposed,
  flipped kernel), which is exact and lets the whole network run as integer convolutions.

Calibration methods: `percentile` (the default; 99.999th percentile of each tensor's histogram) gave the
best top-1 agreement with PyTorch here for both targets, ahead of `minmax`; `entropy` with ONNX Runtime's
settings lands close to min-max on these networks.

Which layers (Conv, ConvTranspose, Gemm) stay in float: a layer left out of quantization keeps its float weights
and reads and writes float tensors in both targets (see `around_float_layers` for why the tensors matter); a
layer's output is quantized only where an int8 layer reads it. By default the first and the last layer stay in
float, the usual practice for the two most sensitive layers, and cheap here (about 1% of the multiply-adds together). The first one sees
the standardized pixels, whose 8-bit grid would be coarser than the pixels' own (measured on a 5-epoch new2:
agreement with PyTorch 99.38% -> 99.57% for `trt`, 99.57% -> 99.69% for `cpu`, at 3-5% of the int8 CPU
throughput). The last one produces the logits, and 8-bit logits turn near-ties into flipped predictions.
`edgecls.int8_budget` instead chooses the float layers by measurement, within an accuracy budget.

The calibration set (training-split indices) and the computed tensor ranges are saved as one JSON record
in `calibration/`; passing that record back (`cache=`) skips calibration and gives identical scales.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection, Iterator, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from edgecls.artifacts import library_versions, utc_now
from edgecls.data import check_seed, seeded_subset
from edgecls.defaults import (CALIBRATION_DIR, CALIBRATION_METHODS, DEFAULT_CALIBRATION_SEED,
                              DEFAULT_CALIBRATION_SIZE, DEFAULT_METHOD, QUANT_TARGETS)
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import CalibrationRecord, Int8Report, ModelMetadata
from edgecls.onnx_graph import (WEIGHTED_LAYERS, consumers, drop_unused_opsets, save_checked, transposed_to_conv,
                                unquantize_float_side_outputs)

CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class CalibrationSettings:
    """How an int8 file is calibrated, checked once when made: the target's quantization rules (trt | cpu), the
    method (None: percentile, or every method in a search within a budget), how many training images and which
    (`seed`), or an earlier calibration record whose ranges to reuse (`cache`)."""

    target: str = QUANT_TARGETS[0]
    method: Optional[str] = None
    size: Optional[int] = None  # None: DEFAULT_CALIBRATION_SIZE, or every allowed image of a smaller data set
    seed: int = DEFAULT_CALIBRATION_SEED
    cache: Optional[Path] = None

    def __post_init__(self) -> None:
        validate_options(self.target, self.chosen_method, self.size)
        check_seed(self.seed, "calibration seed")
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))

    @property
    def chosen_method(self) -> str:
        """The method of a calibration without a search."""
        return self.method or DEFAULT_METHOD

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods a search within a budget tries."""
        return (self.method,) if self.method else tuple(CALIBRATION_METHODS)


@dataclass
class Int8Result:
    """What an int8 export wrote: by the fixed rule (`quantize_int8`) or within a budget (`int8_budget.search_int8`,
    which adds its report)."""

    path: Optional[Path]  # the int8 ONNX file; None when a search found no choice within its budget
    record_path: Path  # the calibration record written (new calibration) or read (cache)
    record_name: str  # its conventional name under calibration/: <model>.<method>.json
    reused: bool  # True when the ranges came from a cache instead of a calibration run
    report: Optional[Int8Report] = None  # a search's evidence
    report_path: Optional[Path] = None  # where the search wrote it (nothing when no choice held)

    @property
    def passed(self) -> bool:
        """A search's result holds its budget (the fixed rule has none to hold)."""
        return self.report is None or self.report.passed


@dataclass(frozen=True)
class QuantizableLayer:
    """A layer int8 can apply to, named as in the graph."""

    name: str  # the node's name
    op: str  # Conv, ConvTranspose or Gemm, as exported (the cpu form runs a ConvTranspose as a Conv)
    parameters: int  # weights and bias


def validate_options(target: str, method: str, size: Optional[int]) -> None:
    """Reject bad option values before any work is done."""
    if target not in QUANT_TARGETS:
        raise EdgeclsError(f"unknown quantization target {target!r}; choose one of {', '.join(QUANT_TARGETS)}")
    if method not in CALIBRATION_METHODS:
        raise EdgeclsError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if size is not None and size < 1:
        raise EdgeclsError(f"calibration size must be at least 1, got {size}")


def calibration_indices(total: int, size: Optional[int], seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """A seeded subset of `size` of `total` training images, sorted (the same seed always picks the same images),
    none of them in `exclude` (the validation images). `size` None: DEFAULT_CALIBRATION_SIZE, or all of them on a
    data set with fewer (a folder of one's own photos calibrates with no option); a size asked for is never cut."""
    if size is None:
        size = min(DEFAULT_CALIBRATION_SIZE, total - (0 if exclude is None else len(np.unique(exclude))))
        if size < 1:
            raise EdgeclsError(f"the {total} training images leave none for calibration outside the validation "
                               "split; train with a smaller --val-split")
    if size > total:
        raise EdgeclsError(f"calibration size {size} exceeds the {total} training images; pass a smaller --calibration-size")
    if exclude is None or not len(exclude):
        return seeded_subset(total, size, seed)
    allowed = np.setdiff1d(np.arange(total), exclude)
    if size > len(allowed):
        raise EdgeclsError(f"calibration size {size} exceeds the {len(allowed)} training images outside the "
                           f"{total - len(allowed)} validation images; pass a smaller --calibration-size")
    return allowed[seeded_subset(len(allowed), size, seed)]


def ort_method(method: str) -> Any:
    """ONNX Runtime's CalibrationMethod member for one of CALIBRATION_METHODS (imported only when calibrating)."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, data: Any = None,
                  settings: CalibrationSettings = CalibrationSettings(),
                  record_path: str | os.PathLike | None = None, exclude: np.ndarray | None = None,
                  work_dir: str | os.PathLike | None = None) -> Int8Result:
    """Write the int8 Q/DQ version of `fp32_path` to `out_path`, its first and last layers in float, calibrated as
    `settings` say.

    `data` is a `Cifar10` (its training split is used, less the positions in `exclude`: the validation images) and
    may be None when `settings.cache` names a calibration record from an earlier run. A new calibration record is
    written to `record_path` (default: `calibration/<model>.<method>.json`). Intermediate files go to a temporary
    folder inside `work_dir` (default: the system's), which export points at its staging folder so that nothing
    outlives a killed run.
    """
    target, method, size, seed, cache = (settings.target, settings.chosen_method, settings.size, settings.seed,
                                         settings.cache)
    fp32_path = Path(fp32_path)
    metadata = fp32_metadata(fp32_path)
    record_name = f"{metadata.model}.{method}.json"
    if cache is not None:
        record = load_calibration_record(cache, metadata, method)
        record_path = Path(cache)
    else:
        record = new_calibration_record(metadata, data, fp32_path, method, size, seed, exclude)
        record_path = Path(record_path) if record_path is not None else Path(CALIBRATION_DIR) / record_name

    with tempfile.TemporaryDirectory(prefix="edgecls-quant-", dir=work_dir) as tmp:
        prepared = PreparedModel.create(fp32_path, metadata, target, Path(tmp))
        if cache is None:
            record = replace(record, ranges=prepared.calibrate(data.train_images[record.indices], method))
        float_layers = default_float_layers(prepared.model)
        try:
            result = prepared.quantize(record.ranges, method, float_layers, fp32_path)
        except EdgeclsError as exc:
            if cache is None:
                raise
            raise EdgeclsError(f"calibration cache {cache} does not fit the graph of {metadata.model} "
                               f"({first_line(exc.__cause__ or exc)}); drop --calibration-cache to recalibrate") from exc
    metadata.with_precision("int8", quantization_record(target, record, float_layers)).embed(result)
    save_int8(result, target, out_path)
    if cache is None:
        record.write(record_path)
    return Int8Result(Path(out_path), record_path, record_name, cache is not None)


def fp32_metadata(fp32_path: Path) -> ModelMetadata:
    metadata = ModelMetadata.read(fp32_path)
    if metadata.precision != "fp32":
        raise EdgeclsError(f"{fp32_path} is {metadata.precision}, quantize the fp32 file instead")
    return metadata


def new_calibration_record(metadata: ModelMetadata, data: Any, fp32_path: Path, method: str, size: Optional[int], seed: int,
                           exclude: np.ndarray | None) -> CalibrationRecord:
    """The record of a calibration about to run on `data`'s training images (its ranges still empty)."""
    if data is None:
        raise EdgeclsError("int8 calibration needs the training images: pass --data (or set EDGECLS_DATA), "
                           "or --calibration-cache with a record from an earlier export")
    data.check_fits(metadata.preprocess, fp32_path)
    indices = calibration_indices(len(data.train_images), size, seed, exclude)
    return CalibrationRecord(model=metadata.model, checkpoint_sha256=metadata.checkpoint_sha256,
                             data_fingerprint=data.fingerprint, method=method, size=len(indices), seed=seed,
                             indices=indices.tolist(), ranges={}, created_at=utc_now(),
                             versions=library_versions("onnxruntime", "onnx", "numpy"))


def quantization_record(target: str, record: CalibrationRecord, float_layers: Collection[str],
                        budget: dict | None = None) -> dict[str, Any]:
    """The `quantization` entry of an int8 file's metadata: how it was made, which layers stayed float, and the
    accuracy budget asked for (None: the default first-and-last rule, no budget)."""
    return {"target": target, "method": record.method, "calibration_size": record.size,
            "calibration_seed": record.seed, "calibration_split": record.split,
            "float_layers": sorted(float_layers), "budget": budget}


def save_int8(model: onnx.ModelProto, target: str, out_path: str | os.PathLike) -> Path:
    """Check a finished int8 graph (TensorRT's rules for `trt`) and write it atomically."""
    if target == "trt":
        problems = trt_violations(model)
        if problems:  # a bug in our options or in the quantizer, never the user's input
            raise EdgeclsError(f"the int8 graph breaks TensorRT's Q/DQ rules: {problems[0]} (and {len(problems) - 1} more)")
    return save_checked(model, out_path)


@dataclass
class PreparedModel:
    """An fp32 file made ready for quantization in `work_dir` (shape inference and constant folding, as ONNX
    Runtime recommends; the cpu target's ConvTranspose rewritten as Conv): calibrate it, then write Q/DQ versions
    of it with any set of float layers."""

    path: Path
    model: onnx.ModelProto
    metadata: ModelMetadata  # the fp32 file's
    target: str
    layers: list[QuantizableLayer]
    work_dir: Path
    source: Path  # the fp32 file it was made from, which error messages name (`path` is a temporary copy)

    @classmethod
    def create(cls, fp32_path: Path, metadata: ModelMetadata, target: str, work_dir: Path) -> "PreparedModel":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        path = work_dir / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(path))
        model = onnx.load(str(path))
        layers = quantizable_layers(model)  # before the rewrite: a layer's op is the exported one
        if target == "cpu" and transposed_to_conv(model):
            onnx.save(model, str(path))
        return cls(path, model, metadata, target, layers, work_dir, Path(fp32_path))

    def calibrate(self, images: np.ndarray, method: str) -> dict[str, Any]:
        """The tensor ranges `method` finds on uint8 `images`, in ONNX Runtime's calibration-cache form."""
        ranges_path = self.work_dir / f"calibration.{method}.json"
        calibrate(self.path, ImageBatches(self.metadata.preprocess(images), self.metadata.input_name), method,
                  ranges_path)
        return json.loads(ranges_path.read_text())

    def quantize(self, ranges: dict[str, Any], method: str, float_layers: Collection[str], source: Path,
                 model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """The Q/DQ graph of this model (or of `model`, a part of it) with `float_layers` left in float.

        `source` names the fp32 file in error messages."""
        from onnxruntime.quantization import QuantFormat, quantize_static

        ranges_path = self.work_dir / f"ranges.{method}.json"
        ranges_path.write_text(json.dumps(ranges))
        quantized = self.work_dir / "int8.onnx"
        options = quantization_options(self.model if model is None else model, self.target, float_layers)
        try:  # with an existing cache file, quantize_static takes the ranges from it instead of calibrating
            quantize_static(str(self.path) if model is None else model, str(quantized), quant_format=QuantFormat.QDQ,
                            calibrate_method=ort_method(method), calibration_cache_path=str(ranges_path), **options)
        except (KeyError, ValueError) as exc:  # ranges that do not fit this graph
            raise EdgeclsError(f"quantization of {source} failed ({exc}); "
                               "if you passed --calibration-cache, it belongs to another model: drop it") from exc
        result = onnx.load(str(quantized))
        unquantize_float_side_outputs(result, options["nodes_to_exclude"])
        drop_unused_opsets(result)
        return result


def quantizable_layers(model: onnx.ModelProto) -> list[QuantizableLayer]:
    """The Conv, ConvTranspose and Gemm nodes of a graph, in graph order."""
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return [QuantizableLayer(node.name, node.op_type, sum(sizes.get(name, 0) for name in node.input[1:]))
            for node in model.graph.node if node.op_type in WEIGHTED_LAYERS]


def default_float_layers(model: onnx.ModelProto) -> list[str]:
    """The layers that read the graph's input or write its output: in float unless a budget decides otherwise."""
    graph_inputs = {value.name for value in model.graph.input}
    graph_outputs = {value.name for value in model.graph.output}
    return [node.name for node in model.graph.node if node.op_type in WEIGHTED_LAYERS
            and (set(node.input) & graph_inputs or set(node.output) & graph_outputs)]


def calibrate(model_path: Path, reader: "ImageBatches", method: str, ranges_path: Path) -> None:
    """Run the calibration images through `model_path` and save the tensor ranges in ORT's cache format."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    # ORT's histogram calibrators print their progress; edgecls prints its own summary instead.
    # Their defaults are kept on purpose: percentile 99.999 of a 2048-bin histogram; entropy with 128 bins,
    # which on these ReLU networks ends up at (almost) the full range. Finer entropy histograms were tried
    # and clip far too much: top-1 agreement with PyTorch fell from ~99.4% to 88% (and 29%).
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(model_path, augmented_model_path=str(ranges_path.with_suffix(".augmented.onnx")),
                                       calibrate_method=ort_method(method))
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, ranges_path)


def quantization_options(model: onnx.ModelProto, target: str, float_layers: Collection[str]) -> dict[str, Any]:
    """Keyword arguments of `quantize_static` for a target (see the module docstring for why)."""
    from onnxruntime.quantization import QuantType

    excluded = [*float_layers, *around_float_layers(model, float_layers)]
    if target == "cpu":
        # This CPU has VNNI, so full-range u8 x s8 products do not saturate: no reduce_range.
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "per_channel": True,
                "reduce_range": False, "nodes_to_exclude": excluded}
    per_tensor = {node.input[1]: [{"symmetric": True}] for node in model.graph.node
                  if node.op_type in ("ConvTranspose", "Gemm") and node.name not in excluded}
    return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "per_channel": True,
            "reduce_range": False, "nodes_to_exclude": excluded,
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                              "TensorQuantOverrides": per_tensor}}


def around_float_layers(model: onnx.ModelProto, float_layers: Collection[str]) -> list[str]:
    """The nodes between each float layer and the layers next to it (ReLU, pooling, ...), before and after it.

    They stay out of quantization, so a float layer reads and writes float tensors: ONNX Runtime's optimizer gives
    a Conv whose input comes from a DequantizeLinear int8 weights of its own when it loads the file (measured with
    ONNX Runtime 1.32), so a float layer next to int8 ones would silently run in int8 there. The int8 neighbours
    then quantize the tensor at their own inputs.
    """
    users = consumers(model.graph)
    producers = {tensor: node for node in model.graph.node for tensor in node.output}
    constants = {init.name for init in model.graph.initializer}
    layers = [node for node in model.graph.node if node.name in float_layers]
    found: dict[str, None] = {}
    pending = [tensor for node in layers for tensor in node.output]
    while pending:  # downstream, to the next layers
        for user in users.get(pending.pop(), []):
            if user.op_type not in WEIGHTED_LAYERS and user.name not in found:
                found[user.name] = None
                pending.extend(user.output)
    pending = [tensor for node in layers for tensor in node.input if tensor not in constants]
    while pending:  # upstream, to the previous layers or the graph's input
        producer = producers.get(pending.pop())
        if producer is not None and producer.op_type not in WEIGHTED_LAYERS and producer.name not in found:
            found[producer.name] = None
            pending.extend(tensor for tensor in producer.input if tensor not in constants)
    return list(found)


class ImageBatches:
    """Feeds preprocessed calibration images to ONNX Runtime's calibrator, one batch at a time."""

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        # ORT's histogram calibrators stack the batches' outputs, so every batch must have the same size:
        # use the largest divisor of the image count that does not exceed `batch_size`.
        batch_size = max(d for d in range(1, min(batch_size, len(inputs)) + 1) if len(inputs) % d == 0)
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: inputs[i:i + batch_size]} for i in range(0, len(inputs), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def check_ranges(ranges: Any, source: str) -> None:
    """Refuse tensor ranges that are not finite numbers with low <= high: ONNX Runtime would turn an infinite one into
    NaN scales (an int8 file whose every output is NaN) and a NaN one into an AssertionError."""
    data = ranges.get("data") if isinstance(ranges, dict) else None
    if not isinstance(data, dict) or not data:
        raise EdgeclsError(f"{source} holds no tensor ranges; drop --calibration-cache to recalibrate")
    for tensor, entry in data.items():
        bounds = [entry.get(side) if isinstance(entry, dict) else None for side in ("lowest", "highest")]
        values = [bound.get("data") if isinstance(bound, dict) else bound for bound in bounds]
        try:
            low, high = (float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) for value in values)
        except (TypeError, ValueError, IndexError):
            low, high = math.nan, math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise EdgeclsError(f"{source}: tensor {tensor!r} has the range {values[0]!r} to {values[1]!r}, not two "
                               "finite numbers, lowest first; drop --calibration-cache to recalibrate")


def load_calibration_record(path: str | os.PathLike, metadata: ModelMetadata, method: str) -> CalibrationRecord:
    """Read a calibration record and make sure it belongs to this model and method."""
    record = CalibrationRecord.read(path)
    check_ranges(record.ranges, f"calibration cache {path}")
    if record.checkpoint_sha256 != metadata.checkpoint_sha256:
        raise EdgeclsError(f"calibration cache {path} was computed for another checkpoint "
                           f"({record.checkpoint_sha256[:12]}...); drop --calibration-cache to recalibrate")
    if record.method != method:
        raise EdgeclsError(f"calibration cache {path} holds {record.method} ranges, not {method}; "
                           f"pass --method {record.method} or drop --calibration-cache")
    return record


def trt_violations(model: onnx.ModelProto) -> list[str]:
    """Everything in a Q/DQ graph that TensorRT's explicit quantization rejects (empty when all is well)."""
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    users = consumers(model.graph)
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: {node.domain} domain instead of the standard ONNX one")
        scale = inits.get(node.input[1])
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or np.any(scale <= 0):
            problems.append(f"{node.name}: scale is not a constant > 0")
        if zero_point is None or zero_point.dtype != np.int8 or np.any(zero_point != 0):
            problems.append(f"{node.name}: zero point must be an int8 constant 0 (symmetric)")
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        per_channel = scale is not None and scale.size > 1
        for user in users.get(node.output[0], []):
            if user.op_type in ("Conv", "ConvTranspose", "Gemm") and len(user.input) > 2 and user.input[2] == node.output[0]:
                problems.append(f"{node.name}: bias of {user.name} is quantized (int32); TensorRT needs float biases")
            elif user.op_type == "Conv" and per_channel and axis != 0:
                problems.append(f"{node.name}: Conv weight scales on axis {axis}, TensorRT needs axis 0")
            elif user.op_type in ("ConvTranspose", "Gemm") and per_channel:
                problems.append(f"{node.name}: {user.op_type} weight is per-channel; per-tensor is the safe form")
    return problems
