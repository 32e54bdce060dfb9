"""`edgecls export`."""

from __future__ import annotations

import sys

import click

from edgecls.formats import Int8Report
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
@click.option("--calibration-size", type=int,
              help=f"Training images used for calibration.  [default: {DEFAULT_CALIBRATION_SIZE:,}, or every training "
                   "image outside the validation split when a data set has fewer]")
@click.option("--calibration-seed", type=int, default=DEFAULT_CALIBRATION_SEED, show_default=True,
              help="Seed choosing those images.")
@click.option("--calibration-cache", type=click.Path(dir_okay=False),
              help="Reuse the ranges of an earlier calibration record (calibration/<model>.<method>.json).")
@click.option("--calibration-dir", default=CALIBRATION_DIR, show_default=True,
              help="Folder for calibration records and the int8 report.")
@click.option("--opset", type=click.IntRange(DEFAULT_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset; 17 is the newest TensorRT 8.5 (JetPack 5) parses.")
def export_command(checkpoint: str, data: str | None, out_dir: str, fp16: bool, int8: bool, target: str,
                   method: str | None, max_drop: float | None, min_agreement: float | None, calibration_size: int | None,
                   calibration_seed: int, calibration_cache: str | None, calibration_dir: str, opset: int) -> None:
    """Export a checkpoint to ONNX (fp32, optionally fp16/int8), check parity with PyTorch, build engines if possible.

    Example: edgecls export --checkpoint checkpoints/new2.pt --fp16 --int8 --data ../shared/data/cifar10-jpeg.tar.gz

    Within a budget: edgecls export --checkpoint checkpoints/new2.pt --int8 --max-drop 0.3 --min-agreement 99.5
    """
    from edgecls.engines import build_command, build_engine, unavailable_reason
    from edgecls.export import ExportRequest, export_model
    from edgecls.metrics import Gate
    from edgecls.quantize import CalibrationSettings

    # every option is checked here, before any work: a meaningless limit, method or size
    budget = Gate(max_drop=max_drop, min_agreement=min_agreement)
    calibration = CalibrationSettings(target, method, calibration_size, calibration_seed, calibration_cache)
    request = ExportRequest(checkpoint, out_dir, fp16=fp16, int8=int8, calibration=calibration,
                            calibration_dir=calibration_dir, opset=opset, budget=budget)
    report = export_model(request, data=data, progress=sys.stderr.isatty())
    if report.int8_search is not None:
        click.echo(int8_report_table(report.int8_search.report))
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


def int8_report_table(report: Int8Report) -> str:
    """The report as the terminal shows it after `edgecls export --int8 --max-drop ...`."""
    limits = [f"accuracy drop <= {report.budget['max_drop']:g} points" if report.budget["max_drop"] is not None else "",
              f"agreement >= {report.budget['min_agreement']:g}%" if report.budget["min_agreement"] is not None else ""]
    lines = [f"int8 search, target {report.target}, budget: {', '.join(l for l in limits if l)} on validation "
             f"({report.validation['note']})",
             f"  {'layer':38} {'op':13} {'params':>9} {'SQNR dB':>8} {'alone: agree':>12} {'Δacc':>6}  decision"]
    for layer in report.layers:
        lines.append(f"  {layer.name[-38:]:38} {layer.op:13} {layer.parameters:>9,} {layer.sqnr_db:>8.1f} "
                     f"{layer.alone['agreement']:>11.2f}% {layer.alone['accuracy_delta']:>+6.2f}  {layer.decision}"
                     + (f" ({layer.reason})" if layer.decision == "float" else ""))
    verdict = "holds the budget" if report.passed else "NO choice holds the budget; the best one found"
    lines.append(f"  {verdict}: {report.method} calibration, {report.int8_layers} of {len(report.layers)} layers int8, "
                 f"{len(report.candidates)} choices tried in {report.search_seconds:.0f} s")
    for split in ("validation", "test"):
        figures = report.result.get(split)
        if figures:
            lines.append(f"  {split:10}: accuracy {figures['accuracy']:.2f}% ({figures['accuracy_delta']:+.2f} vs float "
                         f"{figures['reference_accuracy']:.2f}%), agreement {figures['agreement']:.2f}%, "
                         f"flips {figures['flips']} (right->wrong {figures['right_to_wrong']}, "
                         f"wrong->right {figures['wrong_to_right']}) on {figures['images']:,} images")
    if report.result.get("test_holds_budget") is False:
        # Decisions are made on validation; on other images the figures move by sampling noise (the standard error
        # of an agreement near 99.5% on 5,000 images is about 0.1 point).
        lines.append("  note: on the test images the result misses the budget that holds on validation; figures on "
                     "different images vary by about 0.1-0.2 points: a larger --val-split or a tighter budget narrows it")
    if report.throughput:
        speeds = report.throughput["images_per_s"]
        lines.append(f"  CPU at batch {report.throughput['batch_size']}: {speeds['result']:,.0f} images/s = "
                     f"{report.throughput['vs_fp32']:.2f}x fp32 ({speeds['fp32']:,.0f}), "
                     f"{report.throughput['vs_all_int8']:.2f}x all-int8 ({speeds['all_int8']:,.0f})")
    return "\n".join(lines)


COMMANDS = (export_command,)
