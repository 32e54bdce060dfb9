#!/usr/bin/env python3
"""Record cuda-python's runtime and driver API (functions with their parameters, enums with their members, types
with their attributes) as JSON, by importing `cuda.bindings` (it imports without a GPU or driver) and reading
`inspect.signature` of its Cython functions.

CI checks the installed cuda-bindings (13.x) live; this list records another release line for the same check,
e.g. the last 12.x (JetPack 6 ships CUDA 12.2/12.6 drivers, which cuda-bindings 13 does not support):

    pip install --no-deps --target /tmp/cb12 "cuda-bindings==12.9.*" "cuda-python==12.9.*"
    PYTHONPATH=/tmp/cb12 python tools/api/cuda_names.py -o tools/api/cuda-bindings-12.9.json
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Optional

MODULES = ("cuda.bindings.runtime", "cuda.bindings.driver", "cuda.bindings.utils")


def describe_callable(obj: Any) -> Optional[dict[str, Any]]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {"names": [p.name for p in params],
            "min": sum(1 for p in positional if p.default is p.empty),
            "max": None if variadic else len(positional)}


def describe_module(name: str) -> dict[str, Any]:
    module = importlib.import_module(name)
    out: dict[str, Any] = {}
    for attr in sorted(dir(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr)
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            out[attr] = {"kind": "enum", "members": sorted(obj.__members__)}
        elif isinstance(obj, type):
            out[attr] = {"kind": "type", "attributes": sorted(a for a in dir(obj) if not a.startswith("_"))}
        elif callable(obj):
            out[attr] = {"kind": "function", **(describe_callable(obj) or {"min": 0, "max": None, "names": []})}
        else:
            out[attr] = {"kind": "value"}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    import cuda.bindings

    data = {"api": "cuda-bindings", "version": cuda.bindings.__version__, "generated_by": "tools/api/cuda_names.py",
            "modules": {name: describe_module(name) for name in MODULES}}
    Path(args.output).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{args.output}: cuda-bindings {data['version']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
