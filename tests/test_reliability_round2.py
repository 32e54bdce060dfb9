"""Reliability, second round: outputs that never destroy inputs, metadata checked against the graph, every option
finite and bounded, no hang or unbounded read on any input, API misuse as one line. One test per class of failure,
each holding every example the adversarial round found."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import refusal, run_cli

from edgecls.artifacts import atomic_write, copy_beside, sha256_file, write_json
from edgecls.cli import main
from edgecls.errors import EdgeclsError

REPO = Path(__file__).resolve().parents[1]


def error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "EDGECLS_DATA"}
    env["PYTHONPATH"] = str(REPO)
    env["EDGECLS_CACHE"] = str(tmp_path / "cache")
    return env


# ================================================================================ 1. an output never destroys an input

def test_no_output_replaces_an_input_an_artifact_or_a_device(tmp_path, new2_export):
    export = tmp_path / "export"
    export.mkdir()
    for path in (*new2_export.files.values(), new2_export.reference):
        (export / path.name).write_bytes(path.read_bytes())
    record = next(new2_export.reference.parent.glob("*.export.json"))
    (export / record.name).write_bytes(record.read_bytes())
    model = export / "new2.onnx"
    before = {path.name: sha256_file(path) for path in export.iterdir()}
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    calibration = tmp_path / "new2.percentile.json"
    calibration.write_text('{"format": "edgecls-calibration", "format_version": 1}')
    refusals = {
        str(model): "an input of this command",  # bench --engine M --json M
        str(export / "new2.reference.npz"): "an input of this command",
        str(export / record.name): "an edgecls export record, which this command does not write",
        str(export / "new2.fp16.onnx"): "an edgecls ONNX model, which this command does not write",
        str(calibration): "an edgecls calibration record",
        str(fifo): "a named pipe (FIFO), not a regular file",
        "/dev/null": "a character device, not a regular file",
        str(tmp_path): "is a folder",
    }
    for target, why in refusals.items():
        code, output = run_cli("bench", "--engine", str(model), "--reference", str(export / "new2.reference.npz"),
                               "--json", target, "--data", str(tmp_path / "no-data"))
        assert code == 2 and why in error_line(output), (target, output)
    assert {path.name: sha256_file(path) for path in export.iterdir() if path.is_file()} == before
    # a link to the model is the model: refused too; a link to a new name is written through
    link = tmp_path / "figures.json"
    link.symlink_to(model)
    code, output = run_cli("bench", "--engine", str(model), "--json", str(link), "--data", str(tmp_path / "no"))
    assert code == 2 and "(a link to" in output and "an input of this command" in output
    # /dev/stdout is a link to a pipe here: refused, with `-` suggested, and the link left alone
    done = subprocess.run([sys.executable, "-m", "edgecls", "bench", "--engine", str(model), "--json", "/dev/stdout"],
                          capture_output=True, text=True, env=cli_env(tmp_path), timeout=120)
    assert done.returncode == 2 and "not a regular file" in done.stderr and "- for standard output" in done.stderr
    assert Path("/dev/stdout").is_symlink()


def test_every_write_replaces_only_a_regular_file_and_writes_through_links(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(EdgeclsError, match="is a named pipe .FIFO., not a regular file"):
        write_json(fifo, {"a": 1})
    with pytest.raises(EdgeclsError, match="is a named pipe .FIFO., not a regular file"):
        copy_beside(REPO / "README.md", fifo)  # what export installs beside its set (the calibration record)
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["fifo"]
    with pytest.raises(EdgeclsError, match="/dev/null is a character device"):
        with atomic_write("/dev/null") as handle:
            handle.write(b"x")
    target = tmp_path / "real" / "figures.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_json(link, {"new": True})
    assert link.is_symlink() and json.loads(target.read_text()) == {"new": True}
    dangling = tmp_path / "next.json"
    dangling.symlink_to(tmp_path / "real" / "made.json")
    write_json(dangling, [1])
    assert dangling.is_symlink() and json.loads((tmp_path / "real" / "made.json").read_text()) == [1]


def test_json_dash_means_stdout_for_bench_and_doctor(tmp_path, new2_export, tiny_data_dir):
    result = CliRunner().invoke(main, [
        "bench", "--engine", str(new2_export.files["fp32"]), "--data", str(tiny_data_dir), "--batch-sizes", "1",
        "--duration", "0.02", "--warmup", "0", "--json", "-"])
    assert result.exit_code == 0, result.output + result.stderr
    figures = json.loads(result.stdout)
    assert figures["model"]["path"] == str(new2_export.files["fp32"]) and "accuracy" in result.stderr
    assert not Path("-").exists()
    for args in (["--json"], ["--json", "-"]):
        result = CliRunner().invoke(main, ["doctor", "--no-build", *args])
        assert "verdict" in json.loads(result.stdout)
    written = tmp_path / "doctor.json"
    result = CliRunner().invoke(main, ["doctor", "--no-build", "--json", str(written)])
    assert "verdict" in json.loads(written.read_text()) and f"report written to {written}" in result.stdout
    code, output = run_cli("doctor", "--no-build", "--json", "/dev/null")
    assert code == 2 and "character device" in error_line(output)


def test_a_failed_command_creates_no_folder(tmp_path, new2_export, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run_cli("build", str(new2_export.files["fp16"]), "-o", str(tmp_path / "new" / "deep" / "x.plan"))
    assert code == 2 and output.startswith("error: ")
    code, output = run_cli("build", str(new2_export.files["fp16"]))
    assert code == 2 and output.startswith("error: ")
    code, output = run_cli("report", str(tmp_path / "missing.pt"))
    assert code == 2 and output.startswith("error: ")
    code, output = run_cli("report", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "named" / "r.html"))
    assert code == 2 and output.startswith("error: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_every_output_folder_is_checked_before_work_and_left_out_when_nothing_is_installed(
        tmp_path, trained_checkpoint, new2_export, tiny_cifar):
    from edgecls.export import ExportRequest, export_model
    from edgecls.quantize import CalibrationSettings

    checkpoint = str(trained_checkpoint("new2"))
    kept = tmp_path / "notes.txt"
    kept.write_text("keep")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    no_data = str(tmp_path / "no-data")  # the output's refusal comes first: the data is never looked at
    refused = {
        str(kept): f"output folder {kept} is a file, not a folder",
        str(fifo): f"output folder {fifo} is a named pipe (FIFO), not a folder",
        "/dev/null": "output folder /dev/null is a character device, not a folder",
        str(kept / "sub"): f"cannot write {kept / 'sub'}: {kept} is a file, not a folder",
    }
    for folder, why in refused.items():
        for args in (["export", "--checkpoint", checkpoint, "--out", folder],
                     ["export", "--checkpoint", checkpoint, "--int8", "--calibration-dir", folder],
                     ["train", "--model", "new2", "--epochs", "1", "--out", folder],
                     ["deploy", "deepstream", str(new2_export.files["fp32"]), "--out", folder]):
            code, output = run_cli(*args, "--data", no_data)
            assert code == 2 and why in error_line(output), (args, output)
    assert kept.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "pipe"]
    # a failed export creates no folder: neither when its checkpoint is refused, nor when the work inside the
    # staging folder fails (a calibration cache of another graph), which made the export folder
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code, output = run_cli("export", "--checkpoint", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "a" / "b"))
    assert code == 2 and not (tmp_path / "a").exists()
    cache = tmp_path / "other.json"
    record = json.loads(new2_export.calibration.read_text())
    record["ranges"]["data"] = {"no_such_tensor": {"lowest": 0.0, "highest": 1.0}}
    cache.write_text(json.dumps(record))
    request = ExportRequest(Path(checkpoint), tmp_path / "new" / "export", int8=True,
                            calibration=CalibrationSettings(cache=cache), calibration_dir=tmp_path / "new" / "cal")
    with pytest.raises(EdgeclsError):
        export_model(request, data=tiny_cifar, progress=False)
    assert not (tmp_path / "new").exists()


# ================================================================================ 3. metadata checked against the graph

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GOOD_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": CLASSES, "input_size": 32,
                   "crop_size": 28, "channel_order": "RGB", "layout": "NCHW"}


def small_onnx(path: Path, width: int = 10, extra_input: bool = False, input_type: str = "float",
               **preprocess: object) -> Path:
    """A real, runnable ONNX classifier (channel means times a 3 x width matrix) whose edgecls metadata carries
    `preprocess` over a valid record: the hostile files of the adversarial round, made in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = {"float": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[input_type]
    inputs = [helper.make_tensor_value_info("images", elem, ["batch", 3, 28, 28])]
    nodes = [helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["as_float"], ["means"], axes=[2, 3], keepdims=0)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Mul", ["means", "scale"], ["scaled"]))
    nodes.append(helper.make_node("MatMul", ["scaled" if extra_input else "means", "weights"], ["logits"]))
    weights = numpy_helper.from_array(np.arange(3 * width, dtype=np.float32).reshape(3, width) / 10, "weights")
    graph = helper.make_graph(nodes, "small", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
                              [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    record = {"format_version": 1, "model": "new2", "precision": "fp32", "input_name": "images",
              "output_name": "logits", "preprocess": {**GOOD_PREPROCESS, **preprocess},
              "checkpoint_sha256": "0" * 64, "data_fingerprint": "0" * 16}
    model.metadata_props.add(key="edgecls", value=json.dumps(record))
    onnx.save(model, path)
    return path


def test_every_model_is_checked_against_its_graph_at_load(tmp_path):
    from edgecls.runtime import load

    with load(small_onnx(tmp_path / "good.onnx")) as classifier:  # the hostile files below differ in one thing each
        assert classifier.classify(np.zeros((2, 32, 32, 3), np.uint8)).logits.shape == (2, 10)
    refusals = {
        "five.onnx": ({"width": 5}, "output 'logits' has shape ['batch', 5], but its metadata names 10 classes"),
        "twenty.onnx": ({"class_names": CLASSES * 2}, "output 'logits' has shape ['batch', 10], but its metadata "
                                                      "names 20 classes"),
        "nonames.onnx": ({"class_names": []}, "class_names must be a non-empty list of names"),
        "bgr.onnx": ({"channel_order": "BGR"}, "channel order 'BGR'"),
        "nhwc.onnx": ({"layout": "NHWC"}, "layout 'NHWC'"),
        "zerostd.onnx": ({"std": [0.25, 0.0, 0.25]}, "std must be above 0 for every channel"),
        "nanstd.onnx": ({"std": [0.25, float("nan"), 0.25]}, "std must be 3 finite numbers"),
        "infmean.onnx": ({"mean": [0.5, float("inf"), 0.5]}, "mean must be 3 finite numbers"),
        "twomeans.onnx": ({"mean": [0.5, 0.5]}, "mean must be 3 finite numbers"),
        "size0.onnx": ({"input_size": 0}, "sizes must satisfy 1 <= crop_size <= input_size <= 4096"),
        "huge.onnx": ({"input_size": 100000}, "sizes must satisfy 1 <= crop_size <= input_size <= 4096"),
        "second.onnx": ({"extra_input": True}, "has 2 inputs (images, scale); an edgecls model takes one"),
        "half.onnx": ({"input_type": "float16"}, "input 'images' is float16; edgecls models take and give float32"),
    }
    for name, (change, message) in refusals.items():
        with pytest.raises(EdgeclsError) as info:
            load(small_onnx(tmp_path / name, **change))
        assert message in str(info.value) and name in str(info.value), (name, str(info.value))
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    code, output = run_cli("predict", str(tmp_path / "cat.png"), "--engine", str(tmp_path / "nanstd.onnx"))
    assert code == 2 and "std must be 3 finite numbers" in error_line(output)


def refusal_of_cache(record: dict, cache: Path, new2_export, tmp_path: Path) -> str:
    """The one-line refusal of an int8 quantization of new2 from the calibration cache `record`, written to `cache`."""
    from edgecls.quantize import CalibrationSettings, quantize_int8

    cache.write_text(json.dumps(record))
    with pytest.raises(EdgeclsError) as info:
        quantize_int8(new2_export.files["fp32"], tmp_path / "int8.onnx", settings=CalibrationSettings(cache=cache),
                      work_dir=tmp_path)
    return str(info.value)


def test_calibration_ranges_must_be_finite(tmp_path, new2_export):
    record = json.loads(new2_export.calibration.read_text())
    tensor = next(iter(record["ranges"]["data"]))
    for bad in (float("inf"), float("-inf"), float("nan"), "high"):
        broken = json.loads(json.dumps(record))
        broken["ranges"]["data"][tensor]["lowest"] = bad
        cache = tmp_path / "cache.json"
        message = refusal_of_cache(broken, cache, new2_export, tmp_path)
        assert message.startswith(f"calibration cache {cache}: tensor {tensor!r} has the range ")
        assert "not two finite numbers" in message and not (tmp_path / "int8.onnx").exists()


# ================================================================================ 4. no hang, bounded memory

@contextlib.contextmanager
def finishes_within(seconds: int):
    """Fail (instead of hanging the suite) when the block blocks: a FIFO read would wait for ever."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_special_files_and_oversized_declarations_are_refused_unread(tmp_path, tiny_cifar, new2_export):
    from edgecls.data import load_cifar10
    from edgecls.formats import ReferenceLogits
    from edgecls.quantize import CalibrationSettings, quantize_int8
    from conftest import write_image_folder

    small = tiny_cifar.subset(10, 10, seed=0)
    for special in ("fifo", "zero"):
        tree = write_image_folder(small, tmp_path / special)
        planted = next((tree / "train").iterdir()) / "x.jpg"
        os.mkfifo(planted) if special == "fifo" else planted.symlink_to("/dev/zero")
        with finishes_within(20), pytest.raises(EdgeclsError) as info:
            load_cifar10(tree, cache=False)
        kind = "a named pipe (FIFO)" if special == "fifo" else "a character device"
        assert str(info.value) == f"data file {planted} is {kind}, not a regular file; give the file itself"
    fifo = tmp_path / "cache.fifo.json"
    os.mkfifo(fifo)
    for cache in ("/dev/zero", fifo):
        with finishes_within(20), pytest.raises(EdgeclsError, match="not a regular file"):
            quantize_int8(new2_export.files["fp32"], tmp_path / "int8.onnx", settings=CalibrationSettings(cache=cache),
                          work_dir=tmp_path)
    # a 2 KB reference archive that declares 10^8 x 10 float32 logits: refused from its headers
    import zipfile

    bomb = tmp_path / "bomb.reference.npz"
    with zipfile.ZipFile(bomb, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (10**8, 10)})
        archive.writestr("logits.npy", header.getvalue() + b"\0" * 1024)
    with finishes_within(20), pytest.raises(EdgeclsError, match="declares 3,815 MB of arrays, more than the 512 MB"):
        ReferenceLogits.read(bomb)
    assert ReferenceLogits.read(new2_export.reference).logits.shape[1] == 10  # a real one still reads
    fifo_model = tmp_path / "model.onnx"
    os.mkfifo(fifo_model)
    for model, kind in ((fifo_model, "a named pipe (FIFO)"), (Path("/dev/zero"), "a character device")):
        with finishes_within(20):
            code, output = run_cli("bench", "--engine", str(model))
        assert code == 2 and error_line(output) == f"error: model file {model} is {kind}, not a regular file; give " \
                                                   "the file itself"


def test_every_option_is_finite_and_bounded_before_work(tmp_path, new2_export):
    model = str(new2_export.files["fp32"])
    nowhere = str(tmp_path / "no-data")  # were the option accepted, the error would name the data instead
    for args, message in (
            (["--duration", "inf"], "timing duration inf s and warm-up"),
            (["--duration", "nan"], "timing duration nan s and warm-up"),
            (["--warmup", "inf"], "warm-up inf s must each be a number of seconds from 0 to 3600"),
            (["--warmup", "nan"], "warm-up nan s must each be"),
            (["--threads", "1000000"], "threads must be a whole number from 1 to 1024, got 1000000")):
        code, output = run_cli("bench", "--engine", model, "--data", nowhere, *args)
        assert code == 2 and message in error_line(output), output
    code, output = run_cli("train", "--seed", str(2**32), "--data", nowhere)
    assert code == 2 and error_line(output) == f"error: --seed {2**32} is too large; use a whole number from 0 to " \
                                               f"{2**32 - 1}"
    code, output = run_cli("export", "--checkpoint", model, "--calibration-seed", str(2**40), "--data", nowhere)
    assert code == 2 and "calibration seed 1099511627776 is too large" in error_line(output)


WORKERS_KILLED_WITH_PARENT = '''
import os, sys, time
import edgecls.data as data

def slow_chunk(blobs):
    with open(sys.argv[1], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(120)

data._decode_chunk = slow_chunk
data.decode_images([("x.png", b"")] * 4000, workers=2)
'''


def test_decode_workers_end_with_a_killed_parent(tmp_path):
    pids = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", WORKERS_KILLED_WITH_PARENT, str(pids)], env=cli_env(tmp_path),
                              stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [int(line) for line in pids.read_text().split()] if pids.exists() else []
        assert len(workers) == 2, "the workers did not start"
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
    finally:
        parent.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_onnx_runtime_temporary_files_stay_in_the_staging_folder(tmp_path, new2_export, monkeypatch):
    import tempfile

    from edgecls.artifacts import temporary_files_in
    from edgecls.quantize import CalibrationSettings, quantize_int8

    made: list[str] = []
    original = tempfile.mkdtemp

    def recorded(*args: object, **kwargs: object) -> str:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    staging = tmp_path / "staging"
    staging.mkdir()
    with temporary_files_in(staging):  # as export_model wraps its staging folder
        quantize_int8(new2_export.files["fp32"], staging / "int8.onnx",
                      settings=CalibrationSettings(cache=new2_export.calibration))
    names = [Path(path).name for path in made]
    assert any(name.startswith("pre.quant.") for name in names), names  # ONNX Runtime's own, in $TMPDIR by default
    assert all(Path(path).parent == staging for path in made), made


# ================================================================================ 5. one line, never a traceback

def test_the_python_api_misused_names_the_argument(new2_export):
    from edgecls.runtime import Classifier, load, open_runner

    model = new2_export.files["fp32"]
    with pytest.raises(EdgeclsError, match=r"runner must be an edgecls Runner .* got 'x.onnx'; to open a model file, "
                                           r"use Classifier.load\(path\)"):
        Classifier("x.onnx")
    for size in (2.5, "8", True, 0):
        with pytest.raises(EdgeclsError, match=f"batch_size must be a whole number of at least 1, got {size!r}"):
            Classifier.load(model, batch_size=size)
    with pytest.raises(EdgeclsError, match="provider must be a name such as 'cpu', 'cuda', 'tensorrt', got None"):
        load(model, provider=None)
    with pytest.raises(EdgeclsError, match="threads must be a whole number from 1 to 1024, got 1000000"):
        load(model, threads=10**6)
    with pytest.raises(EdgeclsError, match="path must be a str or pathlib.Path naming a model file, got b'x.onnx'"):
        open_runner(b"x.onnx")
    with load(model) as classifier:
        with pytest.raises(EdgeclsError, match=r"expected uint8 images shaped .* got an array of shape \(\)"):
            classifier.classify(np.array(7, np.uint8))
        with pytest.raises(EdgeclsError, match=r"images of shape \(8, 3, 32, 3\) look channels-first"):
            classifier.classify(np.zeros((8, 3, 32, 3), np.uint8))
        good = classifier.preprocess(np.zeros((2, 32, 32, 3), np.uint8))
        assert classifier.run_preprocessed(good).shape == (2, 10)
        for wrong, shown in ((good.astype(np.float64), "float64 array of shape (2, 3, 28, 28)"),
                             (good[:, :, :, :27], "float32 array of shape (2, 3, 28, 27)"),
                             (good[0], "float32 array of shape (3, 28, 28)"), ([1.0], "list")):
            with pytest.raises(EdgeclsError) as info:
                classifier.run_preprocessed(wrong)
            assert str(info.value) == ("run_preprocessed takes a float32 array of shape (N, 3, 28, 28) with N from 1 "
                                       f"to 256 (as preprocess() makes), got a {shown}")


def test_odd_environments_still_give_one_line(tmp_path, trained_checkpoint, tiny_data_dir):
    import resource

    env = cli_env(tmp_path)
    # a memory limit too small for libtorch: one line saying what ran out, exit 2
    limited = subprocess.run([sys.executable, "-m", "edgecls", "train", "--data", str(tiny_data_dir)],
                             capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20)))
    assert limited.returncode == 2 and "Traceback" not in limited.stderr, limited.stderr
    assert limited.stderr.strip().splitlines()[-1].startswith("error: ") and "memory" in limited.stderr
    # stderr closed: the error cannot be shown, the exit code still says it
    closed = subprocess.run([sys.executable, "-m", "edgecls", "bench", "--engine", str(tmp_path / "none.onnx")],
                            stderr=subprocess.DEVNULL, env=env, timeout=120, pass_fds=(),
                            preexec_fn=lambda: os.close(2))
    assert closed.returncode == 2
    # a terminal that cannot show "Δ": plain ASCII, after the export's files are installed
    done = subprocess.run([sys.executable, "-m", "edgecls", "export", "--checkpoint", str(trained_checkpoint("new2")),
                           "--data", str(tiny_data_dir), "--out", str(tmp_path / "export")],
                          capture_output=True, env={**env, "PYTHONIOENCODING": "latin-1"}, timeout=300)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode("latin-1")
    assert b"max |d logit|" in done.stdout and (tmp_path / "export" / "new2.onnx").is_file()


# ================================================================================ 2. a staging folder's owner, exactly

HOLD_STAGING = '''
import sys, time
from edgecls.artifacts import staging_dir
with staging_dir(sys.argv[1], "export") as staging:
    print(staging, flush=True)
    time.sleep(120)
'''


def test_a_staging_folder_is_swept_only_when_its_own_process_is_gone(tmp_path):
    from edgecls.artifacts import ensure_writable_dir, temporary_prefix

    owner = subprocess.Popen([sys.executable, "-c", HOLD_STAGING, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env=cli_env(tmp_path))
    try:
        staging = Path(owner.stdout.readline().strip())
        assert staging.is_dir()
        sweep = [sys.executable, "-c", f"from edgecls.artifacts import ensure_writable_dir; "
                                       f"ensure_writable_dir({str(tmp_path)!r})"]
        # from another PID namespace on this host (same host name), where the owner's id names no process or another
        other = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *sweep], env=cli_env(tmp_path),
                               capture_output=True, text=True, timeout=60)
        if other.returncode != 0:
            pytest.skip(f"no PID namespace here: {other.stderr.strip()[:200]}")
        assert staging.is_dir(), "a sweep in another PID namespace removed a live export's staging folder"
        ensure_writable_dir(tmp_path)  # and from this one, where the owner is seen running
        assert staging.is_dir()
    finally:
        owner.kill()
        owner.wait()
    ensure_writable_dir(tmp_path)
    assert not staging.exists()  # the owner killed: swept
    # a process id now used by a later process (this one) does not keep an earlier owner's leftovers alive
    prefix = temporary_prefix("new2.pt")
    host, pid, start = prefix.rstrip("-").rsplit(".", 1)[1].split("-")
    reused = tmp_path / f".new2.pt.{host}-{pid}-{int(start) - 1}-abcdefgh.tmp"
    reused.write_text("x")
    ours = tmp_path / f"{prefix}ijklmnop.tmp"
    ours.write_text("x")
    ensure_writable_dir(tmp_path)
    assert not reused.exists() and ours.exists()


# ================================================================================ 6. messages that tell the truth

@contextlib.contextmanager
def full_folder(folder: Path):
    """`folder` as a tiny file system filled to the last byte (a tmpfs: needs root with CAP_SYS_ADMIN)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full folder is made by mounting a small tmpfs, which needs root: {mounted.stderr.decode()}")
    try:
        with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_temporary_folder_is_not_taken_for_the_export_folder(tmp_path, trained_checkpoint, tiny_cifar,
                                                                   monkeypatch):
    import tempfile

    import edgecls.export
    from edgecls.export import ExportRequest, export_model
    from edgecls.quantize import CalibrationSettings

    def export_int8(out: Path):
        request = ExportRequest(trained_checkpoint("new2"), out, int8=True, calibration=CalibrationSettings(size=100),
                                calibration_dir=tmp_path / "cal")
        return export_model(request, data=tiny_cifar, progress=False)

    with full_folder(tmp_path / "tmp") as full:
        monkeypatch.setattr(tempfile, "tempdir", str(full))  # $TMPDIR, as this process sees it
        assert export_int8(tmp_path / "export").passed  # ONNX Runtime's temporary files go to the staging folder
        # were they written to $TMPDIR again, its filling up is said, not the export folder's (which has room)
        monkeypatch.setattr(edgecls.export, "temporary_files_in", lambda folder: contextlib.nullcontext())
        message = refusal(export_int8, tmp_path / "again")
    assert message == (f"no space left on the disk holding {full} (the temporary folder, $TMPDIR) while writing the "
                       "export of new2; free space or set TMPDIR to a folder with room (files already there are "
                       "unchanged)")
    assert not (tmp_path / "again").exists()


def test_messages_name_the_users_file_and_the_true_state(tmp_path, new2_export, trained_checkpoint):
    from edgecls.artifacts import staging_dir
    from edgecls.formats import ExportSet

    # a calibration cache whose ranges do not fit the graph: the user's file is named, not a staging path
    record = json.loads(new2_export.calibration.read_text())
    del record["ranges"]["calibration_method"]  # ONNX Runtime's KeyError, once said to be "another model's"
    cache = tmp_path / "edited.json"
    message = refusal_of_cache(record, cache, new2_export, tmp_path)
    assert message.startswith(f"calibration cache {cache} does not fit the graph of new2 ('calibration_method')")
    assert message.endswith("drop --calibration-cache to recalibrate") and "another model" not in message
    # an export record left incomplete: "in progress" while its writer lives, "interrupted" once it is gone
    export = tmp_path / "export"
    export.mkdir()
    model = export / "new2.onnx"
    model.write_bytes(new2_export.files["fp32"].read_bytes())
    ExportSet(model="new2", checkpoint_sha256="0" * 64, files={}, complete=False).write(export / "new2.export.json")
    with staging_dir(export, "export"):
        with pytest.raises(EdgeclsError, match=f"is in progress .process {os.getpid()} is installing its files.; wait "
                                               "for it to finish"):
            ExportSet.check_member(model, "new2")
    with pytest.raises(EdgeclsError, match="was interrupted while installing"):
        ExportSet.check_member(model, "new2")
    # a bench file that is a device: said so, with no advice to write a bench JSON onto it
    code, output = run_cli("report", str(trained_checkpoint("new2")), "--bench", "/dev/zero",
                           "-o", str(tmp_path / "r.html"), "--data", str(tmp_path / "no-data"),
                           "--export-dir", str(tmp_path / "none"), "--results-dir", str(tmp_path / "none"))
    assert code == 2 and error_line(output) == ("error: bench file /dev/zero is a character device, not a regular "
                                                "file; give the file itself")


def test_photos_are_decoded_upright_for_data_and_predict_alike(tmp_path, tiny_cifar):
    from PIL import Image

    from edgecls.data import load_cifar10
    from edgecls.runtime.images import read_image
    from conftest import write_image_folder

    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:8] = 255  # a white band along the top, as stored
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show": the band is on the right when shown
    tree = write_image_folder(tiny_cifar.subset(10, 10, seed=0), tmp_path / "tree")
    turned = next((tree / "test").iterdir()) / "turned.jpg"
    photo.save(turned, "JPEG", quality=100, exif=exif)
    with Image.open(turned) as stored:
        as_stored = np.asarray(stored.convert("RGB"))
    upright = np.rot90(as_stored, -1)
    assert np.array_equal(read_image(turned), upright)  # predict's reader
    loaded = load_cifar10(tree, cache=False)
    assert any(np.array_equal(image, upright) for image in loaded.test_images)  # the training data's
    assert upright[:, -8:].mean() > 240 and upright[:, :8].mean() < 15


def test_the_training_log_and_checkpoint_never_disagree_unseen(tiny_cifar, tmp_path):
    from edgecls.report.gather import gather
    from edgecls.train import TrainRequest, train

    options = dict(epochs=3, batch_size=40, lr=0.05, val_split=20, device="cpu", progress=False, out_dir=str(tmp_path))
    # killed (SIGKILL) between the two renames of epoch 2: its checkpoint is in place, its log is not yet
    killed_between = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import synthetic_cifar
import edgecls.train as training

write_log = training.write_log
def write_log_unless_epoch_2(path, history):
    if len(history) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    write_log(path, history)

training.write_log = write_log_unless_epoch_2
training.train(training.TrainRequest("new1", **{options!r}), synthetic_cifar().subset(100, 20, seed=0))
"""
    done = subprocess.run([sys.executable, "-c", killed_between], capture_output=True, text=True,
                          env=cli_env(tmp_path), timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    log = tmp_path / "new1.log.jsonl"
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]
    inputs = gather(tmp_path / "new1.pt")
    assert inputs.training.epochs is None
    assert inputs.missing["training log"].startswith(f"training log {log} ends at epoch 1, before the checkpoint's "
                                                     "epoch 2;")
    data = tiny_cifar.subset(100, 20, seed=0)
    resumed = train(TrainRequest("new1", resume=True, **options), data)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]
    uninterrupted = train(TrainRequest("new1", **{**options, "out_dir": str(tmp_path / "whole")}), data)
    assert [h.loss for h in resumed.history] == [h.loss for h in uninterrupted.history]


def test_output_for_logs_stays_plain_and_one_line_per_image(tmp_path, new2_export, capsys):
    import io as _io

    from PIL import Image

    from edgecls.data import decode_images

    blobs = []
    for index in range(300):
        encoded = _io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), index % 256, np.uint8)).save(encoded, "PNG")
        blobs.append((f"{index}.png", encoded.getvalue()))
    capsys.readouterr()
    assert decode_images(blobs, workers=1).shape == (300, 32, 32, 3)
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 3, err  # not a carriage-return flood
    # a newline in a file name does not split predict's one line per image
    odd = tmp_path / "two\nlines.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(odd, "PNG")
    result = CliRunner().invoke(main, ["predict", str(odd), "--engine", str(new2_export.files["fp32"])])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith(f"{tmp_path}/two\\nlines.png: ")
