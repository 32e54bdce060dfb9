"""edgecls report: the page's sections, its figures against the files they came from, missing and corrupt inputs,
no matplotlib, and a real render in headless Chromium where it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.formats import Int8Report, LayerDecision
from edgecls.report.compare import RIGHT_TO_WRONG, WRONG_TO_RIGHT, WRONG_TO_WRONG, Answers, confusion_matrix, flips

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("training", "model", "accuracy", "parity", "speed", "quantization")


class Page(HTMLParser):
    """What the tests read back from a page: tables by id, section ids, every src/href, the gallery cards."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sections: list[str] = []
        self.links: list[str] = []
        self.cards: list[dict[str, str]] = []
        self.galleries: list[dict[str, str]] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [value for name, value in attrs if name in ("src", "href") and value is not None]
        if tag == "section":
            self.sections.append(found["id"])
        elif tag == "table":
            self._table = self.tables.setdefault(found["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "figure" and found.get("class") == "flip":
            self.cards.append({**found, "gallery": self.galleries[-1]["data-artifact"]})
        elif tag == "div" and found.get("class") == "gallery":
            self.galleries.append(found)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        """A table's body rows as dicts keyed by its header."""
        header, *body = self.tables[table]
        return [dict(zip(header, row)) for row in body]


def number(text: str) -> float:
    return float(text.replace(",", "").replace("%", ""))


def run_report(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["report", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


# ----------------------------------------------------------------------------------------------- a project

def add_to_logits(source: Path, target: Path, bias: np.ndarray) -> None:
    """A copy of an exported file whose logits get `bias` added: an artifact that answers differently on purpose."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    last = next(node for node in model.graph.node if "logits" in node.output)
    last.output[list(last.output).index("logits")] = "logits_before_bias"
    model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), "test_bias"))
    model.graph.node.append(helper.make_node("Add", ["logits_before_bias", "test_bias"], ["logits"]))
    onnx.save(model, str(target))


@pytest.fixture(scope="module")
def project(trained_checkpoint, new2_export, tiny_cifar, tmp_path_factory) -> dict[str, Path]:
    """The tiny new2 with its export and calibration, a bench file of its int8 ONNX, and a TensorRT plan (bytes that
    only pretend) with its manifest and a bench file as a device would write. The tiny model's fp16 and int8 files
    agree with it on every test image, so the fp16 file is replaced by one that favours class 0 enough to flip about
    half of the images, to fill the gallery beyond its limit."""
    from edgecls.artifacts import sha256_file, write_json
    from edgecls.bench import BenchSettings, bench_model, json_ready
    from edgecls.formats import ModelMetadata, ReferenceLogits
    from edgecls.timing import TimingSettings

    report = new2_export
    root = tmp_path_factory.mktemp("report_project")
    export = shutil.copytree(report.files["fp32"].parent, root / "export")
    logits = ReferenceLogits.read(export / "new2.reference.npz").logits
    margin = np.median(logits.max(axis=1) - logits[:, 0])
    add_to_logits(report.files["fp16"], export / "new2.fp16.onnx", np.eye(10)[0] * margin)
    (export / "new2.export.json").unlink()  # the doctored fp16 file no longer belongs to the export's set
    int8 = export / "new2.int8.onnx"
    timing = TimingSettings(batch_sizes=(1, 4), duration=0.02, warmup=0.01, cuda_variants=False)
    result = json_ready(bench_model(int8, tiny_cifar, settings=BenchSettings(timing)))
    write_json(root / "results" / "int8.json", result)

    plan = root / "engines" / "new2.int8.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not a real engine")
    write_json(plan.with_name(plan.name + ".json"), {
        "format_version": 1, "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
        "onnx_path": "export/new2.int8.onnx", "onnx_sha256": sha256_file(int8), "plan_sha256": sha256_file(plan),
        "precision": "int8", "batch": {"min": 1, "opt": 64, "max": 256}, "build_seconds": 41.2,
        "built_at": "2026-11-27T10:00:00Z", "edgecls": ModelMetadata.read(int8).to_dict()})
    on_device = json.loads(json.dumps(result))
    on_device["model"].update(path="engines/new2.int8.plan", format="tensorrt", backend="tensorrt")
    on_device["environment"].update(gpu="Orin", measured_at="2026-11-28T10:00:00Z")
    on_device["parity"].update(agreement=98.0, flips=2)
    write_json(root / "device" / "orin.json", on_device)
    return {"root": root, "checkpoint": trained_checkpoint("new2"), "export": export,
            "calibration": report.calibration.parent, "results": root / "results", "engines": root / "engines",
            "device_bench": root / "device" / "orin.json"}


def options(project: dict[str, Path], **changes: Path) -> list[str]:
    dirs = {"export": project["export"], "engines": project["engines"], "calibration": project["calibration"],
            "results": project["results"], **changes}
    return [f"--{name}-dir={path}" for name, path in dirs.items()]


@pytest.fixture(scope="module")
def page(project, tiny_data_dir) -> tuple[Path, str]:
    out = project["root"] / "reports" / "new2.html"
    code, stdout, stderr = run_report(project["checkpoint"], "-o", out, "--data", tiny_data_dir,
                                      "--bench", project["device_bench"], *options(project))
    assert code == 0, stderr
    assert stdout.strip() == f"wrote {out}"
    return out, out.read_text()


@pytest.fixture(scope="module")
def parsed(page) -> Page:
    return Page(page[1])


# ----------------------------------------------------------------------------------------------- the page

def test_page_has_every_section_and_nothing_from_elsewhere(parsed, page):
    text = page[1]
    assert parsed.sections == list(SECTIONS)
    assert "Left out" not in text  # every input exists in this project
    assert parsed.links and all(link.startswith(("data:image/png;base64,", "#")) for link in parsed.links)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert sum(link.startswith("data:") for link in parsed.links) >= 6 + 24  # six figures and a full gallery


def test_training_section_is_the_log(parsed, project):
    log = [json.loads(line) for line in (project["checkpoint"].parent / "new2.log.jsonl").read_text().splitlines()]
    rows = parsed.rows("training-epochs")
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in log]
    assert [number(r["loss"]) for r in rows] == pytest.approx([e["loss"] for e in log], abs=5e-5)
    assert [number(r["lr"]) for r in rows] == pytest.approx([e["lr"] for e in log], rel=1e-3)
    facts = dict(parsed.tables["training-facts"])
    assert facts["epochs"] == f"{len(log)} of {len(log)}" and facts["device"] == "cpu"
    assert facts["training time (steps only)"] == f"{sum(e['seconds'] for e in log):,.1f} s"
    assert "batch size 50" in facts["training arguments"]


def test_model_table_is_what_edgecls_models_prints(parsed):
    from edgecls.models import MODELS, create_model, model_stats

    rows = parsed.rows("model-table")
    assert [r["model"] for r in rows] == list(MODELS)
    for row in rows:
        stats, spec = model_stats(create_model(row["model"])), MODELS[row["model"]]
        assert number(row["params"]) == stats.params and number(row["fc params"]) == stats.fc_params
        assert number(row["fc %"]) == round(stats.fc_share, 1)
        assert number(row["paper params"]) == spec.paper.params


def test_original_accuracy_and_confusion_are_the_reference(parsed, project, tiny_cifar):
    from edgecls.formats import ReferenceLogits

    reference = ReferenceLogits.read(project["export"] / "new2.reference.npz")
    predicted = reference.logits.argmax(axis=1)
    for row in parsed.rows("per-class"):
        members = reference.labels == tiny_cifar.class_names.index(row["class"])
        right = predicted[members] == reference.labels[members]
        assert number(row["original %"]) == pytest.approx(100 * np.mean(right), abs=0.005)
    counts = np.zeros((10, 10), dtype=int)
    for label, answer in zip(reference.labels, predicted):
        counts[label, answer] += 1
    table = [[int(cell) for cell in row[1:]] for row in parsed.tables["confusion-original"][1:]]
    assert np.array_equal(table, counts)


def test_parity_and_gallery_equal_metrics_parity_on_the_same_logits(parsed, project, tiny_cifar):
    from edgecls.data import image_digests
    from edgecls.formats import ReferenceLogits
    from edgecls.metrics import parity
    from edgecls.runtime import Classifier

    reference = ReferenceLogits.read(project["export"] / "new2.reference.npz")
    assert [bytes(d) for d in reference.digests] == image_digests(tiny_cifar.test_images)  # rows = images in order
    rows = {r["artifact"]: r for r in parsed.rows("parity")}
    galleries = {g["data-artifact"]: g for g in parsed.galleries}
    for suffix in ("", ".fp16", ".int8"):
        path = project["export"] / f"new2{suffix}.onnx"
        with Classifier.load(path) as classifier:
            logits = classifier.logits(tiny_cifar.test_images)
        expected = parity(logits, reference.logits, reference.labels)
        row = rows[path.name]
        assert number(row["agreement %"]) == pytest.approx(expected.agreement, abs=0.005)
        assert (int(row["flips"]), int(row["right → wrong"]), int(row["wrong → right"])) == \
               (expected.flips, expected.right_to_wrong, expected.wrong_to_right)
        assert number(row["Δ accuracy"]) == pytest.approx(expected.accuracy_delta, abs=0.005)
        assert number(row["max |Δ logit|"]) == pytest.approx(expected.max_abs_logit_diff, rel=1e-2)
        changed = np.flatnonzero(logits.argmax(axis=1) != reference.logits.argmax(axis=1))
        shown = {int(card["data-row"]) for card in parsed.cards if card["gallery"] == path.name}
        assert len(shown) == min(len(changed), 24) and shown <= set(changed)
        assert int(galleries[path.name]["data-total"]) == len(changed) if len(changed) else path.name not in galleries


def test_plan_shows_its_manifest_and_the_figures_of_its_bench_file(parsed, project):
    plan = project["engines"] / "new2.int8.plan"
    artifacts = {r["file"]: r for r in parsed.rows("artifacts")}
    assert "TensorRT 10.3.0 on Orin (compute 8.7)" in artifacts[str(plan)]["facts"]
    row = {r["artifact"]: r for r in parsed.rows("parity")}[plan.name]
    assert number(row["agreement %"]) == 98.0 and int(row["flips"]) == 2
    assert row["figures from"] == str(project["device_bench"])


def test_an_int8_files_settings_read_as_words(parsed, project):
    from edgecls.formats import ModelMetadata

    int8 = project["export"] / "new2.int8.onnx"
    quantization = ModelMetadata.read(int8).quantization
    facts = {r["file"]: r for r in parsed.rows("artifacts")}[str(int8)]["facts"]
    assert facts == (f"target trt; method percentile; calibration size 200; calibration seed 0; calibration split "
                     f"train; float layers {', '.join(quantization['float_layers'])}; budget none")


def test_speed_tables_are_the_bench_files(parsed, project):
    tables = [parsed.rows(name) for name in parsed.tables if name.startswith("bench-")]
    files = [project["results"] / "int8.json", project["device_bench"]]  # results/ first, then --bench
    expected = [json.loads(f.read_text())["timings"] for f in files]
    found = [[(r["variant"], r["scope"], int(r["batch"]), number(r["p50 ms"]), number(r["images/s"])) for r in rows]
             for rows in tables]
    wanted = [[(t["variant"], t["scope"], t["batch_size"], round(t["p50_ms"], 3), round(t["images_per_s"], 1))
               for t in timings] for timings in expected]
    assert found == wanted


def test_quantization_lists_float_layers_and_calibrated_ranges(parsed, project):
    layers = parsed.rows("int8-layers")
    floats = [r for r in layers if r["precision"] == "float"]
    assert len(floats) == 2 and "first layer" in floats[0]["why float"] and "last layer" in floats[1]["why float"]
    record = json.loads((project["calibration"] / "new2.percentile.json").read_text())
    ranges = record["ranges"]["data"]  # ONNX Runtime's form: {tensor: {"lowest": x, "highest": {"data": y, ...}}}
    rows = parsed.rows("calibration-ranges")
    assert {r["tensor"] for r in rows} == set(ranges)
    for row in rows:
        for column, key in (("low", "lowest"), ("high", "highest")):
            value = ranges[row["tensor"]][key]
            expected = float(value["data"] if isinstance(value, dict) else value)
            assert number(row[column]) == pytest.approx(expected, rel=1e-3, abs=1e-6)


def int8_report(checkpoint_sha256: str) -> Int8Report:
    """An int8 search's report as `edgecls.int8_budget` writes it: two layers, the first kept in float."""

    def figures(agreement: float, delta: float) -> dict:
        return {"images": 5000, "agreement": agreement, "flips": 20, "right_to_wrong": 9, "wrong_to_right": 6,
                "accuracy": 70.0 + delta, "reference_accuracy": 70.0, "accuracy_delta": delta}

    layers = [LayerDecision("conv1", "Conv", 1792, 31.5, figures(99.1, -0.4), 1, "float", "costliest (rank 1)"),
              LayerDecision("conv2", "Conv", 36928, 48.3, figures(99.9, 0.02), 2, "int8", "")]
    return Int8Report(
        model="new2", checkpoint_sha256=checkpoint_sha256, data_fingerprint="f", target="trt",
        budget={"max_drop": 0.3, "min_agreement": 99.5}, passed=True, method="minmax", float_layers=["conv1"],
        int8_layers=1, layers=layers, validation={"note": "5,000 held-out training images"}, calibration={},
        sensitivity="SQNR of the logits, lowest first", candidates=[{}, {}],
        result={"validation": figures(99.6, -0.1), "test": figures(99.55, 0.05)},
        throughput={"batch_size": 64, "images_per_s": {"fp32": 800.0, "all_int8": 2900.0, "result": 2700.0},
                    "vs_fp32": 3.375, "vs_all_int8": 0.93}, search_seconds=140.0)


def test_int8_report_replaces_the_ranges_when_present(project, tmp_path):
    from edgecls.checkpoint import load_checkpoint

    calibration = tmp_path / "calibration"
    shutil.copytree(project["calibration"], calibration)
    int8_report(load_checkpoint(project["checkpoint"]).sha256).write(calibration / "new2.int8-report.json")
    out = tmp_path / "r.html"
    code, _, stderr = run_report(project["checkpoint"], "-o", out, *options(project, calibration=calibration))
    assert code == 0, stderr
    parsed = Page(out.read_text())
    rows = parsed.rows("int8-report")
    assert [(r["layer"], r["SQNR dB"], r["agreement alone"], r["Δacc alone"], r["decision"]) for r in rows] == [
        ("conv1", "31.5", "99.10%", "-0.40", "float"), ("conv2", "48.3", "99.90%", "+0.02", "int8")]
    final = dict(parsed.tables["int8-final"])
    assert final["result"].startswith("1 of 2 layers int8, minmax calibration, 2 choices")
    assert "agreement 99.55%" in final["test"] and "(+0.05 vs float)" in final["test"]
    assert final["CPU throughput at batch 64"] == "2,700 images/s = 3.38× fp32, 0.93× all-int8"
    assert "calibration-ranges" not in parsed.tables
    assert 'alt="per-layer SQNR"' in out.read_text()


def test_an_int8_report_of_another_checkpoint_is_left_out_with_a_note(project, tmp_path):
    calibration = tmp_path / "calibration"
    shutil.copytree(project["calibration"], calibration)
    int8_report("0" * 64).write(calibration / "new2.int8-report.json")
    out = tmp_path / "r.html"
    code, _, stderr = run_report(project["checkpoint"], "-o", out, *options(project, calibration=calibration))
    assert code == 0, stderr
    parsed = Page(out.read_text())
    assert "int8-report" not in parsed.tables and "calibration-ranges" in parsed.tables
    assert "new2.int8-report.json left out: it comes from another checkpoint (000000000000" in out.read_text()


def export_copy(new2_export, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shared export (with its export record) and of its calibration folder."""
    export = shutil.copytree(new2_export.files["fp32"].parent, tmp_path / "export")
    return export, shutil.copytree(new2_export.calibration.parent, tmp_path / "calibration")


def gathered(checkpoint: Path, export: Path, calibration: Path, tmp_path: Path):
    from edgecls.formats import Folders
    from edgecls.report.gather import gather

    return gather(checkpoint, folders=Folders(export, tmp_path / "engines", calibration), results_dir=tmp_path / "results")


def test_an_int8_report_the_export_did_not_make_is_left_out_with_a_note(new2_export, trained_checkpoint, tmp_path):
    """An int8 report left from an earlier `export --int8 --max-drop` is not the evidence of today's int8 file."""
    from dataclasses import replace

    from edgecls.artifacts import sha256_file
    from edgecls.checkpoint import load_checkpoint
    from edgecls.formats import ExportSet

    checkpoint = trained_checkpoint("new2")
    export, calibration = export_copy(new2_export, tmp_path)
    report = int8_report(load_checkpoint(checkpoint).sha256).write(calibration / "new2.int8-report.json")
    inputs = gathered(checkpoint, export, calibration, tmp_path)
    assert inputs.int8_report is None and inputs.calibration is not None and inputs.int8_layers
    assert inputs.notes["quantization"] == [
        f"{report} left out: it is not the one the current export of new2 made (see its export record); remake it "
        f"with `edgecls export --checkpoint {checkpoint} --fp16 --int8`"]
    record = ExportSet.read(export / "new2.export.json")  # the export that did make it lists it
    replace(record, companions={**record.companions, report.name: sha256_file(report)}).write(export / "new2.export.json")
    assert gathered(checkpoint, export, calibration, tmp_path).int8_report == Int8Report.read(report)


def test_without_an_int8_file_its_report_and_ranges_are_left_out(new2_export, trained_checkpoint, tmp_path):
    """A later export without --int8 removed the int8 file: its report and calibration record stay behind."""
    from dataclasses import replace

    from edgecls.artifacts import sha256_file
    from edgecls.checkpoint import load_checkpoint
    from edgecls.formats import ExportSet

    checkpoint = trained_checkpoint("new2")
    export, calibration = export_copy(new2_export, tmp_path)
    report = int8_report(load_checkpoint(checkpoint).sha256).write(calibration / "new2.int8-report.json")
    (export / "new2.int8.onnx").unlink()
    record = ExportSet.read(export / "new2.export.json")
    files = {name: digest for name, digest in record.files.items() if name != "new2.int8.onnx"}
    replace(record, files=files, companions={report.name: sha256_file(report)}).write(export / "new2.export.json")
    inputs = gathered(checkpoint, export, calibration, tmp_path)
    assert inputs.int8_report is None and inputs.calibration is None and not inputs.int8_layers
    assert inputs.missing["int8"].startswith(f"no int8 export of new2 in {export}")
    assert inputs.notes["quantization"][0].startswith(f"{report} left out: the current export has no int8 file;")


EDITED = [  # files people edited by hand, which once crashed `edgecls report` with a traceback
    ("int8", "layers.0.sqnr_db", "31.5"), ("int8", "layers.0.parameters", "1792"), ("int8", "budget", None),
    ("int8", "result", []), ("int8", "validation", "held out"), ("int8", "throughput.images_per_s", ...),
    ("bench", "timings.0.p50_ms", "0.5"),
]


@pytest.mark.parametrize("kind, dotted, value", EDITED, ids=[f"{kind}:{dotted}" for kind, dotted, _ in EDITED])
def test_an_edited_record_is_one_line_naming_the_file_and_the_field(project, tmp_path, edited, kind, dotted, value):
    from edgecls.checkpoint import load_checkpoint

    calibration = shutil.copytree(project["calibration"], tmp_path / "calibration")
    results = shutil.copytree(project["results"], tmp_path / "results")
    if kind == "int8":
        bad = calibration / "new2.int8-report.json"
        good = int8_report(load_checkpoint(project["checkpoint"]).sha256).to_dict()
    else:
        bad = results / "int8.json"
        good = json.loads(bad.read_text())
    bad.write_text(json.dumps(edited(good, dotted, value)))
    out = tmp_path / "r.html"
    code, _, stderr = run_report(project["checkpoint"], "-o", out,
                                 *options(project, calibration=calibration, results=results))
    assert code == 2 and stderr.count("\n") == 1, stderr
    field = dotted.replace(".0.", "[0].").split(".")[0] if dotted.startswith(("layers", "timings")) else dotted
    assert stderr.startswith(f"error: {'int8 report' if kind == 'int8' else 'bench file'} {bad} lacks or garbles ")
    assert field in stderr and not out.exists()


def test_without_data_the_onnx_files_are_not_run_and_the_page_says_how(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("EDGECLS_DATA", raising=False)
    out = tmp_path / "r.html"
    code, _, stderr = run_report(project["checkpoint"], "-o", out, *options(project))
    assert code == 0, stderr
    text = out.read_text()
    assert "the ONNX files were not run here: no test images (pass --data" in text
    assert "pass --data" in stderr
    assert not Page(text).cards


# ----------------------------------------------------------------------------------------------- missing, corrupt

@pytest.fixture
def lone_checkpoint(project, tmp_path) -> Path:
    """The checkpoint alone in a folder: no log, and empty artifact folders beside it."""
    path = tmp_path / "checkpoints" / "new2.pt"
    path.parent.mkdir()
    shutil.copy(project["checkpoint"], path)
    return path


def test_missing_inputs_are_left_out_with_the_command_that_makes_them(lone_checkpoint, tmp_path):
    out = tmp_path / "r.html"
    empty = {f"--{name}-dir={tmp_path / name}" for name in ("export", "engines", "calibration", "results")}
    code, stdout, stderr = run_report(lone_checkpoint, "-o", out, *sorted(empty))
    assert code == 0, stderr
    text = out.read_text()
    assert Page(text).sections == list(SECTIONS)
    for command in ("edgecls train", f"edgecls export --checkpoint {lone_checkpoint} --fp16 --int8",
                    f"edgecls bench --all {lone_checkpoint} --json"):
        assert f"<code>{command}" in text and command in stderr
    assert text.count('class="missing"') >= 4
    assert "training-facts" in text  # what the checkpoint itself knows is still shown


def test_val_accuracy_is_shown_when_the_log_has_it(lone_checkpoint, tmp_path):
    entries = [{"epoch": i, "loss": 2.0 - i / 10, "lr": 0.1, "seconds": 1.0, "images_per_second": 100.0,
                "test_accuracy": None, "val_accuracy": 40.0 + i} for i in (1, 2, 3)]
    (lone_checkpoint.parent / "new2.log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    out = tmp_path / "r.html"
    code, _, stderr = run_report(lone_checkpoint, "-o", out, f"--results-dir={tmp_path / 'none'}")
    assert code == 0, stderr
    rows = Page(out.read_text()).rows("training-epochs")
    assert [number(r["val accuracy %"]) for r in rows] == [41.0, 42.0, 43.0]
    assert "test accuracy %" not in rows[0]


def test_files_of_another_checkpoint_are_left_out_with_a_note(project, tmp_path):
    export = shutil.copytree(project["export"], tmp_path / "export")
    with np.load(export / "new2.reference.npz") as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "checkpoint_sha256": "f" * 64}))
    np.savez(export / "new2.reference.npz", **arrays)
    out = tmp_path / "r.html"
    code, _, stderr = run_report(project["checkpoint"], "-o", out, *options(project, export=export))
    assert code == 0, stderr
    text = out.read_text()
    note = f"{export / 'new2.reference.npz'} left out: it comes from another checkpoint (ffffffffffff"
    assert note in text and note in stderr
    assert "per-class" not in Page(text).tables and "parity" not in Page(text).tables
    assert "Left out: no reference logits of this checkpoint" in text


@pytest.mark.parametrize("where, content", [
    ("log", '{"epoch": 1, "loss": 2.0, "lr": 0.1, "seconds": 1.0, "images_per_second": 10.0}\n{"epoch": 2, "lo'),
    ("log", '{"epoch": 1, "loss": "two", "lr": 0.1, "seconds": 1.0, "images_per_second": 10.0}\n'),
    ("bench", '{"timings": [{"variant": "x"'),
    ("bench", '{"model": {"path": "x.onnx", "name": "new2"}, "accuracy": 50, "timings": [{"variant": "x"}]}'),
])
def test_a_corrupt_log_or_json_is_one_line_naming_the_file(lone_checkpoint, tmp_path, where, content):
    bad = lone_checkpoint.parent / "new2.log.jsonl" if where == "log" else tmp_path / "results" / "broken.json"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(content)
    out = tmp_path / "r.html"
    code, stdout, stderr = run_report(lone_checkpoint, "-o", out, f"--results-dir={tmp_path / 'results'}")
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and str(bad) in stderr
    assert not out.exists()


def test_an_explicit_bench_file_of_another_checkpoint_is_an_error(lone_checkpoint, project, tmp_path):
    other = json.loads((project["results"] / "int8.json").read_text())
    other["model"]["checkpoint_sha256"] = "0" * 64
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    code, _, stderr = run_report(lone_checkpoint, "-o", tmp_path / "r.html", "--bench", path)
    assert code == 2 and str(path) in stderr and stderr.count("\n") == 1


def test_bad_output_path_fails_before_any_work(tmp_path):
    code, _, stderr = run_report(tmp_path / "absent.pt", "-o", tmp_path / "report.txt")
    assert code == 2 and "report.txt is not an .html file" in stderr


def test_without_matplotlib_one_line_says_what_to_install(project, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code, stdout, stderr = run_report(project["checkpoint"], "-o", tmp_path / "r.html")
    assert code == 2
    assert stderr == "error: edgecls report needs matplotlib: pip install 'edgecls[report]'\n"
    assert not (tmp_path / "r.html").exists()


def test_runtime_and_report_import_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None; import edgecls.runtime, edgecls.report, "
            "edgecls.report.render, edgecls.cli")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------- pieces

def test_flips_put_right_to_wrong_first_and_name_each_kind():
    labels = np.array([0, 1, 2, 3, 4])
    original = Answers("o", "fp32", "", 0, {}, None, None, np.array([0, 1, 9, 9, 4]))
    artifact = Answers("a", "int8", "", 0, {}, None, None, np.array([0, 5, 2, 8, 7]))
    images = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    found = flips(original, artifact, images, labels)
    assert [(f.row, f.kind) for f in found] == [(1, RIGHT_TO_WRONG), (4, RIGHT_TO_WRONG), (2, WRONG_TO_RIGHT),
                                                (3, WRONG_TO_WRONG)]


def test_confusion_matrix_counts_true_class_by_answer():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


# ----------------------------------------------------------------------------------------------- a real browser

@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(page, tmp_path):
    from PIL import Image, ImageStat

    shot = tmp_path / "page.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,3000",
                    page[0].resolve().as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        pixels = image.convert("RGB")
        assert len(pixels.getcolors(1 << 24)) > 100  # figures, text and photos, not a blank page
        assert max(ImageStat.Stat(pixels).stddev) > 20
