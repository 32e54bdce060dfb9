"""Every field a reader of an edgecls record checks, one at a time: of the wrong type or missing, it is refused in one
line that names the file and that very field (its dotted name and the value found); absent or null where it may be,
it is taken with its default. Built from the small records of test_formats: no model is trained."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import edit_json, refusal
from edgecls.artifacts import staging_dir
from edgecls.formats import (BenchResult, CalibrationRecord, EngineManifest, ExportSet, Int8Report,
                             ModelMetadata, ReferenceLogits)
from test_formats import METADATA, REBUILD, REEXPORT, bench_result, calibration, int8_report, manifest, write_npz

BENCH_FIX = "write it again with `edgecls bench --json`"
INT8_FIX = "export the model again with `edgecls export --int8 --max-drop ...`"
PARITY = {"reference": "export/new2.reference.npz", "images": 40, "agreement": 97.5, "flips": 1, "right_to_wrong": 1,
          "wrong_to_right": 0, "accuracy": 70.0, "reference_accuracy": 72.5, "accuracy_delta": -2.5,
          "max_abs_logit_diff": 0.25, "mean_abs_logit_diff": 0.01}


def served_result(**changes: Any) -> dict:
    """A served bench (`edgecls bench --server`) as bench writes it: a server, one load row, a parity block."""
    row = {"concurrency": 4, "request_batch": 1, "timed_requests": 200, "failed": 0, "lost": 0, "p50_ms": 2.0,
           "p90_ms": 3.0, "p99_ms": 5.0, "images_per_s": 1800.0, "variant": "served http",
           "batching": {"batches": 120, "images": 200, "mean_batch": 1.67, "requests_failed": 0}}
    server = {"url": "http://127.0.0.1:8000", "protocol": "http", "model": "new2", "metrics": None, "instances": 1,
              "dynamic_batching": {}}
    environment = {"cpu": "x86", "gpu": "Orin", "platform": "Linux", "measured_at": "2026-12-01T10:00:00Z",
                   "versions": {"numpy": "2"}, "threads": {"cpu_count": 2}}
    return bench_result(**{"timings": [], "server": server, "load": [row], "complete": True, "error": None,
                           "parity": PARITY, "environment": environment, **changes})


def bench_refusal(tmp_path: Path, record: dict) -> str:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(record))
    message = refusal(BenchResult.read_all, path)
    prefix = f"bench file {path} lacks or garbles "
    assert message.startswith(prefix) and message.endswith(f"; {BENCH_FIX}")
    return message[len(prefix):-len(f"; {BENCH_FIX}")]


def read_back(tmp_path: Path, record: dict) -> BenchResult:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(record))
    [result] = BenchResult.read_all(path)
    return result


# ================================================================================================= bench result

BENCH_FIELDS = [  # (field, value or ... to remove it, the field's words in the refusal)
    ("model.name", ..., "'model.name'"),
    ("model.precision", 16, "model.precision (16 is not a string)"),
    ("model.checkpoint_sha256", 5, "model.checkpoint_sha256 (5 is not a string)"),
    ("parity", [], "parity (list is not a JSON object)"),
    ("parity.flips", ..., "'parity.flips'"),
    ("parity.agreement", "98", 'parity.agreement ("98" is not a finite number)'),
    ("environment.versions", ["numpy"], "environment.versions (list is not a JSON object)"),
    ("environment.threads", 2, "environment.threads (2 is not a JSON object)"),
    *[(f"environment.{key}", 5, f"environment.{key} (5 is not a string)")
      for key in ("cpu", "gpu", "platform", "measured_at")],
    *[(f"server.{key}", ..., f"server.{key} (null is not a string)") for key in ("url", "protocol", "model")],
    *[(f"load.0.{key}", ..., f"'load[0].{key}'")
      for key in ("concurrency", "request_batch", "timed_requests", "failed", "images_per_s")],
    ("load.0.failed", "0", 'load[0].failed ("0" is not a finite number)'),
    *[(f"load.0.{key}", "2", f'load[0].{key} ("2" is not a finite number)') for key in ("p50_ms", "p90_ms", "p99_ms")],
    ("load.0.batching", "none", 'load[0].batching ("none" is not a JSON object)'),
    ("load.0.batching.batches", ..., "'load[0].batching.batches'"),
    ("load.0.batching.mean_batch", "1.7", 'load[0].batching.mean_batch ("1.7" is not a finite number)'),
]


@pytest.mark.parametrize("dotted, value, why", BENCH_FIELDS, ids=[edit[0] for edit in BENCH_FIELDS])
def test_each_field_of_a_served_bench_file_is_checked(tmp_path, dotted, value, why):
    assert bench_refusal(tmp_path, edit_json(served_result(), dotted, value)) == why


def test_a_timing_row_that_is_not_an_object_is_refused_naming_the_row(tmp_path):
    assert bench_refusal(tmp_path, bench_result(timings=[5])) == "timings[0].variant (5 is not a string)"
    assert bench_refusal(tmp_path, edit_json(bench_result(), "timings.0.variant", None)) == \
        "timings[0].variant (null is not a string)"


def test_a_served_bench_file_reads_back_whole_and_its_optional_figures_may_be_null(tmp_path):
    result = read_back(tmp_path, served_result())
    assert result.to_dict() == served_result() and result.parity == PARITY and result.server["protocol"] == "http"
    assert result.machine == "Orin (x86, 2 cores)" and result.measured_at == "2026-12-01T10:00:00Z"
    # A level that no request answered has no percentiles; a server without metrics measures no batches.
    silent = edit_json(edit_json(served_result(), "load.0.p99_ms", None), "load.0.batching", None)
    assert read_back(tmp_path, silent).load[0]["p99_ms"] is None
    no_batch = edit_json(served_result(), "load.0.batching.mean_batch", None)  # metrics read, but no batch formed
    assert read_back(tmp_path, no_batch).load[0]["batching"]["mean_batch"] is None
    assert read_back(tmp_path, edit_json(served_result(), "model.checkpoint_sha256", None)).model["path"] == \
        "export/new2.onnx"


def test_a_bench_file_with_only_the_required_fields_takes_the_defaults(tmp_path):
    minimal = {key: bench_result()[key] for key in ("model", "accuracy", "timings")}
    result = read_back(tmp_path, {**minimal, "accuracy": 71})
    assert (result.per_class, result.parity, result.environment, result.server, result.load) == ({}, None, {}, None, [])
    assert (result.complete, result.error, result.machine, result.measured_at) == (True, None, "?", "")
    assert type(result.accuracy) is float and result.to_dict()["accuracy"] == 71.0  # a whole number read as a float


def test_a_bench_file_that_is_missing_unreadable_or_not_a_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "bench.json"
    assert refusal(BenchResult.read_all, path) == (f"bench file {path} does not exist; write one with "
                                                   f"`edgecls bench ... --json {path}`")
    path.write_text("{not json")
    assert refusal(BenchResult.read_all, path) == (f"bench file {path} is unreadable or not JSON (Expecting property "
                                                   "name enclosed in double quotes: line 1 column 2 (char 1)); "
                                                   f"{BENCH_FIX}")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert refusal(BenchResult.read_all, folder) == (f"bench file {folder} is a folder, not a regular file; give the "
                                                     "file itself")
    path.write_text(json.dumps({"rows": [{"details": "new2"}]}))  # a summary row whose details are not a result
    assert refusal(BenchResult.read_all, path) == \
        f"bench file {path} lacks or garbles the record (not a JSON object); {BENCH_FIX}"


# ================================================================================================= int8 report

INT8_FIELDS = [
    ("layers.0", 5, "layers[0] (not a JSON object)"),
    ("layers.0.alone.agreement", "98", 'layers[0].alone.agreement ("98" is not a finite number)'),
    ("layers.1.alone.accuracy_delta", "-2", 'layers[1].alone.accuracy_delta ("-2" is not a finite number)'),
    ("budget.min_agreement", "99", 'budget.min_agreement ("99" is not a finite number)'),
    ("result.test", {**int8_report().result["validation"], "flips": "1"},
     'result.test.flips ("1" is not a finite number)'),
    ("candidates.0", "minmax", 'candidates[0] ("minmax" is not a JSON object)'),
    ("throughput", {"images_per_s": {"fp32": 1.0, "all_int8": 2.0, "result": 2.0}, "vs_fp32": 2.0, "vs_all_int8": 1.0},
     "'throughput.batch_size'"),
]


@pytest.mark.parametrize("dotted, value, why", INT8_FIELDS, ids=[edit[0] for edit in INT8_FIELDS])
def test_each_checked_figure_of_an_int8_report_is_named_when_garbled(tmp_path, dotted, value, why):
    path = tmp_path / "new2.int8-report.json"
    path.write_text(json.dumps(edit_json(int8_report().to_dict(), dotted, value)))
    assert refusal(Int8Report.read, path) == f"int8 report {path} lacks or garbles {why}; {INT8_FIX}"


def test_an_int8_report_with_test_figures_and_throughput_reads_back(tmp_path):
    figures = int8_report().result["validation"]
    speed = {"batch_size": 64, "images_per_s": {"fp32": 900.0, "all_int8": 2400.0, "result": 2100.0},
             "vs_fp32": 2.33, "vs_all_int8": 0.875}
    record = edit_json(edit_json(int8_report().to_dict(), "result.test", figures), "throughput", speed)
    record = edit_json(edit_json(record, "layers.0.alone.agreement", ...), "search_seconds", 2)
    path = tmp_path / "new2.int8-report.json"
    path.write_text(json.dumps(record))
    read = Int8Report.read(path)
    assert read.result["test"] == figures and read.throughput == speed and "agreement" not in read.layers[0].alone
    assert type(read.search_seconds) is float and read.search_seconds == 2.0


# ================================================================================================= engine manifest

@pytest.mark.parametrize("key, value, why", [
    ("gpu_name", 5, "gpu_name (5 is not a string)"),
    ("precision", ["int8"], "precision (list is not a string)"),
    ("board", 5, "board (5 is not a string)"),
    ("build_seconds", "slow", 'build_seconds ("slow" is not a finite number)'),
    ("layers_on_dla", "conv1", "layers_on_dla 'conv1'"),
    ("layers_on_gpu", ["fc", 1], "layers_on_gpu ['fc', 1]"),
])
def test_each_field_of_an_engine_manifest_is_named_when_garbled(key, value, why):
    record = {**manifest().to_dict(), key: value}
    assert refusal(EngineManifest.from_dict, record, "e.plan.json") == \
        f"engine manifest e.plan.json lacks or garbles {why}; {REBUILD}"


def test_a_dla_manifest_keeps_its_layer_lists_and_a_whole_build_time_as_a_float(tmp_path):
    record = {**manifest(layers_on_dla=["conv1", "conv2"], layers_on_gpu=["fc"]).to_dict(), "build_seconds": 41}
    read = EngineManifest.from_dict(record, "e.plan.json")
    assert (read.layers_on_dla, read.layers_on_gpu) == (["conv1", "conv2"], ["fc"])
    assert type(read.build_seconds) is float and read.build_seconds == 41.0
    plan = tmp_path / "new2.plan"
    plan.write_bytes(b"engine")
    EngineManifest.path_for(plan).mkdir()
    assert refusal(EngineManifest.read, plan) == (f"engine manifest {plan}.json is a folder, not a regular file; give "
                                                  "the file itself")


# ================================================================================================= ONNX metadata

@pytest.mark.parametrize("key, value, why", [
    ("model", 5, "model (5 is not a string)"),
    ("quantization", "int8", 'quantization ("int8" is not a JSON object)'),
])
def test_a_model_metadata_field_of_the_wrong_type_is_named(key, value, why):
    assert refusal(ModelMetadata.from_dict, {**METADATA.to_dict(), key: value}, "m.onnx") == \
        f"m.onnx: the edgecls metadata garbles {why}; {REEXPORT}"


# ================================================================================================= reference logits

@pytest.mark.parametrize("key", ["model", "checkpoint_sha256", "data_fingerprint", "split"])
def test_each_field_of_a_reference_description_is_named_when_garbled(tmp_path, key):
    meta = {"format_version": 1, "model": "new2", "checkpoint_sha256": "c", "data_fingerprint": "d", key: 5}
    path = write_npz(tmp_path / "new2.reference.npz", meta=meta)
    assert refusal(ReferenceLogits.read, path) == \
        f"reference {path} garbles {key} (5 is not a string) in its description; export the model again"


def test_a_reference_declaring_huge_arrays_or_not_a_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "new2.reference.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("logits.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (100_000, 10_000)})  # 4 GB declared, none stored
    assert refusal(ReferenceLogits.read, path) == (f"reference {path} declares 3,815 MB of arrays, more than the "
                                                   "512 MB any edgecls reference holds; check the path")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    assert refusal(ReferenceLogits.read, folder) == (f"reference {folder} is a folder, not a regular file; give the "
                                                     "file itself")


# ================================================================================================= the other records

def test_a_long_value_is_shown_cut_to_forty_characters(tmp_path):
    path = tmp_path / "new2.entropy.json"
    path.write_text(json.dumps({**calibration().to_dict(), "size": "x" * 60}))
    assert refusal(CalibrationRecord.read, path) == (f"calibration record {path} lacks or garbles size (\"{'x' * 39} "
                                                    "is not a whole number); delete it and calibrate afresh")


def test_an_export_companion_digest_must_be_a_string(tmp_path):
    path = tmp_path / "new2.export.json"
    good = {"format_version": 1, "model": "new2", "checkpoint_sha256": "c", "files": {}, "complete": True}
    path.write_text(json.dumps({**good, "companions": {"new2.int8-report.json": 5}}))
    assert refusal(ExportSet.read, path) == \
        f"export record {path} lacks or garbles companions[new2.int8-report.json] (5 is not a string); " \
        "run `edgecls export` again"


def test_check_member_says_an_export_is_in_progress_while_its_writer_runs(tmp_path):
    onnx_file = tmp_path / "new2.onnx"
    onnx_file.write_bytes(b"onnx")
    ExportSet("new2", "c", {}, complete=False).write(ExportSet.path_for(tmp_path, "new2"))
    with staging_dir(tmp_path, "export"):  # this process, alive, is installing the export's files
        assert refusal(ExportSet.check_member, onnx_file, "new2") == (
            f"{onnx_file}: an export of new2 into {tmp_path} is in progress (process {os.getpid()} is installing its "
            "files); wait for it to finish, then run this again")
    with staging_dir(tmp_path, "bench"):  # another command's staging folder is not an export's
        assert "was interrupted while installing" in refusal(ExportSet.check_member, onnx_file, "new2")
