"""Runtime overhead and `edgecls bench --all` wall time, on real CIFAR-10 test images.

1. Throughput of `edgecls.runtime` on the fp32 ONNX file at batch 64, against a bare
   `onnxruntime.InferenceSession.run` loop on the same preprocessed inputs, in one run. Both use the same
   session (one thread pool: a second idle pool would spin and steal the 2 cores from the other), and they
   alternate in rounds so that load from other processes hits both alike; the medians are compared.
   Target: the runtime within 10% of the bare loop.
2. Wall time of `edgecls bench --all <checkpoint>` in a fresh process. Target: under 2 minutes on 2 cores.

Run from the project root:
    .venv/bin/python benchmarks/bench_runtime_overhead.py --data ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgecls.data import load_cifar10
from edgecls.runtime import load


def throughput(step: Callable[[np.ndarray], object], batches: list[np.ndarray], seconds: float) -> float:
    """Images per second of `step` cycling over `batches` for about `seconds`."""
    done, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            step(batch)
            done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", default="export/new2.onnx")
    parser.add_argument("--checkpoint", default="checkpoints/new2.pt", help="for the `bench --all` timing")
    parser.add_argument("--data", default=os.environ.get("EDGECLS_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per method and round")
    parser.add_argument("--skip-all", action="store_true", help="do not time `edgecls bench --all`")
    args = parser.parse_args()

    dataset = load_cifar10(args.data)
    images = dataset.test_images[: args.batch * 16]  # 16 different batches of real test images
    uint8_batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]

    with load(args.onnx) as classifier:
        session = classifier.runner.session
        preprocessed = [classifier.preprocess(batch) for batch in uint8_batches]
        methods = {
            "bare InferenceSession.run (preprocessed)": lambda x: session.run(["logits"], {"images": x}),
            "runtime run_preprocessed (preprocessed)": classifier.run_preprocessed,
            "runtime classify (uint8: + preprocessing, softmax)": classifier.classify,
        }
        inputs = {name: (uint8_batches if "uint8" in name else preprocessed) for name in methods}
        for name, step in methods.items():  # warm-up
            throughput(step, inputs[name][:2], 0.3)
        results: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, step in methods.items():
                results[name].append(throughput(step, inputs[name], args.seconds))
        threads = session.get_session_options().intra_op_num_threads

    print(f"{args.onnx}, batch {args.batch}, {args.rounds} rounds x {args.seconds:g} s, {os.cpu_count()} CPUs, "
          f"ORT intra-op threads {threads or 'default'}")
    bare = statistics.median(results[next(iter(methods))])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:52} {median:8.0f} images/s (median; range {min(values):.0f}-{max(values):.0f})  "
              f"{100 * median / bare:6.1f}% of bare")
    worst = min(statistics.median(v) for v in results.values()) / bare
    verdict_overhead = worst >= 0.9
    print(f"runtime within 10% of the bare loop: {'yes' if verdict_overhead else 'NO'} ({100 * worst:.1f}%)")

    verdict_all = True
    if not args.skip_all:
        edgecls = Path(sys.executable).with_name("edgecls")
        command = [str(edgecls), "bench", "--all", args.checkpoint, "--data", args.data]
        started = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(finished.stdout.rstrip())
        if finished.returncode not in (0, 1):
            print(finished.stderr.rstrip().splitlines()[-1] if finished.stderr.strip() else "", file=sys.stderr)
        verdict_all = finished.returncode in (0, 1) and seconds < 120
        print(f"`{' '.join(command[1:])}`: {seconds:.1f} s (exit {finished.returncode}); under 2 minutes: "
              f"{'yes' if verdict_all else 'NO'}")
    return 0 if verdict_overhead and verdict_all else 1


if __name__ == "__main__":
    sys.exit(main())
