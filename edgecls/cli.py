"""The `edgecls` command: a thin layer over the stage modules.

Heavy imports (torch, onnx) happen inside each command so that `edgecls --help` is instant.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from edgecls.errors import EdgeclsError

DATA_HELP = "CIFAR-10 location: a cifar-10-batches-py folder, cifar-10-python.tar.gz, an image-folder tree or a .tar(.gz) of one. Default: $EDGECLS_DATA, else ./data."


class _Group(click.Group):
    """Turns EdgeclsError into one line on stderr and exit code 2, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeclsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edgecls")
def main() -> None:
    """Train, export, build and verify compact CIFAR-10 classifiers for NVIDIA Jetson."""


# --- train/eval/models commands ---
@main.command()
def models() -> None:
    """List the models with their size, cost and the paper's Table 2 figures.

    Example: edgecls models
    """
    from edgecls.models import MODELS, create_model, model_stats

    click.echo(f"{'model':6} {'paper name':14} {'params':>9} {'fc params':>10} {'fc %':>6} {'MMACs':>7}   "
               f"{'paper params':>12} {'paper fc %':>10}")
    notes = []
    for name, spec in MODELS.items():
        stats = model_stats(create_model(name))
        click.echo(f"{name:6} {spec.paper_name:14} {stats.params:>9,} {stats.fc_params:>10,} {stats.fc_share:>6.1f} "
                   f"{stats.macs / 1e6:>7.1f}   {spec.paper.params:>12,} {spec.paper.fc_share:>10.1f}")
        notes.append(f"  {name}: {spec.description}. {spec.note}.")
    click.echo("\n".join(["", "Notes:", *notes]))


@main.command()
@click.option("--model", "model_name", default="new2", show_default=True, help="Model to train (see `edgecls models`).")
@click.option("--data", help=DATA_HELP)
@click.option("--download", is_flag=True, help="Download CIFAR-10 with torchvision into the data folder first.")
@click.option("--recipe", type=click.Choice(["fast", "paper"]), default="fast", show_default=True,
              help="fast: best accuracy per second; paper: batch 128, 120 epochs, 6 crops per image.")
@click.option("--epochs", type=int, help="Override the recipe's epoch count.")
@click.option("--batch-size", type=int, help="Override the recipe's batch size (the learning rate scales with it).")
@click.option("--lr", type=float, help="Override the peak learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", help="cuda, cuda:1, cpu ... Default: cuda when available.")
@click.option("--out", "out_dir", default="checkpoints", show_default=True, help="Folder for checkpoints and the log.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, help="Measure test accuracy every N epochs and keep the best checkpoint.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from <out>/<model>.pt.")
@click.option("--train-images", type=click.IntRange(min=1), help="Use a seeded subset of this many training images (quick CPU runs).")
@click.option("--test-images", type=click.IntRange(min=1), help="Use a seeded subset of this many test images.")
def train(model_name: str, data: str | None, download: bool, recipe: str, epochs: int | None, batch_size: int | None,
          lr: float | None, seed: int, device: str | None, out_dir: str, eval_every: int, resume: bool,
          train_images: int | None, test_images: int | None) -> None:
    """Train a model on CIFAR-10 and write <out>/<model>.pt.

    Example: edgecls train --model new2 --data ../shared/data/cifar10-jpeg.tar.gz --epochs 40
    """
    import time

    from edgecls.data import load_cifar10
    from edgecls.models import create_model
    from edgecls.evaluate import pick_device
    from edgecls.train import train as run_training
    from edgecls.train import training_plan

    create_model(model_name)  # an unknown name or impossible settings fail before the data is read
    training_plan(recipe, epochs, batch_size, lr)
    pick_device(device)
    started = time.perf_counter()
    dataset = load_cifar10(data, download=download)
    if train_images is not None or test_images is not None:
        dataset = dataset.subset(train_images, test_images, seed=seed)
    click.echo(f"data: {dataset.source}: {len(dataset.train_images):,} training / {len(dataset.test_images):,} test "
               f"images, loaded in {time.perf_counter() - started:.1f} s", err=True)
    result = run_training(model_name, dataset, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          device=device, out_dir=out_dir, eval_every=eval_every, resume=resume)
    click.echo(f"{model_name}: test accuracy {result.test_accuracy:.2f}% (single center crop) after "
               f"{result.train_seconds:.1f} s of training ({result.images_per_second:,.0f} images/s)")
    click.echo(f"checkpoint: {result.checkpoint}" + (f", best: {result.best_checkpoint}" if result.best_checkpoint else ""))


@main.command("eval")
@click.option("--checkpoint", required=True, help="A checkpoint written by `edgecls train`.")
@click.option("--data", help=DATA_HELP)
@click.option("--mirror", is_flag=True, help="Average the center crop with its mirror image.")
@click.option("--device", help="cuda or cpu. Default: cuda when available.")
def eval_command(checkpoint: str, data: str | None, mirror: bool, device: str | None) -> None:
    """Test accuracy of a checkpoint, overall and per class.

    Example: edgecls eval --checkpoint checkpoints/new2.pt --mirror
    """
    from edgecls.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, data, mirror=mirror, device=device)
    click.echo(f"{report.model}: test accuracy {report.accuracy:.2f}% on {report.images:,} images "
               f"({'center + mirrored crop' if mirror else 'single center crop'})")
    for name, value in report.per_class.items():
        click.echo(f"  {name:12} {value:6.2f}%" if value is not None else f"  {name:12}      -")
# --- end train/eval/models commands ---

# --- export/build commands ---
@main.command("export")
@click.option("--checkpoint", required=True, help="A checkpoint written by `edgecls train`.")
@click.option("--data", help=DATA_HELP + " Calibration uses its training split, parity its test split.")
@click.option("--out", "out_dir", default="export", show_default=True, help="Folder for the ONNX files and reference logits.")
@click.option("--fp16", is_flag=True, help="Also write <model>.fp16.onnx (float16 inside, float32 I/O).")
@click.option("--int8", is_flag=True, help="Also write <model>.int8.onnx (Q/DQ, calibrated on the training split).")
@click.option("--target", type=click.Choice(["trt", "cpu"]), default="trt", show_default=True,
              help="int8 form: trt = TensorRT's rules (symmetric s8, float biases); cpu = fastest on ONNX Runtime x86.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="percentile",
              show_default=True, help="Calibration method (percentile: 99.999th, best agreement measured here).")
@click.option("--calibration-size", type=int, default=1024, show_default=True, help="Training images used for calibration.")
@click.option("--calibration-seed", type=int, default=0, show_default=True, help="Seed choosing those images.")
@click.option("--calibration-cache", type=click.Path(dir_okay=False),
              help="Reuse the ranges of an earlier calibration record (calibration/<model>.<method>.json).")
@click.option("--calibration-dir", default="calibration", show_default=True, help="Folder for calibration records.")
@click.option("--opset", type=click.IntRange(17, 21), default=17, show_default=True,
              help="ONNX opset; 17 is the newest TensorRT 8.5 (JetPack 5) parses.")
def export_command(checkpoint: str, data: str | None, out_dir: str, fp16: bool, int8: bool, target: str, method: str,
                   calibration_size: int, calibration_seed: int, calibration_cache: str | None, calibration_dir: str,
                   opset: int) -> None:
    """Export a checkpoint to ONNX (fp32, optionally fp16/int8), check parity with PyTorch, build engines if possible.

    Example: edgecls export --checkpoint checkpoints/new2.pt --fp16 --int8 --data ../shared/data/cifar10-jpeg.tar.gz
    """
    from edgecls.engines import build_command, build_engine, unavailable_reason
    from edgecls.export import export_model

    report = export_model(checkpoint, out_dir, data=data, fp16=fp16, int8=int8, target=target, method=method,
                          calibration_size=calibration_size, calibration_seed=calibration_seed,
                          calibration_cache=calibration_cache, calibration_dir=calibration_dir, opset=opset)
    for result in report.parity:
        click.echo(result.line())
    for note in report.notes:
        click.echo(note, err=True)
    if not report.passed:
        sys.exit(1)
    click.echo(f"wrote {', '.join(str(p) for p in report.files.values())} and {report.reference} in {report.seconds:.1f} s")
    if report.calibration is not None:
        click.echo(f"calibration record: {report.calibration}")
    # Engines for the reduced precisions; the cpu-target int8 file (u8 activations) is for ONNX Runtime only.
    to_build = [path for precision, path in report.files.items()
                if precision == "fp16" or (precision == "int8" and target == "trt")]
    if not to_build:
        return
    reason = unavailable_reason()
    if reason is not None:
        click.echo(f"no engine built: {reason}. On the device, run:")
        for path in to_build:
            click.echo(f"  {build_command(path)}")
        return
    for path in to_build:
        plan = build_engine(path)
        click.echo(f"built {plan} (manifest {plan}.json)")


@main.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "plan", type=click.Path(dir_okay=False),
              help="Engine file. Default: engines/<onnx name>.plan; the manifest goes beside it as .plan.json.")
@click.option("--batch", default="1:64:256", show_default=True, help="Batch optimization profile MIN:OPT:MAX.")
@click.option("--workspace", type=click.IntRange(16), default=1024, show_default=True, help="Builder workspace in MiB.")
def build_engine_command(onnx_file: str, plan: str | None, batch: str, workspace: int) -> None:
    """Build a TensorRT engine from an exported ONNX file (on the device that will run it).

    Example: edgecls build export/new2.int8.onnx -o engines/new2.int8.plan --batch 1:64:256
    """
    from edgecls.engines import build_engine, parse_batch

    path = build_engine(onnx_file, plan, batch=parse_batch(batch), workspace_mib=workspace)
    click.echo(f"built {path} (manifest {path}.json)")
# --- end export/build commands ---

# --- bench/predict commands ---
def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise EdgeclsError(f"--batch-sizes {text!r} is not a comma-separated list of positive integers, e.g. 1,8,64,256")
    return sizes


@main.command()
@click.option("--engine", help="Model to measure: a checkpoint (.pt), an ONNX file (.onnx) or a TensorRT plan (.plan).")
@click.option("--all", "all_checkpoint", metavar="CHECKPOINT",
              help="Instead of --engine: one row for every artifact of this checkpoint's model (export/, engines/).")
@click.option("--data", help=DATA_HELP)
@click.option("--reference", help="Original model to compare with: a checkpoint, or reference logits (.npz). "
                                  "Default: <model>.reference.npz saved at export, when found.")
@click.option("--batch-sizes", help="Comma-separated batch sizes to time.  [default: 1,8,64,256; with --all: 1,256]")
@click.option("--duration", type=float, help="Seconds of timing per batch size.  [default: 2; with --all: 0.5]")
@click.option("--warmup", type=float, help="Seconds of warm-up before each timing.  [default: 0.5; with --all: 0.2]")
@click.option("--provider", default="cpu", show_default=True, help="ONNX Runtime provider: cpu, cuda, tensorrt.")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime / PyTorch (default: theirs).")
@click.option("--device", help="Device for checkpoints: cpu, cuda. Default: cuda when available.")
@click.option("--export-dir", default="export", show_default=True, help="With --all: where the ONNX files are.")
@click.option("--engines-dir", default="engines", show_default=True, help="With --all: where the TensorRT plans are.")
@click.option("--json", "json_path", help="Also write every figure, with the environment, to this JSON file.")
@click.option("--max-drop", type=float, metavar="POINTS", help="Exit 1 if accuracy is more than POINTS below the reference's.")
@click.option("--min-agreement", type=float, metavar="PERCENT", help="Exit 1 if top-1 agreement with the reference is below PERCENT.")
def bench(engine: str | None, all_checkpoint: str | None, data: str | None, reference: str | None,
          batch_sizes: str | None, duration: float | None, warmup: float | None, provider: str, threads: int | None,
          device: str | None, export_dir: str, engines_dir: str, json_path: str | None, max_drop: float | None,
          min_agreement: float | None) -> None:
    """Accuracy, parity with the original model, latency and throughput of a model file.

    Example: edgecls bench --engine export/new2.int8.onnx --data ../shared/data/cifar10-jpeg.tar.gz --min-agreement 99
    """
    from edgecls.artifacts import write_json
    from edgecls.bench import apply_gates, bench_all, bench_model, format_all, format_report, json_ready
    from edgecls.data import load_cifar10

    if (engine is None) == (all_checkpoint is None):
        raise click.UsageError("give exactly one of --engine PATH or --all CHECKPOINT")
    sizes = _batch_sizes(batch_sizes or ("1,256" if all_checkpoint else "1,8,64,256"))
    progress = sys.stderr.isatty()
    dataset = load_cifar10(data)
    if all_checkpoint:
        result = bench_all(all_checkpoint, dataset, reference, export_dir=export_dir, engines_dir=engines_dir,
                           batch_sizes=sizes, duration=0.5 if duration is None else duration,
                           warmup=0.2 if warmup is None else warmup, provider=provider, threads=threads,
                           device=device, max_drop=max_drop, min_agreement=min_agreement, progress=progress)
        click.echo(format_all(result))
        passed = result["passed"]
    else:
        result = bench_model(engine, dataset, reference, batch_sizes=sizes, duration=2.0 if duration is None else duration,
                             warmup=0.5 if warmup is None else warmup, provider=provider, threads=threads,
                             device=device, progress=progress,
                             require_reference=max_drop is not None or min_agreement is not None)
        passed = apply_gates(result, max_drop, min_agreement)["passed"]
        click.echo(format_report(result))
    if json_path:
        write_json(json_path, json_ready(result))
        click.echo(f"figures written to {json_path}")
    if not passed:
        sys.exit(1)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--engine", required=True, help="An exported model (.onnx) or a TensorRT plan (.plan).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Labels to show per image.")
@click.option("--provider", default="cpu", show_default=True, help="ONNX Runtime provider: cpu, cuda, tensorrt.")
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
# --- end bench/predict commands ---

from edgecls.cli_report import report_command  # noqa: E402  (edgecls report, issue #12)
main.add_command(report_command)
