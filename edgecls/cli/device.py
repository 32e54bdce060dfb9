"""The commands run on the device itself: `edgecls build`, `edgecls doctor`."""

from __future__ import annotations

import json
import sys
from typing import Optional

import click

from edgecls.artifacts import STDOUT
from edgecls.cli.common import DATA_HELP
from edgecls.defaults import DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB, EXPORT_DIR


@click.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "plan", type=click.Path(dir_okay=False),
              help="Engine file. Default: engines/<onnx name>.plan; the manifest goes beside it as .plan.json.")
@click.option("--batch", help="Batch optimization profile MIN:OPT:MAX.  [default: "
                              f"{':'.join(map(str, DEFAULT_BATCH_PROFILE))}; with --dla: OPT:OPT:OPT]")
@click.option("--workspace", type=click.IntRange(16), default=DEFAULT_WORKSPACE_MIB, show_default=True,
              help="Builder workspace in MiB.")
@click.option("--dla", "dla_core", type=int, metavar="CORE",
              help="Build for this Jetson DLA core (0 or 1 on Xavier / AGX Orin), GPU fallback on; fp16 and int8 "
                   "files only, one fixed batch size. Example: --dla 0")
@click.option("--min-dla-share", type=float, default=None, metavar="SHARE",
              help="With --dla: fail (writing nothing) when TensorRT runs less than this share of the layers on the "
                   "DLA; 0 keeps any plan.  [default: 0.5]")
def build_engine_command(onnx_file: str, plan: Optional[str], batch: Optional[str], workspace: int,
                         dla_core: Optional[int], min_dla_share: Optional[float]) -> None:
    """Build a TensorRT engine from an exported ONNX file (on the device that will run it).

    Example: edgecls build export/new2.int8.onnx -o engines/new2.int8.plan --batch 1:64:256

    On a Jetson with DLA: edgecls build export/new2.fp16.onnx -o engines/new2.fp16.dla0.plan --dla 0
    (prints how many layers TensorRT put on the DLA and which fell back to the GPU)
    """
    from edgecls.engines import DEFAULT_MIN_DLA_SHARE, LayerPlacement, build_engine, parse_batch
    from edgecls.errors import EdgeclsError
    from edgecls.formats import EngineManifest

    if min_dla_share is not None and dla_core is None:
        raise EdgeclsError("--min-dla-share applies to DLA builds only: add --dla CORE, or leave it out")

    if batch is not None:
        profile = parse_batch(batch)
    elif dla_core is not None:  # a DLA runs one batch size: the default profile's optimum
        profile = (DEFAULT_BATCH_PROFILE[1],) * 3
    else:
        profile = DEFAULT_BATCH_PROFILE
    path = build_engine(onnx_file, plan, batch=profile, workspace_mib=workspace, dla_core=dla_core,
                        min_dla_share=DEFAULT_MIN_DLA_SHARE if min_dla_share is None else min_dla_share)
    click.echo(f"built {path} (manifest {path}.json)")
    manifest = EngineManifest.read(path)
    if manifest.dla_core is not None and manifest.layers_on_dla is not None:
        placement = LayerPlacement(tuple(manifest.layers_on_dla), tuple(manifest.layers_on_gpu or ()))
        click.echo(f"layers on {placement.summary(manifest.dla_core)}")


@click.command("doctor")
@click.option("--export-dir", default=EXPORT_DIR, show_default=True,
              help="Where to look for exported fp16 / int8 ONNX files to build test engines from; without them the "
                   "doctor makes a small probe model.")
@click.option("--data", help="Run the test engines on these test images (else random ones). " + DATA_HELP)
@click.option("--no-build", is_flag=True, help="Only report the facts and build no test engine (then exit 0 means "
                                               "nothing is missing, not that an engine ran).")
@click.option("--json", "json_path", is_flag=False, flag_value=STDOUT, metavar="FILE",
              help="The report as JSON instead of a table: --json (or --json -) prints it, --json FILE writes it.")
def doctor_command(export_dir: str, data: Optional[str], no_build: bool, json_path: Optional[str]) -> None:
    """Is this device ready to build and run TensorRT engines? Facts, test engines, and what to install.

    Prints the Jetson board and L4T / JetPack release, Python, numpy, TensorRT, which CUDA binding works
    (cuda-python / pycuda) and why not the other, the GPU, DLA cores and ONNX Runtime; where TensorRT and a GPU are
    there, builds a small fp16 and int8 engine and compares them with ONNX Runtime. Exits 0 only when engines can be
    built and run here, else 1 with one line per missing piece saying what to install.

    Example: edgecls doctor --data cifar10-jpeg.tar.gz
    """
    from edgecls.artifacts import check_output_file, write_json
    from edgecls.doctor import format_report, run_doctor

    if json_path not in (None, STDOUT):
        check_output_file(json_path, inputs=(data,), stdout_ok=True)
    report = run_doctor(export_dir, data, build=not no_build)
    if json_path == STDOUT:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif json_path is not None:
        write_json(json_path, report.to_dict())
        click.echo(f"{format_report(report)}\nreport written to {json_path}")
    else:
        click.echo(format_report(report))
    if not report.ready:
        sys.exit(1)


COMMANDS = (build_engine_command, doctor_command)
