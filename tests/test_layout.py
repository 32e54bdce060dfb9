"""The package's shape: no import circles, a torch-free runtime, and each file format handled in one module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgecls"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The edgecls modules `path` imports, at any depth of its code (lazy imports count: a circle is a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def test_no_import_circles():
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, set(files)) - {name} for name, path in files.items()}
    # A package importing its own submodules (edgecls.cli -> edgecls.cli.train) is how packages are built, and a
    # submodule importing a sibling goes through the package: count only edges between modules of different homes.
    graph = {name: {dep for dep in deps if not dep.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# The modules the runtime stands on, and the training side, which sits beside it: none may import the runtime, so
# every arrow between the layers runs down (the image decoder both need lives in edgecls.imaging, below both).
BELOW_THE_RUNTIME = {"edgecls.errors", "edgecls.defaults", "edgecls.formats", "edgecls.preprocess", "edgecls.imaging",
                     "edgecls.artifacts", "edgecls.metrics", "edgecls.data", "edgecls.models", "edgecls.recipes",
                     "edgecls.checkpoint", "edgecls.train", "edgecls.device", "edgecls.reference"}


def test_no_arrow_runs_up_into_the_runtime():
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    assert BELOW_THE_RUNTIME <= set(files), sorted(BELOW_THE_RUNTIME - set(files))
    upward = {name: sorted(dep for dep in imports_of(files[name], set(files))
                           if dep == "edgecls.runtime" or dep.startswith("edgecls.runtime."))
              for name in sorted(BELOW_THE_RUNTIME)}
    assert not {name: deps for name, deps in upward.items() if deps}, upward


def test_the_runtime_and_the_formats_need_no_torch_and_no_onnx():
    code = ("import sys; import edgecls.runtime, edgecls.runtime.onnx_backend, edgecls.runtime.tensorrt_backend, "
            "edgecls.runtime.images, edgecls.imaging, edgecls.formats, edgecls.metrics, edgecls.preprocess; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnx')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_file_format_is_written_and_read_in_one_module():
    """The markers of each format appear in edgecls/formats.py and nowhere else in the package."""
    markers = {'"plan_sha256"': "engine manifest", "metadata_props": "ONNX metadata", '"digests"': "reference logits",
               "edgecls-calibration": "calibration record", "format_version": "every format"}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "formats.py" or path.name == "checkpoint.py":  # the checkpoint is PyTorch's own format
            continue
        text = path.read_text()
        for marker, what in markers.items():
            assert marker not in text, f"{path.relative_to(PACKAGE.parent)} handles the {what} ({marker}) itself"


MAX_PARAMETERS = 8


def test_no_function_outside_the_click_commands_takes_more_than_eight_parameters():
    """Long parameter lists become request or settings dataclasses, checked once (`TrainRequest`, `ExportRequest`,
    `CalibrationSettings`, `BenchSettings`...); a click command's parameters mirror its options and are exempt."""
    crowded = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if any("click" in ast.unparse(decorator) for decorator in node.decorator_list):
                continue
            given = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            count = len(given) - (1 if given and given[0].arg in ("self", "cls") else 0)
            if count > MAX_PARAMETERS:
                crowded.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({count})")
    assert not crowded, crowded
