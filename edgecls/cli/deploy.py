"""`edgecls deploy ...`: what a serving stack needs to run an exported model (a Triton model repository, a
DeepStream nvinfer configuration), written from the export's own metadata."""

from __future__ import annotations

import click


@click.group("deploy")
def deploy() -> None:
    """Write the files a serving stack needs to run an exported edgecls model."""


COMMANDS = [deploy]
