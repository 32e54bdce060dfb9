"""The commands run on the device itself: `edgecls build`."""

from __future__ import annotations

import click

from edgecls.defaults import DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB


@click.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "plan", type=click.Path(dir_okay=False),
              help="Engine file. Default: engines/<onnx name>.plan; the manifest goes beside it as .plan.json.")
@click.option("--batch", default=":".join(map(str, DEFAULT_BATCH_PROFILE)), show_default=True,
              help="Batch optimization profile MIN:OPT:MAX.")
@click.option("--workspace", type=click.IntRange(16), default=DEFAULT_WORKSPACE_MIB, show_default=True,
              help="Builder workspace in MiB.")
def build_engine_command(onnx_file: str, plan: str | None, batch: str, workspace: int) -> None:
    """Build a TensorRT engine from an exported ONNX file (on the device that will run it).

    Example: edgecls build export/new2.int8.onnx -o engines/new2.int8.plan --batch 1:64:256
    """
    from edgecls.engines import build_engine, parse_batch

    path = build_engine(onnx_file, plan, batch=parse_batch(batch), workspace_mib=workspace)
    click.echo(f"built {path} (manifest {path}.json)")


COMMANDS = (build_engine_command,)
