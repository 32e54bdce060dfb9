"""The `edgecls` command: a thin layer over the stage modules, one module per stage.

Heavy imports (torch, onnx) happen inside each command so that `edgecls --help` is instant.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from edgecls.cli import bench, deploy, device, export, report, train
from edgecls.errors import EdgeclsError


# Optional parts of edgecls (pyproject.toml extras): a command that needs a missing one says which to install.
# The device side (runtime, build, bench/predict on .onnx/.plan, doctor) needs none of them.
EXTRAS = {"torch": ("PyTorch", "train"), "torchvision": ("PyTorch", "train"), "matplotlib": ("matplotlib", "report"),
          "cv2": ("OpenCV", "video")}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for an import of an optional dependency that is not installed, else None."""
    top = str(exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    what, extra = EXTRAS[top]
    return f"this command needs {what}, which is not installed: pip install 'edgecls[{extra}]'"


class _Group(click.Group):
    """Turns EdgeclsError (exit code 2) and a missing optional dependency (its extra's name, exit code 2) into one
    line on stderr, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeclsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            message = missing_extra(exc)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edgecls")
def main() -> None:
    """Train, export, build and verify compact CIFAR-10 classifiers for NVIDIA Jetson."""


for module in (train, export, device, bench, report, deploy):
    for command in module.COMMANDS:
        main.add_command(command)
