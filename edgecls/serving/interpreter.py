"""Which Python can run the Triton server of `edgecls serve`, and why another cannot.

nvidia-pytriton (the `serve` extra) needs numpy < 2, while the training venv has numpy 2; and its Python-backend stub,
a binary that tritonserver starts, loads `libpython3.X.so` from the dynamic loader's default folders: an interpreter
built elsewhere (pyenv's, with its own libpython) then runs against the system's library and binding a model fails
(`'_thread.RLock' object has no attribute '_recursion_count'`). So serving runs in a venv of its own made from the
system's interpreter (`make serve-venv`: ./.venv-serve), and `edgecls serve` started from any other Python hands the
command over to that venv's interpreter. This module only inspects; it imports neither numpy nor PyTriton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional

from edgecls.errors import first_line

SERVE_PYTHON_ENV = "EDGECLS_SERVE_PYTHON"  # an interpreter to serve with, instead of ./.venv-serve's
SERVE_VENV = ".venv-serve"
STUB_VERSIONS = ((3, 10), (3, 11), (3, 12))  # the Python-backend stubs nvidia-pytriton 0.7.0 ships
FIX = ("run `make serve-venv` (a venv from the system's python3.10-3.12 with 'edgecls[serve]'), or set "
       f"{SERVE_PYTHON_ENV} to the python of such a venv")

# Checks one interpreter from inside it: prints a JSON object (see `probe`).
_PROBE = r"""
import json, os, sys, sysconfig
facts = {"python": sys.version.split()[0], "executable": sys.executable, "version": list(sys.version_info[:2]),
         "libdir": sysconfig.get_config_var("LIBDIR") or "", "soname": sysconfig.get_config_var("INSTSONAME") or "",
         "multiarch": sysconfig.get_config_var("MULTIARCH") or ""}
try:
    import numpy
    facts["numpy"] = numpy.__version__
except Exception as exc:
    facts["numpy"] = None
try:
    from importlib.metadata import version
    import pytriton
    facts["pytriton"] = version("nvidia-pytriton")
except Exception as exc:
    facts["pytriton"] = None
    facts["pytriton_error"] = " ".join(str(exc).split())[:200] or type(exc).__name__
print(json.dumps(facts))
"""


def repository_root() -> Path:
    """The folder holding the edgecls package (a source checkout: where `make` puts .venv-serve)."""
    return Path(__file__).resolve().parents[2]


def candidate() -> Optional[Path]:
    """The interpreter `edgecls serve` hands over to: $EDGECLS_SERVE_PYTHON, else ./.venv-serve's; None if neither."""
    named = os.environ.get(SERVE_PYTHON_ENV)
    if named:
        return Path(named)
    path = repository_root() / SERVE_VENV / "bin" / "python"
    return path if path.exists() else None


def loader_folders(multiarch: str) -> list[Path]:
    """Where the dynamic loader finds a library by name without help (LD_LIBRARY_PATH, then Debian's defaults)."""
    extra = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    arch = [Path(f"/usr/lib/{multiarch}"), Path(f"/lib/{multiarch}")] if multiarch else []
    return extra + [Path("/usr/local/lib")] + arch + [Path("/usr/lib64"), Path("/lib64"), Path("/usr/lib"), Path("/lib")]


def problem(facts: dict) -> Optional[str]:
    """Why the interpreter described by `facts` (from `probe`) cannot serve, or None when it can."""
    where = facts.get("executable", "this python")
    if facts.get("unusable"):
        return f"{where} {facts['unusable']}; {FIX}"
    version = tuple(facts.get("version", ()))
    if version not in STUB_VERSIONS:
        return f"{where} is Python {facts.get('python')}; PyTriton's Triton stub exists for 3.10-3.12 only; {FIX}"
    if facts.get("pytriton") is None:
        return f"{where} has no nvidia-pytriton ({facts.get('pytriton_error', 'not installed')}); {FIX}"
    numpy_version = facts.get("numpy") or ""
    if not numpy_version or int(numpy_version.split(".")[0]) >= 2:
        return f"{where} has numpy {numpy_version or '(none)'}, and PyTriton 0.7 needs numpy < 2; {FIX}"
    soname, libdir = facts.get("soname", ""), facts.get("libdir", "")
    if not (soname.startswith("libpython") and ".so" in soname):
        return f"{where} has no shared libpython, which Triton's Python-backend stub loads; {FIX}"
    # The stub loads the first libpython of that name the loader finds: it must be this interpreter's own.
    first = next((folder for folder in loader_folders(facts.get("multiarch", "")) if (folder / soname).exists()), None)
    if first is None or first.resolve() != Path(libdir).resolve():
        found = f"finds {first / soname}" if first else "finds none"
        return (f"{where} (Python {facts.get('python')}) uses its own {Path(libdir) / soname}, but Triton's "
                f"Python-backend stub loads the system's ({found}): binding models fails under such a Python; {FIX}")
    return None


def probe(python: Path, timeout: float = 60.0) -> dict:
    """What `python` has (version, numpy, PyTriton, its libpython), asked from inside it."""
    if not python.exists():
        return {"executable": str(python), "unusable": "does not exist"}
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(repository_root())})
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"executable": str(python), "unusable": f"does not run as a Python ({first_line(exc)})"}
    facts["executable"] = str(python)
    return facts


def this_interpreter() -> dict:
    """`probe`'s facts for the running interpreter, without a subprocess (imports numpy and pytriton if present)."""
    facts: dict = {"python": sys.version.split()[0], "executable": sys.executable, "version": list(sys.version_info[:2]),
                   "libdir": sysconfig.get_config_var("LIBDIR") or "",
                   "soname": sysconfig.get_config_var("INSTSONAME") or "",
                   "multiarch": sysconfig.get_config_var("MULTIARCH") or "", "numpy": None, "pytriton": None}
    try:
        import numpy

        facts["numpy"] = numpy.__version__
        from importlib.metadata import version

        import pytriton  # noqa: F401  (its import is what is checked)

        facts["pytriton"] = version("nvidia-pytriton")
    except Exception as exc:  # not installed, or broken by the numpy it found
        facts["pytriton_error"] = first_line(exc)
    return facts


def serving_status() -> tuple[bool, str]:
    """For `edgecls doctor`: whether `edgecls serve` can run here, with the interpreter it would use or why not."""
    here = this_interpreter()
    if problem(here) is None:
        return True, f"works here (nvidia-pytriton {here['pytriton']}, numpy {here['numpy']}, {here['executable']})"
    python = candidate()
    if python is None:
        return False, f"not set up: {problem(here)}"
    there = probe(python)
    why = problem(there)
    if why is None:
        return True, f"works, through {python} (nvidia-pytriton {there['pytriton']}, numpy {there['numpy']})"
    return False, f"does not work: {why}"
