"""`edgecls report`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecls.defaults import CALIBRATION_DIR, ENGINES_DIR, EXPORT_DIR
from edgecls.errors import EdgeclsError

DATA_HELP = ("CIFAR-10 whose test split the ONNX files are run on (any form `edgecls train` reads). "
             "Default: $EDGECLS_DATA, else ./data; without data the page shows their figures from bench files only.")


@click.command("report")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The HTML file to write.  [default: reports/<checkpoint name>.html]")
@click.option("--data", help=DATA_HELP)
@click.option("--bench", "bench_files", multiple=True, type=click.Path(dir_okay=False),
              help="A bench JSON file (`edgecls bench ... --json FILE`) to include besides those in --results-dir; "
                   "repeatable. It must hold results of this checkpoint.")
@click.option("--export-dir", default=EXPORT_DIR, show_default=True, help="Where the ONNX files and reference are.")
@click.option("--engines-dir", default=ENGINES_DIR, show_default=True, help="Where the TensorRT plans are.")
@click.option("--calibration-dir", default=CALIBRATION_DIR, show_default=True,
              help="Where the calibration records (and the int8 report) are.")
@click.option("--results-dir", default="results", show_default=True,
              help="Folder whose bench JSON files of this checkpoint are included.")
def report_command(checkpoint: str, output: str | None, data: str | None, bench_files: tuple[str, ...], export_dir: str,
           engines_dir: str, calibration_dir: str, results_dir: str) -> None:
    """Write one self-contained HTML page about a model: training curves, the paper's table, accuracy and
    confusion, parity of every artifact with the flipped images, speed, quantization.

    It gathers what exists for the checkpoint (its training log, export/, calibration/, engines/, bench JSON
    files in results/ and --bench) and leaves out, with a line naming the command, what does not. Images are
    embedded: the page needs no network and no other file. Needs matplotlib (pip install 'edgecls[report]').

    Example: edgecls report checkpoints/new2.pt --data ../shared/data/cifar10-jpeg.tar.gz -o reports/new2.html
    """
    from edgecls.formats import Folders
    from edgecls.report import build_report
    from edgecls.report.figures import require_matplotlib

    require_matplotlib()
    target = check_output(Path(output) if output else Path("reports") / f"{Path(checkpoint).stem}.html")
    result = build_report(checkpoint, target, data=data, bench_files=bench_files,
                          folders=Folders(export_dir, engines_dir, calibration_dir), results_dir=results_dir,
                          progress=sys.stderr.isatty())
    for line in result.left_out:
        click.echo(f"left out: {line}", err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {result.path}")


def check_output(path: Path) -> Path:
    """The output must be an .html file in a folder we can write, checked before the long work."""
    from edgecls.artifacts import ensure_writable_dir

    if path.suffix.lower() not in (".html", ".htm"):
        raise EdgeclsError(f"output {path} is not an .html file; pass -o with a name ending in .html")
    if path.is_dir():
        raise EdgeclsError(f"output {path} is a folder; pass -o with a file name ending in .html")
    ensure_writable_dir(path.parent)
    return path


COMMANDS = (report_command,)
