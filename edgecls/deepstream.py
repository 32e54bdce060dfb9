"""`edgecls deploy deepstream`: an exported model as a DeepStream Gst-nvinfer classifier, with proof that nvinfer's
own preprocessing reproduces edgecls's on the test images.

Gst-nvinfer scales each frame (primary mode) or detected object (secondary mode) to the network's input size itself
(`maintain-aspect-ratio`, `symmetric-padding`, `scaling-filter`), then normalizes every pixel as
y = net-scale-factor * (x - offsets[c]): one scale for all channels. edgecls normalizes as (x / 255 - mean[c]) /
std[c] after resizing the shorter side to `input_size` and cropping the centre `crop_size`. So the network given to
nvinfer (`onnx_graph.fold_normalization_for_nvinfer`) is rewritten to take what nvinfer hands it:

- net-scale-factor = 1/255 and offsets = 255 * mean give x / 255 - mean; the per-channel 1/std goes into the first
  convolution's weights, exactly (a convolution is linear in each input channel, and its zero padding is zero in
  both forms). The mean stays in `offsets`: folded into the bias it would be wrong at the borders, where the padding
  would then stand for pixel value 0 instead of the mean.
- The input becomes `input_size` x `input_size` and the centre crop to `crop_size` a Slice inside the graph, so nvinfer
  scales frames to the size edgecls resizes to (for frames of that size its scaling is the identity) and the crop
  is edgecls's own.
- A Softmax ends the graph (output `probabilities`): nvinfer's classifier parser reads probabilities and compares
  them with `classifier-threshold`.

`emulate_nvinfer` reproduces nvinfer's documented preprocessing in numpy (the scaling rectangle and padding of
gstnvinfer.cpp's get_converted_buffer, nearest or bilinear scaling with half-pixel centres, the normalization in
float32) to measure the top-1 agreement of the whole path with the original model's reference logits, without
DeepStream. The other filters of `scaling-filter` (2-5: GPU cubic / super-sampling / Lanczos, VIC taps) are written
to configs but not emulated.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from edgecls.errors import EdgeclsError
from edgecls.onnx_graph import fold_normalization_for_nvinfer
from edgecls.preprocess import Preprocessing

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
SCALING_FILTERS = {0: "nearest", 1: "bilinear", 2: "GPU cubic / VIC 5-tap", 3: "GPU super / VIC 10-tap",
                   4: "GPU Lanczos / VIC smart", 5: "VIC nicest"}
EMULATED_FILTERS = (0, 1)
MODES = ("primary", "secondary")
OUTPUT_NAME = "probabilities"
CHECK_BATCH = 500
# deepstream-app's sample detector (a primary detector for the secondary mode) and sample stream, where DeepStream
# installs them.
DEEPSTREAM_ROOT = "/opt/nvidia/deepstream/deepstream"
SAMPLE_DETECTOR = f"{DEEPSTREAM_ROOT}/samples/configs/deepstream-app/config_infer_primary.txt"
SAMPLE_STREAM = f"file://{DEEPSTREAM_ROOT}/samples/streams/sample_1080p_h264.mp4"


@dataclass(frozen=True)
class Scaling:
    """How nvinfer brings a frame or object to the network size (its config keys of the same names)."""

    maintain_aspect_ratio: bool = False
    symmetric_padding: bool = False
    scaling_filter: int = 1

    def describe(self) -> str:
        aspect = "stretched" if not self.maintain_aspect_ratio else \
            f"aspect kept, padded {'on both sides' if self.symmetric_padding else 'right/bottom'}"
        return f"{aspect}, {SCALING_FILTERS.get(self.scaling_filter, self.scaling_filter)}"


def nvinfer_normalization(preprocess: Preprocessing) -> tuple[float, tuple[float, float, float]]:
    """(net-scale-factor, offsets) that, with the folded graph, reproduce edgecls's (x / 255 - mean) / std."""
    return 1.0 / 255.0, tuple(255.0 * m for m in preprocess.mean)


# ----------------------------------------------------------------------------------------------- nvinfer, emulated

def _resize(image: np.ndarray, height: int, width: int, scaling_filter: int) -> np.ndarray:
    """uint8 H x W x C to height x width: nearest or bilinear with half-pixel centres, edges clamped."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.copy()

    def positions(new: int, old: int) -> np.ndarray:
        return (np.arange(new) + 0.5) * (old / new) - 0.5

    ys, xs = positions(height, src_h), positions(width, src_w)
    if scaling_filter == 0:
        rows = np.clip(np.floor(ys + 0.5), 0, src_h - 1).astype(np.int64)
        cols = np.clip(np.floor(xs + 0.5), 0, src_w - 1).astype(np.int64)
        return image[rows[:, None], cols[None, :]]
    ys, xs = np.clip(ys, 0, src_h - 1), np.clip(xs, 0, src_w - 1)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, src_h - 1), np.minimum(x0 + 1, src_w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    pixels = image.astype(np.float32)
    top = pixels[y0[:, None], x0[None, :]] * (1 - wx) + pixels[y0[:, None], x1[None, :]] * wx
    bottom = pixels[y1[:, None], x0[None, :]] * (1 - wx) + pixels[y1[:, None], x1[None, :]] * wx
    return np.clip(np.rint(top * (1 - wy) + bottom * wy), 0, 255).astype(np.uint8)


def nvinfer_scale(frame: np.ndarray, net_h: int, net_w: int, scaling: Scaling) -> np.ndarray:
    """A frame or object (uint8 H x W x 3) as nvinfer's transform leaves it at the network size: the source rectangle
    rounded down to even sizes, then stretched to the network, or (maintain-aspect-ratio) scaled to fit with black
    padding right/bottom or on both sides (symmetric-padding); gstnvinfer.cpp get_converted_buffer."""
    if scaling.scaling_filter not in EMULATED_FILTERS:
        raise EdgeclsError(f"scaling-filter {scaling.scaling_filter} ({SCALING_FILTERS.get(scaling.scaling_filter)}) "
                           f"is not emulated; the emulation covers {', '.join(map(str, EMULATED_FILTERS))}")
    src_h, src_w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    if src_h == 0 or src_w == 0:
        raise EdgeclsError(f"a frame of {frame.shape[0]}x{frame.shape[1]} pixels is too small for nvinfer")
    frame = frame[:src_h, :src_w]
    if not scaling.maintain_aspect_ratio:
        return _resize(frame, net_h, net_w, scaling.scaling_filter)
    fit_h = net_w * src_h / src_w
    if fit_h <= net_h:
        dest_w, dest_h = net_w, int(fit_h)
    else:
        dest_w, dest_h = int(net_h * src_w / src_h), net_h
    left = (net_w - dest_w) // 2 if scaling.symmetric_padding else 0
    top = (net_h - dest_h) // 2 if scaling.symmetric_padding else 0
    out = np.zeros((net_h, net_w, frame.shape[2]), np.uint8)
    out[top: top + dest_h, left: left + dest_w] = _resize(frame, dest_h, dest_w, scaling.scaling_filter)
    return out


def emulate_nvinfer(frames: Sequence[np.ndarray], size: int, scaling: Scaling, preprocess: Preprocessing,
                    channel_order: str = "RGB") -> np.ndarray:
    """float32 N x 3 x size x size: what nvinfer hands the network for these RGB frames (model-color-format RGB or
    BGR), y = net-scale-factor * (x - offsets[c]) in float32."""
    scale, offsets = nvinfer_normalization(preprocess)
    scaled = np.stack([nvinfer_scale(frame, size, size, scaling) for frame in frames])
    if channel_order.upper() == "BGR":  # model-color-format=1: nvinfer hands the network BGR planes
        scaled = scaled[..., ::-1]
    chw = scaled.transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(np.float32(scale) * (chw - np.asarray(offsets, np.float32).reshape(1, 3, 1, 1)))


@dataclass(frozen=True)
class Agreement:
    """The emulated nvinfer path (one scaling, one network input) against the original model's reference logits."""

    network_input: int  # input_size (crop in the graph) or crop_size (the frame squeezed to the crop's size)
    crop_in_graph: bool
    scaling: Scaling
    images: int
    agreement: float  # top-1, percent
    max_abs_probability_diff: float

    def line(self) -> str:
        where = "crop in the graph" if self.crop_in_graph else "whole frame scaled to the crop"
        return (f"{self.network_input}x{self.network_input} input ({where}), {self.scaling.describe()}: top-1 "
                f"agreement {self.agreement:.2f}% on {self.images:,} images, max |Δ probability| "
                f"{self.max_abs_probability_diff:.2e}")

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["scaling"] = asdict(self.scaling)
        return record


def measure_agreement(onnx_model: onnx.ModelProto, images: np.ndarray, reference_logits: np.ndarray,
                      preprocess: Preprocessing, size: int, crop_in_graph: bool,
                      scalings: Sequence[Scaling]) -> list[Agreement]:
    """Each scaling's agreement, on ONNX Runtime's CPU provider. Scalings that give the same network inputs (on
    square frames the aspect options change nothing) are run once."""
    import onnxruntime as ort

    from edgecls.runtime import softmax

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    expected = softmax(reference_logits.astype(np.float32))
    top1 = reference_logits.argmax(axis=1)
    seen: dict[tuple[int, bytes], tuple[int, float]] = {}  # (first image, input digest) -> (agreeing, max |Δp|)
    results = []
    for scaling in scalings:
        agree, worst = 0, 0.0
        for start in range(0, len(images), CHECK_BATCH):
            batch = emulate_nvinfer(images[start: start + CHECK_BATCH], size, scaling, preprocess,
                                    preprocess.channel_order)
            key = (start, hashlib.blake2b(batch.tobytes(), digest_size=16).digest())
            if key not in seen:
                probabilities = session.run(None, {input_name: batch})[0]
                stop = start + len(batch)
                seen[key] = (int(np.sum(probabilities.argmax(axis=1) == top1[start:stop])),
                             float(np.max(np.abs(probabilities - expected[start:stop]))))
            agree += seen[key][0]
            worst = max(worst, seen[key][1])
        results.append(Agreement(size, crop_in_graph, scaling, len(images), 100.0 * agree / len(images), worst))
    return results


def scaling_grid() -> list[Scaling]:
    """Every emulated combination of nvinfer's scaling options."""
    grid = []
    for scaling_filter, (aspect, symmetric) in itertools.product(EMULATED_FILTERS,
                                                                 [(False, False), (True, False), (True, True)]):
        grid.append(Scaling(aspect, symmetric, scaling_filter))
    return grid


# ----------------------------------------------------------------------------------------------- the config files

@dataclass(frozen=True)
class DeepStreamConfig:
    model: str
    precision: str  # fp32 | fp16 | int8: nvinfer's network-mode
    mode: str  # primary | secondary
    batch_size: int
    scaling: Scaling
    crop_in_graph: bool
    onnx_file: str  # names relative to the config's folder (nvinfer resolves them there)
    labels_file: str
    network_input: int
    preprocess: Preprocessing
    classifier_threshold: float = 0.0
    operate_on_gie_id: int = 1
    operate_on_class_ids: Optional[str] = None
    gpu_id: int = 0

    @property
    def unique_id(self) -> int:
        return 1 if self.mode == "primary" else 2

    @property
    def engine_file(self) -> str:
        """The name nvinfer gives the engine it builds (nvdsinfer_model_builder.cpp), so the second run reuses it."""
        return f"{self.onnx_file}_b{self.batch_size}_gpu{self.gpu_id}_{self.precision}.engine"

    def nvinfer_text(self, agreement: Optional[Agreement]) -> str:
        scale, offsets = nvinfer_normalization(self.preprocess)
        color = {"RGB": 0, "BGR": 1}[self.preprocess.channel_order.upper()]
        lines = [
            f"# Gst-nvinfer config for edgecls model {self.model} as a {self.mode} classifier (edgecls deploy deepstream).",
            "# The ONNX file takes nvinfer's normalization: net-scale-factor 1/255 and offsets 255*mean give x/255 - mean;",
            "# 1/std is folded into its first convolution, so the network sees exactly edgecls's (x/255 - mean)/std.",
        ]
        if agreement is not None:
            lines.append(f"# Emulated without DeepStream on the test images: {agreement.line()}.")
        if self.precision == "int8":
            lines += ["# network-mode=1 with an int8 (Q/DQ) ONNX: DeepStream builds int8 engines only with an",
                      "# int8-calib-file and otherwise falls back to fp16; build the engine named in model-engine-file",
                      "# from the ONNX with `trtexec --onnx=... --int8 --fp16 --saveEngine=...` first."]
        lines += [
            "[property]",
            f"gpu-id={self.gpu_id}",
            f"net-scale-factor={scale!r}",
            "offsets=" + ";".join(f"{value:.6f}" for value in offsets),
            f"model-color-format={color}",
            f"onnx-file={self.onnx_file}",
            f"model-engine-file={self.engine_file}",
            f"labelfile-path={self.labels_file}",
            f"batch-size={self.batch_size}",
            f"network-mode={NETWORK_MODES[self.precision]}",
            "network-type=1",
            f"process-mode={1 if self.mode == 'primary' else 2}",
            f"gie-unique-id={self.unique_id}",
        ]
        if self.mode == "secondary":
            lines.append(f"operate-on-gie-id={self.operate_on_gie_id}")
            if self.operate_on_class_ids:
                lines.append(f"operate-on-class-ids={self.operate_on_class_ids}")
        lines += [
            f"output-blob-names={OUTPUT_NAME}",
            f"classifier-threshold={self.classifier_threshold:g}",
            f"maintain-aspect-ratio={int(self.scaling.maintain_aspect_ratio)}",
            f"symmetric-padding={int(self.scaling.symmetric_padding)}",
            f"scaling-filter={self.scaling.scaling_filter}",
            "scaling-compute-hw=0",
            "interval=0",
        ]
        return "\n".join(lines) + "\n"

    def labels_text(self) -> str:
        """nvinfer's classifier labels: one line per output layer, the classes separated by ';'."""
        names = self.preprocess.class_names
        bad = [name for name in names if ";" in name or "\n" in name]
        if bad:
            raise EdgeclsError(f"class name {bad[0]!r} holds ';' or a line break, which nvinfer's labels file cannot "
                               "hold; rename the class")
        return ";".join(names) + "\n"

    def app_text(self, nvinfer_config: str) -> str:
        """A deepstream-app config wiring a source, this classifier (and, in secondary mode, DeepStream's sample
        detector before it) and a sink."""
        lines = [
            f"# deepstream-app config: a source, edgecls model {self.model} as {self.mode} classifier, a sink.",
            f"# Run: deepstream-app -c {'<this file>'}   (paths are relative to this file's folder)",
            "[application]", "enable-perf-measurement=1", "perf-measurement-interval-sec=5", "",
            "[source0]", "enable=1",
            "# type 3: a URI (file:// or rtsp://); 1: a V4L2 camera (camera-v4l2-dev-node=0); 5: a Jetson CSI camera",
            "type=3", f"uri={SAMPLE_STREAM}", "num-sources=1", f"gpu-id={self.gpu_id}", "",
            "[streammux]", f"gpu-id={self.gpu_id}", "live-source=0",
            f"batch-size={1 if self.mode == 'secondary' else self.batch_size}",
            "batched-push-timeout=40000", "width=1280", "height=720", "",
        ]
        if self.mode == "primary":
            lines += ["[primary-gie]", "enable=1", f"gpu-id={self.gpu_id}", f"gie-unique-id={self.unique_id}",
                      f"batch-size={self.batch_size}", f"config-file={nvinfer_config}", ""]
        else:
            lines += ["# the detector whose objects are classified: DeepStream's sample one; replace with yours",
                      "[primary-gie]", "enable=1", f"gpu-id={self.gpu_id}", f"gie-unique-id={self.operate_on_gie_id}",
                      "batch-size=1", f"config-file={SAMPLE_DETECTOR}", "",
                      "[secondary-gie0]", "enable=1", f"gpu-id={self.gpu_id}", f"gie-unique-id={self.unique_id}",
                      f"operate-on-gie-id={self.operate_on_gie_id}", f"batch-size={self.batch_size}",
                      f"config-file={nvinfer_config}", ""]
            if self.operate_on_class_ids:
                lines.insert(-1, f"operate-on-class-ids={self.operate_on_class_ids}")
        lines += ["[osd]", "enable=1", f"gpu-id={self.gpu_id}", "border-width=2", "text-size=15", "",
                  "# type 1: fakesink (headless); 2: EGL display; 3: file (container=1 mp4, output-file=out.mp4)",
                  "[sink0]", "enable=1", "type=1", "sync=0", "source-id=0", f"gpu-id={self.gpu_id}", ""]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the command

@dataclass
class DeepStreamReport:
    files: dict[str, Path]
    config: DeepStreamConfig
    configured: Agreement  # the written config's scaling
    options: list[Agreement]  # every emulated option, both network inputs

    def lines(self) -> list[str]:
        highest = max(found.agreement for found in self.options)
        best = [found for found in self.options if found.agreement == highest]
        out = [f"{label}: {path}" for label, path in self.files.items()]
        out.append(f"emulated nvinfer, as configured: {self.configured.line()}")
        out.append("every emulated option:")
        out += [f"  {found.line()}" for found in self.options]
        shown = self.configured if self.configured in best else best[0]
        out.append(f"highest ({len(best)} of {len(self.options)} options reach it): {shown.line()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["scaling"] = asdict(self.config.scaling)
        config["preprocess"] = self.config.preprocess.to_dict()
        return {"files": {label: str(path) for label, path in self.files.items()}, "config": config,
                "configured": self.configured.to_dict(), "options": [found.to_dict() for found in self.options],
                "emulation": "numpy emulation of Gst-nvinfer's scaling (source rectangle rounded to even sizes, "
                             "stretch or aspect-kept with black padding, nearest or bilinear with half-pixel centres) "
                             "and normalization (float32), on RGB frames (the NV12 to RGB conversion of decoded video "
                             "is not emulated), through the folded ONNX on ONNX Runtime's CPU provider, against the "
                             "original model's reference logits"}


@dataclass(frozen=True)
class DeepStreamRequest:
    """How `edgecls deploy deepstream` configures nvinfer (its options), checked once when made. `precision` None:
    int8 for the int8 export, else fp32 (checked against the model file by `deploy_deepstream`); `batch_size` None:
    1 in primary mode, 16 in secondary; `reference` None: the reference logits found beside the model."""

    precision: Optional[str] = None
    mode: str = "primary"
    batch_size: Optional[int] = None
    scaling: Scaling = Scaling()
    crop_in_graph: bool = True
    classifier_threshold: float = 0.0
    operate_on_gie_id: int = 1
    operate_on_class_ids: Optional[str] = None
    reference: Optional[str] = None

    def __post_init__(self) -> None:
        scaling = self.scaling
        if self.mode not in MODES:
            raise EdgeclsError(f"mode {self.mode!r}: choose primary (whole frames) or secondary (a detector's objects)")
        if scaling.scaling_filter not in SCALING_FILTERS:
            raise EdgeclsError(f"scaling-filter {scaling.scaling_filter}: choose one of {sorted(SCALING_FILTERS)}")
        if scaling.symmetric_padding and not scaling.maintain_aspect_ratio:
            raise EdgeclsError("--symmetric-padding pads the frame when its aspect ratio is kept: add "
                               "--maintain-aspect-ratio (or drop it)")
        if self.batch_size is not None and self.batch_size < 1:
            raise EdgeclsError(f"--batch-size must be 1 or more, got {self.batch_size}")
        if self.operate_on_class_ids is not None and not all(
                part.strip().isdigit() for part in self.operate_on_class_ids.strip(";").split(";")):
            raise EdgeclsError(f"--operate-on-class-ids {self.operate_on_class_ids!r}: give class ids separated by "
                               "';', e.g. 0;2")


def deploy_deepstream(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, data: Any = None,
                      request: DeepStreamRequest = DeepStreamRequest()) -> DeepStreamReport:
    """Write `<model>[.int8].deepstream.onnx`, `config_infer_<model>.txt`, `<model>.labels.txt`,
    `deepstream_app_<model>.txt` and `<model>.deepstream-agreement.json` into `out_dir`, after measuring the
    emulated agreement on the test split of `data` (a location, or a loaded data set)."""
    from edgecls import reference as references
    from edgecls.artifacts import check_output_folder, staging_dir, write_json
    from edgecls.data import load_cifar10
    from edgecls.formats import ModelMetadata
    from edgecls.onnx_graph import load_onnx, save_checked

    precision, mode, scaling, crop_in_graph = request.precision, request.mode, request.scaling, request.crop_in_graph
    onnx_path = Path(onnx_path)
    metadata = ModelMetadata.read(onnx_path)
    if metadata.precision == "fp16":
        raise EdgeclsError(f"{onnx_path} is the fp16 export; give the fp32 file with --precision fp16 (nvinfer builds "
                           "the fp16 engine from it)")
    if precision is None:
        precision = "int8" if metadata.precision == "int8" else "fp32"
    allowed = ("int8",) if metadata.precision == "int8" else ("fp32", "fp16")
    if precision not in allowed:
        raise EdgeclsError(f"--precision {precision} does not fit {onnx_path} ({metadata.precision}): "
                           f"choose {' or '.join(allowed)}{' or give the int8 export' if precision == 'int8' else ''}")
    out = check_output_folder(out_dir)  # made by the staging below, and only kept if something is installed
    dataset = data if hasattr(data, "test_images") else load_cifar10(data)
    dataset.check_fits(metadata.preprocess, onnx_path)
    found = request.reference if request.reference is not None else references.find(onnx_path, metadata.model)
    if found is None:
        raise EdgeclsError(f"no reference logits for {metadata.model} beside {onnx_path}; pass --reference (the "
                           "export's <model>.reference.npz, or the checkpoint)")
    ref = references.resolve(found, metadata, onnx_path, dataset)
    images = dataset.test_images[ref.indices]

    source = load_onnx(onnx_path)
    preprocess = metadata.preprocess
    stem = metadata.model if metadata.precision != "int8" else f"{metadata.model}.int8"
    config = DeepStreamConfig(
        model=metadata.model, precision=precision, mode=mode,
        batch_size=request.batch_size or (1 if mode == "primary" else 16), scaling=scaling, crop_in_graph=crop_in_graph,
        onnx_file=f"{stem}.deepstream.onnx", labels_file=f"{metadata.model}.labels.txt",
        network_input=preprocess.input_size if crop_in_graph else preprocess.crop_size, preprocess=preprocess,
        classifier_threshold=request.classifier_threshold, operate_on_gie_id=request.operate_on_gie_id,
        operate_on_class_ids=request.operate_on_class_ids)
    names = {"onnx": config.onnx_file, "nvinfer config": f"config_infer_{metadata.model}.txt",
             "labels": config.labels_file, "deepstream-app config": f"deepstream_app_{metadata.model}.txt",
             "agreement": f"{metadata.model}.deepstream-agreement.json"}
    rewrites = {flag: fold_normalization_for_nvinfer(source, preprocess, metadata.input_name, metadata.output_name,
                                                     OUTPUT_NAME, crop_in_graph=flag) for flag in (True, False)}
    options = []
    for flag in (True, False):
        size = preprocess.input_size if flag else preprocess.crop_size
        options += measure_agreement(rewrites[flag], images, ref.logits, preprocess, size, flag, scaling_grid())
    configured = next((found for found in options if found.crop_in_graph == crop_in_graph
                       and found.scaling == scaling), None)
    if configured is None:  # a filter the emulation does not cover: measured with bilinear, and said so
        configured = measure_agreement(rewrites[crop_in_graph], images, ref.logits, preprocess, config.network_input,
                                       crop_in_graph, [replace(scaling, scaling_filter=1)])[0]
    report = DeepStreamReport({label: out / name for label, name in names.items()}, config, configured, options)
    with staging_dir(out, "deepstream") as staging:
        save_checked(rewrites[crop_in_graph], staging / names["onnx"])
        (staging / names["nvinfer config"]).write_text(config.nvinfer_text(configured))
        (staging / names["labels"]).write_text(config.labels_text())
        (staging / names["deepstream-app config"]).write_text(config.app_text(names["nvinfer config"]))
        write_json(staging / names["agreement"], report.to_dict())
        for name in names.values():
            os.replace(staging / name, out / name)
    return report


__all__ = ["Agreement", "DeepStreamConfig", "DeepStreamReport", "DeepStreamRequest", "Scaling", "deploy_deepstream",
           "emulate_nvinfer", "measure_agreement", "nvinfer_normalization", "nvinfer_scale"]
