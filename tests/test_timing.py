"""edgecls.timing: latency percentiles and throughput on a clock the test controls (so every figure is known
exactly), one real sleep as a check of the real clock, what bench times, and the environment it records."""

from __future__ import annotations

import re
import sys
import time
import types
from typing import Any, Callable

import numpy as np
import pytest

import edgecls
from edgecls import timing
from edgecls.errors import EdgeclsError
from edgecls.formats import ModelMetadata
from edgecls.preprocess import Preprocessing
from edgecls.runtime import Classifier, Runner
from edgecls.timing import TimingSettings, environment, measure, measure_pipelined, time_classifier, timing_images

UNIT = 2.0 ** -10  # seconds; sums of these are exact in floating point, so comparisons with limits are exact


class Clock:
    """A perf_counter that moves only when the timed code says it worked for a while."""

    def __init__(self) -> None:
        self.now = 1024.0  # not 0: a mutant adding start times instead of subtracting them must show

    def perf_counter(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def test_measure_warms_up_then_reports_exact_percentiles_and_throughput(clock):
    durations = iter([4 * UNIT] * 4 + [k * UNIT for k in range(1, 11)] + [1.0] * 5)
    calls = []

    def run() -> None:
        calls.append(clock.now)
        clock.work(next(durations))

    # Warm-up: two calls at a time until 16 units have passed (4 calls, exactly at the limit); then calls until
    # 55 units have passed (10 calls taking 1..10 units, exactly at the limit).
    result = measure(run, batch_size=4, duration=55 * UNIT, warmup=16 * UNIT, min_calls=3)
    assert len(calls) == 14 and result["calls"] == 10
    ms = UNIT * 1e3
    assert result["p50_ms"] == pytest.approx(5.5 * ms) and result["p90_ms"] == pytest.approx(9.1 * ms)
    assert result["p99_ms"] == pytest.approx(9.91 * ms) and result["mean_ms"] == pytest.approx(5.5 * ms)
    assert result["images_per_s"] == pytest.approx(4 * 10 / (55 * UNIT)) and result["batch_size"] == 4


def test_measure_makes_at_least_min_calls_and_two_warm_up_calls(clock):
    calls = []
    run = lambda: (calls.append(1), clock.work(UNIT))  # noqa: E731
    assert measure(run, batch_size=1, duration=0.0, warmup=0.0)["calls"] == 5 and len(calls) == 7
    assert measure(run, batch_size=1, duration=0.0, warmup=0.0, min_calls=2)["calls"] == 2


def test_measured_latency_matches_a_known_sleep():
    result = measure(lambda: time.sleep(0.02), batch_size=4, duration=0.2, warmup=0.0, min_calls=5)
    # The upper bounds leave room for a loaded machine; a unit error (seconds, microseconds) is 1000x off.
    assert 19.5 <= result["p50_ms"] <= 200 and result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["calls"] >= 5
    assert result["images_per_s"] == pytest.approx(4 * 1e3 / result["mean_ms"], rel=1e-6)
    assert 20 <= result["images_per_s"] <= 205  # 4 images per 20-200 ms


def test_pipelined_throughput_counts_the_final_wait_once(clock):
    events = []
    launch = lambda: (events.append("launch"), clock.work(UNIT))  # noqa: E731
    wait = lambda: (events.append("wait"), clock.work(16 * UNIT))  # noqa: E731
    result = measure_pipelined(launch, wait, batch_size=8, duration=8 * UNIT, warmup=0.0, min_calls=3)
    # warm-up: launch, launch, wait; then launches until 8 units have passed, and one wait inside the timed span
    assert events == ["launch", "launch", "wait"] + ["launch"] * 8 + ["wait"]
    assert result == {"pipelined_images_per_s": pytest.approx(8 * 8 / (24 * UNIT)), "pipelined_calls": 8}
    events.clear()
    measure_pipelined(launch, wait, batch_size=8, duration=0.0, warmup=18 * UNIT, min_calls=2)
    assert events == ["launch", "launch", "wait"] * 1 + ["launch"] * 2 + ["wait"]  # 18 units: one round
    events.clear()
    measure_pipelined(launch, wait, batch_size=8, duration=0.0, warmup=19 * UNIT)  # min_calls: 5 by default
    assert events == ["launch", "launch", "wait"] * 2 + ["launch"] * 5 + ["wait"]


def test_timing_settings_are_checked_when_made():
    settings = TimingSettings(batch_sizes=(1, 1024), duration=0.0, warmup=0.0)
    assert settings.to_dict() == {"batch_sizes": [1, 1024], "duration_s": 0.0, "warmup_s": 0.0}
    assert TimingSettings().to_dict() == {"batch_sizes": [1, 8, 64, 256], "duration_s": 2.0, "warmup_s": 0.5}
    for sizes in ((), (0, 8), (1, 1025)):
        with pytest.raises(EdgeclsError) as info:
            TimingSettings(batch_sizes=sizes)
        assert str(info.value) == f"batch sizes {list(sizes)} must lie between 1 and 1024"
    for duration, warmup in ((-1.0, 0.5), (2.0, -0.5), (float("inf"), 0.5), (float("nan"), 0.5), (2.0, float("nan")),
                             (3601.0, 0.5)):
        with pytest.raises(EdgeclsError) as info:
            TimingSettings(duration=duration, warmup=warmup)
        assert str(info.value) == (f"timing duration {duration:g} s and warm-up {warmup:g} s must each be a number of "
                                   "seconds from 0 to 3600")


def test_timing_images_are_the_first_test_images_repeated_as_needed():
    images = np.arange(3)[:, None, None, None] * np.ones((3, 2, 2, 3), np.uint8)
    assert timing_images(images, 2)[:, 0, 0, 0].tolist() == [0, 1]
    assert timing_images(images, 3)[:, 0, 0, 0].tolist() == [0, 1, 2]
    assert timing_images(images, 7)[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


# ================================================================================================= bench's timings

PREPROCESS = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=tuple("abcdefghij"))


class MeanColourRunner(Runner):
    """A real backend in miniature: logits from each image's mean colour. It records what bench makes it run."""

    backend = "test"

    def __init__(self, min_batch: int = 1, max_batch: int | None = None, separable: bool = True,
                 queues: bool = True) -> None:
        super().__init__("mean-colour.onnx")
        self.limits, self.separable, self.queues = (min_batch, max_batch), separable, queues
        self.calls: list[tuple[str, int]] = []  # (what ran, batch)

    def _open(self) -> None:
        self.metadata = ModelMetadata("mean", "fp32", PREPROCESS, checkpoint_sha256="", data_fingerprint="")
        self.min_batch, self.max_batch = self.limits

    def _close(self) -> None:
        pass

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return batch.mean(axis=(2, 3)) @ np.arange(30, dtype=np.float32).reshape(3, 10)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(("infer", len(feed["images"])))
        return {"logits": self.logits(feed["images"])}

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        if not self.separable:
            return None
        self.fed = feed["images"]
        return lambda: self.calls.append(("model", len(self.logits(feed["images"]))))

    def pipelined(self, feed: dict[str, np.ndarray]) -> tuple[Callable[[], None], Callable[[], None]] | None:
        if not self.queues:
            return None
        return (lambda: self.calls.append(("launch", len(feed["images"]))), lambda: self.calls.append(("wait", 0)))


def rows_by_scope(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row["scope"], []).append(row["batch_size"])
    return found


def test_time_classifier_times_end_to_end_and_the_model_alone_where_the_batch_fits():
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    runner = MeanColourRunner(min_batch=2, max_batch=4)
    classifier = Classifier(runner)
    settings = TimingSettings(batch_sizes=(1, 2, 4, 8), duration=0.0, warmup=0.0, min_calls=3)
    rows = time_classifier(classifier, "int8", images, settings)
    assert rows_by_scope(rows) == {"end-to-end": [1, 2, 4, 8], "model-only": [2, 4]}
    assert [row["scope"] for row in rows] == ["end-to-end", "end-to-end", "model-only", "end-to-end", "model-only",
                                               "end-to-end"]
    assert all(row["variant"] == "int8" and row["calls"] == 3 for row in rows)
    end_to_end = [row for row in rows if row["scope"] == "end-to-end"]
    assert all(row["pipelined_images_per_s"] is None for row in end_to_end)
    model_only = [row for row in rows if row["scope"] == "model-only"]
    assert [row["pipelined_calls"] for row in model_only] == [3, 3] and model_only[0]["pipelined_images_per_s"] > 0
    # The model alone ran on the preprocessed timing images, 2 warm-up and 3 timed calls; end to end, each classify
    # call (2 + 3 per batch size) ran the engine once per 4 images, a batch of 1 padded to the engine's minimum of 2.
    np.testing.assert_array_equal(runner.fed, classifier.preprocess(timing_images(images, 4)))
    assert runner.calls.count(("model", 2)) == 5 and runner.calls.count(("model", 4)) == 5
    assert [runner.calls.count(("infer", size)) for size in (2, 4)] == [5 + 5, 5 + 2 * 5]
    assert runner.calls.count(("launch", 4)) == 2 + 3 and runner.calls.count(("wait", 0)) == 2 * 2


def test_time_classifier_skips_what_the_backend_or_the_settings_leave_out():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    unbounded = Classifier(MeanColourRunner(queues=False))
    rows = time_classifier(unbounded, "fp32", images, TimingSettings(batch_sizes=(1, 300), duration=0.0, warmup=0.0))
    assert rows_by_scope(rows) == {"end-to-end": [1, 300], "model-only": [1, 300]}
    assert all(row["pipelined_images_per_s"] is None and "pipelined_calls" not in row for row in rows)
    inseparable = Classifier(MeanColourRunner(separable=False))
    settings = TimingSettings(batch_sizes=(1,), duration=0.0, warmup=0.0)
    assert rows_by_scope(time_classifier(inseparable, "fp32", images, settings)) == {"end-to-end": [1]}
    no_model_only = TimingSettings(batch_sizes=(1,), duration=0.0, warmup=0.0, model_only=False)
    assert rows_by_scope(time_classifier(unbounded, "fp32", images, no_model_only)) == {"end-to-end": [1]}


# ================================================================================================= environment

class CpuInfo:
    def __init__(self, text: str | None) -> None:
        self.text = text

    def __call__(self, path: str) -> "CpuInfo":
        assert path == "/proc/cpuinfo"
        return self

    def read_text(self) -> str:
        if self.text is None:
            raise PermissionError("/proc/cpuinfo")
        return self.text


def test_cpu_name_reads_the_model_name_or_the_jetsons_hardware_line(monkeypatch):
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz: v4 \nflags\t: fpu\n"
    monkeypatch.setattr(timing, "Path", CpuInfo(x86))
    assert timing.cpu_name() == "Intel(R) Xeon(R) CPU @ 2.20GHz: v4"
    monkeypatch.setattr(timing, "Path", CpuInfo("processor\t: 0\nBogoMIPS\t: 62.50\nHardware\t: NVIDIA Tegra\n"))
    assert timing.cpu_name() == "NVIDIA Tegra"
    monkeypatch.setattr(timing.platform, "processor", lambda: "")
    monkeypatch.setattr(timing.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(timing, "Path", CpuInfo("processor\t: 0\n"))
    assert timing.cpu_name() == "aarch64"
    monkeypatch.setattr(timing, "Path", CpuInfo(None))  # unreadable: what the platform says
    assert timing.cpu_name() == "aarch64"
    monkeypatch.setattr(timing.platform, "processor", lambda: "arm")
    assert timing.cpu_name() == "arm"


def test_environment_records_the_machine_libraries_and_threads(monkeypatch):
    monkeypatch.setattr(timing, "cpu_name", lambda: "Test CPU")
    fake_torch = types.SimpleNamespace(__version__="2.99", get_num_threads=lambda: 7)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.SimpleNamespace(__version__="13.0.3"))
    for absent in ("tensorrt", "pycuda", "onnxruntime"):
        monkeypatch.delitem(sys.modules, absent, raising=False)
    found = environment({"backend": "onnxruntime", "threads": 3, "gpu_name": "Orin"})
    assert found["cpu"] == "Test CPU" and found["gpu"] == "Orin" and found["platform"] == timing.platform.platform()
    assert found["versions"] == {"python": timing.platform.python_version(), "edgecls": edgecls.__version__,
                                 "numpy": np.__version__, "torch": "2.99", "cuda-python": "13.0.3"}
    assert found["threads"] == {"cpu_count": timing.os.cpu_count(), "torch": 7, "onnxruntime": 3}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", found["measured_at"])
    for name, version in (("onnxruntime", "1.99"), ("tensorrt", "10.99"), ("pycuda", "2099.1")):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__version__=version))
    assert {name: environment({})["versions"][name] for name in ("onnxruntime", "tensorrt", "pycuda")} == \
        {"onnxruntime": "1.99", "tensorrt": "10.99", "pycuda": "2099.1"}
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.SimpleNamespace())
    monkeypatch.delitem(sys.modules, "torch")
    bare = environment({"backend": "tensorrt"})
    assert bare["gpu"] is None and bare["threads"] == {"cpu_count": timing.os.cpu_count()}
    assert bare["versions"]["cuda-python"] == "?" and "torch" not in bare["versions"]


# ================================================================================================= int8 throughput

def test_timing_images_are_a_view_of_the_split_when_it_holds_enough():
    images = np.zeros((10, 2, 2, 3), np.uint8)
    assert np.shares_memory(timing_images(images, 4), images) and len(timing_images(images, 10)) == 10
    assert np.shares_memory(timing_images(images, 10), images)  # exactly enough: still no copy


def test_timing_settings_take_durations_of_exactly_the_maximum():
    settings = TimingSettings(duration=timing.MAX_TIMING_S, warmup=timing.MAX_TIMING_S)
    assert (settings.duration, settings.warmup) == (3600.0, 3600.0)


def test_cpu_throughput_times_each_file_alone_in_alternating_rounds_and_keeps_the_best(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from test_formats import METADATA, onnx_model

    files = {}
    for name, precision in (("fp32", "fp32"), ("all_int8", "int8"), ("result", "int8")):
        model = onnx_model(METADATA.with_precision(precision))
        files[name] = tmp_path / f"new2.{name}.onnx"
        files[name].write_bytes(model.SerializeToString())
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    speeds = iter([40.0, 90.0, 60.0, 0.5, 80.0, 70.0])  # round 1: fp32, all_int8, result; then round 2
    timed = []

    def scripted(run: Callable[[], None], batch_size: int, duration: float, warmup: float) -> dict[str, Any]:
        run()  # the model alone really runs on the repeated images
        timed.append((batch_size, duration, warmup))
        return {"images_per_s": next(speeds)}

    monkeypatch.setattr(timing, "measure", scripted)
    found = timing.cpu_throughput(files, images, batch_size=8, seconds=0.2, rounds=2)
    assert timed == [(8, 0.2, 0.1)] * 6  # each file in turn, each round, after a warm-up of half the time
    assert found["batch_size"] == 8 and found["images_per_s"] == {"fp32": 40.0, "all_int8": 90.0, "result": 70.0}
    assert (found["vs_fp32"], found["vs_all_int8"]) == (70.0 / 40.0, 70.0 / 90.0)
    assert found["environment"]["threads"]["onnxruntime"] == 0 and found["environment"]["cpu"] == timing.cpu_name()


def test_cpu_throughput_counts_a_file_slower_than_one_image_a_second(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from test_formats import METADATA, onnx_model

    files = {name: tmp_path / f"{name}.onnx" for name in ("fp32", "all_int8", "result")}
    for path in files.values():
        path.write_bytes(onnx_model(METADATA).SerializeToString())
    monkeypatch.setattr(timing, "measure", lambda run, batch_size, duration, warmup: {"images_per_s": 0.25})
    found = timing.cpu_throughput(files, np.zeros((1, 32, 32, 3), np.uint8), batch_size=1, seconds=0.01, rounds=1)
    assert found["images_per_s"] == {"fp32": 0.25, "all_int8": 0.25, "result": 0.25} and found["vs_fp32"] == 1.0
