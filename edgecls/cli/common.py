"""What several commands share."""

from __future__ import annotations

from pathlib import Path

from edgecls.artifacts import check_regular_file
from edgecls.errors import EdgeclsError

DATA_HELP = ("CIFAR-10 location: a cifar-10-batches-py folder, cifar-10-python.tar.gz, an image-folder tree or a "
             ".tar(.gz) of one. Default: $EDGECLS_DATA, else ./data.")

_MAKE_IT = {".pt": "train one with `edgecls train`", ".onnx": "make it with `edgecls export`",
            ".npz": "make it with `edgecls export`", ".plan": "build it with `edgecls build` on this device"}


def check_input_file(path: str, what: str) -> Path:
    """An input file named by an option, refused in one line when it is not there: checked before any long work, so
    that the most specific problem is the one reported (not, say, missing data)."""
    file = Path(path)
    try:
        found = file.is_file()
    except OSError as exc:  # a folder on the way that this user may not enter
        raise EdgeclsError(f"cannot read {what} {file} ({exc.strerror}); check the permissions of its folders") from exc
    if not found and file.exists() and not file.is_dir():
        check_regular_file(file, what)  # a FIFO or a device: said so, never opened (a FIFO would block)
    if not found:
        how = _MAKE_IT.get(file.suffix.lower(), "check the path")
        raise EdgeclsError(f"{what} {file} {'is a folder' if file.is_dir() else 'does not exist'}; {how}")
    return file


def one_line(text: object) -> str:
    """`text` (a file name) kept on one line of output: control characters, such as a newline in a file name, are
    written as Python escapes (\\n), so that one-line-per-item output stays one line per item."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in str(text))
