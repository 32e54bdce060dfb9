"""Peak memory of edgecls on inputs that used to take gigabytes (issue #10), each case in a fresh process.

The figure is the process's peak resident set size (`ru_maxrss`), so it counts ONNX Runtime's and Pillow's own
allocations too, not only Python's. Cases that take many images run twice, with a tenth of them and with all of
them: memory that does not grow with the number of images gives the same figure both times.

    batch              load the model and classify one batch (256 images): the floor of the cases below
    classify           classify real CIFAR-10 test images passed as one array
    classify-photos    classify 480x640 photos passed as a list (the same array repeated: the list costs nothing)
    predict            `edgecls predict` on a folder of real CIFAR-10 test JPEGs
    thin-png           decode and classify a 1 x 100000 PNG (1.5 KB)
    bench-max-batch    `edgecls bench`'s timing at the largest batch it accepts (BENCH_MAX_BATCH), data set loaded

Run from the project root (the model may be any export of new2; the images come from the real archive):
    .venv/bin/python benchmarks/bench_memory.py --onnx export/new2.onnx --data ../shared/data/cifar10-jpeg.tar.gz

Measured on the 2-core CPU machine (ONNX Runtime 1.32, busy), peak RSS in MB: batch 218; classify 324 (1,000 images)
and 325 (10,000); classify-photos 297 and 298; predict 304 (1,000 files) and 311 (10,000); thin-png 86 (the code
before issue #10: 3,746 MB and 17 s); bench-max-batch 1,094 (at 4,096, allowed before, it passed 4 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

CASES = ("batch", "classify", "classify-photos", "predict", "thin-png", "bench-max-batch")
COUNTED = ("classify", "classify-photos", "predict")  # run with a tenth of the images and with all of them


def thin_png() -> bytes:
    """A 100000 x 1 RGB PNG, written by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\x00" + bytes(range(250)) * 1200
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def prepare(archive: Path, folder: Path, count: int) -> None:
    """The first `count` test JPEGs of the real archive, as files (unchanged) and decoded into one .npy array."""
    from edgecls.runtime.images import decode

    jpegs, written = folder / "jpegs", 0
    jpegs.mkdir()
    with tarfile.open(archive, "r|*") as source:
        for member in source:
            if written == count:
                break
            if member.isfile() and "/test/" in f"/{member.name}" and member.name.lower().endswith(".jpg"):
                (jpegs / f"{written:05d}.jpg").write_bytes(source.extractfile(member).read())
                written += 1
    np.save(folder / "images.npy", np.stack([decode(path) for path in sorted(jpegs.iterdir())]))


def run_case(case: str, count: int, args: argparse.Namespace) -> str:
    """Run one case in this process; returns what it ran on."""
    from edgecls.runtime import load

    prepared = Path(args.prepared)
    if case == "predict":
        from click.testing import CliRunner

        from edgecls.cli import main

        files = sorted((prepared / "jpegs").iterdir())[:count]
        folder = prepared / f"predict-{count}"
        folder.mkdir(exist_ok=True)
        for path in files:
            if not (folder / path.name).exists():
                os.symlink(path, folder / path.name)
        result = CliRunner().invoke(main, ["predict", str(folder), "--engine", args.onnx])
        assert result.exit_code == 0 and len(result.output.splitlines()) == count, result.output[-500:]
        return f"{count:,} JPEG files"
    if case == "bench-max-batch":
        from edgecls.bench import BenchSettings, bench_model
        from edgecls.data import load_cifar10
        from edgecls.defaults import BENCH_MAX_BATCH
        from edgecls.timing import TimingSettings

        timing = TimingSettings(batch_sizes=(BENCH_MAX_BATCH,), duration=1.0, warmup=0.2)
        bench_model(args.onnx, load_cifar10(args.data), settings=BenchSettings(timing))
        return f"batch {BENCH_MAX_BATCH}"
    with load(args.onnx) as classifier:
        if case == "batch":
            classifier.classify(np.load(prepared / "images.npy")[:256])
            return "256 images"
        if case == "classify":
            images = np.load(prepared / "images.npy")[:count]
            classifier.classify(images)
            return f"{count:,} images, {images.nbytes / 1e6:.0f} MB of pixels"
        if case == "classify-photos":
            photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            classifier.classify([photo] * count)
            return f"{count:,} photos of 480x640 (0.9 MB each)"
        from edgecls.runtime.images import decode

        blob = thin_png()
        classifier.classify(decode(blob, "thin.png"))
        return f"a {len(blob):,}-byte PNG"


def measure(case: str, count: int, args: argparse.Namespace) -> dict:
    done = subprocess.run([sys.executable, __file__, "--case", case, "--count", str(count), "--onnx", args.onnx,
                           "--data", args.data, "--prepared", args.prepared], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{case} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", default="export/new2.onnx")
    parser.add_argument("--data", default=os.environ.get("EDGECLS_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--images", type=int, default=10000, help="the most images a case takes")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process (the driver's)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        started = time.perf_counter()
        detail = run_case(args.case, args.count, args)
        print(json.dumps({"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KB on Linux
                          "seconds": round(time.perf_counter() - started, 1), "detail": detail}))
        return 0
    with tempfile.TemporaryDirectory() as prepared:
        args.prepared = prepared
        prepare(Path(args.data), Path(prepared), args.images)
        print(f"{'case':16} {'peak RSS MB':>11} {'seconds':>8}  input")
        for case in CASES:
            for count in ((args.images // 10, args.images) if case in COUNTED else (0,)):
                row = measure(case, count, args)
                print(f"{case:16} {row['peak_mb']:>11} {row['seconds']:>8}  {row['detail']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
