"""`edgecls bench`, `edgecls predict`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from edgecls.artifacts import STDOUT
from edgecls.cli.common import DATA_HELP, check_input_file, one_line
from edgecls.defaults import (BENCH_ALL_BATCH_SIZES, BENCH_ALL_DURATION_S, BENCH_ALL_WARMUP_S, BENCH_BATCH_SIZES,
                              BENCH_DURATION_S, BENCH_MAX_BATCH, BENCH_WARMUP_S, ENGINES_DIR, EXPORT_DIR,
                              ONNX_PROVIDERS)
from edgecls.errors import EdgeclsError
from edgecls.metrics import Gate

if TYPE_CHECKING:  # the commands import these when they run, as the other heavy modules
    from edgecls.serving.client import LoadSettings
    from edgecls.video import VideoOptions


def _sizes_text(sizes: tuple) -> str:
    return ",".join(map(str, sizes))


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise EdgeclsError(f"--batch-sizes {text!r} is not a comma-separated list of positive integers, e.g. 1,8,64,256")
    return sizes


PROVIDER_HELP = f"ONNX Runtime provider: {', '.join(ONNX_PROVIDERS)}."


@click.command()
@click.option("--engine", help="Model to measure: a checkpoint (.pt), an ONNX file (.onnx) or a TensorRT plan (.plan).")
@click.option("--all", "all_checkpoint", metavar="CHECKPOINT",
              help="Instead of --engine: one row for every artifact of this checkpoint's model (export/, engines/).")
@click.option("--server", metavar="URL", help="Instead of --engine: a served model (with --model), over the wire: "
                                             "http://HOST:PORT or grpc://HOST:PORT.")
@click.option("--model", "served_model", metavar="NAME", help="With --server: the served model's name (as "
                                                                "`edgecls serve` prints it).")
@click.option("--concurrency", help="With --server: comma-separated numbers of requests in flight to time.  "
                                    "[default: 1,8,32,64]")
@click.option("--request-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --server: images per request during the load.")
@click.option("--metrics", metavar="URL", help="With --server: Triton's metrics endpoint (default: the one "
                                               "`edgecls serve` reports).")
@click.option("--data", help=DATA_HELP)
@click.option("--reference", help="Original model to compare with: a checkpoint, or reference logits (.npz). "
                                  "Default: <model>.reference.npz saved at export, when found.")
@click.option("--batch-sizes", help=f"Comma-separated batch sizes to time, each 1 to {BENCH_MAX_BATCH} (and at most "
                                    "the engine profile's maximum).  "
                                    f"[default: {_sizes_text(BENCH_BATCH_SIZES)}; with --all: {_sizes_text(BENCH_ALL_BATCH_SIZES)}]")
@click.option("--duration", type=click.FloatRange(min=0), help=f"Seconds of timing per batch size.  "
                                                               f"[default: {BENCH_DURATION_S:g}; with --all: {BENCH_ALL_DURATION_S:g}]")
@click.option("--warmup", type=click.FloatRange(min=0), help=f"Seconds of warm-up before each timing.  "
                                                             f"[default: {BENCH_WARMUP_S:g}; with --all: {BENCH_ALL_WARMUP_S:g}]")
@click.option("--provider", default="cpu", show_default=True, help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for ONNX Runtime / PyTorch, at most 1024 (default: theirs).")
@click.option("--device", help="Device for checkpoints: cpu, cuda. Default: cuda when available.")
@click.option("--export-dir", default=EXPORT_DIR, show_default=True, help="With --all: where the ONNX files are.")
@click.option("--engines-dir", default=ENGINES_DIR, show_default=True, help="With --all: where the TensorRT plans are.")
@click.option("--json", "json_path", is_flag=False, flag_value=STDOUT, metavar="FILE",
              help="Also write every figure, with the environment, to this JSON file; - (or --json alone) prints the "
                   "JSON on stdout and the table on stderr. It never replaces an input or an edgecls artifact.")
@click.option("--max-drop", type=float, metavar="POINTS",
              help="Exit 1 if accuracy is more than POINTS below the reference's.")
@click.option("--min-agreement", type=float, metavar="PERCENT",
              help="Exit 1 if top-1 agreement with the reference is below PERCENT.")
def bench(engine: str | None, all_checkpoint: str | None, server: str | None, served_model: str | None,
          concurrency: str | None, request_batch: int, metrics: str | None, data: str | None, reference: str | None,
          batch_sizes: str | None, duration: float | None, warmup: float | None, provider: str, threads: int | None,
          device: str | None, export_dir: str, engines_dir: str, json_path: str | None, max_drop: float | None,
          min_agreement: float | None) -> None:
    """Accuracy, parity with the original model, latency and throughput of a model file or a served model.

    Example: edgecls bench --engine export/new2.int8.onnx --data ../shared/data/cifar10-jpeg.tar.gz --min-agreement 99

    Served: edgecls bench --server grpc://127.0.0.1:8001 --model new2 --data ../shared/data/cifar10-jpeg.tar.gz
    """
    from dataclasses import replace

    from edgecls.artifacts import check_output_file, write_json
    from edgecls.bench import (ALL_ARTIFACTS_TIMING, BenchSettings, RunnerOptions, bench_all, bench_model, format_all,
                               format_report)
    from edgecls.bench import json_ready
    from edgecls.data import load_cifar10
    from edgecls.formats import Folders
    from edgecls.runtime.base import check_threads
    from edgecls.timing import TimingSettings

    if server is not None or served_model is not None:
        if engine is not None or all_checkpoint is not None or server is None or served_model is None:
            raise click.UsageError("--server URL goes with --model NAME, and without --engine or --all")
        from edgecls.serving.client import LoadSettings, parse_server

        parse_server(server)
        bench_served(server, served_model, LoadSettings.from_options(concurrency, request_batch, duration, warmup),
                     Gate(max_drop=max_drop, min_agreement=min_agreement), metrics=metrics, data=data,
                     reference=reference, json_path=json_path)
        return
    if (engine is None) == (all_checkpoint is None):
        raise click.UsageError("give exactly one of --engine PATH, --all CHECKPOINT or --server URL")
    timing = ALL_ARTIFACTS_TIMING if all_checkpoint else TimingSettings()
    overrides = {"batch_sizes": _batch_sizes(batch_sizes) if batch_sizes else None, "duration": duration,
                 "warmup": warmup}
    timing = replace(timing, **{key: value for key, value in overrides.items() if value is not None})
    options = RunnerOptions(provider=provider, threads=check_threads(threads), device=device)
    gate = Gate(max_drop=max_drop, min_agreement=min_agreement)
    # Every file named is checked before the data is read and the bench runs: the cheapest, most specific first.
    if all_checkpoint:
        check_input_file(all_checkpoint, "checkpoint")
    else:
        check_input_file(engine, "model file")
    if reference is not None:
        check_input_file(reference, "reference")
    to_stdout = json_path == STDOUT
    if json_path and not to_stdout:
        check_output_file(json_path, inputs=(engine, all_checkpoint, reference, data), stdout_ok=True)
    settings = BenchSettings(timing, options, gate, progress=sys.stderr.isatty())
    dataset = load_cifar10(data)
    if all_checkpoint:
        result = bench_all(all_checkpoint, dataset, reference, folders=Folders(export_dir, engines_dir),
                           settings=settings)
        click.echo(format_all(result), err=to_stdout)
        passed = result["passed"]
    else:
        result = bench_model(engine, dataset, reference, settings=settings)
        passed = result["gates"]["passed"]
        click.echo(format_report(result), err=to_stdout)
    if to_stdout:
        click.echo(json.dumps(json_ready(result), indent=2))
    elif json_path:
        write_json(json_path, json_ready(result))
        click.echo(f"figures written to {json_path}")
    if not passed:
        sys.exit(1)


def bench_served(server: str, model: str, load: LoadSettings, gate: Gate, *, metrics: str | None,
                 data: str | None, reference: str | None, json_path: str | None) -> None:
    """bench --server: the served model over the wire (edgecls.serving.bench). A run the server broke off is
    written (marked incomplete) before its one-line error."""
    from edgecls.artifacts import check_output_file, write_json
    from edgecls.bench import json_ready
    from edgecls.data import load_cifar10
    from edgecls.serving.bench import bench_server, format_served

    if reference is not None:
        check_input_file(reference, "reference")
    if json_path:
        check_output_file(json_path)
    dataset = load_cifar10(data)
    result = bench_server(server, model, dataset, reference, load=load, gate=gate, metrics=metrics,
                          progress=sys.stderr.isatty())
    click.echo(format_served(result))
    if json_path:
        write_json(json_path, json_ready(result.to_dict()))
        click.echo(f"figures written to {json_path}")
    if not result.complete:
        raise EdgeclsError(str(result.error))
    if not result.gates["passed"]:
        sys.exit(1)


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--engine", required=True, help="An exported model (.onnx) or a TensorRT plan (.plan).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Labels to show per image.")
@click.option("--provider", default="cpu", show_default=True, help=PROVIDER_HELP)
@click.option("--every", type=int, help="Video: classify every Nth frame.  [default: 1]")
@click.option("--max-frames", type=int, help="Video: stop after reading this many frames.")
@click.option("--batch-size", type=int, help="Video: frames per inference batch (default: the engine's maximum, "
                                             "at most 256; a live source never waits to fill one).")
@click.option("--queue", "queue_frames", type=int, help="Video: frames held between decoding and inference (default: "
                                                        "2 batches for a file, 1 for a live source, which drops the "
                                                        "oldest when full).")
@click.option("-o", "--output", help="Video: also write the frames with their top-1 class drawn on (.mp4, .avi, "
                                     ".mkv).")
def predict(images: tuple[str, ...], engine: str, top_k: int, provider: str, every: int | None,
            max_frames: int | None, batch_size: int | None, queue_frames: int | None, output: str | None) -> None:
    """Classify image files (or the images in directories): top-k labels with probabilities. Or a video source:
    a video file, a camera (/dev/video0 or an index), an RTSP/HTTP stream URL or a GStreamer pipeline
    ('nvarguscamerasrc ! ... ! appsink'), printed as one JSON line per frame, then a summary on stderr.

    Every file is checked (from its header) before the model runs; then the images are read, classified and printed
    one batch at a time, so any number of them fits in memory.

    Example: edgecls predict photos/ cat.jpg --engine export/new2.onnx --top-k 3

    Example: edgecls predict street.mp4 --engine export/new2.onnx --every 2 -o street.labels.mp4
    """
    from edgecls.video import parse_source

    video = [source for source in map(parse_source, images) if source is not None]
    video_options = {"--every": every, "--max-frames": max_frames, "--batch-size": batch_size,
                     "--queue": queue_frames, "-o": output}
    if video:
        if len(images) != 1:
            raise EdgeclsError(f"give one video source at a time (got {len(images)} arguments, among them "
                               f"{video[0].text}); images and videos go to separate runs")
        from edgecls.video import VideoOptions

        options = VideoOptions(top_k=top_k, every=1 if every is None else every, max_frames=max_frames,
                               batch_size=batch_size, queue_frames=queue_frames)
        sys.exit(_predict_video(video[0], engine, options, provider, output))
    given = [label for label, value in video_options.items() if value is not None]
    if given:
        raise EdgeclsError(f"video options ({', '.join(given)}) need a video source; {images[0]} is not one (videos "
                           "end in .mp4, .mkv, .avi, ...; cameras are /dev/videoN or an index)")
    from tqdm import tqdm

    from edgecls.runtime import Classifier
    from edgecls.runtime.images import check_image, expand_paths, fitted_batches

    check_input_file(engine, "model file")
    files = expand_paths(images)
    for path in files:
        check_image(path)
    with Classifier.load(engine, provider=provider) as classifier:
        batches = fitted_batches(files, classifier.preprocess, classifier.batch_size)
        with tqdm(total=len(files), unit="img", disable=not sys.stderr.isatty(), leave=False) as bar:
            for paths, fitted in batches:
                for path, ranked in zip(paths, classifier.classify(fitted).top_k(top_k)):
                    bar.write(f"{one_line(path)}: " + "  ".join(f"{name} {probability:.3f}" for name, probability in ranked),
                              file=sys.stdout)
                bar.update(len(paths))


def _predict_video(source, engine: str, options: VideoOptions, provider: str, output: str | None) -> int:
    """The video branch of predict (edgecls.video); the exit code: 0, 1 when the source failed, 130 on Ctrl-C."""
    from edgecls.video import predict_video

    check_input_file(engine, "model file")
    summary = predict_video(source, engine, options, provider=provider, output=output)
    return 130 if summary.interrupted else 1 if summary.failed else 0


COMMANDS = (bench, predict)
