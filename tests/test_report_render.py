"""The report page, pinned: `edgecls.report.render` turns fixed, fully typed inputs into HTML that must equal the
expected pages under tests/golden/ byte for byte, so every string, number format and branch of the page is checked.

Each case builds its inputs in memory (no checkpoint, export or training): a full project, one whose int8 file has
only its calibration ranges, one with nothing but the checkpoint, and one with an int8 file and no evidence. The
pictures are drawn by `edgecls.report.figures` (tested by tests/test_report.py on real pages); here each figure is
replaced by a line naming the figure and a digest of exactly what it was asked to draw, so the page pins the
numbers behind every picture without depending on matplotlib's pixels. The date and version in the header are
fixed the same way.

After an intended change to the page, regenerate the expected files and review their diff:
    EDGECLS_UPDATE_GOLDEN=1 python -m pytest tests/test_report_render.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_golden

from edgecls.checkpoint import Checkpoint
from edgecls.formats import BenchResult, EngineManifest, Int8Report, LayerDecision, ModelMetadata
from edgecls.preprocess import Preprocessing
from edgecls.reference import Reference
from edgecls.report import render as rendering
from edgecls.report.compare import Answers, flips
from edgecls.report.gather import (BenchRun, Calibration, LayerPrecision, ModelRow, OnnxFile, PlanFile, ReportInputs,
                                   TensorRange, TrainingRun)

CLASSES = ("cat", "dog", "ship <&>")
PREPROCESS = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=CLASSES)
SHA = "5ca1ab1e" * 8


def plain(value: Any) -> Any:
    """What a figure was asked to draw, as JSON-able data (arrays as lists, records as dicts)."""
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype)}
    if dataclasses.is_dataclass(value):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Pictures:
    """Stands in for `edgecls.report.figures` in the page: each figure becomes its name and a digest of its inputs."""

    def __getattr__(self, name: str):
        def draw(*args: Any) -> str:
            text = json.dumps(plain(list(args)), sort_keys=True)
            return f"figure:{name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        return draw


@pytest.fixture(autouse=True)
def fixed_page(monkeypatch, tmp_path):
    monkeypatch.setattr(rendering, "figures", Pictures())
    monkeypatch.setattr(rendering, "utc_now", lambda: "2026-02-03T04:05:06Z")
    monkeypatch.setattr(rendering, "__version__", "9.8.7")
    monkeypatch.chdir(tmp_path)  # the artifacts' sizes are read from files; relative paths keep the page fixed


def sized(path: str, size: int) -> Path:
    """A file of `size` bytes (the page shows its size in MB)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "wb") as handle:
        handle.truncate(size)
    return file


def metadata(precision: str, quantization: dict | None = None) -> ModelMetadata:
    return ModelMetadata(model="new2", precision=precision, preprocess=PREPROCESS, checkpoint_sha256=SHA,
                         data_fingerprint="f" * 64, quantization=quantization)


def checkpoint(test_accuracy: float | None = 71.256) -> Checkpoint:
    return Checkpoint(path=Path("checkpoints/new2.pt"), model_name="new2", model_config={"num_classes": 3},
                      state_dict={}, preprocess=PREPROCESS, test_accuracy=test_accuracy, val_accuracy=None,
                      data_fingerprint="f" * 64, train_args={"model": "new2", "batch_size": 128, "lr_schedule": "cos"},
                      versions={"torch": "2.4.0", "numpy": "1.26.4"}, epoch=3, epochs=30, sha256=SHA, device="A100")


EPOCHS = [{"epoch": 1, "loss": 2.123456, "lr": 0.012345, "seconds": 10.25, "images_per_second": 4000.4,
           "test_accuracy": None, "val_accuracy": 40.125},
          {"epoch": 2, "loss": 1.5, "lr": 0.1, "seconds": 9.75, "images_per_second": 4200.0,
           "test_accuracy": 55.555, "val_accuracy": None},
          {"epoch": 3, "loss": 1.25, "lr": 0.05, "seconds": 10.0, "images_per_second": 4100.0,
           "test_accuracy": 61.0, "val_accuracy": 50.5}]

MODELS = [ModelRow("new2", "improved AlexNet 2", 1234567, 23456, 1.9, 45_650_001, 1300000, 2.25, True),
          ModelRow("alex1", "AlexNet", 2345678, 1_234_567, 52.63, 98_765_432, 2400000, 55.0, False)]


def timing(variant: str, scope: str, batch: int, p50: float) -> dict:
    return {"variant": variant, "scope": scope, "batch_size": batch, "p50_ms": p50, "p90_ms": p50 * 1.5,
            "p99_ms": p50 * 2.25, "images_per_s": batch * 1000 / p50}


def bench_runs() -> list[BenchRun]:
    environment = {"cpu": "Cortex-A78AE", "gpu": "Orin", "threads": {"cpu_count": 12}, "platform": "Linux-aarch64",
                   "measured_at": "2026-01-05T06:07:08Z", "versions": {"tensorrt": "8.5.2", "numpy": "1.24"}}
    plan = BenchResult(model={"path": "/device/engines/new2.plan", "name": "new2", "precision": "fp16"},
                       accuracy=70.9, timings=[timing("trt", "end-to-end", 1, 0.8123), timing("trt", "gpu", 64, 4.5),
                                               timing("trt", "end-to-end", 64, 6.25)], environment=environment)
    onnx = BenchResult(model={"path": "exports/new2.onnx", "name": "new2", "precision": "fp32"}, accuracy=71.25,
                       timings=[timing("cpu", "end-to-end", 8, 12.0)], environment={"cpu": "Xeon"})
    served = BenchResult(
        model={"path": "exports/new2.fp16.onnx", "name": "new2", "precision": "fp16"}, accuracy=70.5, timings=[],
        parity={"images": 600, "agreement": 99.5, "flips": 3, "right_to_wrong": 2, "wrong_to_right": 1,
                "accuracy": 70.5, "reference_accuracy": 70.6, "accuracy_delta": -0.1, "max_abs_logit_diff": 0.01234,
                "reference": "exports/new2.reference.npz"},
        environment={"cpu": "Xeon", "threads": {"cpu_count": 4}, "measured_at": "2026-01-06T00:00:00Z"},
        server={"url": "http://127.0.0.1:8000", "protocol": "http", "model": "new2"},
        load=[{"concurrency": 1, "request_batch": 8, "timed_requests": 40, "failed": 0, "lost": 0, "p50_ms": 3.25,
               "p90_ms": 4.5, "p99_ms": 6.125, "images_per_s": 2461.5, "batching": {"batches": 40, "mean_batch": 8}},
              {"concurrency": 4, "request_batch": 8, "timed_requests": 10, "failed": 2, "p50_ms": None,
               "p90_ms": None, "p99_ms": None, "images_per_s": 0.0, "batching": None}],
        complete=False, error="the server stopped answering at concurrency 4")
    unreferenced = dataclasses.replace(served, parity=None, server={}, load=[{**served.load[0], "lost": 1}],
                                       complete=True, error=None)
    unnamed = dataclasses.replace(served, parity={k: v for k, v in served.parity.items() if k != "reference"},
                                  complete=True, error=None)
    return [BenchRun(Path("results/device.json"), plan), BenchRun(Path("results/all.json"), onnx),
            BenchRun(Path("results/all.json"), served), BenchRun(Path("results/served.json"), unreferenced),
            BenchRun(Path("results/served.json"), unnamed)]


def int8_report() -> Int8Report:
    def figures(agreement: float, delta: float) -> dict:
        return {"images": 5000, "agreement": agreement, "flips": 20, "right_to_wrong": 9, "wrong_to_right": 6,
                "accuracy": 70.0 + delta, "reference_accuracy": 70.0, "accuracy_delta": delta}

    layers = [LayerDecision("conv0", "Conv", 1792, 31.54, figures(99.1, -0.4), 1, "float", "costliest (rank 1)"),
              LayerDecision("conv1", "Conv", 36928, 48.36, {"agreement": None}, 2, "int8", "")]
    return Int8Report(
        model="new2", checkpoint_sha256=SHA, data_fingerprint="f", target="trt",
        budget={"max_drop": 0.3, "min_agreement": 99.5, "unused": None}, passed=False, method="minmax",
        float_layers=["conv0"], int8_layers=1, layers=layers, validation={"note": "5,000 held-out images"},
        calibration={}, sensitivity="SQNR of the logits, lowest first", candidates=[{}, {}, {}],
        result={"validation": figures(99.6, -0.1), "test": figures(99.55, 0.05)},
        throughput={"batch_size": 64, "images_per_s": {"fp32": 800.0, "all_int8": 2900.0, "result": 2700.4},
                    "vs_fp32": 3.375, "vs_all_int8": 0.93}, search_seconds=140.4)


def reference(labels: list[int]) -> Reference:
    logits = np.eye(3, dtype=np.float32)[labels]
    return Reference("exports/new2.reference.npz", logits, np.array(labels), "new2", SHA, "f" * 64)


def answers(name: str, predicted: list[int], labels: list[int], run_here: bool, original: Answers | None = None,
            precision: str = "fp16") -> Answers:
    """An artifact's answers as compare makes them; `run_here` False: from a bench file (no per-image answers)."""
    predicted_ = np.array(predicted)
    truth = np.array(labels)
    per_class = {name_: (100.0 * float(np.mean(predicted_[truth == i] == i)) if (truth == i).any() else None)
                 for i, name_ in enumerate(CLASSES)}
    confusion = np.bincount(truth * 3 + predicted_, minlength=9).reshape(3, 3)
    agree = None if original is None else float(np.mean(predicted_ == original.predicted) * 100)
    parity = None if original is None else {
        "images": len(labels), "agreement": agree, "flips": int(np.sum(predicted_ != original.predicted)),
        "right_to_wrong": 1, "wrong_to_right": 0, "accuracy": float(np.mean(predicted_ == truth) * 100),
        "reference_accuracy": original.accuracy, "accuracy_delta": -1.234, "max_abs_logit_diff": 0.000123456}
    return Answers(name, precision, "run here on 1,200 test images" if run_here else "results/device.json",
                   float(np.mean(predicted_ == truth) * 100), per_class, parity, confusion if run_here else None,
                   predicted_ if run_here else None)


LABELS = [0, 1, 2] * 12
ORIGINAL_ANSWERS = [0, 1, 2] * 10 + [1, 1, 1, 0, 0, 0]


def full_inputs() -> ReportInputs:
    int8_settings = {"target": "trt", "method": "minmax", "calibration_images": 512, "float_layers": ["conv0", "fc"],
                     "excluded": [], "budget": {"max_drop": 0.3, "min_agreement": 99.0, "max_flips": None},
                     "per_channel": None}
    onnx = [OnnxFile(sized("exports/new2.onnx", 2_345_678), metadata("fp32")),
            OnnxFile(sized("exports/new2.fp16.onnx", 1_005_001), metadata("fp16")),
            OnnxFile(sized("exports/new2.int8.onnx", 650_000), metadata("int8", int8_settings))]
    manifest = EngineManifest("8.5.2", "Orin", "8.7", "exports/new2.fp16.onnx", "0" * 64, "1" * 64, "fp16",
                              {"min": 1, "opt": 32, "max": 64}, metadata("fp16"), build_seconds=61.25,
                              built_at="2026-01-04T00:00:00Z")
    plans = [PlanFile(sized("engines/new2.plan", 3_000_000), metadata("fp16"), manifest)]
    inputs = ReportInputs(
        Path("checkpoints/new2.pt"), "new2", list(CLASSES),
        TrainingRun(checkpoint(), "A100", Path("checkpoints/new2.log.jsonl"), EPOCHS), MODELS,
        reference=reference(LABELS), onnx_files=onnx, plans=plans, bench=bench_runs(),
        int8_layers=[LayerPrecision("conv0", "Conv", "float", "first layer"),
                     LayerPrecision("conv1", "Conv", "int8", ""), LayerPrecision("fc", "Gemm", "float", "last")],
        calibration=Calibration(Path("calibration/new2.minmax.json"), {"method": "minmax"}, []),
        int8_report=int8_report(), int8_report_path=Path("calibration/new2.int8-report.json"),
        notes={"parity": ["engines/old.plan left out: it was built from another `new2.onnx`",
                          "engines/older.plan left out: it comes from another checkpoint"],
               "speed": ["results/x.json is not an `edgecls bench --json` file: left out"]},
        sources=[Path("checkpoints/new2.pt"), Path("exports/new2 <b>.onnx")])
    return inputs


def render_full() -> str:
    inputs = full_inputs()
    original = answers("original (PyTorch)", ORIGINAL_ANSWERS, LABELS, True, precision="fp32")
    original.source = "exports/new2.reference.npz"
    moved = ORIGINAL_ANSWERS[:]
    for row in range(27):  # 27 right answers turned wrong, more than the gallery shows
        moved[row] = (moved[row] + 1) % 3
    moved[30], moved[32] = 0, 0  # a wrong answer turned right, another turned into another wrong one
    fp16 = answers("new2.fp16.onnx", moved, LABELS, True, original)
    same = answers("new2.onnx", ORIGINAL_ANSWERS, LABELS, True, original, "fp32")
    also = ORIGINAL_ANSWERS[:]
    also[5] = 0  # another artifact with one answer moved
    int8 = answers("new2.int8.onnx", also, LABELS, True, original, "int8")
    plan = answers("new2.plan", ORIGINAL_ANSWERS, LABELS, False, original)
    plan.per_class = {"cat": 90.0, "dog": None}  # a bench file without a class: no delta for it
    images = np.arange(len(LABELS) * 2 * 2 * 3, dtype=np.uint8).reshape(len(LABELS), 2, 2, 3)
    flipped = {"new2.fp16.onnx": flips(original, fp16, images, np.array(LABELS)), "new2.onnx": []}
    unrun = ["no figures for engines/new2.b.plan: run `edgecls bench --engine engines/new2.b.plan` on the device"]
    return rendering.render(inputs, original, [same, fp16, int8, plan], flipped, unrun)


def render_calibration_only() -> str:
    """An int8 file with its calibration ranges and no int8 report; a log without validation accuracy; a flip of
    each kind; no plan; a bench file without end-to-end timings (no speed figure)."""
    inputs = full_inputs()
    inputs.training.epochs = [{**epoch, "val_accuracy": None} for epoch in EPOCHS]
    inputs.training.device = None
    inputs.plans, inputs.int8_report, inputs.int8_report_path = [], None, None
    inputs.int8_layers = []
    run = bench_runs()[1]
    inputs.bench = [BenchRun(run.source, dataclasses.replace(run.result, timings=[timing("cpu", "gpu", 8, 1.0)]))]
    inputs.calibration = Calibration(
        Path("calibration/new2.minmax.json"),
        {"method": "minmax", "size": 512, "seed": 0, "split": "train", "created_at": "2026-01-01T00:00:00Z",
         "other": 1},
        [TensorRange("images", -2.0, 2.000123), TensorRange("conv0.out", 0.0, 12345.678)])
    original = answers("original (PyTorch)", ORIGINAL_ANSWERS, LABELS, True, precision="fp32")
    moved = ORIGINAL_ANSWERS[:]
    moved[0], moved[30], moved[32] = 2, 0, 0  # one flip of each kind
    int8 = answers("new2.int8.onnx", moved, LABELS, True, original, "int8")
    images = np.arange(len(LABELS) * 2 * 2 * 3, dtype=np.uint8).reshape(len(LABELS), 2, 2, 3)
    return rendering.render(inputs, original, [int8], {"new2.int8.onnx": flips(original, int8, images,
                                                                                np.array(LABELS))}, [])


def render_bare() -> str:
    """Only the checkpoint: every section says what is left out and which command makes it."""
    inputs = ReportInputs(Path("checkpoints/new2.pt"), "new2", list(CLASSES),
                          TrainingRun(checkpoint(None), None, Path("checkpoints/new2.log.jsonl"), None), MODELS[1:],
                          missing={"training log": "no training log `x`: `edgecls train` writes it",
                                   "reference": "no reference logits <here>: `edgecls export` writes them",
                                   "onnx": "no ONNX file: `edgecls export` writes them",
                                   "bench": "no bench results: run `edgecls bench --all`",
                                   "int8": "no int8 export: `edgecls export --int8` writes it"},
                          notes={"quantization": ["calibration/new2.int8-report.json left out: stale"]},
                          sources=[Path("checkpoints/new2.pt")])
    return rendering.render(inputs, None, [], {}, [])


def render_int8_without_evidence() -> str:
    """An int8 file with no layers read, no report and no calibration record; a reference and nothing to compare."""
    onnx = [OnnxFile(sized("exports/new2.int8.onnx", 1000), metadata("int8", None))]
    inputs = ReportInputs(Path("checkpoints/new2.pt"), "new2", list(CLASSES),
                          TrainingRun(checkpoint(), "cpu", Path("checkpoints/new2.log.jsonl"), EPOCHS[2:]), MODELS,
                          reference=reference([2, 1]), onnx_files=onnx,
                          bench=[bench_runs()[1]],
                          missing={"calibration": "no calibration record `calibration/new2.None.json`"})
    original = answers("original (PyTorch)", [2, 0], [2, 1], True, precision="fp32")
    return rendering.render(inputs, original, [answers("new2.int8.onnx", [2, 0], [2, 1], False)], {}, [])


def render_not_finite() -> str:
    """Figures that are not finite where they can be (a layer whose int8 output has no noise has an infinite SQNR,
    an fp16 overflow an infinite logit difference) or missing, printed as Python formats them; an int8 search that
    held its budget, judged on images it does not describe."""
    inputs = full_inputs()
    nan, inf = float("nan"), float("inf")
    inputs.plans = [dataclasses.replace(inputs.plans[0], manifest=dataclasses.replace(inputs.plans[0].manifest,
                                                                                      build_seconds=nan))]
    run = bench_runs()[2]
    load = [{**run.result.load[0], "p50_ms": nan, "p90_ms": inf, "p99_ms": -inf, "images_per_s": nan,
             "batching": {"batches": 3, "mean_batch": inf}}]
    parity = {**run.result.parity, "max_abs_logit_diff": inf}
    inputs.bench = [BenchRun(run.source, dataclasses.replace(run.result, load=load, parity=parity))]
    report = int8_report()
    layers = [dataclasses.replace(report.layers[0], sqnr_db=inf, alone={"agreement": nan, "accuracy_delta": inf})]
    inputs.int8_report = dataclasses.replace(report, layers=layers, passed=True, validation={})
    inputs.calibration = Calibration(Path("calibration/new2.minmax.json"), {}, [TensorRange("t", -inf, nan)])
    original = answers("original (PyTorch)", ORIGINAL_ANSWERS, LABELS, True, precision="fp32")
    page = rendering.render(inputs, original, [], {}, [])
    inputs.int8_report = None
    return page + rendering.render(inputs, original, [], {}, [])


def not_a_number(value: Any) -> Any:
    """`value` with every float in it (in records, dicts and lists) replaced by NaN, but for preprocessing."""
    if isinstance(value, float):
        return float("nan")
    if isinstance(value, Preprocessing):  # refuses NaN itself, and the page shows none of it
        return value
    if isinstance(value, dict):
        return {key: not_a_number(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(not_a_number(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: not_a_number(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changed)
    return value


def render_not_a_number() -> str:
    """Every figure NaN (a diverged run, an engine answering NaN): the page still renders, with nan where each figure
    goes; no int8 file although none is said to be missing."""
    inputs = not_a_number(full_inputs())
    inputs.onnx_files = inputs.onnx_files[:2]
    original = not_a_number(answers("original (PyTorch)", ORIGINAL_ANSWERS, LABELS, True, precision="fp32"))
    artifact = not_a_number(answers("new2.plan", ORIGINAL_ANSWERS, LABELS, False, original))
    return rendering.render(inputs, original, [artifact], {}, [])


CASES = {"full": render_full, "not-finite": render_not_finite, "not-a-number": render_not_a_number, "calibration-only": render_calibration_only, "bare": render_bare,
         "int8-without-evidence": render_int8_without_evidence}


@pytest.mark.parametrize("case", CASES)
def test_the_page_is_the_expected_one(case):
    page = CASES[case]()
    assert_golden(page, f"report-{case}.html", "page")


def test_numbers_are_right_aligned_and_text_is_not():
    assert [rendering._numeric_text(v) for v in (12, 1.5, "1,234", "-0.25", "+3", "99.50%", "1e-05", ".5")] == [True] * 8
    assert [rendering._numeric_text(v) for v in (True, "v1.2", "1.2.3", "12 ms", "", "e5", "x1")] == [False] * 7
    assert rendering._table(["a"], [[1], ["b"]], "t") == \
        '<table id="t"><tr><th>a</th></tr><tr><td class="n">1</td></tr><tr><td>b</td></tr></table>'
