"""edgecls bench: parity figures on constructed flips, gates, --json, references that do not belong, --all."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli, use_private_cache
from edgecls.metrics import parity
from edgecls.cli import main

FAST = ["--batch-sizes", "1,4", "--duration", "0.05", "--warmup", "0.01"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """One cache for the file's tests (the bench reads tiny_data_dir, in another order than the export's images, and
    matches them by digest)."""
    use_private_cache(monkeypatch, tmp_path_factory.getbasetemp() / "bench_cache")


def bench(*args: str) -> tuple[int, str]:
    return run_cli("bench", *args)


def write_reference(source: Path, target: Path, logits: np.ndarray | None = None, **meta_changes: str) -> Path:
    with np.load(source) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = {**json.loads(str(arrays["meta"])), **meta_changes}
    arrays["meta"] = np.array(json.dumps(meta))
    if logits is not None:
        arrays["logits"] = logits.astype(np.float32)
    np.savez(target, **arrays)
    return target


def test_parity_counts_each_kind_of_flip():
    labels = np.array([0, 1, 2, 3, 4, 5])
    eye = np.eye(10, dtype=np.float32)
    reference = eye[[0, 1, 2, 3, 9, 9]]  # right on the first four
    model = eye[[0, 1, 5, 3, 4, 8]] * 2  # right on 0, 1, 3, 4
    found = parity(model, reference, labels, "constructed")
    assert found.flips == 3  # images 2, 4, 5
    assert found.right_to_wrong == 1  # image 2
    assert found.wrong_to_right == 1  # image 4; image 5 went from one wrong class to another
    assert found.agreement == pytest.approx(50.0)
    assert found.accuracy == pytest.approx(400 / 6) and found.reference_accuracy == pytest.approx(400 / 6)
    assert found.accuracy_delta == pytest.approx(0.0)
    assert found.max_abs_logit_diff == pytest.approx(2.0)
    assert found.mean_abs_logit_diff == pytest.approx(np.abs(model - reference).mean())


def test_bench_onnx_reports_known_flips_and_gates(export_dir, tiny_data_dir, tmp_path):
    with np.load(export_dir / "new2.reference.npz") as archive:
        logits, labels = archive["logits"].copy(), archive["labels"]
    right = np.flatnonzero(logits.argmax(axis=1) == labels)
    wrong = np.flatnonzero(logits.argmax(axis=1) != labels)
    assert len(wrong) >= 3, "the tiny model should get a few test images wrong"
    doctored = logits.copy()
    for i in right[:3]:  # the reference now gets these wrong: the model goes wrong -> right on them
        doctored[i, (labels[i] + 1) % 10] = logits[i].max() + 5
    for i in wrong[:2]:  # the reference now gets these right: right -> wrong for the model
        doctored[i, labels[i]] = logits[i].max() + 5
    i = wrong[2]  # and one flip between two wrong classes
    other = next(c for c in range(10) if c not in (labels[i], logits[i].argmax()))
    doctored[i, other] = logits[i].max() + 5
    reference = write_reference(export_dir / "new2.reference.npz", tmp_path / "doctored.npz", doctored)

    out_json = tmp_path / "bench.json"
    code, output = bench("--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir), "--reference",
                         str(reference), "--json", str(out_json), "--min-agreement", "90", *FAST)
    assert code == 0, output
    figures = json.loads(out_json.read_text())
    found = figures["parity"]
    assert (found["flips"], found["wrong_to_right"], found["right_to_wrong"]) == (6, 3, 2)
    assert found["agreement"] == pytest.approx(94.0)
    assert found["accuracy_delta"] == pytest.approx(1.0)
    assert found["max_abs_logit_diff"] == pytest.approx(np.abs(doctored - logits).max(), abs=1e-3)
    assert figures["accuracy"] == pytest.approx(100.0 * len(right) / len(labels))
    assert figures["gates"]["passed"] is True

    code, output = bench("--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir), "--reference",
                         str(reference), "--min-agreement", "95", *FAST)
    assert code == 1 and "below --min-agreement 95" in output

    better = logits.copy()  # a reference right on four more images: the model is 4 points worse
    for i in wrong[:4]:
        better[i, labels[i]] = logits[i].max() + 5
    better_reference = write_reference(export_dir / "new2.reference.npz", tmp_path / "better.npz", better)
    common = ["--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir),
              "--reference", str(better_reference)]
    code, output = bench(*common, "--max-drop", "3", *FAST)
    assert code == 1 and "accuracy dropped 4.00 points" in output
    code, output = bench(*common, "--max-drop", "5", *FAST)
    assert code == 0, output


def test_json_holds_every_figure_of_the_table(export_dir, tiny_data_dir, tmp_path):
    out_json = tmp_path / "bench.json"
    code, output = bench("--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir),
                         "--json", str(out_json), *FAST)
    assert code == 0, output
    figures = json.loads(out_json.read_text())
    found = figures["parity"]  # the reference beside the model was found automatically
    assert found["reference"].endswith("new2.reference.npz") and found["agreement"] == 100.0
    assert f"accuracy: {figures['accuracy']:.2f}%" in output
    for name, value in figures["per_class"].items():
        assert f"{name} {value:.2f}" in output
    assert f"top-1 agreement {found['agreement']:.2f}%, flips {found['flips']} " in output
    assert f"max {found['max_abs_logit_diff']:.3g}, mean {found['mean_abs_logit_diff']:.3g}" in output
    assert re.search(r"\n  onnxruntime fp32 +accuracy +[\d.]+%, vs .*new2.reference.npz: agreement 100.00%", output)
    rows = [line.split() for line in output.splitlines() if re.match(r"\s+onnxruntime fp32 +(end-to-end|model-only)", line)]
    assert len(rows) == len(figures["timings"]) == 4  # end-to-end and model-only, batch 1 and 4
    for row, timing in zip(rows, figures["timings"]):
        assert row[2:] == [timing["scope"], str(timing["batch_size"]), f"{timing['p50_ms']:.3f}",
                           f"{timing['p90_ms']:.3f}", f"{timing['p99_ms']:.3f}", f"{timing['images_per_s']:.1f}", "-"]
        assert timing["pipelined_images_per_s"] is None  # ONNX Runtime's CPU runs cannot be queued
        assert timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
        assert timing["images_per_s"] == pytest.approx(timing["batch_size"] * 1e3 / timing["mean_ms"], rel=1e-6)
    environment = figures["environment"]
    assert environment["cpu"] and environment["versions"]["onnxruntime"] and environment["threads"]["cpu_count"]


def test_references_that_do_not_belong_are_refused(export_dir, tiny_data_dir, tmp_path):
    source = export_dir / "new2.reference.npz"
    engine = ["--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir), *FAST]
    cases = {
        "is for model alex1": write_reference(source, tmp_path / "other_model.npz", model="alex1"),
        "another data set": write_reference(source, tmp_path / "other_data.npz", data_fingerprint="0123456789abcdef"),
        "from checkpoint 000000000000": write_reference(source, tmp_path / "other_ckpt.npz",
                                                        checkpoint_sha256="0" * 64),
        "has 9 classes": write_reference(source, tmp_path / "nine.npz", np.load(source)["logits"][:, :9]),
    }
    for message, reference in cases.items():
        code, output = bench(*engine, "--reference", str(reference))
        assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output

    # A stale reference found beside the model is reported, not used; parity gates then cannot run.
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(export_dir / "new2.onnx", stale / "new2.onnx")
    shutil.copy(cases["another data set"], stale / "new2.reference.npz")
    plain = ["--engine", str(stale / "new2.onnx"), "--data", str(tiny_data_dir), *FAST]
    code, output = bench(*plain)
    assert code == 0 and "reference not used" in output and "parity: no reference" in output
    code, output = bench(*plain, "--min-agreement", "99")
    assert code == 2 and "need a reference" in output


def test_bench_checkpoint_against_its_export(export_dir, tiny_data_dir, trained_checkpoint, tmp_path):
    out_json = tmp_path / "pt.json"
    code, output = bench("--engine", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir), "--reference",
                         str(export_dir / "new2.reference.npz"), "--json", str(out_json), "--min-agreement", "100", *FAST)
    assert code == 0, output
    figures = json.loads(out_json.read_text())
    assert figures["model"]["format"] == "pytorch" and figures["parity"]["flips"] == 0
    assert figures["parity"]["max_abs_logit_diff"] < 1e-3
    assert {t["variant"] for t in figures["timings"]} == {"pytorch eager fp32"}  # CPU: no fp16 / CUDA graph
    # The timed variant has its own parity line, the same figures as the model's parity.
    [variant] = figures["variants"]
    assert variant["variant"] == "pytorch eager fp32" and variant["parity"] == figures["parity"]
    assert variant["accuracy"] == figures["accuracy"]
    assert re.search(r"pytorch eager fp32 +accuracy +[\d.]+%, vs .*new2.reference.npz: agreement 100.00%, flips 0", output)
    # Pipelined throughput beside the one-at-a-time figure, for the model-only rows.
    model_only = [t for t in figures["timings"] if t["scope"] == "model-only"]
    assert len(model_only) == 2 and all(t["pipelined_images_per_s"] > 0 and t["pipelined_calls"] >= 5 for t in model_only)
    assert all(t["pipelined_images_per_s"] is None for t in figures["timings"] if t["scope"] == "end-to-end")


def test_fp32_runs_of_a_checkpoint_are_full_float32(trained_checkpoint, tiny_cifar):
    """TF32 is off while the fp32 model runs (PyTorch allows it for cuDNN convolutions by default), and only then."""
    import torch

    from edgecls.evaluate import torch_logits
    from edgecls.runtime import Classifier
    from edgecls.runtime.torch_backend import TorchRunner

    seen = []

    def record_flags(module, inputs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    # PyTorch >= 2.9 keeps these as strings too: left exactly as they were, not rewritten by the flags' restore
    def precisions():
        matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
        return (torch.backends.cudnn.allow_tf32, matmul.allow_tf32, getattr(matmul, "fp32_precision", None),
                getattr(conv, "fp32_precision", None))

    untouched = precisions()
    try:
        with Classifier(TorchRunner(trained_checkpoint("new2"), device="cpu")) as classifier:
            classifier.runner.model.register_forward_pre_hook(record_flags)
            classifier.logits(tiny_cifar.test_images[:4])
            assert classifier.describe()["precision"] == "fp32"
            feed = {classifier.runner.input_name: classifier.preprocess(tiny_cifar.test_images[:4])}
            run, wait = classifier.runner.pipelined(feed)
            run()
            wait()
            model = classifier.runner.model
        torch_logits(model, tiny_cifar.test_images[:4], classifier.preprocess)  # the reference path too
        assert seen == [(False, False)] * 4 and torch.backends.cudnn.allow_tf32 is True and precisions() == untouched
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(trained_checkpoint, tiny_data_dir, tmp_path):
    import torch

    from edgecls.checkpoint import save_checkpoint

    record = torch.load(trained_checkpoint("new2"), weights_only=True)
    record = {key: value for key, value in record.items() if key not in ("format", "format_version", "resume")}
    first = next(iter(record["state_dict"]))
    cases = {
        "other_model.pt": {**record, "model": "new1"},  # new2's shapes under new1's name
        "missing_keys.pt": {**record, "state_dict": {k: v for k, v in record["state_dict"].items() if k != first}},
        "extra_keys.pt": {**record, "state_dict": {**record["state_dict"], "head.weight": torch.zeros(3)}},
    }
    for name, doctored in cases.items():
        path = tmp_path / name
        save_checkpoint(path, doctored)
        for args in (["eval", "--checkpoint", str(path)], ["bench", "--engine", str(path), *FAST]):
            result = CliRunner().invoke(main, [*args, "--data", str(tiny_data_dir), "--device", "cpu"])
            lines = [line for line in result.output.splitlines() if "decoding images" not in line]
            assert result.exit_code == 2 and len(lines) == 1, (name, args, result.output)
            assert lines[0].startswith(f"error: checkpoint {path}: its weights do not fit model")


def test_bench_all_rows(export_dir, tiny_data_dir, trained_checkpoint, tmp_path):
    out_json = tmp_path / "all.json"
    code, output = bench("--all", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir), "--export-dir",
                         str(export_dir), "--engines-dir", str(tmp_path / "engines"), "--json", str(out_json),
                         "--batch-sizes", "1,16", "--duration", "0.05", "--warmup", "0.01")
    assert code == 0, output
    rows = {Path(row["path"]).name: row for row in json.loads(out_json.read_text())["rows"]}
    assert list(rows) == ["new2.pt", "new2.onnx", "new2.fp16.onnx", "new2.int8.onnx", "new2.plan"]
    for name in ("new2.pt", "new2.onnx", "new2.fp16.onnx", "new2.int8.onnx"):
        row = rows[name]
        assert row["status"] == "ok" and row["agreement"] >= 90.0 and abs(row["accuracy_delta"]) <= 5.0
        assert row["p50_ms_batch1"] > 0 and row["images_per_s"] > 0 and row["size_mb"] > 0
        assert f"{row['accuracy']:6.2f}" in output
    assert rows["new2.onnx"]["agreement"] == 100.0 and rows["new2.pt"]["agreement"] == 100.0
    assert rows["new2.fp16.onnx"]["agreement"] >= 98.0 and abs(rows["new2.fp16.onnx"]["accuracy_delta"]) <= 2.0
    assert rows["new2.plan"]["status"].startswith("not found") and rows["new2.plan"]["accuracy"] is None
    assert "not found (make it with `edgecls build`)" in output


def test_usage_errors(export_dir, tiny_data_dir, tmp_path):
    code, output = bench("--data", str(tiny_data_dir))
    assert code == 2 and "exactly one of --engine" in output
    code, output = bench("--engine", str(export_dir / "new2.onnx"), "--data", str(tiny_data_dir), "--batch-sizes", "1,x")
    assert code == 2 and "--batch-sizes" in output
    truncated = tmp_path / "new2.onnx"
    truncated.write_bytes((export_dir / "new2.onnx").read_bytes()[:3000])
    code, output = bench("--engine", str(truncated), "--data", str(tiny_data_dir), *FAST)
    assert code == 2 and "not a readable ONNX model" in output


def write_reordered_tree(data, root: Path) -> Path:
    """The same images as an image-folder tree whose file names reverse their order within each class."""
    from PIL import Image

    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{len(images) - index:05d}.png")
    return root


def test_reference_rows_follow_the_images_not_the_order(export_dir, tiny_cifar, trained_checkpoint, tmp_path):
    """The same test images read in another order (another form of the data set) still give exact parity."""
    reordered = write_reordered_tree(tiny_cifar, tmp_path / "reordered")
    code, output = bench("--engine", str(export_dir / "new2.onnx"), "--data", str(reordered),
                         "--min-agreement", "100", *FAST)
    assert code == 0, output
    out_json = tmp_path / "all.json"
    code, output = bench("--all", str(trained_checkpoint("new2")), "--data", str(reordered), "--reference",
                         str(export_dir / "new2.reference.npz"), "--export-dir", str(export_dir), "--engines-dir",
                         str(tmp_path / "engines"), "--json", str(out_json), "--min-agreement", "95",
                         "--batch-sizes", "1", "--duration", "0.05", "--warmup", "0.01")
    assert code == 0, output
    rows = json.loads(out_json.read_text())["rows"]
    assert [row["agreement"] for row in rows[:3]] == [100.0, 100.0, 100.0]  # .pt, fp32, fp16: exact
    assert rows[3]["agreement"] >= 95.0  # int8


def test_bench_all_gates_fail_on_a_file_that_cannot_run(export_dir, tiny_data_dir, trained_checkpoint, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken)
    (broken / "new2.fp16.onnx").write_bytes(b"not onnx")
    common = ["--all", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir), "--export-dir", str(broken),
              "--engines-dir", str(tmp_path / "engines"), "--batch-sizes", "1", "--duration", "0.05", "--warmup", "0.01"]
    code, output = bench(*common)
    assert code == 0 and "not a readable ONNX model" in output  # without gates: reported, not fatal
    code, output = bench(*common, "--min-agreement", "90")
    assert code == 1, output


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_every_cuda_variant_answers_like_the_reference(export_dir, tiny_data_dir, trained_checkpoint, tmp_path):
    out_json = tmp_path / "cuda.json"
    code, output = bench("--engine", str(trained_checkpoint("new2")), "--data", str(tiny_data_dir), "--device", "cuda",
                         "--reference", str(export_dir / "new2.reference.npz"), "--json", str(out_json),
                         "--min-agreement", "95", *FAST)
    assert code == 0, output
    figures = json.loads(out_json.read_text())
    variants = {record["variant"]: record for record in figures["variants"]}
    assert list(variants) == ["pytorch eager fp32", "pytorch eager fp16", "pytorch cuda-graph fp32",
                              "pytorch cuda-graph fp16"]
    for name, record in variants.items():
        assert record["parity"]["reference"].endswith("new2.reference.npz") and name in output
        limit = 1e-3 if name.endswith("fp32") else 5e-2  # fp32 without TF32 follows the CPU's float32 closely
        assert record["parity"]["max_abs_logit_diff"] < limit, (name, record["parity"])
    timed = {t["variant"] for t in figures["timings"]}
    assert timed == set(variants) and figures["model"]["tf32"] is False
    assert all(t["pipelined_images_per_s"] > 0 for t in figures["timings"] if t["scope"] == "model-only")
