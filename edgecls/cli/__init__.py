"""The `edgecls` command: a thin layer over the stage modules, one module per stage.

Heavy imports (torch, onnx) happen inside each command so that `edgecls --help` is instant.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from edgecls.cli import bench, device, export, report, train
from edgecls.errors import EdgeclsError


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


for module in (train, export, device, bench, report):
    for command in module.COMMANDS:
        main.add_command(command)
