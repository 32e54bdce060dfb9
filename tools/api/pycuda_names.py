#!/usr/bin/env python3
"""Record the names `pycuda.driver` exposes at a release tag, from pycuda's own sources, as JSON in the form
tools/api/cuda_names.py writes (so apicheck.check_uses_recorded checks edgecls' pycuda uses with the same code).

pycuda does not install here (it compiles against the CUDA toolkit), so the list is read from a git mirror or
checkout of inducer/pycuda:

- `src/wrapper/wrap_cudadrv.cpp` (Boost.Python): module functions (`py::def("x"`, `DEF_SIMPLE_FUNCTION(x)`), classes
  (`py::class_<...>("X"`) with their methods, static methods and properties, and enums (`py::enum_<...>("x")`
  with `.value("Y"`);
- `pycuda/driver.py`: what the Python layer adds at module level (it re-exports the extension with `import *`).

Argument counts are not recorded (Boost.Python keeps them in C++ signatures): the check covers names only.

    python tools/api/pycuda_names.py --git pycuda.git --tag v2026.1 -o tools/api/pycuda-2026.1.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

UNKNOWN_ARITY = {"min": 0, "max": None, "names": []}


def read_at(git_dir: str, tag: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{tag}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _statements(source: str) -> list[str]:
    """The C++ source without comments and preprocessor lines, split at top-level semicolons."""
    source = re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.S)
    source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    return source.split(";")


def _members(statement: str) -> set[str]:
    members = set(re.findall(r'\.(?:def|add_property|def_readonly|def_readwrite|staticmethod|'
                             r'add_static_property)\s*\(\s*"(\w+)"', statement))
    return members | set(re.findall(r"\.DEF_SIMPLE_(?:METHOD|METHOD_WITH_ARGS|RO_MEMBER|RW_MEMBER)\s*\(\s*(\w+)",
                                    statement))


def extension_names(source: str) -> dict[str, Any]:
    module: dict[str, Any] = {}
    variables: dict[str, str] = {}  # `py::class_<...> wrp("Name", ...)`: wrp -> Name, for `wrp .def(...)` later
    for statement in _statements(source):
        declared = re.search(r'py::class_<[^(]*?>\s*(\w+)?\s*\(\s*"(\w+)"', statement, flags=re.S)
        enum = re.search(r'py::enum_<[^>]*>\s*\(\s*"(\w+)"', statement)
        continued = re.match(r"\s*(\w+)\s*\.", statement)
        alias = re.search(r'py::scope\(\)\.attr\(\s*"(\w+)"\s*\)\s*=\s*(\w+)', statement)
        if declared:
            variable, name = declared.groups()
            if variable:
                variables[variable] = name
            module[name] = {"kind": "type", "attributes": sorted(_members(statement))}
        elif continued and continued.group(1) in variables:
            entry = module[variables[continued.group(1)]]
            entry["attributes"] = sorted(set(entry["attributes"]) | _members(statement))
        elif alias and alias.group(2) in variables:
            module[alias.group(1)] = module[variables[alias.group(2)]]
        elif enum:
            module[enum.group(1)] = {"kind": "enum", "members": sorted(set(re.findall(r'\.value\s*\(\s*"(\w+)"',
                                                                                      statement)))}
        else:
            for name in re.findall(r'(?:py::|boost::python::)def\s*\(\s*"(\w+)"', statement):
                module[name] = {"kind": "function", **UNKNOWN_ARITY}
            for name in re.findall(r"DEF_SIMPLE_FUNCTION(?:_WITH_ARGS)?\s*\(\s*(\w+)", statement):
                module[name] = {"kind": "function", **UNKNOWN_ARITY}
    return module


def python_names(source: str) -> dict[str, Any]:
    """Top-level functions, classes and assignments of pycuda/driver.py."""
    found: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            found[node.name] = {"kind": "function", "names": positional,
                                "min": len(positional) - len(args.defaults),
                                "max": None if args.vararg else len(positional)}
        elif isinstance(node, ast.ClassDef):
            found[node.name] = {"kind": "type", "attributes": sorted(
                item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = {"kind": "value"}
    return found


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--git", required=True, help="a git mirror or .git folder of inducer/pycuda")
    parser.add_argument("--tag", required=True, help="a release tag, e.g. v2026.1")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    module = extension_names(read_at(args.git, args.tag, "src/wrapper/wrap_cudadrv.cpp"))
    module.update(python_names(read_at(args.git, args.tag, "pycuda/driver.py")))
    data = {"api": "pycuda", "version": args.tag.lstrip("v"), "generated_by": "tools/api/pycuda_names.py",
            "source": f"inducer/pycuda@{args.tag}: src/wrapper/wrap_cudadrv.cpp, pycuda/driver.py",
            "modules": {"pycuda.driver": module}}
    Path(args.output).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{args.output}: pycuda {data['version']}, {len(module)} names", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
