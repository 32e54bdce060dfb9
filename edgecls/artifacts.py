"""Writing artifacts safely and describing where they came from (torch-free)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from edgecls.errors import EdgeclsError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check we can write there; raise EdgeclsError otherwise."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeclsError(f"cannot create output folder {folder}: {exc.strerror}; choose another folder") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgeclsError(f"output folder {folder} is not writable; fix its permissions or choose another folder")
    return folder


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success rename it over `path`, on failure delete it.

    A reader therefore sees either the old file or the complete new one, never a half-written file.
    """
    target = Path(path)
    ensure_writable_dir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts get the usual permissions
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of python, edgecls and whichever of `modules` are already imported or importable."""
    import importlib

    from edgecls import __version__

    versions = {"python": platform.python_version(), "edgecls": __version__}
    for name in modules:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except Exception:  # not installed: simply not recorded
            continue
    return versions
