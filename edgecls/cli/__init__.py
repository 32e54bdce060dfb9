"""The `edgecls` command: a thin layer over the stage modules, one module per stage.

Heavy imports (torch, onnx) happen inside each command so that `edgecls --help` is instant.
"""

from __future__ import annotations

import codecs
import contextlib
import sys
from typing import Any

import click

from edgecls.cli import bench, deploy, device, export, report, serve, train
from edgecls.errors import EdgeclsError, first_line


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


def out_of_memory(exc: BaseException) -> str | None:
    """The one-line message for running out of memory (a MemoryError, or a native library that could not be mapped
    under a memory limit such as `ulimit -v`), else None."""
    if isinstance(exc, MemoryError):
        return ("the process ran out of memory; free memory, raise its limit (ulimit -v) or use smaller inputs or "
                "batches")
    text = str(exc)
    if isinstance(exc, (ImportError, OSError)) and any(sign in text for sign in _NO_MEMORY):
        return (f"a library could not be loaded for lack of memory ({first_line(exc)}); raise the process's memory "
                "limit (ulimit -v) or free memory")
    return None


# What the dynamic loader says when a memory limit stops it mapping a library (libtorch needs gigabytes of address).
_NO_MEMORY = ("failed to map segment", "Cannot allocate memory", "cannot allocate memory")

# Characters edgecls prints, and what they become on a terminal whose encoding lacks them (PYTHONIOENCODING=latin-1,
# LANG=C): plain ASCII rather than a UnicodeEncodeError after the work is done.
_ASCII = {"Δ": "d", "×": "x", "–": "-", "—": "-", "…": "...", "±": "+/-", "≤": "<=", "≥": ">=", "→": "->",
          "µ": "u", "°": " deg", "·": "."}


def _ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeEncodeError)
    text = error.object[error.start:error.end]
    return "".join(_ASCII.get(char, "?") for char in text), error.end


codecs.register_error("edgecls-ascii", _ascii_fallback)


def _printable_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a closed or detached stream: nothing to fix
                stream.reconfigure(errors="edgecls-ascii")


def _say(line: str) -> None:
    """The last line of a failed command, on stderr; a closed or broken stderr must not change the exit code."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        click.echo(line, err=True)


class _Group(click.Group):
    """Turns EdgeclsError (exit code 2), a missing optional dependency (its extra's name, exit code 2) and running out
    of memory (exit code 2) into one line on stderr, instead of a traceback; output the terminal's encoding cannot
    show falls back to ASCII."""

    def invoke(self, ctx: click.Context) -> Any:
        _printable_streams()
        try:
            return super().invoke(ctx)
        except EdgeclsError as exc:
            _say(f"error: {exc}")
            sys.exit(2)
        except (ImportError, OSError, MemoryError) as exc:
            message = missing_extra(exc) if isinstance(exc, ModuleNotFoundError) else None
            message = message or out_of_memory(exc)
            if message is None:
                raise
            _say(f"error: {message}")
            sys.exit(2)
        except KeyboardInterrupt:
            _say("interrupted")
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edgecls")
def main() -> None:
    """Train, export, build and verify compact CIFAR-10 classifiers for NVIDIA Jetson."""


for module in (train, export, device, bench, report, deploy, serve):
    for command in module.COMMANDS:
        main.add_command(command)
