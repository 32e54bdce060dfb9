"""The hand-offs between stages, checked without training or exporting (fast: `make mutation` runs this file): the
export set record a re-export leaves, which images judge int8 candidates, and which bench result a report shows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgecls.data import Cifar10
from edgecls.export import install_set
from edgecls.formats import BenchResult, ExportSet, Folders, ModelFiles
from edgecls.int8_budget import ValidationImages
from edgecls.report.gather import BenchRun, ReportInputs


def staged(folder: Path, **files: bytes) -> dict[str, str]:
    """Files written into a staging folder, as export writes them: name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


def test_a_re_export_leaves_one_complete_record_of_its_own_files(tmp_path):
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    out.mkdir()
    calibration.mkdir()
    first = staged(tmp_path / "first", **{"new2.onnx": b"fp32 one", "new2.int8.onnx": b"int8 one",
                                          "new2.reference.npz": b"reference one"})
    report = tmp_path / "first" / "report.tmp"
    report.write_bytes(b"report one")
    install_set(ExportSet("new2", "c1", first, complete=True, companions={"new2.int8-report.json": "r1"}),
                tmp_path / "first", out, [(report, calibration / "new2.int8-report.json")])
    assert (calibration / "new2.int8-report.json").read_bytes() == b"report one"
    (out / "new2.notes.txt").write_text("not the export's")

    second = staged(tmp_path / "second", **{"new2.onnx": b"fp32 two", "new2.reference.npz": b"reference two"})
    install_set(ExportSet("new2", "c2", second, complete=True), tmp_path / "second", out)
    record = ExportSet.read(out / "new2.export.json")
    assert record == ExportSet("new2", "c2", second, complete=True)  # the second export's files, complete
    assert record.companions == {} and not record.companion_matches(calibration / "new2.int8-report.json")
    assert sorted(p.name for p in out.iterdir()) == ["new2.export.json", "new2.notes.txt", "new2.onnx",
                                                     "new2.reference.npz"]  # the first export's int8 file is gone
    assert (out / "new2.onnx").read_bytes() == b"fp32 two"
    for name in second:
        ExportSet.check_member(out / name, "new2")


def dataset(train: int = 30, test: int = 10) -> Cifar10:
    """Training and test images told apart by their first pixel: 0..train-1 for training, 200 + i for the test."""
    train_images = np.zeros((train, 32, 32, 3), np.uint8)
    train_images[:, 0, 0, 0] = np.arange(train)
    test_images = np.zeros((test, 32, 32, 3), np.uint8)
    test_images[:, 0, 0, 0] = 200 + np.arange(test)
    return Cifar10(train_images, np.arange(train) % 10, test_images, np.arange(test) % 10,
                   [str(i) for i in range(10)], "constructed")


def test_int8_candidates_are_judged_on_the_held_out_training_images():
    data = dataset()
    held_out = np.array([3, 7, 11, 19])
    chosen = ValidationImages.choose(data, held_out, recorded_seed=5, calibration_size=10)
    assert chosen.images[:, 0, 0, 0].tolist() == [3, 7, 11, 19]  # those training images: never the test split
    assert chosen.labels.tolist() == (held_out % 10).tolist() and chosen.held_out and chosen.seed == 5
    assert chosen.describe()["seen_in_training"] is False


def test_without_a_held_out_split_int8_is_judged_on_a_seeded_training_subset_that_leaves_calibration_room():
    data = dataset(train=30)
    chosen = ValidationImages.choose(data, None, recorded_seed=None, calibration_size=20)
    assert len(chosen.indices) == 10 and not chosen.held_out  # 30 training images, 20 kept for calibration
    assert chosen.images[:, 0, 0, 0].tolist() == chosen.indices.tolist()  # training images, by position
    assert chosen.describe()["seen_in_training"] is True
    again = ValidationImages.choose(data, None, recorded_seed=None, calibration_size=20)
    assert again.indices.tolist() == chosen.indices.tolist()


def bench_run(path: str, measured_at: str) -> BenchRun:
    result = BenchResult({"path": path, "name": "new2", "precision": "int8"}, 50.0, [],
                         environment={"measured_at": measured_at})
    return BenchRun(Path(f"results/{measured_at}.json"), result)


def test_the_report_shows_the_latest_bench_result_of_each_file():
    runs = [bench_run("export/new2.int8.onnx", "2026-11-28T10:00:00Z"),
            bench_run("/dev/new2.int8.onnx", "2026-11-29T10:00:00Z"),
            bench_run("export/new2.onnx", "2026-11-30T10:00:00Z"), bench_run("new2.int8.onnx", "2026-11-27T10:00:00Z")]
    inputs = ReportInputs(Path("new2.pt"), "new2", [], None, [], bench=runs)  # type: ignore[arg-type]
    assert inputs.latest_bench(Path("elsewhere/new2.int8.onnx")) is runs[1]  # matched by name, the latest
    assert inputs.latest_bench(Path("export/new2.onnx")) is runs[2]
    assert inputs.latest_bench(Path("new2.fp16.onnx")) is None


def test_every_file_of_a_model_is_named_in_one_place(tmp_path):
    files = Folders(tmp_path / "export", tmp_path / "engines", tmp_path / "calibration").of("new2")
    assert files == ModelFiles("new2", Folders(tmp_path / "export", tmp_path / "engines", tmp_path / "calibration"))
    assert [p.name for p in files.artifacts()] == ["new2.onnx", "new2.fp16.onnx", "new2.int8.onnx", "new2.plan"]
    (tmp_path / "engines").mkdir()
    for name in ("new2.int8.plan", "new2.fp16.plan", "new1.plan"):
        (tmp_path / "engines" / name).write_bytes(b"")
    assert [p.name for p in files.plans()] == ["new2.fp16.plan", "new2.int8.plan"]
    assert (files.reference.name, files.export_record.name) == ("new2.reference.npz", "new2.export.json")
    assert files.int8_report == tmp_path / "calibration" / "new2.int8-report.json"
    assert files.calibration_record("minmax") == tmp_path / "calibration" / "new2.minmax.json"
    assert ModelFiles.training_log(tmp_path / "ckpt" / "new2.best.pt", "new2") == tmp_path / "ckpt" / "new2.log.jsonl"
