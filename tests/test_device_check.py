"""benchmarks/device_check.py: the smoke run CI does (every stage, small, on the CPU) and its stage machinery. The
full run needs a GPU and the real data (README, "Measured figures")."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_smoke_check_runs_every_stage(tiny_data_dir, tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data", str(tiny_data_dir), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "device-check.json").read_text())
    statuses = {name: record["status"] for name, record in report["stages"].items()}
    assert statuses == {"environment": "ok", "data": "ok", "cudnn benchmark mode": "skipped", "fast, seed 0": "ok",
                        "eval": "ok", "export": "ok", "bench --all": "ok", "bench checkpoint": "ok",
                        "CUDA checks": "skipped", "fast, seed 1": "ok", "best, all training images": "ok",
                        "CUDA tests": "skipped", "CUDA memory": "skipped", "TensorRT engines": "skipped",
                        "doctor": "ok", "TensorRT tests": "skipped"}, report["stages"]
    # no TensorRT here: the engine stages say why, and the doctor says this machine is not ready (exit 1)
    assert "TensorRT" in report["stages"]["TensorRT engines"]["reason"]
    assert report["doctor"]["exit_code"] == 1 and report["doctor"]["report"]["ready"] is False
    runs = {run["name"]: run for run in report["runs"]}
    assert list(runs) == ["fast seed 0", "fast seed 1", "best all-train"]
    assert [runs[name]["val_split"] for name in runs] == [50, 50, 0] and runs["best all-train"]["recipe"] == "best"
    for run in runs.values():
        assert run["train_seconds"] > 0 and run["images_per_second"] > 0 and Path(run["checkpoint"]).is_file()
        assert 0 <= run["test_accuracy"] <= 100 and 0 <= run["mirrored_accuracy"] <= 100
    fast = report["summary"]["fast"]
    assert fast["single"]["n"] == 2
    assert fast["single"]["mean"] == pytest.approx((runs["fast seed 0"]["test_accuracy"] +
                                                    runs["fast seed 1"]["test_accuracy"]) / 2)
    assert report["eval"]["accuracy"] == pytest.approx(runs["fast seed 0"]["test_accuracy"], abs=0.005)
    [variant] = report["bench_checkpoint"]["variants"]
    assert variant["variant"] == "pytorch eager fp32" and variant["agreement"] == 100.0
    rows = {Path(row["path"]).name: row for row in report["bench_all"]["rows"]}
    assert [rows[name]["status"] for name in ("new2.pt", "new2.onnx", "new2.fp16.onnx", "new2.int8.onnx")] == ["ok"] * 4
    assert report["export"]["output"].count("agreement") >= 3  # a parity line per exported file
    for text in ("fast over 2 seeds", "best all-train", "bench checkpoint, every variant", "pipelined"):
        assert text in done.stdout


def test_a_stage_that_fails_is_recorded_and_the_next_one_runs(device_check, tmp_path):
    options = argparse.Namespace(smoke=True, budget_seconds=60.0, out=str(tmp_path), json=None, device="cpu", data=None)
    check = device_check.DeviceCheck(options)

    def boom():
        raise RuntimeError("boom")

    def not_here():
        raise device_check.NotHere("needs a GPU")

    def failed():
        raise device_check.StageFailed("agreement too low")

    ran = []
    check.stage("crashes", boom)
    check.stage("fails its check", failed)
    check.stage("means nothing here", not_here)
    check.stage("too long", lambda: ran.append("too long"), estimate=61.0)
    assert check.stage("works", lambda: ran.append("works") or 42, key="answer") == 42
    saved = json.loads((tmp_path / "device-check.json").read_text())
    stages = saved["stages"]
    assert stages["crashes"]["status"] == "error" and stages["crashes"]["error"] == "RuntimeError: boom"
    assert stages["fails its check"] == {**stages["fails its check"], "status": "failed",
                                         "error": "StageFailed: agreement too low"}
    assert stages["means nothing here"]["status"] == "skipped" and stages["means nothing here"]["reason"] == "needs a GPU"
    assert stages["too long"]["status"] == "skipped" and "needs about 61 s" in stages["too long"]["reason"]
    assert ran == ["works"] and saved["answer"] == 42 and stages["works"]["status"] == "ok"


def test_missing_data_fails_the_check_but_still_writes_the_figures(device_check, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))  # the check points it at its own cache
    code = device_check.main(["--smoke", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path), "--device", "cpu"])
    report = json.loads((tmp_path / "device-check.json").read_text())
    assert code == 1 and report["stages"]["data"]["status"] == "error" and "nothing" in report["stages"]["data"]["error"]
    assert report["environment"]["device"] == "cpu" and report["runs"] == []
    assert "stages: environment ok" in capsys.readouterr().out
