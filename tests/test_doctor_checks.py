"""`edgecls doctor`'s decisions, fast: what it concludes from a device's facts, what it prints and reports as JSON
(pinned by expected files under tests/golden/), which exported files it builds test engines from, the images it
compares them on, and its probe models. The facts come from `edgecls.doctor.checks_of`'s input, fixed here for
devices this machine is not (a Jetson with TensorRT, one with the wrong Python, ...); where a result needs TensorRT
itself (an engine built and run), it is given as data to the report, never by a stand-in for TensorRT. Reading
the facts of this machine is compared with the individual probes (`probe_device`), and tests/test_doctor.py runs the
command itself.

After an intended change to the printed report, regenerate the expected files and review their diff:
    EDGECLS_UPDATE_GOLDEN=1 python -m pytest tests/test_doctor_checks.py
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_golden, save_graph
from onnx import helper, numpy_helper

from edgecls import doctor
from edgecls.doctor import Check, DeviceFacts, DoctorReport, EngineCheck, checks_of, format_report
from edgecls.engines import JetsonRelease, unavailable_reason
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import ModelMetadata
from edgecls.metrics import Parity, parity
from edgecls.preprocess import Preprocessing
from edgecls.runtime.cuda_memory import BindingStatus, GpuInfo
from edgecls.runtime.tensorrt_backend import TENSORRT_INSTALL_HINT

UNAVAILABLE = unavailable_reason()

ORIN = GpuInfo("Orin", "8.7", 32 * 2**30 + 2**29, "pycuda")
OPENCV = {"version": "4.8.0", "gstreamer": True, "path": "/usr/lib/python3/dist-packages/cv2"}


def facts(**changes) -> DeviceFacts:
    """A Jetson AGX Orin on JetPack 5 with everything working (pycuda, not cuda-python, as JetPack 5 has it)."""
    ready = DeviceFacts(
        jetson=JetsonRelease("NVIDIA Jetson AGX Orin Developer Kit", "35.4.1"), python="3.8.10", numpy="1.24.4",
        tensorrt="8.5.2.2", tensorrt_problem=None,
        bindings=[BindingStatus("cuda-python", None, None, "not installed; pip install cuda-python"),
                  BindingStatus("pycuda", "2022.2", ORIN, None)],
        gpu=ORIN, dla_cores=2, dla_unsupported=None, onnxruntime="1.16.3",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        serving=(True, "works here (nvidia-pytriton 0.5.0)"), opencv=OPENCV)
    return dataclasses.replace(ready, **changes)


def parity_of(agreement: float, max_diff: float) -> Parity:
    return Parity("exports/new2.fp16.onnx", 256, agreement, 1, 1, 0, 70.0, 70.5, -0.5, max_diff, max_diff / 10)


PC = facts(jetson=JetsonRelease("", ""), python="3.11.7", numpy="2.1.0", tensorrt=None,
           tensorrt_problem=TENSORRT_INSTALL_HINT,
           bindings=[BindingStatus("cuda-python", "12.6.0", None, "cannot reach the NVIDIA driver"),
                     BindingStatus("pycuda", None, None, "not installed; pip install pycuda")],
           gpu=None, dla_cores=None, providers=("AzureExecutionProvider", "CPUExecutionProvider"),
           serving=(False, "not set up: run `make serve-venv`"),
           opencv={"version": "4.10.0", "gstreamer": False, "path": "/venv/cv2"})

# built inside the test: the checks must be made by the code under test when it runs, not at import
CASES = {
    # this kind of machine: no TensorRT, no GPU, no working binding
    "pc": lambda: DoctorReport(checks_of(PC)),
    # a ready Jetson whose engines were built and ran
    "jetson-ready": lambda: DoctorReport(checks_of(facts()), [
        EngineCheck("fp16", "exports/new2.fp16.onnx", False, True, build_seconds=41.25,
                    parity=parity_of(99.609375, 0.0123456)),
        EngineCheck("int8", "exports/new2.int8.onnx", False, True, build_seconds=80.0,
                    parity=parity_of(97.0, 1.5))], images="the first 256 test images of cifar10"),
    # JetPack 5 with another Python: its TensorRT does not load; neither binding works; a GPU of unknown memory
    "jetson-wrong-python": lambda: DoctorReport(checks_of(facts(
        python="3.10.12", numpy=None, tensorrt=None, tensorrt_problem="TensorRT's Python package does not load (x)",
        bindings=[BindingStatus("cuda-python", "12.2", None, "no driver"),
                  BindingStatus("pycuda", "2022.2", None, "no driver")],
        gpu=dataclasses.replace(ORIN, total_memory=0, source="nvidia-smi"), onnxruntime=None, opencv={}))),
    # JetPack 6, all there, DLA cores this TensorRT cannot use; an engine failed, another built but not compared
    "engine-failed": lambda: DoctorReport(checks_of(facts(
        jetson=JetsonRelease("NVIDIA Jetson Orin NX", "36.3.0"), python="3.10.12", tensorrt="10.8.0",
        bindings=[BindingStatus("cuda-python", "12.6", ORIN, None), BindingStatus("pycuda", "2024.1", ORIN, None)],
        dla_unsupported="TensorRT 10.8.0 has no DLA support on Jetson; build without --dla",
        serving=(False, "not set up"))), [
        EngineCheck("fp16", "/tmp/work/doctor-probe.fp16.onnx", True, False, error="no memory"),
        EngineCheck("int8", "/tmp/work/doctor-probe.int8.onnx", True, True, build_seconds=3.0)],
        images="256 random images (pass --data for real ones)"),
    # an unknown L4T release, TensorRT that cannot say how many DLA cores, --no-build
    "facts-only": lambda: DoctorReport(checks_of(facts(jetson=JetsonRelease("Some board", "99.1"), dla_cores=None)),
                               build_skipped=True),
    # a GPU without DLA, no engine built although nothing is missing
    "no-engines": lambda: DoctorReport(checks_of(facts(jetson=JetsonRelease("", ""), dla_cores=0, python="3.12.1"))),
}


@pytest.mark.parametrize("case", CASES)
def test_the_printed_report_and_its_json_are_the_expected_ones(case):
    report = CASES[case]()
    text = f"{format_report(report)}\n--- --json\n{json.dumps(report.to_dict(), indent=2)}\n"
    assert_golden(text, f"doctor-{case}.txt", "doctor's report")


def test_ready_means_nothing_missing_and_every_test_engine_built():
    fine = [Check("TensorRT", "8.6", True), Check("board", "x")]
    built, failed = EngineCheck("fp16", "a", False, True), EngineCheck("int8", "b", False, False, error="e")
    assert DoctorReport(fine, [built, built]).ready
    assert not DoctorReport(fine, [built, failed]).ready
    assert not DoctorReport(fine, []).ready
    assert DoctorReport(fine, [], build_skipped=True).ready
    blocked = [*fine, Check("GPU", "none", False, "install")]
    assert not DoctorReport(blocked, [built], build_skipped=True).ready
    assert DoctorReport(blocked).missing == [blocked[-1]]
    assert DoctorReport([Check("GPU", "none", False), Check("pycuda", "x", False), Check("cuda-python", "y", False),
                         Check("DLA", "z", False)]).verdict() == (
        "NOT READY: no GPU, no working CUDA binding and no usable DLA here, so no TensorRT engine can be built or "
        "run; install what is listed above")
    assert DoctorReport([Check("GPU", "none", False)]).verdict() == (
        "NOT READY: no GPU here, so no TensorRT engine can be built or run; install what is listed above")


# ----------------------------------------------------------------------------------------------- this machine

def test_the_facts_are_read_from_this_machine():
    import onnxruntime

    from edgecls.engines import jetson_release
    from edgecls.runtime.tensorrt_backend import tensorrt_problem
    from edgecls.serving.interpreter import serving_status
    from edgecls.video import opencv_facts

    seen = BindingStatus("pycuda", "2024.1", ORIN, None)  # a binding's answer, given: the GPU is the one it saw
    assert doctor.probe_device([seen]).gpu == ORIN and doctor.probe_device([seen]).bindings == [seen]
    found = doctor.probe_device([])
    assert found.jetson == jetson_release() and found.python == platform.python_version()
    assert found.numpy == np.__version__ and found.bindings == []
    assert found.tensorrt_problem == tensorrt_problem() and (found.tensorrt is None) == (found.tensorrt_problem
                                                                                      is not None)
    assert doctor.tensorrt_facts() == (found.tensorrt, found.tensorrt_problem)
    assert found.onnxruntime == onnxruntime.__version__
    assert found.providers == tuple(onnxruntime.get_available_providers())
    assert found.serving == serving_status() and found.opencv == opencv_facts()
    if found.gpu is None or found.tensorrt is None:
        assert found.dla_cores is None and found.dla_unsupported is None
    assert doctor.device_checks([]) == checks_of(found)


@pytest.mark.parametrize("version, cores, unsupported", [
    ("10.8.0", 2, "TensorRT 10.8.0 has no DLA support on Jetson (10.7 was the last 10.x release with DLA; it came "
                  "back in 11.4.1 for Jetson AGX Orin on JetPack 7.2.2+); build without --dla"),
    ("8.5.2", 2, None),  # fp16 engines on its DLA: yes (int8 Q/DQ files: no, not what this line asks)
    ("10.8.0", 0, None), ("10.8.0", None, None)])
def test_dla_cores_are_read_only_where_tensorrt_and_a_gpu_are(monkeypatch, version, cores, unsupported):
    """TensorRT's own answers (its version, its builder's DLA count) given as facts: no TensorRT is imported."""
    asked = []
    monkeypatch.setattr(doctor, "tensorrt_facts", lambda: (version, None))
    monkeypatch.setattr(doctor, "dla_cores", lambda: asked.append("dla") or cores)
    seen = BindingStatus("pycuda", "2024.1", ORIN, None)
    found = doctor.probe_device([seen])
    assert (found.tensorrt, found.tensorrt_problem, found.gpu) == (version, None, ORIN)
    assert (found.dla_cores, found.dla_unsupported, asked) == (cores, unsupported, ["dla"])
    assert doctor.probe_device([]).dla_cores is None and asked == ["dla"]  # no GPU: not asked
    monkeypatch.setattr(doctor, "tensorrt_facts", lambda: (None, "absent"))
    absent = doctor.probe_device([seen])
    assert (absent.tensorrt, absent.tensorrt_problem, absent.dla_cores) == (None, "absent", None) and asked == ["dla"]


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are here: tests/test_doctor.py runs the engines")
def test_without_tensorrt_the_doctor_reports_and_builds_nothing(tmp_path):
    facts_only = doctor.run_doctor(tmp_path, build=False)
    assert facts_only.build_skipped and facts_only.engines == [] and facts_only.images == ""
    assert facts_only.checks == doctor.device_checks() and not facts_only.ready
    report = doctor.run_doctor(tmp_path)
    assert not report.build_skipped and report.engines == [] and report.missing


# ----------------------------------------------------------------------------------------------- the test engines

PREPROCESS = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=tuple("abcdefghij"))


def write_onnx(path: Path, precision: str, quantization: dict | None = None, scale: float = 1.0) -> Path:
    """A runnable images -> 10 logits graph (one Gemm on the pooled pixels) carrying edgecls metadata."""
    meta = ModelMetadata("new2", precision, PREPROCESS, "", "", quantization=quantization)
    fc = np.arange(30, dtype=np.float32).reshape(10, 3) * scale - 10
    nodes = [helper.make_node("GlobalAveragePool", [meta.input_name], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.w"], [meta.output_name], name="fc", transB=1)]
    return save_graph(nodes, [numpy_helper.from_array(fc, "fc.w")], meta, path)


def test_the_first_tensorrt_style_fp16_and_int8_exports_are_found(tmp_path):
    write_onnx(tmp_path / "a.onnx", "fp32")
    write_onnx(tmp_path / "b.int8.onnx", "int8", {"target": "cpu"})  # for ONNX Runtime's CPU: not for TensorRT
    (tmp_path / "c.onnx").write_bytes(b"not onnx")
    int8 = write_onnx(tmp_path / "d.int8.onnx", "int8", {"method": "minmax"})  # no target: TensorRT's, as before
    fp16 = write_onnx(tmp_path / "e.fp16.onnx", "fp16")
    write_onnx(tmp_path / "f.fp16.onnx", "fp16")
    write_onnx(tmp_path / "g.int8.onnx", "int8", {"target": "trt"})
    assert doctor.find_exports(tmp_path) == {"int8": int8, "fp16": fp16}
    assert doctor.find_exports(tmp_path / "absent") == {}


def test_the_engines_run_on_the_first_test_images_or_on_seeded_random_ones(tmp_path):
    from tests.conftest import synthetic_cifar, write_image_folder

    images, labels, described = doctor.parity_images(None)
    again, _, _ = doctor.parity_images(None)
    assert images.shape == (256, 32, 32, 3) and images.dtype == np.uint8 and labels is None
    assert np.array_equal(images, again) and images.min() == 0 and images.max() == 255
    assert np.array_equal(images, np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8))
    assert described == "256 random images (pass --data for real ones)"
    data = synthetic_cifar(1, 30)  # 300 test images: the first 256 are used
    folder = write_image_folder(data, tmp_path / "data")
    from edgecls.data import load_cifar10

    loaded = load_cifar10(folder)
    images, labels, described = doctor.parity_images(str(folder))
    assert np.array_equal(images, loaded.test_images[:256]) and np.array_equal(labels, loaded.test_labels[:256])
    assert described == f"the first 256 test images of {loaded.source}"
    few = write_image_folder(synthetic_cifar(1, 1), tmp_path / "few")
    assert doctor.parity_images(str(few))[2] == f"the first 10 test images of {load_cifar10(few).source}"


def test_model_parity_compares_two_files_through_the_runtime(tmp_path):
    from edgecls.runtime import Classifier

    reference = write_onnx(tmp_path / "ref.onnx", "fp32")
    candidate = write_onnx(tmp_path / "cand.onnx", "fp16", scale=1.01)
    images = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with Classifier.load(reference) as classifier:
        expected = classifier.logits(images)
    with Classifier.load(candidate) as classifier:
        got = classifier.logits(images)
    labels = np.arange(16) % 10
    assert doctor.model_parity(candidate, reference, images, labels) == parity(got, expected, labels, str(reference))
    unlabelled = doctor.model_parity(candidate, reference, images)
    assert unlabelled == parity(got, expected, expected.argmax(axis=1), str(reference))
    assert unlabelled.reference_accuracy == 100.0 and unlabelled.max_abs_logit_diff > 0


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are here: tests/test_doctor.py builds engines")
def test_without_tensorrt_each_test_engine_fails_in_one_line_from_the_exports(tmp_path):
    from edgecls.engines import build_engine

    exports = tmp_path / "exports"
    fp16 = write_onnx(exports / "new2.fp16.onnx", "fp16")
    int8 = write_onnx(exports / "new2.int8.onnx", "int8", {"target": "trt"})
    with pytest.raises(EdgeclsError) as error:
        build_engine(fp16, tmp_path / "x.plan")
    work = tmp_path / "work"
    work.mkdir()
    engines, described = doctor.smoke_engines(exports, None, work)
    assert engines == [EngineCheck("fp16", str(fp16), False, False, error=first_line(error.value)),
                       EngineCheck("int8", str(int8), False, False, error=first_line(error.value))]
    assert described == "256 random images (pass --data for real ones)"
    assert sorted(path.name for path in work.iterdir()) == []  # no probe model: the exports were found


class Bench:
    """Records what the doctor asks of the engine builder and of the comparison, standing in for both where no
    TensorRT is (tests/test_doctor.py runs the real ones on a device): `refuse` names the precisions whose build
    fails. No engine is claimed to exist; what is checked is the doctor's bookkeeping around them."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.refuse, self.built, self.compared, self.clock = refuse, [], [], 100.0

    def build(self, onnx, plan, batch, workspace_mib):
        self.built.append((onnx, plan, batch, workspace_mib))
        self.clock += 1.26  # the build's time, as the doctor's clock sees it
        if any(precision in str(plan) for precision in self.refuse):
            raise EdgeclsError(f"{plan}: refused\nsecond line")

    def compare(self, candidate, reference, images, labels=None) -> Parity:
        self.compared.append((candidate, reference, images, labels))
        return parity_of(99.0 - len(self.compared), 0.5)

    def install(self, monkeypatch) -> "Bench":
        import time

        monkeypatch.setattr(doctor, "build_engine", self.build)
        monkeypatch.setattr(doctor, "model_parity", self.compare)
        monkeypatch.setattr(time, "perf_counter", lambda: self.clock)
        return self


def test_each_test_engine_is_built_small_and_compared_with_its_onnx_file(tmp_path, monkeypatch):
    from tests.conftest import synthetic_cifar, write_image_folder

    bench = Bench(refuse=("int8",)).install(monkeypatch)
    exports = tmp_path / "exports"
    fp16 = write_onnx(exports / "new2.fp16.onnx", "fp16")
    int8 = write_onnx(exports / "new2.int8.onnx", "int8", {"target": "trt"})
    data = write_image_folder(synthetic_cifar(1, 1), tmp_path / "data")
    images, labels, described = doctor.parity_images(str(data))
    work = tmp_path / "work"
    engines, told = doctor.smoke_engines(exports, str(data), work)
    assert told == described
    assert bench.built == [(fp16, work / "doctor.fp16.plan", (1, 32, 64), 256),
                           (int8, work / "doctor.int8.plan", (1, 32, 64), 256)]
    assert [(c[0], c[1]) for c in bench.compared] == [(work / "doctor.fp16.plan", fp16)]
    assert np.array_equal(bench.compared[0][2], images) and np.array_equal(bench.compared[0][3], labels)
    assert engines == [EngineCheck("fp16", str(fp16), False, True, build_seconds=1.3, parity=parity_of(98.0, 0.5)),
                       EngineCheck("int8", str(int8), False, False, error=first_line(EdgeclsError(f"{work / 'doctor.int8.plan'}: refused\nsecond line")))]


def test_a_probe_models_engine_is_compared_without_labels_an_exports_with_them(tmp_path, monkeypatch):
    bench = Bench().install(monkeypatch)
    monkeypatch.setattr(doctor, "make_probe_models", lambda folder: {
        "fp16": write_onnx(folder / "p.fp16.onnx", "fp16"),
        "int8": write_onnx(folder / "p.int8.onnx", "int8", {"target": "trt"})})
    from tests.conftest import synthetic_cifar, write_image_folder

    exports = tmp_path / "exports"
    fp16 = write_onnx(exports / "new2.fp16.onnx", "fp16")
    work = tmp_path / "work"
    work.mkdir()
    data = write_image_folder(synthetic_cifar(1, 1), tmp_path / "data")
    labels = doctor.parity_images(str(data))[1]
    engines, _ = doctor.smoke_engines(exports, str(data), work)
    assert [c[1] for c in bench.compared] == [fp16, work / "p.int8.onnx"]
    assert np.array_equal(bench.compared[0][3], labels) and bench.compared[1][3] is None  # the probe's own answers
    assert [(e.precision, e.onnx, e.probe_model, e.built, e.build_seconds) for e in engines] == [
        ("fp16", str(fp16), False, True, 1.3), ("int8", str(work / "p.int8.onnx"), True, True, 1.3)]


def test_where_nothing_is_missing_the_doctor_builds_in_a_temporary_folder(tmp_path, monkeypatch):
    asked = []

    def smoke(export_dir, data, work):
        asked.append((export_dir, data, work, work.is_dir()))
        return [EngineCheck("fp16", "a.onnx", False, True)], "some images"

    monkeypatch.setattr(doctor, "device_checks", lambda: checks_of(facts()))
    monkeypatch.setattr(doctor, "smoke_engines", smoke)
    report = doctor.run_doctor(tmp_path / "exports", "data.tar.gz")
    assert report.engines == [EngineCheck("fp16", "a.onnx", False, True)] and report.images == "some images"
    assert report.ready and not report.build_skipped and report.checks == checks_of(facts())
    (export_dir, data, work, existed), = asked
    assert (export_dir, data, existed) == (tmp_path / "exports", "data.tar.gz", True)
    assert work.name.startswith("edgecls-doctor-") and not work.exists()  # removed after the engines ran
    skipped = doctor.run_doctor(tmp_path, build=False)
    assert skipped.build_skipped and skipped.engines == [] and len(asked) == 1


# ----------------------------------------------------------------------------------------------- probe models

def summary(path: Path) -> dict:
    """An ONNX file as the expected file records it: metadata, nodes, and each weight's shape and statistics."""
    import onnx

    model = onnx.load(str(path))
    return {
        "graph": model.graph.name, "ir_version": model.ir_version, "opsets": [(o.domain, o.version) for o in model.opset_import],
        "metadata": ModelMetadata.read(path).to_dict(),
        "inputs": [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in model.graph.input],
        "outputs": [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                    for v in model.graph.output],
        "nodes": [(n.op_type, n.name, list(n.input), list(n.output),
                   {a.name: str(helper.get_attribute_value(a)) for a in n.attribute}) for n in model.graph.node],
        "weights": {t.name: (list(t.dims), str(numpy_helper.to_array(t).dtype),
                             round(float(numpy_helper.to_array(t).astype(np.float64).mean()), 6),
                             round(float(numpy_helper.to_array(t).astype(np.float64).std()), 6))
                    for t in model.graph.initializer},
    }


def test_probe_models_are_the_expected_small_cnn_in_fp16_and_tensorrt_int8(tmp_path):
    files = doctor.make_probe_models(tmp_path)
    assert files == {"fp16": tmp_path / "doctor-probe.fp16.onnx", "int8": tmp_path / "doctor-probe.int8.onnx"}
    record = json.loads((tmp_path / "doctor-probe.calibration.json").read_text())
    assert (record["size"], record["method"], record["indices"]) == (128, "percentile", list(range(128)))
    fp32 = summary(tmp_path / "doctor-probe.onnx")
    fp16, int8 = summary(files["fp16"]), summary(files["int8"])
    pinned = {"fp32": fp32, "int8 quantization": int8["metadata"]["quantization"],
              "calibration": {key: record[key] for key in ("model", "data_fingerprint", "method", "size", "seed",
                                                           "split")}}
    assert_golden(json.dumps(pinned, indent=1) + "\n", "doctor-probe-model.json", "probe model")
    assert fp16["metadata"] == {**fp32["metadata"], "precision": "fp16"}
    assert int8["metadata"]["precision"] == "int8" and int8["metadata"]["quantization"]["target"] == "trt"
    quantized = [n for n in int8["nodes"] if n[0] in ("Conv", "Gemm")]
    dequantized = {n[3][0] for n in int8["nodes"] if n[0] == "DequantizeLinear"}
    assert [(n[1], n[2][1] in dequantized) for n in quantized] == [("conv0", False), ("conv1", True),
                                                                   ("conv2", True), ("fc", False)]
