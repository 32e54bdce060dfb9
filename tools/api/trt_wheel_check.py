#!/usr/bin/env python3
"""Check a TensorRT name list (from trt_names.py) against a real `tensorrt-cuXX-bindings` wheel, without importing it.

The wheel's compiled module (`tensorrt_bindings/tensorrt.so`) cannot be imported here (it needs libnvinfer), and
pybind11 builds its signature text at import time, so the file holds no signatures. It does hold every name it
binds, as a C string: class names, method and property names, enum member names and py::arg keyword names. This
script keeps from the list only what the binary names:

- a signature whose keyword names are not all in the binary is dropped (an overload the release does not have);
- a member, class or enum member whose name is not in the binary is dropped.

and reports what it dropped. (A linker may store a string as the tail of a longer one, so "present" means "some
string in the binary ends with this name"; a removed name that is the tail of another string goes unnoticed.)

Used for TensorRT 11.x: the newest NVIDIA/TensorRT source tag (v11.1) gives the structure, the 11.4 wheel decides
what is still there:
    pip download --no-deps tensorrt-cu13-bindings==11.4.0.106
    python tools/api/trt_names.py --git TensorRT.git --tag v11.1 --return-types .../tensorrt.pyi -o /tmp/src-11.1.json
    python tools/api/trt_wheel_check.py /tmp/src-11.1.json tensorrt_cu13_bindings-11.4.0.106-*.whl \
        --version 11.4 -o tools/api/tensorrt-11.4.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional


def binary_names(wheel: Path) -> tuple[set[str], str, str]:
    """Every NUL-terminated printable string's suffixes (identifier-like) in the wheel's tensorrt .so."""
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if re.search(r"(^|/)tensorrt[^/]*\.so$", n))
        data = archive.read(member)
    names: set[str] = set()
    for match in re.finditer(rb"[\x20-\x7e]{1,200}\x00", data):
        text = match.group(0)[:-1].decode("ascii")
        tail = re.search(r"[A-Za-z_0-9]+$", text)
        if tail:
            word = tail.group(0)
            names.update(word[i:] for i in range(len(word)))
    return names, member, hashlib.sha256(data).hexdigest()


def check(api: dict[str, Any], names: set[str]) -> tuple[dict[str, Any], list[str]]:
    dropped: list[str] = []
    present = names.__contains__
    classes = {}
    for cname, entry in api["classes"].items():
        if not present(cname.rsplit(".", 1)[-1]):
            dropped.append(f"class {cname}")
            continue
        methods = {}
        for meth, sigs in entry["methods"].items():
            if meth.startswith("__") or present(meth):
                kept = [s for s in sigs if all(n is None or present(n) for n in s.get("names", []))]
                dropped += [f"{cname}.{meth}{tuple(s.get('names', []))}" for s in sigs if s not in kept]
                if kept:
                    methods[meth] = kept
            else:
                dropped.append(f"{cname}.{meth}")
        properties = {}
        for prop, info in entry["properties"].items():
            if present(prop):
                properties[prop] = info
            else:
                dropped.append(f"{cname}.{prop}")
        classes[cname] = {**entry, "methods": methods, "properties": properties}
    enums = {}
    for ename, enum in api["enums"].items():
        if not present(ename.rsplit(".", 1)[-1]):
            dropped.append(f"enum {ename}")
            continue
        members = {m: v for m, v in enum["members"].items() if present(m)}
        dropped += [f"{ename}.{m}" for m in enum["members"] if m not in members]
        enums[ename] = {**enum, "members": members}
    functions = {}
    for fname, sigs in api["module"]["functions"].items():
        if any(s.get("python") for s in sigs) or present(fname):
            functions[fname] = sigs
        else:
            dropped.append(f"function {fname}")
    out = {**api, "classes": classes, "enums": enums,
           "module": {**api["module"], "functions": functions}}
    return out, dropped


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", help="a list written by trt_names.py")
    parser.add_argument("wheel", help="a tensorrt-cuXX-bindings wheel")
    parser.add_argument("--version", help="version to record in the output (default: the list's)")
    parser.add_argument("--package-init", action="store_true",
                        help="also take module-level Python functions from the wheel's tensorrt_bindings/__init__.py")
    parser.add_argument("-o", "--output", help="write the checked list here (default: only report)")
    args = parser.parse_args(argv)
    api = json.loads(Path(args.names).read_text())
    names, member, digest = binary_names(Path(args.wheel))
    checked, dropped = check(api, names)
    for line in dropped:
        print(f"not in {Path(args.wheel).name}: {line}")
    print(f"{len(dropped)} names of {args.names} are not in the wheel", file=sys.stderr)
    if args.output:
        checked["version"] = args.version or api["version"]
        checked["checked_against"] = {"wheel": Path(args.wheel).name, "member": member, "sha256": digest,
                                      "dropped": dropped, "checked_by": "tools/api/trt_wheel_check.py"}
        Path(args.output).write_text(json.dumps(checked, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
