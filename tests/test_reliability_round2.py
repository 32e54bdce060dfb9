"""Reliability, second round: outputs that never destroy inputs, metadata checked against the graph, every option
finite and bounded, no hang or unbounded read on any input, API misuse as one line. One test per class of failure,
each holding every example the adversarial round found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecls.artifacts import atomic_write, sha256_file, write_json
from edgecls.cli import main
from edgecls.errors import EdgeclsError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


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
