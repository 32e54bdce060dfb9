"""Served vs in-process: the same artifact on the same backend, in one run, on the real CIFAR-10 test images.

1. In process: the edgecls runtime on preprocessed float32 batches (what the served tensor model receives): the
   best throughput over batch sizes 1 to 256, the p50 latency of one image, and the logits of the 10,000 test images.
2. `edgecls serve` started (a real tritonserver through nvidia-pytriton, in the serving venv), then over gRPC:
   the 10,000 test images' logits (top-1 agreement and max |Δ logit| against the in-process ones, and parity with the
   reference), load at each concurrency (one preprocessed image per request) with latency, throughput and the
   batches Triton formed (from its metrics), then a soak at the highest concurrency with the server's memory (RSS of
   all its processes) sampled every second. The server is stopped (SIGTERM) at the end, and checked gone.

Goals (issue 16), ONNX Runtime CPU, fp32, this 2-core machine: 100.00% top-1 agreement served vs in-process; served
throughput at concurrency 32 >= 80% of the in-process best-batch throughput; added p50 latency at concurrency 1
<= 2 ms; the soak (60 s at concurrency 64) with zero failed or lost requests and memory flat after its first 10 s.
The client runs on the same 2 cores as the server: its CPU time is part of what is measured. On a machine busy with
other work the wall-clock figures depend on each side's share of the cores; the CPU time per image (in process: this
process; served: every server process plus this client) does not, and its ratio projects the throughput ratio on an
idle CPU-bound machine (reported beside the measured one, never instead of it).

Run from the project root (the server runs in ./.venv-serve, made by `make serve-venv`):
    .venv/bin/python benchmarks/bench_serve.py --onnx export/new2.onnx --data ../shared/data/cifar10-jpeg.tar.gz \
        --json results/bench-serve.json
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgecls import reference as references
from edgecls.artifacts import check_output_file, write_json
from edgecls.bench import json_ready
from edgecls.data import load_cifar10
from edgecls.metrics import parity
from edgecls.runtime import Classifier
from edgecls.serving.client import (LoadLevel, ServedModel, batch_counters, batching_between, parse_server, run_load,
                                    served_logits)
from edgecls.serving.process import ServerProcess
from edgecls.timing import environment, measure

BATCH_SIZES = (1, 8, 32, 64, 128, 256)


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def group_cpu_seconds(process: ServerProcess) -> float:
    """CPU time (user + system) used so far by every running process of the server."""
    total = 0
    for pid in process.group_processes():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def in_process(onnx: str, inputs: np.ndarray, seconds: float, threads: int | None) -> dict:
    with Classifier.load(onnx, threads=threads) as classifier:
        rows = []
        for size in BATCH_SIZES:
            batch = inputs[:size]
            cpu = own_cpu_seconds()
            row = measure(lambda: classifier.run_preprocessed(batch), size, seconds, 0.5)
            # CPU seconds per image (warm-up included on both sides of the ratio: about the same share)
            row["cpu_ms_per_image"] = 1e3 * (own_cpu_seconds() - cpu) / (size * (row["calls"] + 2))
            rows.append(row)
        logits = np.concatenate([classifier.run_preprocessed(inputs[s : s + 256]) for s in range(0, len(inputs), 256)])
        info = classifier.describe()
    best = max(rows, key=lambda row: row["images_per_s"])
    return {"timings": rows, "best_images_per_s": best["images_per_s"], "best_batch": best["batch_size"],
            "p50_ms_one_image": rows[0]["p50_ms"], "cpu_ms_per_image_best": min(r["cpu_ms_per_image"] for r in rows),
            "cpu_ms_one_image": rows[0]["cpu_ms_per_image"], "logits": logits, "runner": info}


def rss_mb(process: ServerProcess) -> float:
    """Resident memory of every process of the server (serve, tritonserver, the Python-backend stubs), in MB."""
    total = 0
    for pid in process.group_processes():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def soak(process: ServerProcess, model: str, input_name: str, batches: list, concurrency: int,
         seconds: float) -> dict:
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        started = time.perf_counter()
        while not done.wait(1.0):
            samples.append((time.perf_counter() - started, rss_mb(process)))

    sampler = threading.Thread(target=sample, daemon=True)
    before = batch_counters(process.metrics, model)
    sampler.start()
    try:
        row = run_load(parse_server(process.grpc), model, input_name, batches,
                       LoadLevel(concurrency, seconds, 0.0, max_requests=10_000_000))
    finally:
        done.set()
        sampler.join()
    row["batching"] = batching_between(before, batch_counters(process.metrics, model))
    after_10 = [mb for t, mb in samples if t >= 10]
    row["memory_mb"] = [round(mb, 1) for _, mb in samples]
    row["memory_at_10s_mb"] = after_10[0] if after_10 else None
    row["memory_end_mb"] = samples[-1][1] if samples else None
    row["memory_growth_after_10s_mb"] = (max(after_10) - after_10[0]) if after_10 else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", default="export/new2.onnx")
    parser.add_argument("--data", default=os.environ.get("EDGECLS_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--reference", help="default: <model>.reference.npz beside the ONNX file")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--timing-seconds", type=float, default=3.0, help="in process, per batch size")
    parser.add_argument("--queue-delay", type=int, default=100, help="microseconds (edgecls serve --queue-delay-us)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads in process (default: its own)")
    parser.add_argument("--serve-threads", type=int, help="edgecls serve --threads (default: its own, 1 on the CPU)")
    parser.add_argument("--json", default="results/bench-serve.json")
    args = parser.parse_args()
    levels = tuple(int(c) for c in args.concurrency.split(","))
    check_output_file(args.json)

    dataset = load_cifar10(args.data)
    with Classifier.load(args.onnx) as classifier:
        metadata = classifier.metadata
        inputs = classifier.preprocess(dataset.test_images)
    print(f"in process: {args.onnx}, batch sizes {BATCH_SIZES}", flush=True)
    local = in_process(args.onnx, inputs, args.timing_seconds, args.threads)
    print(f"  best {local['best_images_per_s']:.0f} images/s at batch {local['best_batch']}, one image p50 "
          f"{local['p50_ms_one_image']:.3f} ms", flush=True)

    serve_args = [args.onnx, "--queue-delay-us", str(args.queue_delay), "--instances", str(args.instances)]
    if args.serve_threads:
        serve_args += ["--threads", str(args.serve_threads)]
    result: dict = {"artifact": args.onnx, "data": str(args.data), "serve_args": serve_args,
                    "in_process": {k: v for k, v in local.items() if k != "logits"}}
    started = time.perf_counter()
    with ServerProcess(serve_args) as process:
        result["server_start_s"] = time.perf_counter() - started
        name = next(line for line in process.lines if line.startswith("serving ")).split("'")[1]  # "as 'new2'"
        server = parse_server(process.grpc)
        with ServedModel(server, name) as served:
            served_metadata, config = served.metadata()
            logits = served_logits(served, metadata.input_name, inputs, 64)
        agreement = float(100 * np.mean(logits.argmax(1) == local["logits"].argmax(1)))
        result["served_vs_in_process"] = {"images": len(logits), "top1_agreement": agreement,
                                          "max_abs_logit_diff": float(np.abs(logits - local["logits"]).max())}
        reference = args.reference or references.find(Path(args.onnx), metadata.model)
        if reference:
            aligned = references.resolve(reference, metadata, Path(args.onnx), dataset)
            found = parity(logits[aligned.indices], aligned.logits, aligned.labels, aligned.source)
            result["served_parity"] = found.__dict__
        print(f"served vs in process on {len(logits)} images: agreement {agreement:.2f}%, max |Δ logit| "
              f"{result['served_vs_in_process']['max_abs_logit_diff']:.3g}", flush=True)
        batches = [inputs[i : i + 1] for i in range(512)]
        rows = []
        for concurrency in levels:
            before = batch_counters(process.metrics, name)
            cpu = (group_cpu_seconds(process), own_cpu_seconds())
            row = run_load(server, name, metadata.input_name, batches, LoadLevel(concurrency, args.seconds, 1.0))
            server_cpu, client_cpu = group_cpu_seconds(process) - cpu[0], own_cpu_seconds() - cpu[1]
            row["batching"] = batching_between(before, batch_counters(process.metrics, name))
            # CPU per image over the whole level (warm-up included): server processes and this client
            row["server_cpu_ms_per_image"] = 1e3 * server_cpu / row["answered"]
            row["client_cpu_ms_per_image"] = 1e3 * client_cpu / row["answered"]
            rows.append(row)
            print(f"  concurrency {concurrency:>3}: {row['images_per_s']:7.1f} images/s, p50 {row['p50_ms']:.2f} "
                  f"p90 {row['p90_ms']:.2f} p99 {row['p99_ms']:.2f} ms, failed {row['failed']}, mean batch "
                  f"{row['batching']['mean_batch']}; CPU ms per image: server {row['server_cpu_ms_per_image']:.2f}, "
                  f"client {row['client_cpu_ms_per_image']:.2f}", flush=True)
        result["load"] = rows
        if args.soak_seconds > 0:
            print(f"soak: {args.soak_seconds:g} s at concurrency {max(levels)}", flush=True)
            result["soak"] = soak(process, name, metadata.input_name, batches, max(levels), args.soak_seconds)
            s = result["soak"]
            print(f"  {s['answered']} answered, {s['failed']} failed, {s['lost']} lost, {s['images_per_s']:.1f} "
                  f"images/s; memory {s['memory_at_10s_mb']} MB at 10 s, {s['memory_end_mb']} MB at the end", flush=True)
        code = process.stop(signal.SIGTERM)
        result["server_exit_code"] = code
        result["server_processes_left"] = process.group_processes()

    by_level = {row["concurrency"]: row for row in result["load"]}
    goals = {}
    if 32 in by_level:
        ratio = by_level[32]["images_per_s"] / local["best_images_per_s"]
        goals["throughput_c32_vs_in_process"] = {"value": ratio, "goal": ">= 0.80", "met": ratio >= 0.80}
    if 1 in by_level:
        added = by_level[1]["p50_ms"] - local["p50_ms_one_image"]
        goals["added_p50_ms_c1"] = {"value": added, "goal": "<= 2 ms", "met": added <= 2.0}
    # On a machine busy with other work, wall-clock figures depend on the share of the cores each side got; CPU time
    # per image does not: their ratio is the throughput ratio the two would reach on the same idle, CPU-bound machine.
    if 32 in by_level:
        served_cpu = by_level[32]["server_cpu_ms_per_image"] + by_level[32]["client_cpu_ms_per_image"]
        result["cpu_projection_c32"] = {"in_process_cpu_ms_per_image": local["cpu_ms_per_image_best"],
                                        "served_cpu_ms_per_image": served_cpu,
                                        "throughput_ratio": local["cpu_ms_per_image_best"] / served_cpu}
    goals["top1_agreement"] = {"value": agreement, "goal": "100.00%", "met": agreement == 100.0}
    if "soak" in result:
        s = result["soak"]
        flat = s["memory_growth_after_10s_mb"] is not None and s["memory_growth_after_10s_mb"] <= 0.05 * s["memory_at_10s_mb"]
        goals["soak"] = {"value": {"failed": s["failed"], "lost": s["lost"],
                                   "memory_growth_after_10s_mb": s["memory_growth_after_10s_mb"]},
                         "goal": "0 failed, 0 lost, memory growth after 10 s within 5%",
                         "met": s["failed"] == 0 and s["lost"] == 0 and s["complete"] and flat}
    result["goals"] = goals
    result["environment"] = environment(local["runner"])
    result["load_average"] = os.getloadavg()
    write_json(args.json, json_ready(result))
    for key, goal in goals.items():
        print(f"goal {key}: {goal['value']} (goal {goal['goal']}): {'met' if goal['met'] else 'MISSED'}")
    if "cpu_projection_c32" in result:
        cpu = result["cpu_projection_c32"]
        print(f"CPU per image: in process {cpu['in_process_cpu_ms_per_image']:.3f} ms (best batch), served at "
              f"concurrency 32 {cpu['served_cpu_ms_per_image']:.3f} ms (server + client): served throughput on an idle "
              f"CPU-bound machine would be about {cpu['throughput_ratio']:.2f} of in-process")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
