"""Video predict and the DeepStream config, measured on real CIFAR-10 test images, in one run (JSON out).

1. Throughput: `edgecls predict VIDEO` (decode thread + batched inference + JSON lines, `edgecls.video.run_video` on
   a lossless FFV1 video of the test images, one per frame) against `edgecls bench`'s end-to-end throughput
   (`classify` on uint8 batches, `edgecls.timing.time_classifier`) at the same batch size and backend, alternating
   in rounds so that load from other processes hits both alike; medians compared. Goal: video >= 85% of bench.
2. Memory: peak RSS of `predict` on the video and on a video 10 times as long, each in a fresh process. Goal: growth
   under 50 MB.
3. DeepStream: top-1 agreement of nvinfer's preprocessing (emulated in numpy) through the folded ONNX of `edgecls
   deploy deepstream` with the original model's reference logits, on the whole test split, for every emulated
   scaling option. Goal: >= 99.5% as configured.

Run from the project root (an fp32 export with its reference logits beside it):
    .venv/bin/python benchmarks/bench_video.py --onnx export/new2.onnx --data ../shared/data/cifar10-jpeg.tar.gz \\
        --json results/bench-video.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecls.artifacts import write_json
from edgecls.data import load_cifar10
from edgecls.deepstream import DeepStreamRequest, deploy_deepstream
from edgecls.runtime import load
from edgecls.timing import TimingSettings, environment, time_classifier
from edgecls.video import OpenCVSource, SourceSpec, VideoOptions, run_video

THROUGHPUT_GOAL = 0.85
RSS_GROWTH_GOAL_MB = 50.0
AGREEMENT_GOAL = 99.5

# Run in a fresh process: predict on one video, then its peak RSS (Linux: ru_maxrss in KiB) and summary as JSON.
RSS_CHILD = """
import json, os, resource, sys
from edgecls.video import VideoOptions, parse_source, predict_video
with open(os.devnull, "w") as sink:
    summary = predict_video(parse_source(sys.argv[1]), sys.argv[2], VideoOptions(batch_size=int(sys.argv[3])),
                            out=sink, err=sink)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "frames": summary.frames_classified, "seconds": summary.wall_seconds,
                  "fps": summary.throughput_fps}))
"""


def write_video(path: Path, images: np.ndarray, repeats: int = 1) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30.0, images.shape[2:0:-1])
    bgr = np.ascontiguousarray(images[..., ::-1])
    for _ in range(repeats):
        for frame in bgr:
            writer.write(frame)
    writer.release()
    return path


def video_fps(video: Path, classifier, batch: int) -> tuple[float, dict]:
    source = OpenCVSource(SourceSpec(str(video), "file"))
    with open(os.devnull, "w") as sink:
        try:
            summary = run_video(source, classifier, VideoOptions(batch_size=batch),
                                on_result=lambda result: sink.write(result.json_line() + "\n"))
        finally:
            source.close()
    return summary.throughput_fps, summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", default="export/new2.onnx")
    parser.add_argument("--data", default=os.environ.get("EDGECLS_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=2000, help="frames of the 1x video (test images, one each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="bench timing per round")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()

    dataset = load_cifar10(args.data)
    images = dataset.test_images[: args.frames]
    record: dict = {"onnx": args.onnx, "batch_size": args.batch, "frames": len(images)}
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-video-") as work:
        work = Path(work)
        video = write_video(work / "test.mkv", images)
        long_video = write_video(work / "test-10x.mkv", images, repeats=10)

        # 1. Throughput, alternating rounds.
        with load(args.onnx) as classifier:
            settings = TimingSettings(batch_sizes=(args.batch,), duration=args.seconds, warmup=0.5, model_only=False)
            video_fps(video, classifier, args.batch)  # warm-up
            bench_rounds, video_rounds, last_summary = [], [], {}
            for _ in range(args.rounds):
                row = time_classifier(classifier, "onnx fp32", images, settings)[0]
                bench_rounds.append(row["images_per_s"])
                fps, last_summary = video_fps(video, classifier, args.batch)
                video_rounds.append(fps)
            info = classifier.describe()
        bench_median, video_median = statistics.median(bench_rounds), statistics.median(video_rounds)
        record["throughput"] = {
            "bench_end_to_end_images_per_s": bench_rounds, "video_predict_frames_per_s": video_rounds,
            "bench_median": bench_median, "video_median": video_median, "ratio": video_median / bench_median,
            "goal": THROUGHPUT_GOAL, "met": video_median / bench_median >= THROUGHPUT_GOAL,
            "last_video_summary": last_summary}
        print(f"throughput at batch {args.batch}: video predict {video_median:,.0f} frames/s vs bench end-to-end "
              f"{bench_median:,.0f} images/s = {100 * video_median / bench_median:.1f}% (goal >= "
              f"{100 * THROUGHPUT_GOAL:.0f}%); rounds {[round(v) for v in video_rounds]} vs "
              f"{[round(v) for v in bench_rounds]}")

        # 2. Peak RSS at 1x and 10x the video length, each in a fresh process.
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        rss = {}
        for label, path in (("1x", video), ("10x", long_video)):
            done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), args.onnx, str(args.batch)],
                                  capture_output=True, text=True, env=env, check=True)
            rss[label] = json.loads(done.stdout.strip().splitlines()[-1])
        growth = rss["10x"]["peak_rss_mb"] - rss["1x"]["peak_rss_mb"]
        record["memory"] = {**rss, "growth_mb": growth, "goal_mb": RSS_GROWTH_GOAL_MB,
                            "met": growth < RSS_GROWTH_GOAL_MB}
        print(f"peak RSS: {rss['1x']['peak_rss_mb']:.1f} MB on {rss['1x']['frames']:,} frames, "
              f"{rss['10x']['peak_rss_mb']:.1f} MB on {rss['10x']['frames']:,}: growth {growth:+.1f} MB (goal < "
              f"{RSS_GROWTH_GOAL_MB:.0f} MB)")

        # 3. DeepStream-emulated agreement on the whole test split.
        started = time.perf_counter()
        report = deploy_deepstream(args.onnx, work / "deepstream", dataset, DeepStreamRequest(precision="fp32"))
        configured = report.configured
        record["deepstream"] = {**report.to_dict(), "goal": AGREEMENT_GOAL,
                                "met": configured.agreement >= AGREEMENT_GOAL,
                                "seconds": time.perf_counter() - started}
        print(f"DeepStream, emulated, as configured: {configured.line()} (goal >= {AGREEMENT_GOAL}%)")
        for found in report.options:
            print(f"  {found.line()}")

    record["environment"] = environment(info)
    if args.json:
        write_json(args.json, record)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
