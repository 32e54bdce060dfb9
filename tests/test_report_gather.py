"""The report's decisions, fast: which files and records belong to the current export set, which bench result is
shown, what is left out and with which line, and the comparisons drawn from them (`edgecls.report.gather` and
`edgecls.report.compare`). Small artifacts are written to tmp_path with the project's own writers and tiny ONNX
graphs made with onnx.helper; the checkpoint is an untrained record (no training, no torch export)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_graph
from onnx import TensorProto, helper, numpy_helper

from edgecls.artifacts import sha256_file
from edgecls.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecls.data import digest_rows
from edgecls.errors import EdgeclsError
from edgecls.formats import (BenchResult, CalibrationRecord, EngineManifest, ExportSet, Folders, Int8Report,
                             LayerDecision, ModelMetadata, ReferenceLogits)
from edgecls.metrics import accuracy, parity, per_class_accuracy
from edgecls.preprocess import Preprocessing
from edgecls.reference import Reference
from edgecls.report import compare, gather as gathering
from edgecls.report.gather import (BenchRun, ReportInputs, TrainingRun, gather, graph_order,
                                   read_bench_runs, read_calibration, read_int8_layers, read_training_log)

CLASSES = tuple(f"class{i}" for i in range(10))
PREPROCESS = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=CLASSES)
OTHER_SHA = "0123456789ab" + "c" * 52


# ----------------------------------------------------------------------------------------------- builders

@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    """An untrained new2 checkpoint record: what gather reads of it (no weights needed)."""
    path = tmp_path_factory.mktemp("checkpoint") / "new2.pt"
    save_checkpoint(path, {"model": "new2", "model_config": {"num_classes": 10}, "state_dict": {},
                           "preprocess": PREPROCESS.to_dict(), "epoch": 3, "epochs": 5, "test_accuracy": 61.25,
                           "data_fingerprint": "d" * 64, "train_args": {"model": "new2", "lr": 0.1},
                           "versions": {"torch": "2.x"}, "device": "cpu"})
    return path


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path) -> Checkpoint:
    return load_checkpoint(checkpoint_path)


def inputs_of(checkpoint: Checkpoint) -> ReportInputs:
    training = TrainingRun(checkpoint, checkpoint.device, checkpoint.path.parent / "new2.log.jsonl", None)
    return ReportInputs(checkpoint.path, "new2", list(CLASSES), training, [], sources=[checkpoint.path])


def metadata(sha: str, precision: str = "fp32", quantization: dict | None = None) -> ModelMetadata:
    return ModelMetadata(model="new2", precision=precision, preprocess=PREPROCESS, checkpoint_sha256=sha,
                         data_fingerprint="d" * 64, quantization=quantization)


def weight(name: str, shape: tuple[int, ...], seed: int) -> TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).normal(0, 0.2, shape).astype(np.float32), name)



def write_onnx(path: Path, meta: ModelMetadata, int8: bool = False) -> Path:
    """A runnable graph, images -> 10 logits: conv0, conv1, conv2, then a Gemm. `int8`: conv1's weight comes out of
    a DequantizeLinear, as in a Q/DQ file where the first, third and last layers stayed float."""
    nodes, weights, tensor = [], [], meta.input_name
    for index, (cin, cout) in enumerate(((3, 4), (4, 4), (4, 4))):
        name = f"conv{index}"
        weights.append(weight(f"{name}.w", (cout, cin, 3, 3), index))
        source = f"{name}.w"
        if int8 and index == 1:
            weights[-1] = numpy_helper.from_array(np.ones((cout, cin, 3, 3), np.int8), f"{name}.q")
            weights += [numpy_helper.from_array(np.array(0.05, np.float32), f"{name}.scale"),
                        numpy_helper.from_array(np.array(0, np.int8), f"{name}.zero")]
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale", f"{name}.zero"],
                                          [f"{name}.dq"], name=f"{name}.dequantize"))
            source = f"{name}.dq"
        nodes.append(helper.make_node("Conv", [tensor, source], [f"{name}.out"], name=name, pads=[1, 1, 1, 1]))
        tensor = f"{name}.out"
    weights.append(weight("fc.w", (10, 4), 9))
    nodes += [helper.make_node("GlobalAveragePool", [tensor], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w"], [meta.output_name], name="fc", transB=1)]
    return save_graph(nodes, weights, meta, path)


def write_reference(path: Path, sha: str, rows: int = 6) -> Path:
    rng = np.random.default_rng(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    ReferenceLogits(rng.normal(size=(rows, 10)).astype(np.float32), np.arange(rows) % 10,
                    rng.integers(0, 256, (rows, 16), dtype=np.uint8), "new2", sha, "").write(path)
    return path


def write_plan(path: Path, sha: str, onnx_path: str, onnx_sha256: str) -> Path:
    """A plan file and its manifest: the report reads only the manifest (and checks the plan's bytes against it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"plan bytes of " + path.name.encode())
    EngineManifest("8.5.2", "Orin", "8.7", onnx_path, onnx_sha256, sha256_file(path), "fp16",
                   {"min": 1, "opt": 8, "max": 32}, metadata(sha, "fp16")).write(path)
    return path


def bench(path: str, sha: str | None, measured_at: str, accuracy_: float = 50.0, name: str = "new2") -> BenchResult:
    model = {"path": path, "name": name, "precision": "fp16"}
    if sha is not None:
        model["checkpoint_sha256"] = sha
    return BenchResult(model=model, accuracy=accuracy_,
                       timings=[{"variant": "v", "scope": "end-to-end", "batch_size": 1, "p50_ms": 1.0,
                                 "p90_ms": 1.0, "p99_ms": 1.0, "images_per_s": 1.0}],
                       environment={"measured_at": measured_at})


def calibration_record(path: Path, sha: str) -> Path:
    """A calibration record with ranges as ONNX Runtime writes them (TensorsData), out of graph order."""
    ranges = {"CLS": "TensorsData", "data": {
        "conv2.out": {"lowest": {"data": [-3.0], "dtype": "float32"}, "highest": {"data": [3.5], "dtype": "float32"}},
        "elsewhere": {"lowest": -9.0, "highest": 9.0},
        "images": {"lowest": -2.0, "highest": 2.0},
        "conv0.out": {"lowest": [-1.0], "highest": [1.5]}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    CalibrationRecord("new2", sha, "d" * 64, "minmax", 16, 7, list(range(16)), ranges,
                      created_at="2026-01-02T03:04:05Z").write(path)
    return path


def int8_report(sha: str) -> Int8Report:
    alone = {"agreement": 99.0, "accuracy_delta": -0.5}
    return Int8Report(model="new2", checkpoint_sha256=sha, data_fingerprint="d", target="trt",
                      budget={"max_drop": 0.5, "min_agreement": None}, passed=True, method="minmax",
                      float_layers=["conv0"], int8_layers=1,
                      layers=[LayerDecision("conv1", "Conv", 144, 30.0, alone, 1, "int8", "")],
                      validation={}, calibration={}, sensitivity="SQNR", candidates=[], result={},
                      throughput=None, search_seconds=1.0)


def export_set(folder: Path, sha: str, names: list[str], companions: list[Path] = ()) -> ExportSet:
    record = ExportSet("new2", sha, {name: sha256_file(folder / name) for name in names}, True,
                       companions={path.name: sha256_file(path) for path in companions})
    record.write(ExportSet.path_for(folder, "new2"))
    return record


def folders(root: Path) -> Folders:
    return Folders(root / "exports", root / "engines", root / "calibration")


# ----------------------------------------------------------------------------------------------- the bench shown

def test_the_bench_result_shown_for_an_artifact_is_its_latest_by_file_name(checkpoint):
    inputs = inputs_of(checkpoint)
    older = BenchRun(Path("a.json"), bench("exports/new2.fp16.onnx", None, "2026-01-01T10:00:00Z", 40.0))
    latest = BenchRun(Path("b.json"), bench("/device/work/exports/new2.fp16.onnx", None, "2026-01-03T10:00:00Z", 42.0))
    middle = BenchRun(Path("c.json"), bench("exports/new2.fp16.onnx", None, "2026-01-02T10:00:00Z", 41.0))
    other = BenchRun(Path("d.json"), bench("exports/new2.onnx", None, "2026-01-04T10:00:00Z", 43.0))
    inputs.bench = [older, latest, middle, other]
    assert inputs.latest_bench(Path("somewhere/new2.fp16.onnx")) is latest  # matched by name, newest wins
    assert inputs.latest_bench(Path("new2.onnx")) is other
    assert inputs.latest_bench(Path("new2.int8.onnx")) is None
    inputs.bench = [latest, older]
    assert inputs.latest_bench(Path("new2.fp16.onnx")) is latest
    assert BenchRun(Path("x.json"), bench("p", None, "t")).machine == "?"


def test_bench_files_of_this_checkpoint_are_read_and_the_others_noted(checkpoint, tmp_path):
    sha = checkpoint.sha256
    results = tmp_path / "results"
    results.mkdir()
    mine = bench("exports/new2.onnx", sha, "2026-01-01T00:00:00Z").write(results / "b-mine.json")
    unsigned = bench("exports/new2.fp16.onnx", None, "2026-01-02T00:00:00Z").write(results / "a-unsigned.json")
    bench("exports/new2.onnx", OTHER_SHA, "2026-01-03T00:00:00Z").write(results / "c-other.json")
    bench("exports/new1.onnx", sha, "2026-01-03T00:00:00Z", name="new1").write(results / "d-new1.json")
    (results / "e-plain.json").write_text(json.dumps({"something": "else"}))
    both = {"rows": [{"details": bench("exports/new2.int8.onnx", sha, "t1").to_dict()}, {"details": None},
                     {"details": bench("exports/new2.onnx", OTHER_SHA, "t2").to_dict()}]}
    (results / "f-all.json").write_text(json.dumps(both))
    (results / "notes.txt").write_text("not json")
    explicit = bench("engines/new2.plan", sha, "2026-01-05T00:00:00Z").write(tmp_path / "device.json")
    notes: list[str] = []
    runs = read_bench_runs("new2", sha, results, [explicit, mine], notes)
    assert [(run.source, run.result.path.name) for run in runs] == [
        (unsigned, "new2.fp16.onnx"), (mine, "new2.onnx"), (results / "f-all.json", "new2.int8.onnx"),
        (explicit, "new2.plan")]
    assert notes == [f"{results / 'c-other.json'} holds no bench result of this new2 checkpoint ({sha[:12]}): left out",
                     f"{results / 'd-new1.json'} holds no bench result of this new2 checkpoint ({sha[:12]}): left out",
                     f"{results / 'e-plain.json'} is not an `edgecls bench --json` file: left out"]
    assert read_bench_runs("new2", sha, tmp_path / "absent", [], notes) == []


@pytest.mark.parametrize("content, why", [
    (bench("exports/new2.onnx", OTHER_SHA, "t").to_dict(), "holds no bench result of this new2 checkpoint"),
    ({"rows": []}, "is not an `edgecls bench --json` file")])
def test_an_explicit_bench_file_without_this_checkpoints_results_is_refused(checkpoint, tmp_path, content, why):
    path = tmp_path / "given.json"
    path.write_text(json.dumps(content))
    results = tmp_path / "results"
    results.mkdir()
    (results / "given.json").write_text(json.dumps(content))  # in the results folder too: still required
    for given in (path, results / "given.json"):
        with pytest.raises(EdgeclsError) as error:
            read_bench_runs("new2", checkpoint.sha256, results, [given], [])
        assert str(error.value).startswith(f"{given} {why}") and \
            str(error.value).endswith("; pass a bench file of this checkpoint")


def test_an_explicit_bench_path_that_is_a_folder_or_missing_says_so(checkpoint, tmp_path):
    with pytest.raises(EdgeclsError) as error:
        read_bench_runs("new2", checkpoint.sha256, tmp_path / "none", [tmp_path], [])
    assert str(error.value).startswith(f"bench file {tmp_path} is ") and "not a regular file" in str(error.value)
    missing = tmp_path / "missing.json"
    with pytest.raises(EdgeclsError) as error:
        read_bench_runs("new2", checkpoint.sha256, tmp_path / "none", [missing], [])
    assert str(error.value) == f"bench file {missing} does not exist; write one with `edgecls bench ... --json {missing}`"


def test_gather_bench_lists_each_source_once_and_says_how_to_bench(checkpoint, tmp_path):
    inputs = inputs_of(checkpoint)
    results = tmp_path / "results"
    results.mkdir()
    both = {"rows": [{"details": bench("exports/new2.onnx", checkpoint.sha256, "t").to_dict()},
                     {"details": bench("exports/new2.fp16.onnx", checkpoint.sha256, "t").to_dict()}]}
    (results / "b.json").write_text(json.dumps(both))
    bench("exports/new2.int8.onnx", None, "t").write(results / "a.json")
    gathering._gather_bench(inputs, results, [])
    assert inputs.sources == [checkpoint.path, results / "a.json", results / "b.json"]
    assert len(inputs.bench) == 3 and "bench" not in inputs.missing and inputs.notes["speed"] == []
    empty = inputs_of(checkpoint)
    gathering._gather_bench(empty, tmp_path / "none", [])
    assert empty.missing["bench"] == (f"no bench results of this checkpoint in {tmp_path / 'none'}: run `edgecls bench "
                                      f"--all {checkpoint.path} --json {tmp_path / 'none' / 'new2.json'}`")
    assert empty.sources == [checkpoint.path]


# ----------------------------------------------------------------------------------------------- the export set

HINT = "`edgecls export --checkpoint X --fp16 --int8`"


def test_files_of_this_checkpoint_and_export_are_taken_in_pipeline_order(checkpoint, tmp_path):
    sha, where = checkpoint.sha256, folders(tmp_path)
    exports = where.export
    int8 = write_onnx(exports / "new2.int8.onnx", metadata(sha, "int8"), int8=True)
    fp32 = write_onnx(exports / "new2.onnx", metadata(sha))
    fp16 = write_onnx(exports / "new2.fp16.onnx", metadata("", "fp16"))  # no checkpoint recorded: taken
    reference = write_reference(exports / "new2.reference.npz", sha)
    record = export_set(exports, sha, ["new2.onnx", "new2.fp16.onnx", "new2.int8.onnx", "new2.reference.npz"])
    plan_b = write_plan(where.engines / "new2.fp16.plan", sha, "/device/exports/new2.fp16.onnx", sha256_file(fp16))
    plan_a = write_plan(where.engines / "new2.b.plan", sha, "exports/elsewhere.onnx", "0" * 64)  # not a member
    inputs = inputs_of(checkpoint)
    gathering._gather_export(inputs, where.of("new2"), HINT)
    assert inputs.export_set == record
    assert inputs.reference is not None and inputs.reference.source == str(reference)
    assert [(f.path, f.precision) for f in inputs.onnx_files] == [(fp32, "fp32"), (fp16, "fp16"), (int8, "int8")]
    assert [(p.path, p.manifest.onnx_path, p.precision) for p in inputs.plans] == [
        (plan_a, "exports/elsewhere.onnx", "fp16"), (plan_b, "/device/exports/new2.fp16.onnx", "fp16")]
    assert inputs.sources == [checkpoint.path, reference, fp32, fp16, int8, plan_a, plan_b]
    assert inputs.missing == {} and inputs.notes == {}


def test_files_of_another_checkpoint_or_export_are_noted_and_left_out(checkpoint, tmp_path):
    sha, where = checkpoint.sha256, folders(tmp_path)
    exports = where.export
    write_onnx(exports / "new2.onnx", metadata(OTHER_SHA))
    fp16 = write_onnx(exports / "new2.fp16.onnx", metadata(sha, "fp16"))
    write_reference(exports / "new2.reference.npz", OTHER_SHA)
    export_set(exports, sha, ["new2.onnx", "new2.fp16.onnx", "new2.reference.npz"])
    stale = write_plan(where.engines / "new2.plan", sha, "exports/new2.fp16.onnx", "1" * 64)
    foreign = write_plan(where.engines / "new2.x.plan", OTHER_SHA, "exports/new2.fp16.onnx", sha256_file(fp16))
    inputs = inputs_of(checkpoint)
    gathering._gather_export(inputs, where.of("new2"), HINT)
    assert inputs.reference is None and [f.path for f in inputs.onnx_files] == [fp16] and inputs.plans == []
    assert inputs.missing == {"reference": f"no reference logits of this checkpoint ({exports / 'new2.reference.npz'}): "
                                            f"{HINT} writes them"}
    other = f"it comes from another checkpoint ({OTHER_SHA[:12]}, this one is {sha[:12]})"
    assert inputs.notes == {
        "accuracy": [f"{exports / 'new2.reference.npz'} left out: {other}; remake it with {HINT}"],
        "parity": [f"{exports / 'new2.onnx'} left out: {other}; remake it with {HINT}",
                   f"{stale} left out: it was built from another new2.fp16.onnx than the current export's; remake it "
                   "with `edgecls build` on the device, from the current export",
                   f"{foreign} left out: {other}; remake it with `edgecls build` on the device, from the current "
                   "export"]}
    assert inputs.sources == [checkpoint.path, fp16]


def test_a_plan_of_an_earlier_export_alone_is_noted(checkpoint, tmp_path):
    sha, where = checkpoint.sha256, folders(tmp_path)
    fp32 = write_onnx(where.export / "new2.onnx", metadata(sha))
    export_set(where.export, sha, ["new2.onnx"])
    stale = write_plan(where.engines / "new2.plan", sha, "new2.onnx", "2" * 64)
    inputs = inputs_of(checkpoint)
    gathering._gather_export(inputs, where.of("new2"), HINT)
    assert [f.path for f in inputs.onnx_files] == [fp32] and inputs.plans == []
    assert inputs.notes == {"parity": [f"{stale} left out: it was built from another new2.onnx than the current "
                                       "export's; remake it with `edgecls build` on the device, from the current "
                                       "export"]}


def test_without_an_export_record_every_plan_of_this_checkpoint_is_taken(checkpoint, tmp_path):
    where = folders(tmp_path)
    plan = write_plan(where.engines / "new2.plan", checkpoint.sha256, "exports/new2.fp16.onnx", "1" * 64)
    inputs = inputs_of(checkpoint)
    gathering._gather_export(inputs, where.of("new2"), HINT)
    assert [p.path for p in inputs.plans] == [plan] and inputs.export_set is None
    assert inputs.missing["onnx"] == f"no ONNX file of new2 in {where.export}: {HINT} writes them"
    assert set(inputs.missing) == {"onnx", "reference"} and inputs.notes == {}


# ----------------------------------------------------------------------------------------------- int8 evidence

def int8_project(checkpoint: Checkpoint, root: Path, *, report_sha: str | None = None, record: bool = True,
                 listed: tuple[str, ...] = ("report", "calibration"), quantization: dict | None = None) -> Folders:
    """An int8 export: its file, calibration record and int8 report, an export record naming `listed` companions."""
    sha, where = checkpoint.sha256, folders(root)
    write_onnx(where.export / "new2.int8.onnx", metadata(sha, "int8", {"method": "minmax"} if quantization is None else quantization), int8=True)
    calibration = calibration_record(where.calibration / "new2.minmax.json", sha)
    report = int8_report(report_sha or sha).write(Int8Report.path_for(where.calibration, "new2"))
    companions = {"report": report, "calibration": calibration}
    if record:
        export_set(where.export, sha, ["new2.int8.onnx"], [companions[name] for name in listed])
    return where


def gathered_int8(checkpoint: Checkpoint, where: Folders) -> ReportInputs:
    inputs = inputs_of(checkpoint)
    gathering._gather_export(inputs, where.of("new2"), HINT)
    gathering._gather_quantization(inputs, where.of("new2"), HINT)
    return inputs


def test_the_int8_evidence_of_the_current_export_is_shown(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path)
    inputs = gathered_int8(checkpoint, where)
    report, calibration = where.calibration / "new2.int8-report.json", where.calibration / "new2.minmax.json"
    assert inputs.int8_report == Int8Report.read(report) and inputs.int8_report_path == report
    assert inputs.calibration.path == calibration
    assert inputs.calibration.record == {"model": "new2", "checkpoint_sha256": checkpoint.sha256,
                                         "data_fingerprint": "d" * 64, "method": "minmax", "size": 16, "seed": 7,
                                         "split": "train", "created_at": "2026-01-02T03:04:05Z", "versions": {},
                                         "format": "edgecls-calibration", "format_version": 1}
    assert [(r.tensor, r.low, r.high) for r in inputs.calibration.ranges] == [
        ("images", -2.0, 2.0), ("conv0.out", -1.0, 1.5), ("conv2.out", -3.0, 3.5), ("elsewhere", -9.0, 9.0)]
    assert [(layer.name, layer.precision) for layer in inputs.int8_layers] == [
        ("conv0", "float"), ("conv1", "int8"), ("conv2", "float"), ("fc", "float")]
    assert inputs.sources[-2:] == [report, calibration] and "quantization" not in inputs.notes
    assert "int8" not in inputs.missing and "calibration" not in inputs.missing


def test_without_an_export_record_the_int8_evidence_is_taken_as_it_is(checkpoint, tmp_path):
    inputs = gathered_int8(checkpoint, int8_project(checkpoint, tmp_path, record=False))
    assert inputs.int8_report is not None and inputs.calibration is not None and inputs.notes == {}


def test_an_int8_file_made_within_a_budget_says_so_for_its_float_layers(checkpoint, tmp_path):
    quantization = {"method": "minmax", "budget": {"max_drop": 0.25, "min_agreement": None}}
    inputs = gathered_int8(checkpoint, int8_project(checkpoint, tmp_path, quantization=quantization))
    assert [layer.reason for layer in inputs.int8_layers] == [
        "the int8 search kept it in float to hold the budget (max drop 0.25)", "",
        "the int8 search kept it in float to hold the budget (max drop 0.25)",
        "the int8 search kept it in float to hold the budget (max drop 0.25)"]


def test_int8_evidence_the_current_export_did_not_make_is_noted_and_left_out(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path, listed=())
    inputs = gathered_int8(checkpoint, where)
    assert inputs.int8_report is None and inputs.int8_report_path is None and inputs.calibration is None
    why = "it is not the one the current export of new2 made (see its export record)"
    assert inputs.notes == {"quantization": [
        f"{where.calibration / 'new2.int8-report.json'} left out: {why}; remake it with {HINT}",
        f"{where.calibration / 'new2.minmax.json'} left out: {why}; remake it with {HINT}"]}
    assert inputs.int8_layers and "calibration" not in inputs.missing  # the int8 file itself is still shown
    assert where.calibration / "new2.minmax.json" not in inputs.sources


def test_an_int8_report_of_another_checkpoint_is_noted_and_left_out(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path, report_sha=OTHER_SHA)
    inputs = gathered_int8(checkpoint, where)
    assert inputs.int8_report is None and inputs.calibration is not None
    assert inputs.notes["quantization"] == [
        f"{where.calibration / 'new2.int8-report.json'} left out: it comes from another checkpoint ({OTHER_SHA[:12]}, "
        f"this one is {checkpoint.sha256[:12]}); remake it with {HINT}"]


def test_without_an_int8_file_its_report_is_noted_and_the_section_says_how(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path)
    (where.export / "new2.int8.onnx").unlink()
    inputs = gathered_int8(checkpoint, where)
    assert inputs.int8_report is None and inputs.calibration is None and inputs.int8_layers == []
    assert inputs.missing["int8"] == f"no int8 export of new2 in {where.export}: {HINT} writes it"
    assert inputs.notes["quantization"] == [
        f"{where.calibration / 'new2.int8-report.json'} left out: the current export has no int8 file; remake it "
        f"with {HINT}"]


def test_a_missing_calibration_record_says_which_command_writes_it(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path, record=False, quantization={"method": "entropy"})
    inputs = gathered_int8(checkpoint, where)
    assert inputs.missing["calibration"] == (f"no calibration record {where.calibration / 'new2.entropy.json'}: "
                                             "`edgecls export --int8` writes it")
    assert inputs.calibration is None
    no_method = gathered_int8(checkpoint, int8_project(checkpoint, tmp_path / "b", record=False, quantization={}))
    assert "new2.None.json" in no_method.missing["calibration"]


def test_a_calibration_record_of_another_checkpoint_is_noted(checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path, record=False)
    calibration_record(where.calibration / "new2.minmax.json", OTHER_SHA)
    inputs = gathered_int8(checkpoint, where)
    assert inputs.calibration is None and inputs.int8_report is not None
    assert inputs.notes["quantization"] == [
        f"{where.calibration / 'new2.minmax.json'} left out: it comes from another checkpoint ({OTHER_SHA[:12]}, "
        f"this one is {checkpoint.sha256[:12]}); remake it with {HINT}"]


# ----------------------------------------------------------------------------------------------- readers

def graph_of(tmp_path: Path, int8: bool = True):
    from edgecls.onnx_graph import load_onnx

    return load_onnx(write_onnx(tmp_path / "g.onnx", metadata(""), int8=int8)).graph


def test_int8_layers_say_why_each_float_layer_is_float(tmp_path):
    graph = graph_of(tmp_path)
    layers = read_int8_layers(graph)
    assert [(l.name, l.op, l.precision, l.reason) for l in layers] == [
        ("conv0", "Conv", "float", "first layer: its input, the standardized pixels, is finer than an 8-bit grid"),
        ("conv1", "Conv", "int8", ""),
        ("conv2", "Conv", "float", "left in float by the quantizer"),
        ("fc", "Gemm", "float", "last layer: 8-bit logits would turn near-ties into flipped predictions")]
    budget = read_int8_layers(graph, {"max_drop": 0.5, "min_agreement": None, "min_sqnr_db": 20})
    assert [l.reason for l in budget] == ["the int8 search kept it in float to hold the budget (max drop 0.5, "
                                          "min sqnr db 20)", "", *["the int8 search kept it in float to hold the "
                                                                   "budget (max drop 0.5, min sqnr db 20)"] * 2]
    assert graph_order(graph) == ["images", "conv0.out", "conv1.dq", "conv1.out", "conv2.out", "pooled", "flat",
                                  "logits"]


def test_a_single_input_weighted_node_is_not_taken_for_int8(tmp_path):
    graph = graph_of(tmp_path, int8=False)
    graph.node[1].input.pop()  # conv1 with its input only
    assert [l.precision for l in read_int8_layers(graph)] == ["float"] * 4


@pytest.mark.parametrize("ranges, low, high", [
    ({"t": {"lowest": 1, "highest": 2}}, 1.0, 2.0),
    ({"CLS": "TensorsData", "t": {"lowest": 1, "highest": [2, 7]}}, 1.0, 2.0),
    ({"CLS": "TensorsData", "data": {"t": {"lowest": {"data": 1.5}, "highest": {"data": [[2.5]]}}}}, 1.5, 2.5)])
def test_calibration_ranges_in_each_saved_form(tmp_path, ranges, low, high):
    path = tmp_path / "c.json"
    CalibrationRecord("new2", "", "", "minmax", 1, 0, [3], ranges).write(path)
    found = read_calibration(path, [])
    assert [(r.tensor, r.low, r.high) for r in found.ranges] == [("t", low, high)]
    assert "indices" not in found.record and "ranges" not in found.record and found.record["size"] == 1


@pytest.mark.parametrize("ranges", [{"t": {"lowest": 1}}, {"t": 5}, {"t": {"lowest": "x", "highest": 1}},
                                    {"data": {"t": {"lowest": {"value": 1}, "highest": 1}}}])
def test_malformed_calibration_ranges_are_one_line_naming_the_file(tmp_path, ranges):
    path = tmp_path / "c.json"
    CalibrationRecord("new2", "", "", "minmax", 1, 0, [], ranges).write(path)
    with pytest.raises(EdgeclsError) as error:
        read_calibration(path, [])
    message = str(error.value)
    assert message.startswith(f"calibration record {path} has malformed ranges (") and message.endswith(
        "); delete it and export again with `edgecls export --int8`")


EPOCH = {"epoch": 1, "loss": 2.0, "lr": 0.1, "seconds": 3.0, "images_per_second": 100.0, "test_accuracy": None}


def test_a_training_log_is_read_line_by_line(tmp_path):
    path = tmp_path / "new2.log.jsonl"
    second = {**EPOCH, "epoch": 2, "test_accuracy": 55.5, "val_accuracy": 50}
    path.write_text(json.dumps(EPOCH) + "\n\n   \n" + json.dumps(second) + "\n")
    assert read_training_log(path) == [EPOCH, second]


FIX = "delete it or train again with `edgecls train`"


@pytest.mark.parametrize("lines, message", [
    (["", " "], "is empty"),
    ([json.dumps(EPOCH), "{oops"], "line 2 is not JSON ("),
    (["[1]"], "line 1 is not an epoch record"),
    ([json.dumps({**EPOCH, "epoch": "1"})], "line 1 is not an epoch record"),
    ([json.dumps({**EPOCH, "loss": True})], "line 1 is not an epoch record"),
    ([json.dumps({k: v for k, v in EPOCH.items() if k != "lr"})], "line 1 is not an epoch record"),
    ([json.dumps(EPOCH), json.dumps({**EPOCH, "seconds": float("inf")})], "line 2 is not an epoch record"),
    ([json.dumps({**EPOCH, "val_accuracy": "50"})], "line 1 is not an epoch record"),
    ([json.dumps({**EPOCH, "images_per_second": float("nan")})], "line 1 is not an epoch record")])
def test_a_bad_training_log_is_one_line_naming_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "new2.log.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(EdgeclsError) as error:
        read_training_log(path)
    text = str(error.value)
    assert text.startswith(f"training log {path} {message}") and text.endswith(f"; {FIX}"), text
    if "epoch record" in message:
        assert "(epoch, loss, lr, seconds, images_per_second, and test_accuracy / val_accuracy as numbers or null)" \
            in text


def test_a_training_log_that_is_not_a_file_is_named_as_such(tmp_path):
    import os

    path = tmp_path / "new2.log.jsonl"
    os.mkfifo(path)
    with pytest.raises(EdgeclsError) as error:
        read_training_log(path)
    assert str(error.value).startswith(f"training log {path} ")


def test_an_undecodable_training_log_is_one_line(tmp_path):
    path = tmp_path / "new2.log.jsonl"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EdgeclsError) as error:
        read_training_log(path)
    assert str(error.value).startswith(f"training log {path} is unreadable (") and str(error.value).endswith(FIX)


# ----------------------------------------------------------------------------------------------- the whole gather

def log_lines(path: Path, epochs: int) -> None:
    path.write_text("".join(json.dumps({**EPOCH, "epoch": e}) + "\n" for e in range(1, epochs + 1)))


def test_gather_reads_the_checkpoint_its_log_and_the_model_table(checkpoint_path, tmp_path):
    from edgecls.models import MODELS, create_model, model_stats

    log_lines(checkpoint_path.parent / "new2.log.jsonl", 3)
    where = folders(tmp_path)
    inputs = gather(checkpoint_path, folders=where, results_dir=tmp_path / "results")
    assert inputs.checkpoint_path == checkpoint_path and inputs.model == "new2" and inputs.class_names == list(CLASSES)
    assert inputs.training.device == "cpu" and inputs.training.log_path == checkpoint_path.parent / "new2.log.jsonl"
    assert [e["epoch"] for e in inputs.training.epochs] == [1, 2, 3]
    assert inputs.sources == [checkpoint_path, checkpoint_path.parent / "new2.log.jsonl"]
    hint = f"`edgecls export --checkpoint {checkpoint_path} --fp16 --int8`"
    assert inputs.missing == {
        "reference": f"no reference logits of this checkpoint ({where.export / 'new2.reference.npz'}): {hint} writes them",
        "onnx": f"no ONNX file of new2 in {where.export}: {hint} writes them",
        "bench": f"no bench results of this checkpoint in {tmp_path / 'results'}: run `edgecls bench --all "
                 f"{checkpoint_path} --json {tmp_path / 'results' / 'new2.json'}`",
        "int8": f"no int8 export of new2 in {where.export}: {hint} writes it"}
    rows = {row.name: row for row in inputs.models}
    assert list(rows) == list(MODELS) and [row.ours for row in inputs.models] == [n == "new2" for n in MODELS]
    for name, spec in MODELS.items():
        stats = model_stats(create_model(name, num_classes=10), 28)
        row = rows[name]
        assert (row.paper_name, row.params, row.fc_params, row.fc_share, row.macs, row.paper_params,
                row.paper_fc_share) == (spec.paper_name, stats.params, stats.fc_params, stats.fc_share, stats.macs,
                                        spec.paper.params, spec.paper.fc_share)


def test_the_model_table_counts_the_checkpoints_model_with_its_own_configuration(tmp_path):
    from edgecls.models import create_model, model_stats

    path = tmp_path / "new2.pt"
    save_checkpoint(path, {"model": "new2", "model_config": {"num_classes": 3}, "state_dict": {},
                           "preprocess": Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                                       class_names=("a", "b", "c"), crop_size=24).to_dict(),
                           "epoch": 1, "epochs": 1, "data_fingerprint": "d"})
    rows = {row.name: row for row in gathering.model_table(load_checkpoint(path))}
    ours = model_stats(create_model("new2", num_classes=3), 24)
    assert (rows["new2"].params, rows["new2"].macs, rows["new2"].ours) == (ours.params, ours.macs, True)
    theirs = model_stats(create_model("new1"), 28)
    assert (rows["new1"].params, rows["new1"].macs, rows["new1"].ours) == (theirs.params, theirs.macs, False)


def test_a_log_that_ends_before_the_checkpoint_or_is_absent_is_left_out(checkpoint_path, tmp_path):
    log = checkpoint_path.parent / "new2.log.jsonl"
    log.write_text("".join(json.dumps({**EPOCH, "epoch": e}) + "\n" for e in (0, 1, 2)))
    inputs = gather(checkpoint_path, folders=folders(tmp_path), results_dir=tmp_path)
    assert inputs.training.epochs is None and log not in inputs.sources
    assert inputs.missing["training log"] == (
        f"training log {log} ends at epoch 2, before the checkpoint's epoch 3; `edgecls train --resume` (or training "
        "again) writes them together")
    log.unlink()
    inputs = gather(checkpoint_path, folders=folders(tmp_path), results_dir=tmp_path)
    assert inputs.training.epochs is None
    assert inputs.missing["training log"] == f"no training log {log}: `edgecls train` writes it beside the checkpoint"


def test_gather_reads_the_results_folder_by_default(checkpoint_path, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("results").mkdir()
    bench("exports/new2.onnx", checkpoint.sha256, "t").write(Path("results/new2.json"))
    inputs = gather(checkpoint_path, folders=folders(tmp_path))
    assert [run.source for run in inputs.bench] == [Path("results/new2.json")]


def test_gather_takes_explicit_bench_files_and_the_int8_evidence(checkpoint_path, checkpoint, tmp_path):
    where = int8_project(checkpoint, tmp_path)
    device = bench("engines/new2.plan", checkpoint.sha256, "t").write(tmp_path / "device.json")
    inputs = gather(checkpoint_path, folders=where, results_dir=tmp_path / "results", bench_files=[str(device)])
    assert [run.source for run in inputs.bench] == [device] and inputs.int8_report is not None
    assert inputs.calibration is not None and "bench" not in inputs.missing


def test_test_images_are_the_references_rows_found_by_digest(checkpoint, tmp_path, monkeypatch):
    from tests.conftest import synthetic_cifar, write_image_folder

    data = synthetic_cifar(1, 1)
    folder = write_image_folder(data, tmp_path / "data")
    order = np.array([4, 0, 9, 2])
    inputs = inputs_of(checkpoint)
    inputs.reference = Reference("r", np.zeros((4, 10), np.float32), data.test_labels[order], "new2",
                                 checkpoint.sha256, "", digests=digest_rows(data.test_images[order]))
    assert np.array_equal(gathering.test_images(inputs, folder), data.test_images[order])
    inputs.reference = dataclasses.replace(inputs.reference, model="new1")
    with pytest.raises(EdgeclsError, match=f"is for model new1, but {checkpoint.path} is new2"):
        gathering.test_images(inputs, folder)
    inputs.reference = dataclasses.replace(inputs.reference, model="new2")
    monkeypatch.setenv("EDGECLS_DATA", str(tmp_path / "nothing-here"))
    assert gathering.test_images(inputs, None) is None
    monkeypatch.setenv("EDGECLS_DATA", str(folder))
    assert np.array_equal(gathering.test_images(inputs, None), data.test_images[order])


# ----------------------------------------------------------------------------------------------- compare

def reference_of(logits: np.ndarray, labels: np.ndarray) -> Reference:
    return Reference("exports/new2.reference.npz", logits.astype(np.float32), labels, "new2", "", "")


def one_hot(answers: list[int], classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[answers] * 5


def test_answers_of_the_original_and_of_an_artifact():
    labels = np.array([0, 1, 2, 2, 1])
    reference = reference_of(one_hot([0, 1, 2, 1, 1]), labels)
    names = ["a", "b", "c"]
    original = compare.original_answers(reference, names)
    assert (original.name, original.precision, original.source) == ("original (PyTorch)", "fp32",
                                                                      "exports/new2.reference.npz")
    assert original.accuracy == 80.0 and original.parity is None
    assert original.per_class == per_class_accuracy(reference.logits, labels, names) == {"a": 100.0, "b": 100.0,
                                                                                          "c": 50.0}
    assert original.confusion.tolist() == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert original.predicted.tolist() == [0, 1, 2, 1, 1]
    logits = one_hot([0, 2, 2, 2, 0])
    artifact = compare.artifact_answers("new2.int8.onnx", "int8", "run here", logits, reference, names)
    assert (artifact.name, artifact.precision, artifact.source) == ("new2.int8.onnx", "int8", "run here")
    assert artifact.accuracy == accuracy(logits, labels) == 60.0
    assert artifact.parity == {**parity(logits, reference.logits, labels, "exports/new2.reference.npz").__dict__}
    assert artifact.parity["flips"] == 3 and artifact.confusion.tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 2]]
    assert artifact.predicted.tolist() == [0, 2, 2, 2, 0]


def test_confusion_matrix_counts_each_true_class_and_answer():
    found = compare.confusion_matrix(np.array([2, 0, 0, 1]), np.array([0, 0, 2, 1]), 3)
    assert found.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert compare.confusion_matrix(np.array([0]), np.array([0]), 2).shape == (2, 2)


def test_bench_answers_are_the_bench_files_figures():
    result = BenchResult(model={"path": "engines/new2.plan", "name": "new2", "precision": "int8"}, accuracy=71.5,
                         timings=[], per_class={"a": 70.0, "b": None}, parity={"agreement": 99.0})
    found = compare.bench_answers("new2.plan", result, Path("results/device.json"))
    assert found == compare.Answers("new2.plan", "int8", "results/device.json", 71.5, {"a": 70.0, "b": None},
                                    {"agreement": 99.0}, None, None)
    assert found.per_class is not result.per_class


def test_flips_list_every_changed_answer_right_to_wrong_first():
    labels = np.array([0, 1, 2, 0, 1, 2])
    original = compare.original_answers(reference_of(one_hot([1, 1, 0, 0, 1, 2]), labels), ["a", "b", "c"])
    artifact = compare.original_answers(reference_of(one_hot([0, 1, 1, 2, 2, 2]), labels), ["a", "b", "c"])
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    found = compare.flips(original, artifact, images, labels)
    assert [(f.row, f.label, f.original, f.artifact, f.kind) for f in found] == [
        (3, 0, 0, 2, compare.RIGHT_TO_WRONG), (4, 1, 1, 2, compare.RIGHT_TO_WRONG),
        (0, 0, 1, 0, compare.WRONG_TO_RIGHT), (2, 2, 0, 1, compare.WRONG_TO_WRONG)]
    assert all(np.array_equal(f.image, images[f.row]) for f in found)
    assert all(type(v) is int for f in found for v in (f.row, f.label, f.original, f.artifact))
    assert compare.flips(original, original, images, labels) == []


def test_an_onnx_file_runs_through_the_runtime_on_the_images(tmp_path):
    from edgecls.runtime import Classifier

    path = write_onnx(tmp_path / "new2.onnx", metadata(""))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with Classifier.load(path) as classifier:
        expected = classifier.logits(images)
    found = compare.run_onnx(path, images)
    assert found.shape == (5, 10) and np.allclose(found, expected) and np.ptp(found) > 0


def test_running_an_onnx_file_shows_progress_only_when_asked(tmp_path, capfd):
    path = write_onnx(tmp_path / "new2.onnx", metadata(""))
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    compare.run_onnx(path, images)
    assert capfd.readouterr().err == ""
    compare.run_onnx(path, images, True)
    assert "accuracy" in capfd.readouterr().err
