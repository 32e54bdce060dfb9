"""Every record of edgecls.formats: written and read back unchanged, and every way a file can be wrong refused with
one line that names the file and what to do. Built from constructed records and tiny files: no model is trained."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import refusal
from edgecls.formats import (BenchResult, CalibrationRecord, EngineManifest, ExportSet, Int8Report, LayerDecision,
                             ModelMetadata, ReferenceLogits)
from edgecls.preprocess import Preprocessing

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PREPROCESS = Preprocessing(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), class_names=CLASSES, input_size=32,
                           crop_size=28)
METADATA = ModelMetadata(model="new2", precision="fp32", preprocess=PREPROCESS, checkpoint_sha256="c" * 64,
                         data_fingerprint="d" * 16)
REEXPORT = "re-export it with `edgecls export`"
REBUILD = "rebuild the engine with `edgecls build`"


def onnx_model(metadata: ModelMetadata | None = METADATA, batch: int | str = "batch", crop: int = 28,
               output: str = "logits") -> onnx.ModelProto:
    """A real, runnable classifier graph (mean colour -> 10 logits) with `metadata` embedded."""
    weights = helper.make_tensor("weights", TensorProto.FLOAT, [3, 10], np.arange(30, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["colour"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["colour", "weights"], [output])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, crop, crop])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, 10])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="author", value="someone")
    if metadata is not None:
        metadata.embed(model)
    return model


# ================================================================================================= ONNX metadata

def test_model_metadata_round_trips_through_json_with_its_format_version():
    quantized = METADATA.with_precision("int8", {"target": "trt", "method": "percentile", "size": 1024, "seed": 0})
    for metadata in (METADATA, quantized):
        record = json.loads(json.dumps(metadata.to_dict()))
        assert record["format_version"] == 1
        assert ModelMetadata.from_dict(record, "m.onnx") == metadata
    assert METADATA.to_dict() == {
        "format_version": 1, "model": "new2", "precision": "fp32", "input_name": "images", "output_name": "logits",
        "preprocess": PREPROCESS.to_dict(), "checkpoint_sha256": "c" * 64, "data_fingerprint": "d" * 16}
    assert quantized.to_dict()["quantization"]["method"] == "percentile" and quantized.precision == "int8"
    assert METADATA.with_precision("fp16") == replace(METADATA, precision="fp16", quantization=None)


@pytest.mark.parametrize("key", ["model", "precision", "preprocess", "checkpoint_sha256", "data_fingerprint",
                                 "input_name", "output_name"])
def test_model_metadata_without_a_field_is_refused_naming_it(key):
    record = METADATA.to_dict()
    del record[key]
    assert refusal(ModelMetadata.from_dict, record, "m.onnx") == \
        f"m.onnx: the edgecls metadata lacks '{key}'; {REEXPORT}"


def test_model_metadata_that_is_garbled_is_refused_naming_the_file():
    assert refusal(ModelMetadata.from_dict, ["not", "an", "object"], "m.onnx") == \
        f"m.onnx: the edgecls metadata is not a JSON object; {REEXPORT}"
    for version in (None, 2):
        record = {**METADATA.to_dict(), "format_version": version}
        assert refusal(ModelMetadata.from_dict, record, "m.onnx") == (
            f"m.onnx: the edgecls metadata has format version {version}, this edgecls reads version 1; {REEXPORT}")
    unknown = {**METADATA.to_dict(), "precision": "int4"}
    assert refusal(ModelMetadata.from_dict, unknown, "m.onnx") == \
        f"m.onnx: the edgecls metadata names an unknown precision 'int4'; {REEXPORT}"
    broken = {**METADATA.to_dict(), "preprocess": {"mean": [0.5] * 3}}
    assert refusal(ModelMetadata.from_dict, broken, "m.onnx").startswith(
        "m.onnx: preprocessing record is incomplete or malformed (KeyError('std'))")
    assert refusal(ModelMetadata.from_json, None, "m.onnx") == (
        "m.onnx has no edgecls metadata ('edgecls'), so its preprocessing is unknown; export it with `edgecls export`")
    assert refusal(ModelMetadata.from_json, "{not json", "m.onnx") == (
        "m.onnx: the edgecls metadata is not JSON (Expecting property name enclosed in double quotes); re-export it")
    assert ModelMetadata.from_json(json.dumps(METADATA.to_dict()), "m.onnx") == METADATA


def test_check_io_accepts_the_graph_the_metadata_describes_and_refuses_any_other():
    for batch in (None, 1, 64):
        METADATA.check_io({"images": [batch, 3, 28, 28]}, ["logits"], "m.onnx")
    assert refusal(METADATA.check_io, {"input": [None, 3, 28, 28]}, ["logits"], "m.onnx") == (
        "m.onnx: the graph has inputs ['input'] and outputs ['logits'], but its metadata names 'images' -> 'logits'; "
        "re-export it")
    assert "outputs ['probs']" in refusal(METADATA.check_io, {"images": [None, 3, 28, 28]}, ["probs"], "m.onnx")
    wrong = {(None, 3, 32, 32): "['batch', 3, 32, 32]", (None, 1, 28, 28): "['batch', 1, 28, 28]",
             (0, 3, 28, 28): "[0, 3, 28, 28]", (None, 3, 28): "['batch', 3, 28]", (None, 3, 28, 28, 1): None}
    for dims, shown in wrong.items():
        message = refusal(METADATA.check_io, {"images": list(dims)}, ["logits"], "m.onnx")
        assert message.endswith("but its metadata says [batch, 3, 28, 28]; re-export it with `edgecls export`")
        assert message.startswith("m.onnx: input 'images' has shape ")
        if shown:
            assert f"has shape {shown}," in message


def test_metadata_embedded_in_an_onnx_file_is_read_back_with_the_graph_checked(tmp_path):
    model = onnx_model()
    METADATA.with_precision("fp16").embed(model)  # replaces the first record, keeps the other entries
    entries = [(entry.key, entry.value) for entry in model.metadata_props]
    assert [key for key, _ in entries] == ["author", "edgecls"] and entries[0][1] == "someone"
    assert json.loads(entries[1][1]) == METADATA.with_precision("fp16").to_dict()
    assert ModelMetadata.from_onnx(model, "m.onnx") == METADATA.with_precision("fp16")
    path = tmp_path / "new2.fp16.onnx"
    path.write_bytes(model.SerializeToString())
    assert ModelMetadata.read(path) == METADATA.with_precision("fp16")
    assert refusal(ModelMetadata.from_onnx, onnx_model(None), "m.onnx").startswith("m.onnx has no edgecls metadata")
    assert "has shape ['batch', 3, 32, 32]" in refusal(ModelMetadata.from_onnx, onnx_model(crop=32), "m.onnx")
    assert ModelMetadata.from_onnx(onnx_model(batch=8), "m.onnx") == METADATA  # a fixed batch is a shape too
    assert "outputs ['probs']" in refusal(ModelMetadata.from_onnx, onnx_model(output="probs"), "m.onnx")
    # Read from a file, every refusal names it: a graph that differs from its metadata, a record missing a field.
    path.write_bytes(onnx_model(crop=32).SerializeToString())
    assert refusal(ModelMetadata.read, path).startswith(f"{path}: input 'images' has shape ['batch', 3, 32, 32]")
    incomplete = onnx_model(None)
    incomplete.metadata_props.add(key="edgecls", value=json.dumps({k: v for k, v in METADATA.to_dict().items()
                                                                   if k != "model"}))
    path.write_bytes(incomplete.SerializeToString())
    assert refusal(ModelMetadata.read, path) == f"{path}: the edgecls metadata lacks 'model'; {REEXPORT}"


def test_reading_an_onnx_file_checks_its_export_set(tmp_path):
    path = tmp_path / "new2.onnx"
    path.write_bytes(onnx_model().SerializeToString())
    ExportSet("new2", "c" * 64, {"new2.onnx": "0" * 64}, complete=True).write(ExportSet.path_for(tmp_path, "new2"))
    assert refusal(ModelMetadata.read, path).startswith(f"{path} has changed since it was exported")


# ================================================================================================= engine manifest

def manifest(**changes: Any) -> EngineManifest:
    fields = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                  onnx_path="export/new2.int8.onnx", onnx_sha256="o" * 64, plan_sha256="p" * 64, precision="int8",
                  batch={"min": 1, "opt": 64, "max": 256}, model=METADATA.with_precision("int8"), build_seconds=41.5,
                  built_at="2026-11-27T10:00:00Z", dla_core=1, cuda_binding="pycuda", board="Jetson AGX Orin",
                  l4t_release="36.4.3")
    return EngineManifest(**{**fields, **changes})


def test_an_engine_manifest_round_trips_and_checks_its_plan(tmp_path):
    plan = tmp_path / "new2.int8.plan"
    plan.write_bytes(b"serialized engine")
    written = manifest(plan_sha256=hashlib.sha256(b"serialized engine").hexdigest())
    assert written.write(plan) == tmp_path / "new2.int8.plan.json" == EngineManifest.path_for(plan)
    record = json.loads((tmp_path / "new2.int8.plan.json").read_text())
    assert record["format_version"] == 1 and record["edgecls"] == METADATA.with_precision("int8").to_dict()
    assert "model" not in record and record["batch"] == {"min": 1, "opt": 64, "max": 256} and record["dla_core"] == 1
    assert EngineManifest.read(plan) == written
    plan.write_bytes(b"serialized engine, replaced")
    assert refusal(EngineManifest.read, plan) == (f"engine file {plan} does not match its manifest (truncated, or "
                                                  "replaced); rebuild it with `edgecls build`")


def test_an_engine_manifest_without_the_informative_fields_reads_as_empty():
    record = manifest().to_dict()
    for key in ("build_seconds", "built_at", "dla_core", "cuda_binding", "board", "l4t_release"):
        del record[key]
    read = EngineManifest.from_dict(record, "e.plan.json")
    assert (read.build_seconds, read.built_at, read.dla_core, read.cuda_binding, read.board, read.l4t_release) == \
        (0.0, "", None, "", "", "")
    assert read.batch == {"min": 1, "opt": 64, "max": 256} and read.model == METADATA.with_precision("int8")
    assert EngineManifest.from_dict({**record, "dla_core": 0}, "e.plan.json").dla_core == 0
    string_batch = {**record, "batch": {"min": "1", "opt": "8", "max": "16"}}
    assert EngineManifest.from_dict(string_batch, "e.plan.json").batch == {"min": 1, "opt": 8, "max": 16}


def test_a_garbled_engine_manifest_is_refused_naming_the_file_and_the_field():
    good = manifest().to_dict()
    for record in (["a list"], {k: v for k, v in good.items() if k != "edgecls"},
                   {k: v for k, v in good.items() if k != "tensorrt_version"}):
        assert refusal(EngineManifest.from_dict, record, "e.plan.json") == \
            f"e.plan.json is not an edgecls engine manifest; {REBUILD}"
    assert refusal(EngineManifest.from_dict, {**good, "format_version": 0}, "e.plan.json") == \
        f"engine manifest e.plan.json has format version 0, this edgecls reads version 1; {REBUILD}"
    garbled = {"gpu_name": None, "batch": {"min": 1, "max": 4}, "dla_core": -1, "build_seconds": "slow"}
    for key, value in garbled.items():
        record = {k: v for k, v in good.items() if k != key} if value is None else {**good, key: value}
        message = refusal(EngineManifest.from_dict, record, "e.plan.json")
        assert message.startswith("engine manifest e.plan.json lacks or garbles ") and message.endswith(f"; {REBUILD}")
    for dla_core in (True, "0", 1.0, -1):
        message = refusal(EngineManifest.from_dict, {**good, "dla_core": dla_core}, "e.plan.json")
        assert f"garbles dla_core {dla_core!r};" in message
    assert refusal(EngineManifest.from_dict, {**good, "edgecls": {**good["edgecls"], "precision": "int3"}},
                   "e.plan.json").startswith("e.plan.json: the edgecls metadata names an unknown precision 'int3'")


def test_reading_a_manifest_of_a_missing_plan_or_a_plan_without_manifest(tmp_path):
    plan = tmp_path / "new2.plan"
    assert refusal(EngineManifest.read, plan) == (f"engine file {plan} does not exist; build it with `edgecls build` "
                                                  "on this device")
    plan.write_bytes(b"engine")
    assert refusal(EngineManifest.read, plan) == f"{plan} has no manifest {plan}.json; {REBUILD}"
    Path(f"{plan}.json").write_text("{truncated")
    assert refusal(EngineManifest.read, plan).startswith(f"engine manifest {plan}.json is unreadable or not JSON (Expecting")
    assert refusal(EngineManifest.read, plan).endswith(f"; {REBUILD}")
    Path(f"{plan}.json").write_text(json.dumps({**manifest().to_dict(), "batch": {"min": 1}}))
    assert refusal(EngineManifest.read, plan).startswith(f"engine manifest {plan}.json lacks or garbles ")


# ================================================================================================= reference logits

def reference_logits(rows: int = 4) -> ReferenceLogits:
    rng = np.random.default_rng(0)
    return ReferenceLogits(rng.normal(size=(rows, 10)).astype(np.float64), np.arange(rows) % 10,
                           rng.integers(0, 256, (rows, 16)), model="new2", checkpoint_sha256="c" * 64,
                           data_fingerprint="d" * 16, split="test")


def test_reference_logits_round_trip_in_their_stored_types(tmp_path):
    saved = reference_logits()
    assert saved.write(tmp_path / "new2.reference.npz") == tmp_path / "new2.reference.npz"
    read = ReferenceLogits.read(tmp_path / "new2.reference.npz")
    assert (read.logits.dtype, read.labels.dtype, read.digests.dtype) == (np.float32, np.int64, np.uint8)
    np.testing.assert_array_equal(read.logits, saved.logits.astype(np.float32))
    np.testing.assert_array_equal(read.labels, saved.labels)
    np.testing.assert_array_equal(read.digests, saved.digests.astype(np.uint8))
    assert (read.model, read.checkpoint_sha256, read.data_fingerprint, read.split) == ("new2", "c" * 64, "d" * 16,
                                                                                        "test")
    with np.load(tmp_path / "new2.reference.npz") as archive:
        assert json.loads(str(archive["meta"])) == {"format_version": 1, "model": "new2", "checkpoint_sha256": "c" * 64,
                                                    "data_fingerprint": "d" * 16, "split": "test"}
        assert (archive["logits"].dtype, archive["labels"].dtype, archive["digests"].dtype) == \
            (np.float32, np.int64, np.uint8)
    replace(saved, split="val").write(tmp_path / "val.reference.npz")
    assert ReferenceLogits.read(tmp_path / "val.reference.npz").split == "val"  # the stored split, not the default


def write_npz(path: Path, meta: Any = None, **arrays: np.ndarray) -> Path:
    saved = reference_logits()
    arrays = {"logits": saved.logits.astype(np.float32), "labels": saved.labels, "digests": saved.digests.astype(np.uint8),
              "meta": np.array(json.dumps({"format_version": 1, "model": "new2", "checkpoint_sha256": "c",
                                           "data_fingerprint": "d"} if meta is None else meta)), **arrays}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def test_reference_logits_that_are_not_an_edgecls_reference_are_refused(tmp_path):
    path = tmp_path / "new2.reference.npz"
    fix = "export the model again"
    assert refusal(ReferenceLogits.read, path) == f"reference {path} does not exist; export the model or pass --reference"
    path.write_bytes(b"not a zip")
    assert refusal(ReferenceLogits.read, path).startswith(f"reference {path} is unreadable or not an edgecls reference (")
    write_npz(path, meta={"format_version": 1, "model": "new2", "checkpoint_sha256": "c"}, extra=np.zeros(1))
    assert refusal(ReferenceLogits.read, path) == f"reference {path} lacks 'data_fingerprint' in its description; {fix}"
    assert ReferenceLogits.read(write_npz(path)).split == "test"  # a reference without a split is of the test split
    write_npz(path, meta=["rows"])
    assert refusal(ReferenceLogits.read, path) == f"reference {path} has no description of its rows; {fix}"
    write_npz(path, meta={"format_version": 3})
    assert refusal(ReferenceLogits.read, path) == \
        f"reference {path} has format version 3, this edgecls reads version 1; {fix}"
    np.savez(path, logits=np.zeros((4, 10)), labels=np.zeros(4), meta=np.array("{}"))
    assert refusal(ReferenceLogits.read, path) == (f"reference {path} is unreadable or not an edgecls reference "
                                                   f"('digests is not a file in the archive'); {fix}")
    for inconsistent in ({"logits": np.zeros(40, np.float32)}, {"labels": np.zeros(3, np.int64)},
                         {"labels": np.zeros((4, 1), np.int64)}, {"digests": np.zeros((4, 8), np.uint8)},
                         {"digests": np.zeros((5, 16), np.uint8)}):
        write_npz(path, **inconsistent)
        assert refusal(ReferenceLogits.read, path) == f"reference {path} holds inconsistent arrays; {fix}"


# ================================================================================================= calibration record

def calibration(**changes: Any) -> CalibrationRecord:
    fields = dict(model="new2", checkpoint_sha256="c" * 64, data_fingerprint="d" * 16, method="entropy", size=3,
                  seed=7, indices=[12, 57, 99], ranges={"conv1": [-1.5, 2.0]}, split="train",
                  created_at="2026-11-27T10:00:00Z", versions={"onnxruntime": "1.32.0"})
    return CalibrationRecord(**{**fields, **changes})


def test_a_calibration_record_round_trips(tmp_path):
    record = calibration()
    assert record.write(tmp_path / "new2.entropy.json") == tmp_path / "new2.entropy.json"
    stored = json.loads((tmp_path / "new2.entropy.json").read_text())
    assert stored["format"] == "edgecls-calibration" and stored["format_version"] == 1 and stored["seed"] == 7
    assert CalibrationRecord.read(tmp_path / "new2.entropy.json") == record
    calibration(split="val").write(tmp_path / "val.json")
    assert CalibrationRecord.read(tmp_path / "val.json").split == "val"  # the stored split, not the default
    minimal = {key: value for key, value in stored.items() if key not in ("split", "created_at", "versions")}
    (tmp_path / "minimal.json").write_text(json.dumps(minimal))
    assert CalibrationRecord.read(tmp_path / "minimal.json") == calibration(split="train", created_at="", versions={})


def test_a_bad_calibration_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "new2.percentile.json"
    fix = "delete it and calibrate afresh"
    assert refusal(CalibrationRecord.read, path) == \
        f"calibration record {path} does not exist; drop --calibration-cache to calibrate afresh"
    for text in ("{", b"\xff\xfe\x00"):
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        message = refusal(CalibrationRecord.read, path)
        assert message.startswith(f"calibration record {path} is unreadable or not JSON (") and message.endswith(f"); {fix}")
    path.write_text("[]")
    assert refusal(CalibrationRecord.read, path) == f"{path} is not an edgecls calibration record; {fix}"
    path.write_text(json.dumps({"format": "something-else", "format_version": 1}))
    assert refusal(CalibrationRecord.read, path) == \
        f"{path} is not an edgecls calibration record; pass a file from calibration/"
    good = calibration().to_dict()
    path.write_text(json.dumps({**good, "format_version": 2}))
    assert refusal(CalibrationRecord.read, path) == \
        f"calibration record {path} has format version 2, this edgecls reads version 1; {fix}"
    for key, value in (("ranges", None), ("size", "many"), ("indices", 5), ("seed", None)):
        path.write_text(json.dumps({k: v for k, v in good.items() if k != key} if value is None else {**good, key: value}))
        message = refusal(CalibrationRecord.read, path)
        assert message.startswith(f"calibration record {path} lacks or garbles ") and message.endswith(f"; {fix}")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "ranges"}))
    assert refusal(CalibrationRecord.read, path) == f"calibration record {path} lacks or garbles 'ranges'; {fix}"


# ================================================================================================= export set

def test_export_member_names_and_the_record_path():
    assert [ExportSet.member_name("new1", kind) for kind in ("fp32", "fp16", "int8", "reference")] == \
        ["new1.onnx", "new1.fp16.onnx", "new1.int8.onnx", "new1.reference.npz"]
    assert ExportSet.member_names("new1") == ["new1.onnx", "new1.fp16.onnx", "new1.int8.onnx", "new1.reference.npz"]
    assert ExportSet.path_for("export", "new1") == Path("export/new1.export.json")


def test_an_export_set_round_trips(tmp_path):
    record = ExportSet("new2", "c" * 64, {"new2.onnx": "a" * 64}, complete=True, created_at="2026-11-27T10:00:00Z")
    path = record.write(tmp_path / "new2.export.json")
    assert path == tmp_path / "new2.export.json"
    assert json.loads(path.read_text()) == {"format_version": 1, "model": "new2", "checkpoint_sha256": "c" * 64,
                                            "files": {"new2.onnx": "a" * 64}, "complete": True,
                                            "created_at": "2026-11-27T10:00:00Z", "companions": {}}
    assert ExportSet.read(path) == record
    path.write_text(json.dumps({"format_version": 1, "model": "new2", "checkpoint_sha256": "c", "files": {},
                                "complete": False}))
    assert ExportSet.read(path) == ExportSet("new2", "c", {}, complete=False, created_at="")


def test_a_bad_export_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "new2.export.json"
    fix = "run `edgecls export` again"
    assert refusal(ExportSet.read, path) == f"export record {path} does not exist; {fix}"
    for text, why in ((b"{", "Expecting property name"), (b"\xff\xfe", "codec can't decode")):
        path.write_bytes(text)
        assert refusal(ExportSet.read, path).startswith(f"export record {path} is unreadable or not JSON (")
        assert why in refusal(ExportSet.read, path) and refusal(ExportSet.read, path).endswith(f"); {fix}")
    path.write_text("[]")
    assert refusal(ExportSet.read, path) == f"{path} is not an edgecls export record; {fix}"
    path.write_text(json.dumps({"format_version": 2}))
    assert refusal(ExportSet.read, path) == f"export record {path} has format version 2, this edgecls reads version 1; {fix}"
    good = {"format_version": 1, "model": "new2", "checkpoint_sha256": "c", "files": {}, "complete": True}
    for key, value in (("complete", None), ("files", None), ("files", ["new2.onnx"]), ("model", None)):
        path.write_text(json.dumps({k: v for k, v in good.items() if k != key} if value is None else {**good, key: value}))
        message = refusal(ExportSet.read, path)
        assert message.startswith(f"export record {path} lacks or garbles ") and message.endswith(f"; {fix}")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "complete"}))
    assert refusal(ExportSet.read, path) == f"export record {path} lacks or garbles 'complete'; {fix}"


@pytest.mark.parametrize("key, value, why", [
    ("complete", "false", 'complete ("false" is not true or false)'),
    ("complete", 0, "complete (0 is not true or false)"),
    ("model", 2, "model (2 is not a string)"),
    ("files", {"new2.onnx": 5}, "files[new2.onnx] (5 is not a string)"),
    ("companions", ["new2.int8-report.json"], "companions (list is not a JSON object)"),
])
def test_an_export_record_field_of_the_wrong_type_is_refused_not_coerced(tmp_path, key, value, why):
    """A hand-edited "complete": "false" once read as complete (bool("false") is True)."""
    path = tmp_path / "new2.export.json"
    good = {"format_version": 1, "model": "new2", "checkpoint_sha256": "c", "files": {}, "complete": True}
    path.write_text(json.dumps({**good, key: value}))
    assert refusal(ExportSet.read, path) == f"export record {path} lacks or garbles {why}; run `edgecls export` again"


def test_an_export_companion_counts_only_with_its_recorded_bytes(tmp_path):
    companion = tmp_path / "new2.int8-report.json"
    record = ExportSet("new2", "c", {}, complete=True,
                       companions={companion.name: hashlib.sha256(b"report").hexdigest()})
    assert not record.companion_matches(companion)  # not there
    companion.write_bytes(b"report")
    assert record.companion_matches(companion)
    companion.write_bytes(b"an older report")
    assert not record.companion_matches(companion)
    assert not record.companion_matches(tmp_path / "new2.percentile.json")  # not listed


def test_check_member_takes_only_files_of_one_complete_export(tmp_path):
    onnx_file, fp16, reference, notes = (tmp_path / name for name in
                                         ("new2.onnx", "new2.fp16.onnx", "new2.reference.npz", "new2.notes.onnx"))
    for path in (onnx_file, fp16, reference, notes):
        path.write_bytes(path.name.encode())
    ExportSet.check_member(onnx_file, "new2")  # no record beside it: not checked
    digests = {path.name: hashlib.sha256(path.name.encode()).hexdigest() for path in (onnx_file, reference)}
    record_path = ExportSet.path_for(tmp_path, "new2")
    ExportSet("new2", "c", digests, complete=True).write(record_path)
    ExportSet.check_member(onnx_file, "new2")
    ExportSet.check_member(reference, "new2")
    ExportSet.check_member(notes, "new2")  # a name no export writes: not the record's business
    ExportSet.check_member(fp16, "new1")  # the record of another model is not this file's
    assert refusal(ExportSet.check_member, fp16, "new2") == (f"{fp16} is not part of the last export of new2 "
                                                            f"({record_path}); run `edgecls export` again, or remove "
                                                            "the file")
    onnx_file.write_bytes(b"edited")
    assert refusal(ExportSet.check_member, onnx_file, "new2") == (f"{onnx_file} has changed since it was exported (it "
                                                                 f"does not match {record_path}); run `edgecls export` "
                                                                 "again")
    ExportSet("new2", "c", digests, complete=False).write(record_path)
    assert refusal(ExportSet.check_member, reference, "new2") == (
        f"{reference}: the export of new2 into {tmp_path} was interrupted while installing its files ({record_path} "
        "is incomplete), so they may come from two exports; run `edgecls export` again")


# ================================================================================================= int8 report

def int8_report() -> Int8Report:
    figures = {"images": 50, "agreement": 98.0, "flips": 1, "right_to_wrong": 1, "wrong_to_right": 0,
               "accuracy": 70.0, "reference_accuracy": 72.0, "accuracy_delta": -2.0}
    layers = [LayerDecision("conv", "Conv", 1792, 31.25, figures, 1, "float", "costliest left in int8 (rank 1)"),
              LayerDecision("fc", "Gemm", 2570, 48.5, figures, 2, "int8", "the budget holds with it in int8")]
    return Int8Report(model="new2", checkpoint_sha256="c" * 64, data_fingerprint="d" * 16, target="trt",
                      budget={"max_drop": 0.3, "min_agreement": None}, passed=True, method="minmax",
                      float_layers=["conv"], int8_layers=1, layers=layers,
                      validation={"size": 50, "seen_in_training": False}, calibration={"size": 20},
                      sensitivity="SQNR", candidates=[{"method": "minmax", "passed": True}],
                      result={"validation": figures, "test": None}, throughput=None, search_seconds=1.5,
                      created_at="2026-11-29T00:00:00Z", versions={"onnx": "1"})


def test_int8_report_round_trips_with_its_layer_decisions(tmp_path):
    path = int8_report().write(tmp_path / "new2.int8-report.json")
    record = json.loads(path.read_text())
    assert (record["format"], record["format_version"]) == ("edgecls-int8-report", 1)
    assert record["layers"][0] == {"name": "conv", "op": "Conv", "parameters": 1792, "sqnr_db": 31.25,
                                   "alone": int8_report().layers[0].alone, "rank": 1, "decision": "float",
                                   "reason": "costliest left in int8 (rank 1)"}
    read = Int8Report.read(path)
    assert read == int8_report() and isinstance(read.layers[1], LayerDecision)


def test_a_bad_int8_report_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "new2.int8-report.json"
    fix = "export the model again with `edgecls export --int8 --max-drop ...`"
    assert refusal(Int8Report.read, path) == f"int8 report {path} does not exist; {fix}"
    path.write_text("{")
    message = refusal(Int8Report.read, path)
    assert message.startswith(f"int8 report {path} is unreadable or not JSON (") and message.endswith(f"); {fix}")
    good = int8_report().to_dict()
    path.write_text(json.dumps({k: v for k, v in good.items() if k not in ("created_at", "versions")}))
    assert Int8Report.read(path) == replace(int8_report(), created_at="", versions={})  # both optional
    path.write_text(json.dumps({**good, "format": "edgecls-calibration"}))
    assert refusal(Int8Report.read, path) == (f"{path} is not an edgecls int8 report; pass a <model>.int8-report.json "
                                             "from calibration/")
    path.write_text(json.dumps({**good, "format_version": 2}))
    assert refusal(Int8Report.read, path) == f"int8 report {path} has format version 2, this edgecls reads version 1; {fix}"
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "budget"}))
    assert refusal(Int8Report.read, path) == f"int8 report {path} lacks or garbles 'budget'; {fix}"
    path.write_text(json.dumps({**good, "layers": [{"name": "conv"}]}))
    assert refusal(Int8Report.read, path) == f"int8 report {path} lacks or garbles 'layers[0].op'; {fix}"


INT8_EDITS = [  # (field, value, the field's words in the message): edits that crashed `edgecls report` once
    ("layers.0.sqnr_db", "31", 'layers[0].sqnr_db ("31" is not a finite number)'),
    ("layers.0.parameters", "1792", 'layers[0].parameters ("1792" is not a whole number)'),
    ("budget", None, "budget (null is not a JSON object)"),
    ("budget.max_drop", "0.3", 'budget.max_drop ("0.3" is not a finite number)'),
    ("result", [], "result (list is not a JSON object)"),
    ("result.validation.agreement", "98", 'result.validation.agreement ("98" is not a finite number)'),
    ("validation", "50 images", 'validation ("50 images" is not a JSON object)'),
    ("passed", "yes", 'passed ("yes" is not true or false)'),
    ("throughput", {"batch_size": 64, "vs_fp32": 2.0, "vs_all_int8": 1.0}, "throughput.images_per_s (null is not a "
                                                                            "JSON object)"),
    ("throughput", {"batch_size": 64, "images_per_s": {"fp32": 1.0, "all_int8": 2.0}, "vs_fp32": 2.0,
                    "vs_all_int8": 1.0}, "'throughput.images_per_s.result'"),
    ("search_seconds", ..., "'search_seconds'"),
]


@pytest.mark.parametrize("dotted, value, why", INT8_EDITS, ids=[edit[0] for edit in INT8_EDITS])
def test_an_edited_int8_report_is_refused_naming_the_field(tmp_path, edited, dotted, value, why):
    path = tmp_path / "new2.int8-report.json"
    path.write_text(json.dumps(edited(int8_report().to_dict(), dotted, value)))
    assert refusal(Int8Report.read, path) == (f"int8 report {path} lacks or garbles {why}; export the model again with "
                                             "`edgecls export --int8 --max-drop ...`")


def test_calibration_indices_stored_as_strings_are_refused(tmp_path, edited):
    path = tmp_path / "new2.entropy.json"
    path.write_text(json.dumps(edited(calibration().to_dict(), "indices.1", "57")))
    assert refusal(CalibrationRecord.read, path) == (f"calibration record {path} lacks or garbles indices[1] (\"57\" is "
                                                    "not a whole number); delete it and calibrate afresh")


# ================================================================================================= bench result

def bench_result(**changes: Any) -> dict:
    timing = {"variant": "onnxruntime fp32", "scope": "end-to-end", "batch_size": 1, "p50_ms": 0.5, "p90_ms": 0.6,
              "p99_ms": 0.9, "images_per_s": 2000.0, "pipelined_images_per_s": None}
    result = {"model": {"path": "export/new2.onnx", "format": "onnx", "name": "new2", "precision": "fp32",
                        "size_mb": 1.2, "checkpoint_sha256": "c" * 64},
              "data": {"source": "tiny", "fingerprint": "d" * 16, "test_images": 40}, "accuracy": 71.5,
              "per_class": {"cat": 50.0, "dog": None}, "parity": None, "variants": [], "timings": [timing],
              "settings": {}, "notes": [], "gates": {}, "environment": {"cpu": "x86", "gpu": None,
                                                                         "threads": {"cpu_count": 2}}}
    return {**result, **changes}


def test_a_bench_result_round_trips_in_either_form_of_bench_file(tmp_path):
    single, summary = tmp_path / "one.json", tmp_path / "all.json"
    single.write_text(json.dumps(bench_result()))
    summary.write_text(json.dumps({"rows": [{"path": "a.plan", "details": None}, {"details": bench_result()}]}))
    [one], [row] = BenchResult.read_all(single), BenchResult.read_all(summary)
    assert one == row and one.to_dict() == bench_result() and one.path == Path("export/new2.onnx")
    assert one.machine == "x86, 2 cores"
    (tmp_path / "other.json").write_text(json.dumps({"something": "else"}))
    assert BenchResult.read_all(tmp_path / "other.json") == []


BENCH_EDITS = [
    ("timings.0.p50_ms", "0.5", 'timings[0].p50_ms ("0.5" is not a finite number)'),
    ("timings.0.images_per_s", ..., "'timings[0].images_per_s'"),
    ("timings.0.scope", 1, "timings[0].scope (1 is not a string)"),
    ("accuracy", "71.5", 'accuracy ("71.5" is not a finite number)'),
    ("model.path", ..., "'model.path'"),
    ("per_class.cat", "50", 'per_class[cat] ("50" is not a finite number)'),
    ("environment.versions", "numpy 2", 'environment.versions ("numpy 2" is not a JSON object)'),
]


@pytest.mark.parametrize("dotted, value, why", BENCH_EDITS, ids=[edit[0] for edit in BENCH_EDITS])
def test_an_edited_bench_file_is_refused_naming_the_field(tmp_path, edited, dotted, value, why):
    path = tmp_path / "new2.json"
    path.write_text(json.dumps(edited(bench_result(), dotted, value)))
    assert refusal(BenchResult.read_all, path) == (f"bench file {path} lacks or garbles {why}; write it again with "
                                                  "`edgecls bench --json`")
