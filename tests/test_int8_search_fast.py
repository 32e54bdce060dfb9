"""edgecls.int8_budget without torch: which images judge the int8 candidates, the order they are tried in, the
accept/reject against the budget and the result chosen, on a tiny ONNX classifier (tests/tiny_classifier.py) whose
one fragile layer the search must keep in float. The CPU throughput of the report (seconds of timing per file) is
replaced by a recorder of the files it is asked to time."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import refusal
from edgecls import int8_budget
from edgecls.data import seeded_subset
from edgecls.defaults import CALIBRATION_METHODS, VALIDATION_SEED
from edgecls.formats import CalibrationRecord, Int8Report, ModelMetadata
from edgecls.int8_budget import (SENSITIVITY, Candidate, Int8Search, ValidationImages, all_int8_candidate, choose,
                                 greedy, layer_decisions, most_int8, layer_sensitivity, rank_layers, run_file, search_int8, sqnr)
from edgecls.metrics import Gate, GateResult, parity
from edgecls.quantize import CalibrationSettings, PreparedModel, QuantizableLayer
from tiny_classifier import CHECKPOINT_SHA, FRAGILE, LAYERS, OPS, tiny_data, write_classifier

BUDGET = Gate(max_drop=5.0, min_agreement=90.0)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory):
    return write_classifier(data, tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def timed():
    """Replaces the report's CPU throughput (seconds per file) by a record of the files it was asked to time."""
    calls = []

    def recorder(files, images):
        calls.append((dict(files), len(images)))
        return {"batch_size": 64, "images_per_s": {"fp32": 1.0, "all_int8": 3.0, "result": 2.0}, "vs_fp32": 2.0,
                "vs_all_int8": 0.67, "timed": sorted(files)}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_budget, "cpu_throughput", recorder)
        yield calls


@pytest.fixture(scope="module")
def searched(data, fp32, timed, tmp_path_factory):
    """Every method, a budget that every layer int8 breaks (the fragile one) and the fragile one in float holds."""
    root = tmp_path_factory.mktemp("search")
    validation = ValidationImages.choose(data, None, None, None)
    test_logits = run_file(fp32, data.test_images)
    request = Int8Search(str(fp32), str(root / "out.int8.onnx"), BUDGET, record_path=str(root / "record.json"),
                         report_path=str(root / "report.json"), work_dir=str(root / "work" / "deep"))
    result = search_int8(request, data, validation, test_logits, progress=False)
    return request, validation, test_logits, result, list(timed)


# ----------------------------------------------------------------------------------------------- the images

def test_validation_images_are_the_recorded_held_out_ones(data):
    recorded = np.array([3, 17, 40, 41])
    chosen = ValidationImages.choose(data, recorded, 7, 10)
    assert np.array_equal(chosen.images, data.train_images[recorded])
    assert np.array_equal(chosen.labels, data.train_labels[recorded])
    assert chosen.indices is recorded and chosen.seed == 7 and chosen.held_out is True
    assert chosen.describe() == {
        "source": "held out in training", "size": 4, "seed": 7, "seen_in_training": False,
        "note": "4 training images held out in training (seed 7): the model never saw them"}


def test_without_a_recorded_split_a_seeded_subset_leaves_room_for_calibration(data, monkeypatch):
    total = len(data.train_images)  # 120
    chosen = ValidationImages.choose(data, None, 7, None)  # calibration: min(1024, half) = 60
    expected = seeded_subset(total, 60, VALIDATION_SEED)
    assert np.array_equal(chosen.indices, expected) and chosen.seed == VALIDATION_SEED and chosen.held_out is False
    assert np.array_equal(chosen.images, data.train_images[expected])
    assert np.array_equal(chosen.labels, data.train_labels[expected])
    assert chosen.describe() == {
        "source": "seeded subset of the training images", "size": 60, "seed": 0, "seen_in_training": True,
        "note": "60 training images chosen with seed 0: the checkpoint records no held-out split, so the model saw "
                "them in training and figures on them flatter it"}
    assert len(ValidationImages.choose(data, None, None, 100).indices) == 20
    assert np.array_equal(ValidationImages.choose(data, None, None, 119).indices, seeded_subset(total, 1, 0))
    monkeypatch.setattr(int8_budget, "DEFAULT_VAL_SPLIT", 9)
    assert np.array_equal(ValidationImages.choose(data, None, None, 50).indices, seeded_subset(total, 9, 0))
    monkeypatch.setattr(int8_budget, "DEFAULT_CALIBRATION_SIZE", 100)
    assert len(ValidationImages.choose(data, None, None, None).indices) == 9  # min(100, 60) leaves 60 >= 9


def test_calibration_size_that_leaves_no_validation_image_is_refused(data, monkeypatch):
    assert refusal(ValidationImages.choose, data, None, None, 120) == (
        "the 120 training images leave none for validation beside 120 calibration images; pass a smaller "
        "--calibration-size")
    monkeypatch.setattr(int8_budget, "DEFAULT_CALIBRATION_SIZE", 1000)
    assert len(ValidationImages.choose(data, None, None, None).indices) == 60  # half of 120, not 1000


# ----------------------------------------------------------------------------------------------- the decisions

def figures(agreement: float, accuracy: float) -> "int8_budget.Parity":
    return int8_budget.Parity("float model", 10, agreement, 0, 0, 0, accuracy, 50.0, accuracy - 50.0, 0.1, 0.01)


def candidate(name: str, int8_layers: int, agreement: float, accuracy: float, failures: tuple[str, ...] = (),
              method: str = "minmax", float_layers: tuple[str, ...] = ()) -> Candidate:
    return Candidate(method, float_layers, int8_layers, Path(name), figures(agreement, accuracy),
                     GateResult(BUDGET, failures))


def test_candidate_summary_is_what_the_report_lists():
    found = candidate("c.onnx", 2, 95.0, 48.0, ("too low",), float_layers=("a", "b"))
    assert found.summary() == {"method": "minmax", "float_layers": ["a", "b"], "int8_layers": 2,
                               "validation": asdict(found.figures), "passed": False, "failures": ["too low"]}
    assert candidate("d.onnx", 3, 99.0, 50.0).summary()["passed"] is True


def test_the_passing_choice_with_most_int8_layers_then_agreement_then_accuracy_is_chosen():
    fewer = candidate("fewer", 2, 100.0, 60.0)
    low_agreement = candidate("low-agreement", 3, 95.0, 60.0)
    best = candidate("best", 3, 97.0, 50.0)
    low_accuracy = candidate("low-accuracy", 3, 97.0, 49.0)
    failing = candidate("failing", 4, 100.0, 60.0, ("x",))
    assert choose([fewer, low_agreement, low_accuracy, best, failing]).path.name == "best"
    twin = candidate("twin", 3, 97.0, 50.0)
    assert choose([best, twin]) is best and choose([twin, best]) is twin  # ties: the first tried


def test_when_none_passes_the_closest_is_chosen():
    two_failures = candidate("two", 4, 100.0, 60.0, ("a", "b"))
    one_low = candidate("one-low", 1, 90.0, 60.0, ("a",))
    one = candidate("one", 2, 91.0, 40.0, ("a",))
    one_less_accurate = candidate("one-less", 3, 91.0, 39.0, ("a",))
    assert choose([two_failures, one_low, one_less_accurate, one]).path.name == "one"


def test_the_all_int8_choice_is_the_chosen_methods_whichever_method_it_is():
    tried = [candidate("minmax-all", 3, 80.0, 40.0, ("x",), "minmax", ()),
             candidate("minmax-one", 2, 95.0, 50.0, (), "minmax", ("a",)),
             candidate("entropy-one", 2, 96.0, 50.0, (), "entropy", ("a",)),
             candidate("entropy-all", 3, 81.0, 41.0, ("x",), "entropy", ()),
             candidate("percentile-all", 3, 82.0, 42.0, ("x",), "percentile", ())]
    assert [all_int8_candidate(tried, method).path.name for method in ("minmax", "entropy", "percentile")] == [
        "minmax-all", "entropy-all", "percentile-all"]


def test_greedy_is_told_the_most_int8_layers_a_passing_choice_has_so_far():
    assert most_int8([]) == 0 and most_int8([candidate("f", 4, 10.0, 10.0, ("x",))]) == 0
    assert most_int8([candidate("f", 4, 10.0, 10.0, ("x",)), candidate("a", 2, 95.0, 50.0),
                      candidate("b", 3, 91.0, 50.0), candidate("c", 1, 99.0, 50.0)]) == 3


def test_rank_layers_puts_the_lowest_sqnr_first_and_keeps_graph_order_on_ties():
    assert rank_layers([3.0, 1.0, 2.0, 1.0]) == [1, 3, 2, 0]
    assert rank_layers([]) == []


def test_greedy_moves_the_costliest_layers_to_float_one_at_a_time_until_the_budget_holds():
    asked, steps = [], []

    def evaluate(method, float_layers):
        asked.append((method, float_layers))
        return candidate(f"{len(asked)}", 4 - len(float_layers), 90.0, 50.0, () if len(float_layers) >= 2 else ("x",),
                         method, float_layers)

    tried = greedy("entropy", ["c", "a", "d", "b"], evaluate, 0, steps.append)
    assert asked == [("entropy", ()), ("entropy", ("c",)), ("entropy", ("c", "a"))]
    assert [c.path.name for c in tried] == ["1", "2", "3"] and steps == [1, 1, 1]


def test_greedy_keeps_one_layer_int8_and_stops_when_it_cannot_beat_the_best_so_far():
    asked = []

    def never(method, float_layers):
        asked.append(float_layers)
        return candidate("n", 3 - len(float_layers), 10.0, 10.0, ("x",), method, float_layers)

    assert len(greedy("minmax", ["a", "b", "c"], never, 0, lambda n: None)) == 3
    assert asked == [(), ("a",), ("a", "b")]  # never all three float
    asked.clear()
    assert len(greedy("minmax", ["a", "b", "c"], never, 2, lambda n: None)) == 2  # 3 and 2 int8 layers can tie
    assert asked == [(), ("a",)]
    asked.clear()
    assert greedy("minmax", ["a", "b", "c"], never, 4, lambda n: None) == [] and asked == []


def test_layer_decisions_say_why_each_layer_is_float_or_int8():
    layers = [QuantizableLayer("a", "Conv", 10), QuantizableLayer("b", "Gemm", 20), QuantizableLayer("c", "Conv", 30)]
    costs = [(figures(99.0, 50.0), 30.12345), (figures(80.0, 40.0), 5.0), (figures(95.0, 45.0), 12.0)]
    ranking = [1, 2, 0]  # b, c, a
    all_int8 = candidate("0", 3, 70.0, 30.0, ("too many flips", "too much drop"), "minmax", ())
    one_float = candidate("1", 2, 85.0, 40.0, ("still too many",), "minmax", ("b",))
    chosen = candidate("2", 1, 96.0, 48.0, (), "minmax", ("b", "c"))
    other_method = candidate("3", 3, 10.0, 10.0, ("other",), "entropy", ())
    decisions = layer_decisions(layers, costs, ranking, chosen, [other_method, all_int8, one_float, chosen])
    assert [(d.name, d.op, d.parameters, d.sqnr_db, d.rank, d.decision) for d in decisions] == [
        ("a", "Conv", 10, 30.123, 3, "int8"), ("b", "Gemm", 20, 5.0, 1, "float"), ("c", "Conv", 30, 12.0, 2, "float")]
    assert [d.reason for d in decisions] == [
        "the budget holds with it in int8",
        "costliest left in int8 (rank 1); with it in int8: too many flips; too much drop",
        "costliest left in int8 (rank 2); with it in int8: still too many"]
    alone = asdict(figures(99.0, 50.0))
    del alone["reference"]
    assert decisions[0].alone == alone
    failed = candidate("2", 2, 85.0, 40.0, ("still too many",), "minmax", ("b",))
    assert [d.reason for d in layer_decisions(layers, costs, ranking, failed, [all_int8, failed])][0] == \
        "int8 in the best choice found"


def test_a_search_needs_an_active_budget_and_takes_paths_as_strings(tmp_path):
    assert refusal(Int8Search, tmp_path / "a.onnx", tmp_path / "b.onnx", Gate()) == \
        "an int8 search needs a budget: pass --max-drop and/or --min-agreement"
    request = Int8Search("a.onnx", "b.onnx", Gate(min_agreement=99.0), record_path="r.json", report_path="p.json",
                         work_dir="w")
    assert [getattr(request, name) for name in ("fp32_path", "out_path", "record_path", "report_path", "work_dir")] \
        == [Path("a.onnx"), Path("b.onnx"), Path("r.json"), Path("p.json"), Path("w")]
    assert Int8Search("a.onnx", "b.onnx", Gate(max_drop=0.0)).record_path is None


def test_sqnr_is_onnx_runtimes_definition():
    reference = np.array([[3.0, 4.0]], np.float32)
    assert sqnr(reference, reference + np.array([[0.3, 0.4]], np.float32)) == pytest.approx(20.0, abs=1e-4)


# ----------------------------------------------------------------------------------------------- the search

def test_the_search_keeps_the_fragile_layer_in_float_judges_on_validation_and_writes_its_result(searched, data, fp32):
    """One test for the one search: mutmut runs against a mutant only the tests that reached it, and a module-scoped
    fixture is reached by the first test that uses it."""
    check_decisions(*searched, data)
    check_figures(*searched, data, fp32)
    check_written(*searched)


def check_decisions(request, validation, test_logits, result, timed, data):
    report = result.report
    assert report.passed and result.passed and report.method == CALIBRATION_METHODS[0]  # equal figures: first tried
    assert report.float_layers == [FRAGILE] and report.int8_layers == len(LAYERS) - 1
    assert (report.model, report.checkpoint_sha256, report.data_fingerprint, report.target) == (
        "tiny", CHECKPOINT_SHA, data.fingerprint, "trt")
    assert report.budget == {"max_drop": 5.0, "min_agreement": 90.0} and report.sensitivity == SENSITIVITY
    # Every method tried in order: all int8 fails (the fragile layer), then the fragile one in float holds.
    assert [(c["method"], c["float_layers"], c["int8_layers"], c["passed"]) for c in report.candidates] == [
        (method, layers, 4 - len(layers), bool(layers)) for method in CALIBRATION_METHODS for layers in ([], [FRAGILE])]
    assert all("is below --min-agreement 90%" in c["failures"][0] for c in report.candidates if not c["passed"])
    layers = {layer.name: layer for layer in report.layers}
    assert [layer.name for layer in report.layers] == list(LAYERS) and [layer.op for layer in report.layers] == list(OPS)
    assert [layer.parameters for layer in report.layers] == [3 * 4 * 9 + 4, 4 * 4 * 9 + 4, 4 * 4 * 9 + 4, 2570]
    assert layers[FRAGILE].rank == 1 and layers[FRAGILE].decision == "float"
    assert layers[FRAGILE].reason.startswith("costliest left in int8 (rank 1); with it in int8: top-1 agreement")
    assert sorted(layer.rank for layer in report.layers) == [1, 2, 3, 4]
    assert layers[FRAGILE].sqnr_db < min(layer.sqnr_db for layer in report.layers if layer.name != FRAGILE) - 10
    assert all(layer.decision == "int8" and layer.reason == "the budget holds with it in int8"
               for layer in report.layers if layer.name != FRAGILE)
    assert layers[FRAGILE].alone["agreement"] < 90.0 and "reference" not in layers[FRAGILE].alone


def check_figures(request, validation, test_logits, result, timed, data, fp32):
    """The search judges on the validation images and only reports the test split."""
    report = result.report
    assert report.validation == validation.describe()
    float_logits = run_file(fp32, validation.images)
    installed = run_file(request.out_path, validation.images)
    assert report.result["validation"] == asdict(parity(installed, float_logits, validation.labels, "float model"))
    test = parity(run_file(request.out_path, data.test_images), test_logits, data.test_labels, "float model")
    assert report.result["test"] == asdict(test)
    assert report.result["test_holds_budget"] is BUDGET.check(test).passed
    # The throughput compares the fp32 file, the all-int8 candidate of the chosen method and the result.
    [(files, images)] = timed
    assert images == len(validation.images) and files["fp32"] == Path(fp32)
    assert files["result"].read_bytes() == request.out_path.read_bytes()
    assert files["all_int8"] != files["result"] and files["all_int8"].parent == request.work_dir
    assert ModelMetadata.read(files["all_int8"]).quantization["float_layers"] == []
    assert ModelMetadata.read(files["all_int8"]).quantization["method"] == report.method
    assert report.throughput["timed"] == ["all_int8", "fp32", "result"]
    assert 0 < report.search_seconds < 600 and report.created_at
    assert {"onnxruntime", "onnx", "numpy"} <= set(report.versions)


def check_written(request, validation, test_logits, result, timed):
    """The search writes the result, its record and its report."""
    assert result.path == request.out_path and result.path.is_file()
    assert ModelMetadata.read(result.path).quantization == {
        "target": "trt", "method": "percentile", "calibration_size": 60, "calibration_seed": 0,
        "calibration_split": "train", "float_layers": [FRAGILE], "budget": {"max_drop": 5.0, "min_agreement": 90.0}}
    assert (result.record_path, result.record_name, result.reused) == (request.record_path, "tiny.percentile.json",
                                                                        False)
    record = CalibrationRecord.read(result.record_path)
    assert record.method == "percentile" and record.ranges and record.size == 60 and record.seed == 0
    assert not set(record.indices) & set(validation.indices.tolist())  # calibration avoids the validation images
    assert result.report.calibration == {"size": 60, "seed": 0, "split": "train", "disjoint_from_validation": True,
                                         "methods_tried": list(CALIBRATION_METHODS)}
    assert result.report_path == request.report_path
    assert Int8Report.read(result.report_path) == result.report
    assert sorted(p.name for p in request.work_dir.iterdir() if p.name.startswith("candidate-")) == [
        f"candidate-{n}.int8.onnx" for n in range(6)]


def test_a_budget_no_choice_holds_writes_nothing_and_reports_the_closest(data, fp32, timed, tmp_path, monkeypatch,
                                                                         capsys):
    """The cpu target, a recorded held-out split, and progress bars (the default)."""
    monkeypatch.chdir(tmp_path)
    validation = ValidationImages.choose(data, np.arange(0, 120, 3), 5, None)
    # No int8 file is within 1e-9 of the float logits: every choice fails, those with the fragile layer int8 twice.
    request = Int8Search(fp32, tmp_path / "out.onnx", Gate(max_logit_diff=1e-9, min_agreement=90.0),
                         CalibrationSettings("cpu", method="minmax", size=30, seed=4), work_dir=tmp_path / "work")
    before = len(timed)
    result = search_int8(request, data, validation, run_file(fp32, data.test_images))
    shown = capsys.readouterr().err
    for desc, unit in (("calibrating", "method"), ("layer sensitivity", "chunk"), ("int8 search", "choice")):
        assert re.search(rf"(^|\r){desc}: ", shown, re.M), desc
        assert re.search(rf"[\d?]{unit}/s|s/{unit}\b", shown), unit
    report = result.report
    assert not result.passed and not report.passed and result.path is None and result.report_path is None
    assert result.record_path == Path("calibration") / "tiny.minmax.json" and not result.reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and len(timed) == before
    assert [c["float_layers"][:1] for c in report.candidates] == [[], [FRAGILE], [FRAGILE], [FRAGILE]]
    assert [len(c["float_layers"]) for c in report.candidates] == [0, 1, 2, 3]  # one layer always stays int8
    assert [len(c["failures"]) for c in report.candidates] == [2, 1, 1, 1]
    closest = max(report.candidates, key=lambda c: (-len(c["failures"]), c["validation"]["agreement"],
                                                    c["validation"]["accuracy"]))
    assert report.float_layers == closest["float_layers"] and report.result == {"validation": closest["validation"],
                                                                                 "test": None}
    assert report.throughput is None and report.validation["source"] == "held out in training"
    assert report.target == "cpu" and report.calibration == {"size": 30, "seed": 4, "split": "train",
                                                             "disjoint_from_validation": True,
                                                             "methods_tried": ["minmax"]}
    assert all(layer.reason == "int8 in the best choice found" for layer in report.layers if layer.decision == "int8")
    # The cpu form: the layer keeps its exported op in the report, and runs as a Conv in the files.
    assert [layer.op for layer in report.layers] == list(OPS)
    first = onnx.load(str(tmp_path / "work" / "candidate-0.int8.onnx"))
    assert next(node.op_type for node in first.graph.node if node.name == "deconv") == "Conv"
    assert ModelMetadata.read(tmp_path / "work" / "candidate-0.int8.onnx").quantization == {
        "target": "cpu", "method": "minmax", "calibration_size": 30, "calibration_seed": 4,
        "calibration_split": "train", "float_layers": [], "budget": {"max_drop": None, "min_agreement": 90.0}}


def test_a_search_from_a_calibration_record_tries_its_method_alone_and_keeps_it(searched, data, fp32, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, validation, test_logits, first, _ = searched
    cache = tmp_path / "kept.json"
    cache.write_bytes(first.record_path.read_bytes())
    request = Int8Search(fp32, tmp_path / "again.onnx", BUDGET, CalibrationSettings(cache=cache))
    result = search_int8(request, data, validation, test_logits, progress=False)
    assert result.reused and result.record_path == cache and cache.read_bytes() == first.record_path.read_bytes()
    assert result.record_name == "tiny.percentile.json"
    assert result.report_path == Path("calibration") / "tiny.int8-report.json" and result.report_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "calibration", "kept.json"]
    assert [c["method"] for c in result.report.candidates] == ["percentile", "percentile"]
    assert result.report.calibration["methods_tried"] == ["percentile"]
    assert (tmp_path / "again.onnx").read_bytes() == first.path.read_bytes()  # the same ranges, the same file
    # A method asked for with the record: that one is read (and a record of another method refused).
    assert refusal(search_int8, Int8Search(fp32, tmp_path / "x.onnx", BUDGET,
                                           CalibrationSettings(method="minmax", cache=cache)),
                   data, validation, test_logits, False) == (
        f"calibration cache {cache} holds percentile ranges, not minmax; pass --method percentile or drop "
        "--calibration-cache")
    # Without a method asked for, the record's own method (not the first of every method) is the one tried.
    kept = CalibrationRecord.read(cache)
    (tmp_path / "prepared").mkdir()
    prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), "trt", tmp_path / "prepared")
    ranges = prepared.calibrate(data.train_images[kept.indices], "minmax")
    relabelled = CalibrationRecord(**{**kept.__dict__, "method": "minmax", "ranges": ranges})
    minmax = relabelled.write(tmp_path / "minmax.json")
    again = search_int8(Int8Search(fp32, tmp_path / "m.onnx", BUDGET, CalibrationSettings(cache=minmax),
                                   report_path=tmp_path / "m.json"), data, validation, test_logits, False)
    assert again.record_name == "tiny.minmax.json" and again.report.method == "minmax"
    assert {c["method"] for c in again.report.candidates} == {"minmax"}


def test_a_search_refuses_data_of_other_classes_before_any_work(fp32, tmp_path):
    other = tiny_data(train_per_class=2, test_per_class=1)
    other.class_names[0] = "plane"
    request = Int8Search(fp32, tmp_path / "out.onnx", BUDGET, work_dir=tmp_path / "work")
    message = refusal(search_int8, request, other, ValidationImages.choose(other, None, None, None),
                      np.zeros((10, 10), np.float32), False)
    assert message.startswith("the data has classes ['plane', ") and not (tmp_path / "work").exists()
    assert f"but {fp32} was trained on" in message


# ----------------------------------------------------------------------------------------------- sensitivity

def test_sensitivity_from_cached_activations_equals_each_layer_alone_int8_in_the_whole_model(data, fp32, tmp_path,
                                                                                             monkeypatch, capsys):
    monkeypatch.setattr(int8_budget, "ACTIVATION_CHUNK", 7)  # several chunks, the last one short
    metadata = ModelMetadata.read(fp32)
    prepared = PreparedModel.create(fp32, metadata, "trt", tmp_path)
    images = data.train_images[:20]
    ranges = {"minmax": prepared.calibrate(data.train_images[40:60], "minmax"),
              "percentile": prepared.calibrate(data.train_images[40:60], "percentile")}
    sessions = []
    real_session = ort.InferenceSession

    def recorded(model, options=None, providers=None):
        sessions.append((options, providers))
        return real_session(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recorded)
    float_logits, alone = layer_sensitivity(prepared, ranges, images)
    monkeypatch.setattr(ort, "InferenceSession", real_session)
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    # Every session on the CPU provider, without a memory arena of its own or threads spinning between runs (many
    # are open at once).
    assert len(sessions) == 1 + 2 * len(LAYERS) and all(p == ["CPUExecutionProvider"] for _, p in sessions)
    assert all(not o.enable_cpu_mem_arena and o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
               for o, _ in sessions)
    inputs = metadata.preprocess(images)
    whole = ort.InferenceSession(onnx.load(str(fp32)).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(float_logits, whole.run(None, {"images": inputs})[0], rtol=1e-5, atol=1e-5)
    assert sorted(alone) == ["minmax", "percentile"]
    for method, method_ranges in ranges.items():
        assert len(alone[method]) == len(LAYERS)
        for index, name in enumerate(LAYERS):
            model = prepared.quantize(method_ranges, method, [n for n in LAYERS if n != name], fp32)
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(alone[method][index], session.run(None, {"images": inputs})[0],
                                       rtol=1e-4, atol=1e-4, err_msg=f"{method} {name}")
    assert not np.allclose(alone["minmax"][LAYERS.index(FRAGILE)], float_logits, atol=1e-2)


def test_a_given_work_folder_is_made_and_kept_and_a_temporary_one_removed(tmp_path):
    with int8_budget._work_folder(tmp_path / "a" / "b") as folder:
        assert folder == tmp_path / "a" / "b" and folder.is_dir()
    assert folder.is_dir()
    with int8_budget._work_folder(tmp_path / "a" / "b") as again:  # an existing one is fine
        assert again == folder
    with int8_budget._work_folder(None) as temporary:
        assert temporary.is_dir() and temporary.name.startswith("edgecls-int8-search-")
    assert not temporary.exists()


def test_progress_bars_are_silent_unless_asked(capsys):
    assert list(int8_budget._bar([1, 2], False, "quiet", "item")) == [1, 2]
    assert capsys.readouterr().err == ""
    assert list(int8_budget._bar([1, 2], True, "loud", "item")) == [1, 2]
    shown = capsys.readouterr().err
    assert "loud" in shown and "item" in shown
    assert shown.endswith("\r") and "\n" not in shown  # a finished bar clears its line (leave=False)


def test_write_int8_writes_a_checked_file_that_says_how_it_was_made(data, fp32, tmp_path, monkeypatch):
    from edgecls import quantize
    from edgecls.int8_budget import write_int8
    from edgecls.quantize import new_calibration_record, quantization_record
    prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), "trt", tmp_path)
    record = new_calibration_record(prepared.metadata, data, fp32, "minmax", 16, 2, None)
    record = CalibrationRecord(**{**record.__dict__, "ranges": prepared.calibrate(data.train_images[record.indices],
                                                                                   "minmax")})
    budget = {"max_drop": 1.0, "min_agreement": None}
    path = write_int8(prepared, record, ["fc"], budget, tmp_path / "out.onnx")
    assert path == tmp_path / "out.onnx"
    assert ModelMetadata.read(path).quantization == quantization_record("trt", record, ["fc"], budget)
    monkeypatch.setattr(quantize, "trt_violations", lambda model: ["q: broken"])
    assert refusal(write_int8, prepared, record, [], budget, tmp_path / "bad.onnx") == (
        "the int8 graph breaks TensorRT's Q/DQ rules: q: broken (and 0 more)")
    assert not (tmp_path / "bad.onnx").exists()
    unfit = CalibrationRecord(**{**record.__dict__, "ranges": {}})
    assert refusal(write_int8, prepared, unfit, [], budget, tmp_path / "unfit.onnx").startswith(
        f"quantization of {fp32} failed (")  # the user's file, not the prepared copy


def test_ranges_that_do_not_fit_fail_the_sensitivity_pass_naming_the_users_fp32_file(data, fp32, tmp_path):
    prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), "trt", tmp_path)
    message = refusal(layer_sensitivity, prepared, {"minmax": {}}, data.train_images[:4])
    assert message.startswith(f"quantization of {fp32} failed (") and "prepared.onnx" not in message
    assert message.endswith("if you passed --calibration-cache, it belongs to another model: drop it")


def test_sensitivity_reads_the_logits_by_name_when_the_graph_has_another_output_first(data, tmp_path):
    """A graph whose first output is not the logits (here their softmax): the float activations and every layer's
    logits are still the named tensors, not whatever output comes first."""
    from tiny_classifier import classifier
    model = classifier(data)
    model.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT,
                                                                    ["batch", 10]))
    path = tmp_path / "two-outputs.onnx"
    onnx.save(model, str(path))
    metadata = ModelMetadata.read(path)
    (tmp_path / "work").mkdir()
    prepared = PreparedModel.create(path, metadata, "trt", tmp_path / "work")
    ranges = prepared.calibrate(data.train_images[40:60], "minmax")
    images = data.train_images[:6]
    float_logits, alone = layer_sensitivity(prepared, {"minmax": ranges}, images)
    inputs = metadata.preprocess(images)
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(float_logits, whole.run(["logits"], {"images": inputs})[0], rtol=1e-5, atol=1e-5)
    for index, name in enumerate(LAYERS):
        quantized = prepared.quantize(ranges, "minmax", [n for n in LAYERS if n != name], path)
        session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(alone["minmax"][index], session.run(["logits"], {"images": inputs})[0],
                                   rtol=1e-4, atol=1e-4, err_msg=name)
