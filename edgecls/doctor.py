"""`edgecls doctor`: is this device ready to build and run TensorRT engines, and if not, what to install.

The facts (Jetson board and L4T release, Python, numpy, TensorRT, each CUDA binding, the GPU, DLA cores, ONNX
Runtime) come from the machine as it is. Where TensorRT and a GPU are there, it then builds a small fp16 and a small
int8 engine (from the exported files when it finds them, else from a probe model it makes), runs them, and
compares their logits with ONNX Runtime's on the same images.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgecls.defaults import EXPORT_DIR
from edgecls.engines import JetsonRelease, build_engine, dla_cores, dla_unsupported, gpu_info, jetson_release
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import ModelMetadata
from edgecls.metrics import Parity, parity
from edgecls.runtime.cuda_memory import BindingStatus, GpuInfo, probe
from edgecls.runtime.tensorrt_backend import TENSORRT_INSTALL_HINT, tensorrt_problem

PROBE_IMAGES = 256  # images each doctor engine runs on
PROBE_BATCH = (1, 32, 64)  # the doctor engines' batch profile: small, quick to build
PROBE_WORKSPACE_MIB = 256
SMOKE_PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class Check:
    """One line of the report. `ok`: True fine, False blocks building or running engines, None for information."""

    name: str
    value: str
    ok: Optional[bool] = None
    fix: str = ""  # what to install or do, when not ok


@dataclass(frozen=True)
class EngineCheck:
    """One engine the doctor built and ran: from which ONNX file, and how its logits compare with ONNX Runtime's."""

    precision: str
    onnx: str
    probe_model: bool  # made by the doctor (no export found)
    built: bool
    error: str = ""
    build_seconds: float = 0.0
    parity: Optional[Parity] = None


@dataclass
class DoctorReport:
    checks: List[Check] = field(default_factory=list)
    engines: List[EngineCheck] = field(default_factory=list)
    images: str = ""  # which images the engines ran on
    build_skipped: bool = False  # --no-build: the facts only

    @property
    def ready(self) -> bool:
        """The device can build and run engines: nothing blocks, and the test engines built and ran (unless skipped)."""
        if self.missing:
            return False
        return self.build_skipped or (bool(self.engines) and all(engine.built for engine in self.engines))

    @property
    def missing(self) -> List[Check]:
        return [check for check in self.checks if check.ok is False]

    def verdict(self) -> str:
        if self.ready and self.build_skipped:
            return "READY as far as the facts go (no test engine was built: --no-build)"
        if self.ready:
            return "READY: this device builds and runs TensorRT engines"
        if self.missing:
            return (f"NOT READY: {_and(self._absent())} here, so no TensorRT engine can be built or run; "
                    "install what is listed above")
        return "NOT READY: TensorRT and the GPU are there, but an engine failed to build or run (see above)"

    def _absent(self) -> List[str]:
        phrases = {"TensorRT": "no TensorRT", "GPU": "no GPU", "cuda-python": "no working CUDA binding",
                   "pycuda": "no working CUDA binding"}
        found = [phrases.get(check.name, f"no usable {check.name}") for check in self.missing]
        return list(dict.fromkeys(found))  # once each, in order

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "verdict": self.verdict(), "checks": [asdict(check) for check in self.checks],
                "engines": [asdict(engine) for engine in self.engines], "images": self.images,
                "build_skipped": self.build_skipped}


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _version(module: str) -> Optional[str]:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - absent or broken: reported as such
        return None


@dataclass(frozen=True)
class DeviceFacts:
    """What the doctor reads from the machine (`probe_device`), kept apart from what it makes of them
    (`checks_of`), so that the decisions can be checked on any set of facts."""

    jetson: JetsonRelease
    python: str
    numpy: Optional[str]  # None: absent or broken
    tensorrt: Optional[str]  # its version, when it loads
    tensorrt_problem: Optional[str]  # why it does not (TENSORRT_INSTALL_HINT: not installed)
    bindings: List[BindingStatus]
    gpu: Optional[GpuInfo]
    dla_cores: Optional[int] = None  # read only where a GPU and TensorRT are
    dla_unsupported: Optional[str] = None  # why this TensorRT cannot build for them; read only when there are some
    onnxruntime: Optional[str] = None  # None: not installed
    providers: Tuple[str, ...] = ()  # ONNX Runtime's execution providers
    serving: Tuple[bool, str] = (False, "")  # `edgecls.serving.interpreter.serving_status`
    opencv: Dict[str, Any] = field(default_factory=dict)  # `edgecls.video.opencv_facts`


def probe_device(statuses: Optional[Sequence[BindingStatus]] = None) -> DeviceFacts:
    """Read every fact the doctor reports from this machine as it is."""
    from edgecls.serving.interpreter import serving_status
    from edgecls.video import opencv_facts

    statuses = probe() if statuses is None else list(statuses)
    trt_problem = tensorrt_problem()
    trt_version = None
    if trt_problem is None:
        import tensorrt as trt

        trt_version = str(trt.__version__)
    gpu = gpu_info(statuses)
    cores = unsupported = None
    if gpu is not None and trt_version is not None:
        cores = dla_cores()
        if cores:  # the cores exist; whether this TensorRT can build for them (NVIDIA's "Working with DLA")
            unsupported = dla_unsupported(trt_version, "fp16")
    ort_version = _version("onnxruntime")
    providers: Tuple[str, ...] = ()
    if ort_version is not None:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    return DeviceFacts(jetson_release(), platform.python_version(), _version("numpy"), trt_version, trt_problem,
                       statuses, gpu, cores, unsupported, ort_version, providers, serving_status(), opencv_facts())


def device_checks(statuses: Optional[Sequence[BindingStatus]] = None) -> List[Check]:
    """Every fact about this device, and what blocks TensorRT here."""
    return checks_of(probe_device(statuses))


def checks_of(facts: DeviceFacts) -> List[Check]:
    """The report's lines for these facts: each fact, and whether it blocks building or running engines."""
    jetson = facts.jetson
    checks = [Check("board", jetson.board or "not a Jetson (no /proc/device-tree/model)")]
    if jetson.l4t:
        checks.append(Check("L4T / JetPack", f"R{jetson.l4t} (JetPack {jetson.jetpack or '?'})"))
    python = facts.python
    if jetson.jetpack.startswith("5") and not python.startswith("3.8."):
        checks.append(Check("Python", python, False, "JetPack 5's TensorRT bindings exist for Python 3.8 only: "
                                                     "run edgecls with /usr/bin/python3.8"))
    else:
        checks.append(Check("Python", python))
    checks.append(Check("numpy", facts.numpy or "?"))

    trt_problem = facts.tensorrt_problem
    if trt_problem is None:
        checks.append(Check("TensorRT", str(facts.tensorrt), True))
    else:
        checks.append(Check("TensorRT", "not installed" if trt_problem == TENSORRT_INSTALL_HINT else "does not load",
                            False, trt_problem))

    statuses = facts.bindings
    working = [status for status in statuses if status.works]
    for status in statuses:
        if status.works:
            checks.append(Check(status.name, f"{status.version}, works", True))
        else:
            # one binding is enough: the other's problem is information, unless neither works
            checks.append(Check(status.name, f"{status.version}, does not work" if status.version else "not installed",
                                None if working else False, status.problem or ""))

    gpu = facts.gpu
    if gpu is None:
        checks.append(Check("GPU", "none reachable", False, "a CUDA GPU and its driver (JetPack includes both); the "
                                                            "CUDA binding lines say why none was reached"))
    else:
        memory = f", {gpu.total_memory / 2**30:.1f} GiB" if gpu.total_memory else ""
        checks.append(Check("GPU", f"{gpu.name}, compute {gpu.compute_capability}{memory} (via {gpu.source})", True))
        if trt_problem is None:
            cores = facts.dla_cores
            text = str(cores) if cores is not None else "?"
            unsupported = facts.dla_unsupported
            text += f" (not usable: {unsupported.split(';')[0]})" if unsupported else ""
            checks.append(Check("DLA cores", text))

    if facts.onnxruntime is None:
        checks.append(Check("ONNX Runtime", "not installed", None, "pip install onnxruntime (for .onnx files)"))
    else:
        providers = ", ".join(name.replace("ExecutionProvider", "") for name in facts.providers)
        checks.append(Check("ONNX Runtime", f"{facts.onnxruntime} ({providers})"))
    serves, how = facts.serving  # `edgecls serve` (Triton): optional, so information only
    checks.append(Check("serving", how, True if serves else None))
    checks.append(_opencv_check(facts.opencv))
    return checks


def _opencv_check(facts: Dict[str, Any]) -> Check:
    """Which OpenCV `edgecls predict VIDEO` would use, and whether it reads GStreamer pipelines (CSI cameras)."""
    if facts.get("version") is None:
        return Check("OpenCV", "not installed (for video: pip install 'edgecls[video]'; on a Jetson: sudo apt install "
                               "python3-opencv, JetPack's build with GStreamer)")
    gstreamer = "with GStreamer" if facts["gstreamer"] else "without GStreamer (no CSI camera pipelines)"
    return Check("OpenCV", f"{facts['version']}, {gstreamer}, from {facts['path']}")


def find_exports(export_dir: str | Path) -> dict[str, Path]:
    """The first exported fp16 and TensorRT-style int8 ONNX files in `export_dir`, by precision."""
    found: dict[str, Path] = {}
    for path in sorted(Path(export_dir).glob("*.onnx")):
        try:
            metadata = ModelMetadata.read(path)
        except EdgeclsError:
            continue  # not an edgecls export: not ours to probe
        if metadata.precision in SMOKE_PRECISIONS and (metadata.quantization or {}).get("target", "trt") == "trt":
            found.setdefault(metadata.precision, path)
    return found


def make_probe_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """A small random-weight CNN shaped like edgecls' models (NCHW 3x28x28 images -> 10 logits), exported the way
    `edgecls export` exports: fp32, then fp16 (edgecls.export.convert_fp16) and int8 Q/DQ for TensorRT
    (edgecls.quantize.quantize_int8, calibrated on random images)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecls.data import Cifar10
    from edgecls.export import convert_fp16
    from edgecls.onnx_graph import save_checked
    from edgecls.preprocess import Preprocessing
    from edgecls.quantize import CalibrationSettings, quantize_int8

    rng = np.random.default_rng(seed)
    classes = tuple(f"class{i}" for i in range(10))
    metadata = ModelMetadata(model="doctor-probe", precision="fp32",
                             preprocess=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=classes),
                             checkpoint_sha256="", data_fingerprint="")
    widths = (3, 16, 32, 32)
    nodes, weights, tensor = [], [], metadata.input_name
    for index in range(len(widths) - 1):
        name = f"conv{index}"
        kernel = rng.normal(0, (2 / (9 * widths[index])) ** 0.5, (widths[index + 1], widths[index], 3, 3))
        weights += [numpy_helper.from_array(kernel.astype(np.float32), f"{name}.w"),
                    numpy_helper.from_array(rng.normal(0, 0.1, widths[index + 1]).astype(np.float32), f"{name}.b")]
        nodes += [helper.make_node("Conv", [tensor, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=name,
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}.relu")]
        tensor = f"{name}.relu"
    weights += [numpy_helper.from_array(rng.normal(0, 0.3, (10, widths[-1])).astype(np.float32), "fc.w"),
                numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    # named nodes: quantization keeps the first and last layers float by name
    nodes += [helper.make_node("GlobalAveragePool", [tensor], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], [metadata.output_name], name="fc", transB=1)]
    crop = metadata.preprocess.crop_size
    graph = helper.make_graph(
        nodes, "doctor_probe",
        [helper.make_tensor_value_info(metadata.input_name, TensorProto.FLOAT, ["batch", 3, crop, crop])],
        [helper.make_tensor_value_info(metadata.output_name, TensorProto.FLOAT, ["batch", 10])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.19 (JetPack 5's Python 3.8) and TensorRT 8.5 read
    metadata.embed(model)
    fp32 = save_checked(model, folder / "doctor-probe.onnx")
    images = rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    data = Cifar10(images, rng.integers(0, 10, 128), images[:1], np.zeros(1, np.int64), list(classes), "random")
    fp16, int8 = convert_fp16(fp32, folder / "doctor-probe.fp16.onnx"), folder / "doctor-probe.int8.onnx"
    quantize_int8(fp32, int8, data=data, settings=CalibrationSettings(target="trt", size=128),
                  record_path=folder / "doctor-probe.calibration.json")
    return {"fp16": fp16, "int8": int8}


def model_parity(candidate: str | Path, reference: str | Path, images: np.ndarray,
                 labels: Optional[np.ndarray] = None) -> Parity:
    """How closely `candidate` (e.g. a plan) answers like `reference` (its ONNX file on ONNX Runtime's CPU provider)
    on the same uint8 images, both through the deployment runtime. Without labels, the reference's answers are
    the labels (accuracy then reads as agreement)."""
    from edgecls.runtime import Classifier

    with Classifier.load(reference) as classifier:
        expected = classifier.logits(images)
    with Classifier.load(candidate) as classifier:
        got = classifier.logits(images)
    labels = expected.argmax(axis=1) if labels is None else labels
    return parity(got, expected, labels, str(reference))


def parity_images(data: Optional[str]) -> Tuple[np.ndarray, Optional[np.ndarray], str]:
    """The first test images of `data` with their labels, else seeded random images (then no labels)."""
    if data is not None:
        from edgecls.data import load_cifar10

        dataset = load_cifar10(data)
        return (dataset.test_images[:PROBE_IMAGES], dataset.test_labels[:PROBE_IMAGES],
                f"the first {min(PROBE_IMAGES, len(dataset.test_labels))} test images of {dataset.source}")
    images = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, 32, 32, 3), dtype=np.uint8)
    return images, None, f"{PROBE_IMAGES} random images (pass --data for real ones)"


def smoke_engines(export_dir: str | Path, data: Optional[str], work: Path) -> Tuple[List[EngineCheck], str]:
    """Build an fp16 and an int8 engine (the exported files, else probe models) and compare each with ONNX Runtime."""
    import time

    sources = find_exports(export_dir)
    probes = {} if all(p in sources for p in SMOKE_PRECISIONS) else make_probe_models(work)
    images, labels, described = parity_images(data)
    results = []
    for precision in SMOKE_PRECISIONS:
        onnx_path = sources.get(precision) or probes[precision]
        probe_model = precision not in sources
        plan = work / f"doctor.{precision}.plan"
        started = time.perf_counter()
        try:
            build_engine(onnx_path, plan, batch=PROBE_BATCH, workspace_mib=PROBE_WORKSPACE_MIB)
            seconds = time.perf_counter() - started
            found = model_parity(plan, onnx_path, images, labels if not probe_model else None)
        except Exception as exc:  # noqa: BLE001 - the doctor reports any failure as a line, then goes on
            results.append(EngineCheck(precision, str(onnx_path), probe_model, built=False, error=first_line(exc)))
            continue
        results.append(EngineCheck(precision, str(onnx_path), probe_model, built=True,
                                   build_seconds=round(seconds, 1), parity=found))
    return results, described


def run_doctor(export_dir: str | Path = EXPORT_DIR, data: Optional[str] = None, build: bool = True) -> DoctorReport:
    """The whole report; builds engines only where TensorRT, a CUDA binding and a GPU are all there."""
    report = DoctorReport(device_checks(), build_skipped=not build)
    if build and not report.missing:
        with tempfile.TemporaryDirectory(prefix="edgecls-doctor-") as work:
            report.engines, report.images = smoke_engines(export_dir, data, Path(work))
    return report


def format_report(report: DoctorReport) -> str:
    """The report as a table, then one line per missing piece saying what to install, then the verdict."""
    marks = {True: "ok", False: "MISSING", None: ""}
    width = max(len(check.name) for check in report.checks)
    lines = [f"{check.name:<{width}}  {marks[check.ok]:<7}  {check.value}" for check in report.checks]
    if report.engines:
        lines += ["", f"engines (built here, compared with ONNX Runtime on {report.images}):"]
        for engine in report.engines:
            source = f"{engine.onnx}{' (probe model)' if engine.probe_model else ''}"
            if not engine.built:
                lines.append(f"  {engine.precision}  FAILED  {source}: {engine.error}")
            elif engine.parity is not None:
                lines.append(f"  {engine.precision}  ok  {source}: built in {engine.build_seconds:g} s, top-1 agreement "
                             f"{engine.parity.agreement:.2f}%, max |Δ logit| {engine.parity.max_abs_logit_diff:.3g}")
    fixes = [f"- {check.name}: {check.fix}" for check in report.checks if check.fix and check.ok is False]
    notes = [f"- {check.name}: {check.fix}" for check in report.checks if check.fix and check.ok is None]
    if fixes:
        lines += ["", "to install or fix:"] + fixes
    if notes:
        lines += ["", "not needed, since another piece works:" if not fixes else "also:"] + notes
    return "\n".join(lines + ["", report.verdict()])
