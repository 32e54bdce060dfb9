"""`edgecls export`."""

from __future__ import annotations

import sys

import click

from edgecls.cli.common import DATA_HELP
from edgecls.defaults import (CALIBRATION_DIR, CALIBRATION_METHODS, DEFAULT_CALIBRATION_SEED, DEFAULT_CALIBRATION_SIZE,
                              DEFAULT_METHOD, DEFAULT_OPSET, EXPORT_DIR, MAX_OPSET, QUANT_TARGETS)


@click.command("export")
@click.option("--checkpoint", required=True, help="A checkpoint written by `edgecls train`.")
@click.option("--data", help=DATA_HELP + " Calibration uses its training split, parity its test split.")
@click.option("--out", "out_dir", default=EXPORT_DIR, show_default=True,
              help="Folder for the ONNX files and reference logits.")
@click.option("--fp16", is_flag=True, help="Also write <model>.fp16.onnx (float16 inside, float32 I/O).")
@click.option("--int8", is_flag=True,
              help="Also write <model>.int8.onnx (Q/DQ, calibrated on training images outside the validation split).")
@click.option("--target", type=click.Choice(QUANT_TARGETS), default=QUANT_TARGETS[0], show_default=True,
              help="int8 form: trt = TensorRT's rules (symmetric s8, float biases); cpu = fastest on ONNX Runtime x86.")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS),
              help=f"Calibration method. Default: {DEFAULT_METHOD} (99.999th, best agreement measured here); with "
                   "--max-drop/--min-agreement, every method is tried.")
@click.option("--max-drop", type=float, metavar="POINTS",
              help="With --int8: the int8 file may lose at most POINTS of accuracy against the float model on the "
                   "validation images; the layers that cost most are moved back to float until it holds. "
                   "Example: --int8 --max-drop 0.3 --min-agreement 99.5")
@click.option("--min-agreement", type=float, metavar="PERCENT",
              help="With --int8: the int8 file must give the float model's top-1 class on at least PERCENT of the "
                   "validation images (as --max-drop). Exit 1, installing nothing, when no choice holds the budget.")
@click.option("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE, show_default=True,
              help="Training images used for calibration.")
@click.option("--calibration-seed", type=int, default=DEFAULT_CALIBRATION_SEED, show_default=True,
              help="Seed choosing those images.")
@click.option("--calibration-cache", type=click.Path(dir_okay=False),
              help="Reuse the ranges of an earlier calibration record (calibration/<model>.<method>.json).")
@click.option("--calibration-dir", default=CALIBRATION_DIR, show_default=True,
              help="Folder for calibration records and the int8 report.")
@click.option("--opset", type=click.IntRange(DEFAULT_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset; 17 is the newest TensorRT 8.5 (JetPack 5) parses.")
def export_command(checkpoint: str, data: str | None, out_dir: str, fp16: bool, int8: bool, target: str,
                   method: str | None, max_drop: float | None, min_agreement: float | None, calibration_size: int,
                   calibration_seed: int, calibration_cache: str | None, calibration_dir: str, opset: int) -> None:
    """Export a checkpoint to ONNX (fp32, optionally fp16/int8), check parity with PyTorch, build engines if possible.

    Example: edgecls export --checkpoint checkpoints/new2.pt --fp16 --int8 --data ../shared/data/cifar10-jpeg.tar.gz

    Within a budget: edgecls export --checkpoint checkpoints/new2.pt --int8 --max-drop 0.3 --min-agreement 99.5
    """
    from edgecls.engines import build_command, build_engine, unavailable_reason
    from edgecls.export import export_model
    from edgecls.int8_budget import format_report
    from edgecls.metrics import Gate

    budget = Gate(max_drop=max_drop, min_agreement=min_agreement)  # a meaningless limit fails here, before any work
    report = export_model(checkpoint, out_dir, data=data, fp16=fp16, int8=int8, target=target, method=method,
                          calibration_size=calibration_size, calibration_seed=calibration_seed,
                          calibration_cache=calibration_cache, calibration_dir=calibration_dir, opset=opset,
                          budget=budget, progress=sys.stderr.isatty())
    if report.int8_search is not None:
        click.echo(format_report(report.int8_search.report))
    for result in report.parity:
        click.echo(result.line())
    for note in report.notes:
        click.echo(note, err=True)
    if not report.passed:
        sys.exit(1)
    click.echo(f"wrote {', '.join(str(p) for p in report.files.values())} and {report.reference} in {report.seconds:.1f} s")
    if report.calibration is not None:
        click.echo(f"calibration record: {report.calibration}")
    if report.int8_report is not None:
        click.echo(f"int8 report: {report.int8_report}")
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


COMMANDS = (export_command,)
