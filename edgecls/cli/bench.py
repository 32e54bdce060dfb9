"""`edgecls bench`, `edgecls predict`."""

from __future__ import annotations

import sys

import click

from edgecls.cli.common import DATA_HELP
from edgecls.defaults import (BENCH_ALL_BATCH_SIZES, BENCH_ALL_DURATION_S, BENCH_ALL_WARMUP_S, BENCH_BATCH_SIZES,
                              BENCH_DURATION_S, BENCH_WARMUP_S, ENGINES_DIR, EXPORT_DIR, ONNX_PROVIDERS)
from edgecls.errors import EdgeclsError


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
@click.option("--data", help=DATA_HELP)
@click.option("--reference", help="Original model to compare with: a checkpoint, or reference logits (.npz). "
                                  "Default: <model>.reference.npz saved at export, when found.")
@click.option("--batch-sizes", help=f"Comma-separated batch sizes to time.  [default: {_sizes_text(BENCH_BATCH_SIZES)}; "
                                    f"with --all: {_sizes_text(BENCH_ALL_BATCH_SIZES)}]")
@click.option("--duration", type=float, help=f"Seconds of timing per batch size.  [default: {BENCH_DURATION_S:g}; "
                                             f"with --all: {BENCH_ALL_DURATION_S:g}]")
@click.option("--warmup", type=float, help=f"Seconds of warm-up before each timing.  [default: {BENCH_WARMUP_S:g}; "
                                           f"with --all: {BENCH_ALL_WARMUP_S:g}]")
@click.option("--provider", default="cpu", show_default=True, help=PROVIDER_HELP)
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime / PyTorch (default: theirs).")
@click.option("--device", help="Device for checkpoints: cpu, cuda. Default: cuda when available.")
@click.option("--export-dir", default=EXPORT_DIR, show_default=True, help="With --all: where the ONNX files are.")
@click.option("--engines-dir", default=ENGINES_DIR, show_default=True, help="With --all: where the TensorRT plans are.")
@click.option("--json", "json_path", help="Also write every figure, with the environment, to this JSON file.")
@click.option("--max-drop", type=float, metavar="POINTS", help="Exit 1 if accuracy is more than POINTS below the reference's.")
@click.option("--min-agreement", type=float, metavar="PERCENT",
              help="Exit 1 if top-1 agreement with the reference is below PERCENT.")
def bench(engine: str | None, all_checkpoint: str | None, data: str | None, reference: str | None,
          batch_sizes: str | None, duration: float | None, warmup: float | None, provider: str, threads: int | None,
          device: str | None, export_dir: str, engines_dir: str, json_path: str | None, max_drop: float | None,
          min_agreement: float | None) -> None:
    """Accuracy, parity with the original model, latency and throughput of a model file.

    Example: edgecls bench --engine export/new2.int8.onnx --data ../shared/data/cifar10-jpeg.tar.gz --min-agreement 99
    """
    from dataclasses import replace

    from edgecls.artifacts import write_json
    from edgecls.bench import ALL_ARTIFACTS_TIMING, RunnerOptions, bench_all, bench_model, format_all, format_report
    from edgecls.bench import json_ready
    from edgecls.data import load_cifar10
    from edgecls.metrics import Gate
    from edgecls.timing import TimingSettings

    if (engine is None) == (all_checkpoint is None):
        raise click.UsageError("give exactly one of --engine PATH or --all CHECKPOINT")
    timing = ALL_ARTIFACTS_TIMING if all_checkpoint else TimingSettings()
    overrides = {"batch_sizes": _batch_sizes(batch_sizes) if batch_sizes else None, "duration": duration,
                 "warmup": warmup}
    timing = replace(timing, **{key: value for key, value in overrides.items() if value is not None})
    options = RunnerOptions(provider=provider, threads=threads, device=device)
    gate = Gate(max_drop=max_drop, min_agreement=min_agreement)
    progress = sys.stderr.isatty()
    dataset = load_cifar10(data)
    if all_checkpoint:
        result = bench_all(all_checkpoint, dataset, reference, export_dir=export_dir, engines_dir=engines_dir,
                           timing=timing, options=options, gate=gate, progress=progress)
        click.echo(format_all(result))
        passed = result["passed"]
    else:
        result = bench_model(engine, dataset, reference, timing=timing, options=options, gate=gate, progress=progress)
        passed = result["gates"]["passed"]
        click.echo(format_report(result))
    if json_path:
        write_json(json_path, json_ready(result))
        click.echo(f"figures written to {json_path}")
    if not passed:
        sys.exit(1)


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--engine", required=True, help="An exported model (.onnx) or a TensorRT plan (.plan).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Labels to show per image.")
@click.option("--provider", default="cpu", show_default=True, help=PROVIDER_HELP)
def predict(images: tuple[str, ...], engine: str, top_k: int, provider: str) -> None:
    """Classify image files (or the images in directories): top-k labels with probabilities.

    Example: edgecls predict photos/ cat.jpg --engine export/new2.onnx --top-k 3
    """
    from edgecls.runtime import Classifier
    from edgecls.runtime.images import expand_paths, read_image

    files = expand_paths(images)
    pixels = [read_image(path) for path in files]  # every file is checked before any model work
    with Classifier.load(engine, provider=provider) as classifier:
        predictions = classifier.classify(pixels)
    for path, ranked in zip(files, predictions.top_k(top_k)):
        click.echo(f"{path}: " + "  ".join(f"{name} {probability:.3f}" for name, probability in ranked))


COMMANDS = (bench, predict)
