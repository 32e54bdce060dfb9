"""edgecls.export.export_model without torch: the checkpoint's network is the tiny ONNX classifier of
tests/tiny_classifier.py (its logits from ONNX Runtime stand for PyTorch's, its fp32 file is written as export_fp32
would), through the module's seams `load_source`, `reference_logits` and `export_fp32`. What is checked is export's
own work: staging, the files and their parity, the set installed and its record (files and companions, also after a
re-export), and that a failed or refused export installs nothing."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import refusal, write_image_folder
from edgecls import export
from edgecls.artifacts import live_writer, sha256_file
from edgecls.data import Cifar10
from edgecls.errors import EdgeclsError
from edgecls.export import ExportRequest, export_model
from edgecls.formats import CalibrationRecord, ExportSet, Int8Report, ModelMetadata, ReferenceLogits
from edgecls.metrics import Gate
from edgecls.quantize import CalibrationSettings
from tiny_classifier import CHECKPOINT_SHA, FRAGILE, classifier, metadata, preprocessing, tiny_data

MINMAX = CalibrationSettings(method="minmax", size=20)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@dataclass
class TinyCheckpoint:
    """What export reads of a checkpoint, for the tiny ONNX network."""

    path: Path
    data: object
    model: onnx.ModelProto
    held_out: np.ndarray | None = None
    model_name: str = "tiny"
    sha256: str = CHECKPOINT_SHA
    preprocess: object = field(default_factory=preprocessing)

    @property
    def validation(self) -> dict | None:
        return None if self.held_out is None else {"seed": 4, "size": len(self.held_out)}

    def validation_indices(self, data) -> np.ndarray | None:
        assert isinstance(data, Cifar10)
        if isinstance(self.held_out, str):  # the data lacks the images this checkpoint held out
            raise EdgeclsError(self.held_out)
        return self.held_out

    def build_model(self) -> onnx.ModelProto:
        return self.model

    def model_metadata(self, precision: str = "fp32") -> ModelMetadata:
        return metadata(self.data, precision)


class Torchless:
    """The seams: which checkpoint is loaded, its logits, and its fp32 file; records the calls."""

    def __init__(self, checkpoint: TinyCheckpoint):
        self.checkpoint, self.calls, self.offset, self.failure = checkpoint, [], 0.0, None

    def load_source(self, path):
        self.calls.append(("load", Path(path)))
        return self.checkpoint

    def reference_logits(self, model, images, preprocess):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": preprocess(images)})[0] + np.float32(self.offset)

    def export_fp32(self, model, crop_size, model_metadata, out_path, opset=17):
        self.calls.append(("fp32", crop_size, model_metadata.precision, Path(out_path).name, opset))
        # Meanwhile, readers of the output folder see an export in progress (its staging folder names it).
        assert live_writer(Path(out_path).parent.parent, "export") == os.getpid()
        if self.failure is not None:
            raise self.failure
        written = onnx.ModelProto()  # what torch.onnx.export would write, then export's own finish
        written.CopyFrom(model)
        return export.finish_fp32(written, model_metadata, out_path)


@pytest.fixture
def torchless(data, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # export writes only where it is told: this stays empty
    seams = Torchless(TinyCheckpoint(tmp_path / "tiny.pt", data, classifier(data, fragile=False)))
    for name in ("load_source", "reference_logits", "export_fp32"):
        monkeypatch.setattr(export, name, getattr(seams, name))
    return seams


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_full_export_installs_one_set_and_records_each_file_and_companion(torchless, data, tmp_path):
    torchless.checkpoint.held_out = np.arange(0, 120, 4)
    out, calibration = tmp_path / "out", tmp_path / "cal"
    request = ExportRequest(torchless.checkpoint.path, out, fp16=True, int8=True, calibration=MINMAX,
                            calibration_dir=calibration, opset=15)
    report = export_model(request, data, progress=False)
    assert report.passed and report.model == "tiny" and report.notes == [] and 0 < report.seconds < 600
    assert torchless.calls == [("load", tmp_path / "tiny.pt"), ("fp32", 8, "fp32", "tiny.onnx", 15)]
    assert report.files == {"fp32": out / "tiny.onnx", "fp16": out / "tiny.fp16.onnx", "int8": out / "tiny.int8.onnx"}
    assert report.reference == out / "tiny.reference.npz"
    assert listing(out) == ["tiny.export.json", "tiny.fp16.onnx", "tiny.int8.onnx", "tiny.onnx", "tiny.reference.npz"]
    assert [(p.precision, p.path) for p in report.parity] == [(k, report.files[k]) for k in ("fp32", "fp16", "int8")]
    assert all(p.verdict.passed and p.parity.images == 40 and p.parity.reference == "PyTorch" for p in report.parity)
    assert report.parity[0].parity.max_abs_logit_diff < 1e-4 and report.parity[0].verdict.gate.active
    assert not report.parity[1].verdict.gate.active and not report.parity[2].verdict.gate.active
    record = ExportSet.read(out / "tiny.export.json")
    assert record.complete and (record.model, record.checkpoint_sha256) == ("tiny", CHECKPOINT_SHA)
    created = datetime.strptime(record.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert timedelta(0) <= datetime.now(timezone.utc) - created < timedelta(minutes=10)  # when, in UTC
    assert record.files == {name: sha256_file(out / name) for name in listing(out) if name != "tiny.export.json"}
    assert report.calibration == calibration / "tiny.minmax.json" and listing(calibration) == ["tiny.minmax.json"]
    assert record.companions == {"tiny.minmax.json": sha256_file(calibration / "tiny.minmax.json")}
    calibrated = CalibrationRecord.read(report.calibration)
    assert calibrated.size == 20 and not set(calibrated.indices) & set(range(0, 120, 4))  # never a validation image
    reference = ReferenceLogits.read(report.reference)
    assert np.array_equal(reference.labels, data.test_labels) and reference.model == "tiny"
    assert reference.checkpoint_sha256 == CHECKPOINT_SHA and reference.data_fingerprint == data.fingerprint
    np.testing.assert_allclose(reference.logits, torchless.reference_logits(torchless.checkpoint.model,
                                                                            data.test_images, preprocessing()))
    assert ModelMetadata.read(report.files["int8"]).quantization["float_layers"] == ["conv1", "fc"]
    assert ModelMetadata.read(report.files["fp16"]).precision == "fp16"
    assert listing(tmp_path / "cwd") == []
    assert onnx.load(str(report.files["fp32"])).doc_string == "edgecls tiny (fp32)"

    # A re-export with fp32 alone: the record lists only its files, the others are gone, and no companion is
    # claimed (the calibration record stays in its folder, no longer this export's).
    again = export_model(ExportRequest(torchless.checkpoint.path, out, calibration_dir=calibration), data,
                         progress=False)
    assert again.passed and again.files == {"fp32": out / "tiny.onnx"} and again.calibration is None
    assert listing(out) == ["tiny.export.json", "tiny.onnx", "tiny.reference.npz"]
    record = ExportSet.read(out / "tiny.export.json")
    assert record.companions == {} and set(record.files) == {"tiny.onnx", "tiny.reference.npz"}
    assert listing(calibration) == ["tiny.minmax.json"] and not record.companion_matches(calibration /
                                                                                         "tiny.minmax.json")


def test_without_int8_no_calibration_folder_is_made_nor_validation_images_looked_for(torchless, data, tmp_path):
    torchless.checkpoint.held_out = "validation images not in this data"
    report = export_model(ExportRequest(torchless.checkpoint.path, tmp_path / "out",
                                        calibration_dir=tmp_path / "cal"), data, progress=True)
    assert report.passed and not (tmp_path / "cal").exists() and report.int8_search is None
    assert refusal(export_model, ExportRequest(torchless.checkpoint.path, tmp_path / "out", int8=True,
                                               calibration_dir=tmp_path / "cal"), data, False) == \
        "validation images not in this data"


def test_an_int8_file_from_a_calibration_record_names_that_record(torchless, data, tmp_path):
    first = export_model(ExportRequest(torchless.checkpoint.path, tmp_path / "a", int8=True, calibration=MINMAX,
                                       calibration_dir=tmp_path / "cal"), data, progress=False)
    cache = tmp_path / "kept.json"
    cache.write_bytes(first.calibration.read_bytes())
    settings = CalibrationSettings(method="minmax", cache=cache, size=10**6)  # the size is the record's
    report = export_model(ExportRequest(torchless.checkpoint.path, tmp_path / "b", int8=True, calibration=settings,
                                        calibration_dir=tmp_path / "cal2"), data, progress=False)
    assert report.passed and report.calibration == cache and listing(tmp_path / "cal2") == []
    assert ExportSet.read(tmp_path / "b" / "tiny.export.json").companions == {"kept.json": sha256_file(cache)}
    assert (tmp_path / "b" / "tiny.int8.onnx").read_bytes() == (tmp_path / "a" / "tiny.int8.onnx").read_bytes()


def test_an_int8_budget_installs_the_report_as_a_companion(torchless, data, tmp_path, monkeypatch, capsys):
    import edgecls.int8_budget
    timed = {"batch_size": 64, "images_per_s": {"fp32": 1.0, "all_int8": 2.0, "result": 2.0}, "vs_fp32": 2.0,
             "vs_all_int8": 1.0}
    monkeypatch.setattr(edgecls.int8_budget, "cpu_throughput", lambda files, images: timed)  # seconds per file
    torchless.checkpoint.model = classifier(data)  # with the fragile layer
    torchless.checkpoint.held_out = np.arange(1, 120, 2)
    out, calibration = tmp_path / "out", tmp_path / "cal"
    request = ExportRequest(torchless.checkpoint.path, out, int8=True, calibration=MINMAX,
                            calibration_dir=calibration, budget=Gate(max_drop=5.0, min_agreement=90.0))
    report = export_model(request, data)  # progress bars by default
    shown = capsys.readouterr().err
    assert re.search(r"(^|\r)int8 search: ", shown, re.M)
    assert re.search(r"(^|\r)parity: .* 0/2 \[.*file/s", shown, re.M)  # fp32 and int8, counted in files
    assert "\n" not in shown.rpartition("parity: ")[2]  # the parity bar is cleared when done, not left behind
    assert report.passed and report.int8_search.passed
    assert report.int8_report == calibration / "tiny.int8-report.json"
    assert listing(calibration) == ["tiny.int8-report.json", "tiny.minmax.json"]
    assert Int8Report.read(report.int8_report) == report.int8_search.report
    assert report.int8_search.report.float_layers == [FRAGILE]
    assert report.int8_search.report.validation == {  # the images the checkpoint held out judge
        "source": "held out in training", "size": 60, "seed": 4, "seen_in_training": False,
        "note": "60 training images held out in training (seed 4): the model never saw them"}
    record = ExportSet.read(out / "tiny.export.json")
    assert record.companions == {name: sha256_file(calibration / name) for name in listing(calibration)}
    assert ModelMetadata.read(out / "tiny.int8.onnx").quantization["float_layers"] == [FRAGILE]

    # A budget no choice holds: nothing installed, the earlier set and its companions untouched.
    before = {name: (out / name).read_bytes() for name in listing(out)}
    companions = {name: (calibration / name).read_bytes() for name in listing(calibration)}
    strict = ExportRequest(torchless.checkpoint.path, out, fp16=True, int8=True, calibration=MINMAX,
                           calibration_dir=calibration, budget=Gate(min_agreement=100.0, max_drop=0.0))
    torchless.checkpoint.model = classifier(data, seed=3)  # another network, every layer fragile enough
    failed = export_model(strict, data, progress=False)
    assert not failed.int8_search.passed and not failed.passed and failed.files == {} and failed.reference is None and failed.parity == []
    assert failed.notes == [f"nothing installed in {out}: no int8 choice holds the budget"]
    assert failed.int8_report is None and 0 < failed.seconds < 600
    assert {name: (out / name).read_bytes() for name in listing(out)} == before
    assert {name: (calibration / name).read_bytes() for name in listing(calibration)} == companions


def test_an_fp32_file_that_does_not_match_pytorch_installs_nothing(torchless, data, tmp_path):
    torchless.offset = 0.01  # beyond float rounding of logits this size
    out = tmp_path / "out"
    report = export_model(ExportRequest(torchless.checkpoint.path, out, fp16=True), data, progress=False)
    assert not report.passed and report.notes == [f"nothing installed in {out}: the fp32 export does not match "
                                                  "PyTorch"]
    assert [p.precision for p in report.parity] == ["fp32", "fp16"] and not report.parity[0].verdict
    assert [p.line().split(":")[0] for p in report.parity] == ["tiny.onnx (fp32)", "tiny.fp16.onnx (fp16)"]  # as shown
    assert report.parity[1].verdict and report.files == {} and listing(out) == [] and 0 < report.seconds < 600
    torchless.offset = 0.0004  # within 1e-3 of logits below 1
    assert export_model(ExportRequest(torchless.checkpoint.path, out), data, progress=False).passed


def test_too_few_calibration_images_are_refused_before_any_work(torchless, data, tmp_path):
    torchless.checkpoint.held_out = np.arange(100)
    request = ExportRequest(torchless.checkpoint.path, tmp_path / "out", int8=True,
                            calibration=CalibrationSettings(size=30), calibration_dir=tmp_path / "cal")
    assert refusal(export_model, request, data, False) == (
        "calibration size 30 exceeds the 20 training images outside the 100 validation images; pass a smaller "
        "--calibration-size")
    assert [call[0] for call in torchless.calls] == ["load"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cal").exists()  # a refused export makes no folder


def test_data_of_other_classes_is_refused_before_any_work(torchless, tmp_path):
    other = tiny_data(train_per_class=1, test_per_class=1)
    other.class_names[0] = "plane"
    message = refusal(export_model, ExportRequest(torchless.checkpoint.path, tmp_path / "out"), other, False)
    assert message.startswith("the data has classes ['plane', ") and str(torchless.checkpoint.path) in message
    assert [call[0] for call in torchless.calls] == ["load"]


def test_the_data_may_be_given_as_a_location(torchless, data, tmp_path):
    folder = write_image_folder(data, tmp_path / "tree")
    report = export_model(ExportRequest(torchless.checkpoint.path, tmp_path / "out"), str(folder), progress=False)
    assert report.passed and ReferenceLogits.read(report.reference).data_fingerprint == data.fingerprint


def test_a_full_disk_while_staging_is_one_line_and_other_errors_pass_through(torchless, data, tmp_path):
    out = tmp_path / "out"
    torchless.failure = OSError(errno.ENOSPC, "No space left on device")
    assert refusal(export_model, ExportRequest(torchless.checkpoint.path, out), data, False) == (
        f"no space left on the disk holding {out} while writing the export of tiny; free space or choose another "
        "folder (files already there are unchanged)")
    torchless.failure = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(PermissionError):
        export_model(ExportRequest(torchless.checkpoint.path, out), data, progress=False)
    assert listing(out) == []


def test_a_failed_install_is_one_line_saying_to_export_again(torchless, data, tmp_path, monkeypatch):
    def refuse(*args):
        raise OSError(errno.EMLINK, "Too many links")

    monkeypatch.setattr(export, "install_set", refuse)
    out = tmp_path / "out"
    assert refusal(export_model, ExportRequest(torchless.checkpoint.path, out), data, False) == (
        f"installing the export of tiny into {out} failed ([Errno {errno.EMLINK}] Too many links); run `edgecls "
        "export` again (meanwhile readers refuse a half-installed set)")
    assert listing(out) == []


def test_finishing_the_fp32_graph_folds_batchnorm_and_checks_it(data, tmp_path):
    from onnx import helper, numpy_helper
    model = classifier(data, fragile=False)
    nodes = list(model.graph.node)
    conv = next(node for node in nodes if node.name == "conv1")
    conv.output[0] = "c1_raw"
    params = [numpy_helper.from_array(np.full(4, value, np.float32), f"bn.{name}")
              for name, value in (("gamma", 2.0), ("beta", 0.5), ("mean", 0.1), ("var", 1.0))]
    model.graph.initializer.extend(params)
    model.graph.node.insert(1, helper.make_node("BatchNormalization", ["c1_raw", *[p.name for p in params]], ["c1"],
                                                name="bn"))
    out = export.finish_fp32(model, metadata(data), str(tmp_path / "tiny.onnx"))
    assert out == tmp_path / "tiny.onnx"
    written = onnx.load(str(out))
    assert "BatchNormalization" not in [node.op_type for node in written.graph.node]
    assert written.doc_string == "edgecls tiny (fp32)" and ModelMetadata.read(out) == metadata(data)
    broken = classifier(data)
    broken.graph.node[1].input[0] = "nowhere"
    assert refusal(export.finish_fp32, broken, metadata(data), tmp_path / "b.onnx").startswith(
        f"the exported graph for {tmp_path / 'b.onnx'} fails onnx.checker: ")
