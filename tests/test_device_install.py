"""The device side installed as on a Jetson: no PyTorch, and JetPack 5's Python 3.8 with numpy 1.24 and ONNX Runtime
1.19 (what its pip gets). Runs the real commands in subprocesses; nothing is faked, PyTorch is only blocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# PyTorch made unfindable, as if not installed: `import torch` raises ModuleNotFoundError (name "torch").
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from edgecls.cli import main
main()
"""
# JetPack 5: Python 3.8, where pip resolves numpy 1.24 and onnxruntime 1.19.
PY38_REQUIREMENTS = ["numpy==1.24.*", "onnxruntime==1.19.*", "onnx", "click", "tqdm", "pillow"]


def edgecls(python: str, *args: str, code: str = WITHOUT_TORCH, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)


def check_device_commands(python: str, files: dict, data_dir: Path, photo: Path) -> None:
    """bench and predict on an ONNX file work, build and doctor say in one line what is missing, train names its
    extra: with `python`, PyTorch blocked."""
    bench = edgecls(python, "bench", "--engine", str(files["fp32"]), "--data", str(data_dir), "--batch-sizes", "1,8",
                    "--duration", "0.05", "--warmup", "0.01", "--min-agreement", "99")
    assert bench.returncode == 0, bench.stderr
    assert "agreement" in bench.stdout and "100.00%" in bench.stdout, bench.stdout
    predict = edgecls(python, "predict", str(photo), "--engine", str(files["int8"]), "--top-k", "2")
    assert predict.returncode == 0 and predict.stdout.startswith(str(photo)), predict.stderr
    for command in (["build", str(files["int8"]), "-o", str(photo.parent / "x.plan")], ["train", "--data", "x"]):
        result = edgecls(python, *command)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pip install 'edgecls[train]'" in result.stderr
    doctor = edgecls(python, "doctor", "--no-build")
    assert doctor.returncode in (0, 1) and "Traceback" not in doctor.stderr, doctor.stderr
    assert doctor.stdout.strip().splitlines()[-1].startswith(("READY", "NOT READY"))


@pytest.fixture(scope="module")
def photo(tiny_cifar, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    Image.fromarray(tiny_cifar.test_images[0]).resize((64, 48)).save(path)
    return path


def test_device_commands_run_without_torch(new2_export, tiny_data_dir, photo):
    check_device_commands(sys.executable, new2_export.files, tiny_data_dir, photo)


def _python38() -> str | None:
    """A working python3.8: on PATH, JetPack's /usr/bin, or a pyenv install (whose shim fails unless selected)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which("python3.8"), "/usr/bin/python3.8", *map(str, sorted(pyenv.glob("3.8*/bin/python3.8")))]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and \
                subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def py38_venv(python: str) -> Path:
    """A Python 3.8 venv with JetPack 5's numpy and ONNX Runtime, made once and reused ($EDGECLS_PY38_VENV, else
    beside this venv)."""
    venv = Path(os.environ.get("EDGECLS_PY38_VENV") or Path(sys.prefix) / "py38")
    marker = venv / "edgecls-requirements.txt"
    wanted = "\n".join(PY38_REQUIREMENTS)
    if marker.is_file() and marker.read_text() == wanted:
        return venv
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *PY38_REQUIREMENTS],
                             capture_output=True, text=True)
    if install.returncode != 0:
        message = f"cannot install {PY38_REQUIREMENTS} for Python 3.8: {install.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    marker.write_text(wanted)
    return venv


@pytest.mark.skipif(_python38() is None, reason="python3.8 (JetPack 5's Python) is not installed here")
def test_python38_with_numpy_124_runs_the_device_side(new2_export, tiny_data_dir, photo):
    """JetPack 5's TensorRT bindings exist for Python 3.8 only: the runtime, build, bench / predict and doctor must run
    there, with the numpy (1.24) and ONNX Runtime (1.19) its pip gets."""
    venv = py38_venv(_python38())
    python = str(venv / "bin" / "python")
    versions = edgecls(python, code="import sys, numpy, onnxruntime; print(sys.version_info[:2], numpy.__version__, "
                                    "onnxruntime.__version__)")
    assert versions.stdout.startswith("(3, 8) 1.24.") and " 1.19." in versions.stdout, versions
    check_device_commands(python, new2_export.files, tiny_data_dir, photo)
