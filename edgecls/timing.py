"""Timing: latency percentiles and throughput of a call, and the machine and library versions they were measured
on, so that every figure carries where it came from."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecls.artifacts import library_versions, utc_now
from edgecls.defaults import (BENCH_BATCH_SIZES, BENCH_DURATION_S, BENCH_MAX_BATCH, BENCH_WARMUP_S, INT8_THROUGHPUT_BATCH,
                              INT8_THROUGHPUT_ROUNDS, INT8_THROUGHPUT_SECONDS)
from edgecls.errors import EdgeclsError
from edgecls.runtime import Classifier


@dataclass(frozen=True)
class TimingSettings:
    """What to time and for how long."""

    batch_sizes: tuple = BENCH_BATCH_SIZES
    duration: float = BENCH_DURATION_S  # seconds of timed calls per batch size (at least `min_calls` calls)
    warmup: float = BENCH_WARMUP_S  # seconds of untimed calls before each timing
    min_calls: int = 5
    model_only: bool = True  # also time the model alone, where the backend can separate it from the transfers
    cuda_variants: bool = True  # for a checkpoint on CUDA: also fp16 and CUDA-graph runs

    def __post_init__(self) -> None:  # refused when the settings are made, before any work
        if not self.batch_sizes or not all(1 <= size <= BENCH_MAX_BATCH for size in self.batch_sizes):
            raise EdgeclsError(f"batch sizes {list(self.batch_sizes)} must lie between 1 and {BENCH_MAX_BATCH}")
        if self.duration < 0 or self.warmup < 0:
            raise EdgeclsError(f"timing duration {self.duration:g} s and warm-up {self.warmup:g} s cannot be negative")

    def to_dict(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), "duration_s": self.duration, "warmup_s": self.warmup}


def measure(fn: Callable[[], Any], batch_size: int, duration: float, warmup: float,
            min_calls: int = 5) -> dict[str, Any]:
    """Latency percentiles (ms) and throughput of `fn` after `warmup` seconds, over at least `duration` seconds."""
    started = time.perf_counter()
    while True:  # at least two warm-up calls: the first often pays for allocation or kernel selection
        fn()
        fn()
        if time.perf_counter() - started >= warmup:
            break
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < duration:
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    seconds = np.asarray(times)
    p50, p90, p99 = np.percentile(seconds * 1e3, [50, 90, 99])
    return {"batch_size": batch_size, "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(seconds.mean() * 1e3), "images_per_s": float(batch_size * len(times) / seconds.sum()),
            "calls": len(times)}


def measure_pipelined(launch: Callable[[], Any], wait: Callable[[], Any], batch_size: int, duration: float,
                      warmup: float, min_calls: int = 5) -> dict[str, Any]:
    """Throughput with runs queued back to back and one wait at the end (many batches in flight, as a serving loop
    that does not wait for each batch has them), after `warmup` seconds, over at least `duration` seconds."""
    started = time.perf_counter()
    while True:
        launch()
        launch()
        wait()
        if time.perf_counter() - started >= warmup:
            break
    calls = 0
    started = time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < duration:
        launch()
        calls += 1
    wait()
    seconds = time.perf_counter() - started
    return {"pipelined_images_per_s": batch_size * calls / seconds, "pipelined_calls": calls}


def timing_images(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` test images (repeated when the test split is smaller)."""
    repeats = math.ceil(batch_size / len(images))
    return np.concatenate([images] * repeats)[:batch_size] if repeats > 1 else images[:batch_size]


def time_classifier(classifier: Classifier, variant: str, images: np.ndarray,
                    settings: TimingSettings) -> list[dict[str, Any]]:
    """End-to-end timings (what `classify` costs a user: preprocessing, transfers, softmax) and, where the
    backend can separate it, the model alone on already preprocessed inputs placed where the model reads them: one
    run at a time (latency, and throughput with a wait after each run) and, where the backend can queue runs,
    pipelined throughput (many runs in flight, one wait)."""
    runner = classifier.runner
    rows = []
    for batch_size in settings.batch_sizes:
        batch = timing_images(images, batch_size)
        rows.append({"variant": variant, "scope": "end-to-end",
                     **measure(lambda: classifier.classify(batch), batch_size, settings.duration, settings.warmup,
                               settings.min_calls), "pipelined_images_per_s": None})
        fits = runner.min_batch <= batch_size <= (runner.max_batch or batch_size)
        if settings.model_only and fits:
            feed = {runner.input_name: classifier.preprocess(batch)}
            run = runner.model_only(feed)
            if run is not None:
                row = {"variant": variant, "scope": "model-only",
                       **measure(run, batch_size, settings.duration, settings.warmup, settings.min_calls),
                       "pipelined_images_per_s": None}
                queued = runner.pipelined(feed)
                if queued is not None:
                    row.update(measure_pipelined(*queued, batch_size, settings.duration, settings.warmup,
                                                 settings.min_calls))
                rows.append(row)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(engine_info: dict[str, Any]) -> dict[str, Any]:
    candidates = ("numpy", "onnxruntime", "tensorrt", "torch", "pycuda")
    versions = library_versions(*(name for name in candidates if name in sys.modules))
    if "cuda.bindings" in sys.modules:
        versions["cuda-python"] = str(getattr(sys.modules["cuda.bindings"], "__version__", "?"))
    threads: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    if "threads" in engine_info:
        threads[engine_info["backend"]] = engine_info["threads"]
    return {"cpu": cpu_name(), "gpu": engine_info.get("gpu_name"), "platform": platform.platform(),
            "versions": versions, "threads": threads, "measured_at": utc_now()}


def cpu_throughput(files: dict[str, Path], images: np.ndarray, batch_size: int = INT8_THROUGHPUT_BATCH,
                   seconds: float = INT8_THROUGHPUT_SECONDS, rounds: int = INT8_THROUGHPUT_ROUNDS) -> dict[str, Any]:
    """Images/s of each ONNX file ("fp32", "all_int8", "result": the int8 search's three) on ONNX Runtime's CPU
    provider at one batch size, the model alone, in alternating rounds so that every file meets the same machine
    state (the best round counts)."""
    classifiers = {name: Classifier.load(path) for name, path in files.items()}
    try:
        runs = {}
        for name, classifier in classifiers.items():
            runner = classifier.runner
            run = runner.model_only({runner.input_name: classifier.preprocess(timing_images(images, batch_size))})
            assert run is not None  # ONNX Runtime's CPU provider always separates the model from the transfers
            runs[name] = run
        speeds: dict[str, float] = {name: 0.0 for name in files}
        for _ in range(rounds):
            for name, run in runs.items():
                # A long warm-up: a fresh session's first calls pay for its buffers and thread pool.
                speeds[name] = max(speeds[name], measure(run, batch_size, seconds, seconds / 2)["images_per_s"])
        info = next(iter(classifiers.values())).describe()
    finally:
        for classifier in classifiers.values():
            classifier.close()
    return {"batch_size": batch_size, "images_per_s": speeds,
            "vs_fp32": speeds["result"] / speeds["fp32"], "vs_all_int8": speeds["result"] / speeds["all_int8"],
            "environment": environment(info)}
