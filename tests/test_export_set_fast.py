"""edgecls.export without torch: how an export set is installed (and what its record holds after a re-export), the
parity verdicts and their lines, the request's checks, fp16 conversion and the int8 search hand-off, on the tiny ONNX
classifier of tests/tiny_classifier.py and small files made here."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from conftest import refusal
from edgecls import export
from edgecls.errors import EdgeclsError
from edgecls.export import (FP32_TOLERANCE, ExportReport, ExportRequest, FileParity, check_parity, convert_fp16,
                            install_set, int8_within_budget, onnx_logits)
from edgecls.formats import ExportSet, ModelMetadata
from edgecls.int8_budget import ValidationImages
from edgecls.metrics import Gate, GateResult, Parity, parity
from edgecls.quantize import CalibrationSettings, Int8Result
from tiny_classifier import tiny_data, write_classifier


def record_for(staging: Path, names: list[str], model: str = "m", companions: dict | None = None) -> ExportSet:
    return ExportSet(model=model, checkpoint_sha256="s" * 64, files={name: f"sha-of-{name}" for name in names},
                     complete=True, created_at="now", companions=companions or {})


def stage(staging: Path, names: list[str], tag: str) -> None:
    staging.mkdir(exist_ok=True)
    for name in names:
        (staging / name).write_text(f"{tag} {name}")


def test_install_set_moves_the_files_and_the_record_in_and_removes_the_earlier_sets_others(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / "staging"
    out.mkdir()
    # An earlier export with every precision, and files that are not this model's members.
    for name in ("m.onnx", "m.fp16.onnx", "m.int8.onnx", "m.reference.npz", "other.onnx", "m.extra.onnx"):
        (out / name).write_text(f"old {name}")
    stage(staging, ["m.onnx", "m.int8.onnx", "m.reference.npz"], "new")
    stage(tmp_path, ["calib.tmp"], "calibration")
    companion = tmp_path / "calibration" / "m.minmax.json"
    companion.parent.mkdir()
    record = record_for(staging, ["m.onnx", "m.int8.onnx", "m.reference.npz"], companions={"m.minmax.json": "x"})
    install_set(record, staging, out, [(tmp_path / "calib.tmp", companion)])
    assert sorted(p.name for p in out.iterdir()) == ["m.export.json", "m.extra.onnx", "m.int8.onnx", "m.onnx",
                                                     "m.reference.npz", "other.onnx", "staging"]
    assert [(out / name).read_text() for name in ("m.onnx", "m.int8.onnx", "m.reference.npz")] == [
        "new m.onnx", "new m.int8.onnx", "new m.reference.npz"]
    assert (out / "other.onnx").read_text() == "old other.onnx" and (out / "m.extra.onnx").read_text() == \
        "old m.extra.onnx"
    assert companion.read_text() == "calibration calib.tmp" and not (tmp_path / "calib.tmp").exists()
    assert ExportSet.read(out / "m.export.json") == record and list(staging.iterdir()) == []


def test_install_set_after_a_re_export_with_fewer_files_records_only_those(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    stage(staging, ["m.onnx", "m.fp16.onnx", "m.int8.onnx", "m.reference.npz"], "first")
    install_set(record_for(staging, ["m.onnx", "m.fp16.onnx", "m.int8.onnx", "m.reference.npz"]), staging, out)
    stage(staging, ["m.onnx", "m.reference.npz"], "second")
    second = record_for(staging, ["m.onnx", "m.reference.npz"])
    install_set(second, staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["m.export.json", "m.onnx", "m.reference.npz"]
    assert ExportSet.read(out / "m.export.json") == second and (out / "m.onnx").read_text() == "second m.onnx"


def test_install_set_puts_the_incomplete_record_in_first_and_the_complete_one_last(tmp_path, monkeypatch):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    (out / "m.fp16.onnx").write_text("old")
    stage(staging, ["m.onnx", "m.reference.npz"], "new")
    stage(tmp_path, ["c.tmp"], "c")
    record = record_for(staging, ["m.onnx", "m.reference.npz"])
    seen = []
    rename, unlink = os.replace, Path.unlink

    def watched_replace(source, destination):
        rename(source, destination)
        if Path(destination).parent == staging:  # the records being written, before installing starts
            return
        state = ExportSet.read(out / "m.export.json").complete
        seen.append((Path(destination).name, state, (out / "m.fp16.onnx").exists()))

    def watched_unlink(path, missing_ok=False):
        if path.parent == out:
            seen.append(("unlink " + path.name, ExportSet.read(out / "m.export.json").complete, None))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(export.os, "replace", watched_replace)
    monkeypatch.setattr(Path, "unlink", watched_unlink)
    install_set(record, staging, out, [(tmp_path / "c.tmp", tmp_path / "c.json")])
    assert seen[:3] == [("m.export.json", False, True), ("m.onnx", False, True), ("m.reference.npz", False, True)]
    assert sorted(s[0] for s in seen[3:-2]) == ["unlink m.fp16.onnx", "unlink m.int8.onnx"]
    assert all(state is False for _, state, _ in seen[3:-2])
    assert seen[-2:] == [("c.json", False, False), ("m.export.json", True, False)]


def test_an_install_that_stops_half_way_leaves_a_set_readers_refuse(tmp_path, monkeypatch):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    stage(staging, ["m.onnx", "m.reference.npz"], "first")
    install_set(record_for(staging, ["m.onnx", "m.reference.npz"]), staging, out)
    stage(staging, ["m.onnx", "m.reference.npz"], "second")
    rename = os.replace

    def failing(source, destination):
        if Path(destination).name == "m.reference.npz":
            raise OSError(28, "No space left on device")
        rename(source, destination)

    monkeypatch.setattr(export.os, "replace", failing)
    with pytest.raises(OSError):
        install_set(record_for(staging, ["m.onnx", "m.reference.npz"]), staging, out)
    assert ExportSet.read(out / "m.export.json").complete is False
    message = refusal(ExportSet.check_member, out / "m.onnx", "m")
    assert "was interrupted while installing its files" in message


# ----------------------------------------------------------------------------------------------- parity

def figures(agreement: float = 100.0, max_diff: float = 0.0) -> Parity:
    return Parity("PyTorch", 1234, agreement, 3, 2, 1, 91.5, 92.25, -0.75, max_diff, 0.0)


def test_file_parity_line_names_the_file_and_says_when_it_failed(tmp_path):
    passed = FileParity(tmp_path / "m.int8.onnx", "int8", figures(99.5, 0.0123), GateResult(Gate()))
    assert passed.line() == ("m.int8.onnx (int8): top-1 agreement 99.50% with PyTorch, max |Δ logit| 1.23e-02, "
                             "accuracy 91.50% (PyTorch 92.25%) on 1,234 test images")
    failed = FileParity(tmp_path / "m.onnx", "fp32", figures(), GateResult(Gate(), ("x",)))
    assert failed.line().endswith(" on 1,234 test images -- FAILED: beyond float rounding")


def test_only_fp32_is_gated_within_float_rounding_of_the_reference(tmp_path):
    reference = np.array([[0.0, 2.0], [3.0, -1.0]], np.float32)
    labels = np.array([1, 0])
    # The limit grows with the largest |logit| of the reference (3 here, times the scale) beyond 1.
    for scale, limit in ((1.0, 3 * FP32_TOLERANCE), (0.1, FP32_TOLERANCE), (50.0, 150 * FP32_TOLERANCE)):
        scaled = reference * scale
        near = scaled + np.float32(limit * 0.9)
        far = scaled + np.float32(limit * 1.5)
        verdict = check_parity(tmp_path / "m.onnx", "fp32", near, scaled, labels)
        assert verdict.verdict.passed and verdict.verdict.gate.max_logit_diff == pytest.approx(limit)
        assert verdict.parity == parity(near, scaled, labels, "PyTorch") and verdict.path == tmp_path / "m.onnx"
        assert not check_parity(tmp_path / "m.onnx", "fp32", far, scaled, labels).verdict.passed
    for precision in ("fp16", "int8"):
        loose = check_parity(tmp_path / "m.x.onnx", precision, reference + 5, reference, labels)
        assert loose.verdict.passed and not loose.verdict.gate.active and loose.precision == precision


def test_the_report_passes_only_when_every_file_and_the_search_do(tmp_path):
    good = FileParity(tmp_path / "a", "fp32", figures(), GateResult(Gate()))
    bad = FileParity(tmp_path / "b", "fp16", figures(), GateResult(Gate(), ("x",)))
    assert ExportReport("m", {}, None, [good]).passed and not ExportReport("m", {}, None, [good, bad]).passed
    search = Int8Result(None, tmp_path, "r", False, SimpleNamespace(passed=False))
    assert not ExportReport("m", {}, None, [good], int8_search=search).passed
    search.report = SimpleNamespace(passed=True)
    assert ExportReport("m", {}, None, [good], int8_search=search).passed


# ----------------------------------------------------------------------------------------------- the request

def test_a_budget_needs_int8_and_paths_become_paths():
    assert refusal(ExportRequest, "c.pt", "out", False, False, CalibrationSettings(), "cal", 17,
                   Gate(max_drop=1.0)) == ("--max-drop and --min-agreement set the accuracy budget of the int8 file: "
                                           "add --int8 (or drop them)")
    request = ExportRequest("c.pt", "out", int8=True, calibration_dir="cal", budget=Gate(min_agreement=99.0))
    assert (request.checkpoint, request.out_dir, request.calibration_dir) == (Path("c.pt"), Path("out"), Path("cal"))
    default = ExportRequest("c.pt")
    assert (default.out_dir, default.calibration_dir, default.fp16, default.int8, default.opset) == (
        Path("export"), Path("calibration"), False, False, 17)


# ----------------------------------------------------------------------------------------------- files

@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory):
    return write_classifier(data, tmp_path_factory.mktemp("tiny") / "tiny.onnx", fragile=False)


def test_onnx_logits_run_the_file_through_its_own_preprocessing_batch_size_images_at_a_time(fp32, data, monkeypatch):
    import onnxruntime as ort

    from edgecls.runtime.classifier import Classifier
    inputs = ModelMetadata.read(fp32).preprocess(data.test_images)
    expected = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"images": inputs})[0]
    batches, run = [], Classifier._run
    monkeypatch.setattr(Classifier, "_run", lambda self, batch: batches.append(len(batch)) or run(self, batch))
    np.testing.assert_allclose(onnx_logits(fp32, data.test_images, batch_size=7), expected, rtol=1e-5, atol=1e-5)
    assert batches == [7] * 5 + [5]  # memory stays bounded: the 40 test images, 7 at a time
    np.testing.assert_allclose(onnx_logits(str(fp32), data.test_images), expected, rtol=1e-5, atol=1e-5)


def test_fp16_keeps_float_inputs_and_outputs_sorted_nodes_and_says_fp16(fp32, data, tmp_path):
    out = convert_fp16(str(fp32), str(tmp_path / "tiny.fp16.onnx"))
    assert out == tmp_path / "tiny.fp16.onnx"
    model = onnx.load(str(out))
    assert ModelMetadata.read(out) == ModelMetadata.read(fp32).with_precision("fp16")
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [
        onnx.TensorProto.FLOAT] * 2
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    made = {v.name for v in model.graph.input} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # producers first
        assert all(name in made for name in node.input if name), node.name
        made.update(node.output)
    np.testing.assert_allclose(onnx_logits(out, data.test_images), onnx_logits(fp32, data.test_images), atol=0.05)
    with pytest.raises(EdgeclsError, match="does not exist"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    bare = onnx.load(str(fp32))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(EdgeclsError) as info:
        convert_fp16(tmp_path / "bare.onnx", tmp_path / "x.onnx")
    assert str(info.value).startswith(f"{tmp_path / 'bare.onnx'} has no edgecls metadata")


def test_int8_within_budget_judges_on_the_checkpoints_held_out_images(data, tmp_path, monkeypatch):
    fragile = write_classifier(data, tmp_path / "tiny.onnx")
    seen = {}

    def search(request, dataset, images, test_logits, progress):
        seen.update(request=request, dataset=dataset, images=images, test_logits=test_logits, progress=progress)
        return "searched"

    import edgecls.int8_budget
    monkeypatch.setattr(edgecls.int8_budget, "search_int8", search)
    checkpoint = SimpleNamespace(model_name="tiny", validation={"seed": 11, "size": 3})
    budget = Gate(max_drop=2.0)
    request = ExportRequest("c.pt", int8=True, budget=budget, calibration=CalibrationSettings(size=30))
    held_out = np.array([1, 5, 9])
    logits = np.zeros((40, 10), np.float32)
    assert int8_within_budget(request, checkpoint, data, held_out, logits, fragile, tmp_path, False) == "searched"
    assert seen["request"].fp32_path == fragile and seen["request"].out_path == tmp_path / "tiny.int8.onnx"
    assert seen["request"].budget is budget and seen["request"].calibration is request.calibration
    assert (seen["request"].record_path, seen["request"].report_path, seen["request"].work_dir) == (
        tmp_path / "calibration.json", tmp_path / "int8-report.json", tmp_path / "int8-search")
    images = seen["images"]
    assert images.indices is held_out and images.seed == 11 and images.held_out
    assert seen["dataset"] is data and seen["test_logits"] is logits and seen["progress"] is False
    # A checkpoint that records no split: a seeded subset leaving room for the 30 calibration images.
    int8_within_budget(request, SimpleNamespace(model_name="tiny", validation=None), data, None, logits, fragile,
                       tmp_path, True)
    assert seen["images"].describe() == ValidationImages.choose(data, None, None, 30).describe()
    assert seen["progress"] is True and not seen["images"].held_out and len(seen["images"].indices) == 90
