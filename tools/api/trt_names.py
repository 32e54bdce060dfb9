#!/usr/bin/env python3
"""Record TensorRT's Python API (every class, method, property, enum member, with argument counts) from
NVIDIA/TensorRT's pybind11 sources at a release tag, as JSON (tools/api/tensorrt-<version>.json).

The Python bindings are written by hand in `python/src/infer/*.cpp` and `python/src/parsers/pyOnnx.cpp`
(pybind11), plus a little pure Python in the package's `__init__.py` (e.g. `nptype`). This script reads
those files, so the list names exactly what `import tensorrt` exposes in that release:

    py::class_<IBuilder>(m, "Builder", ...)            -> class Builder
        .def("create_network", &fn, "flags"_a = 0)     -> method, 0..1 positional arguments, keyword `flags`
        .def_property_readonly("num_DLA_cores", ...)   -> read-only property
    py::enum_<BuilderFlag>(m, "BuilderFlag", ...)
        .value("FP16", BuilderFlag::kFP16)             -> enum member

Argument counts come from the py::arg / "name"_a annotations; where a binding has none, from the bound
function itself (a lambda in the same file, py::init<...>, py::overload_cast<...>, or the C++ method's
declaration in include/NvInfer*.h). What cannot be resolved is recorded as `"max": null` (any arity).

Return types are not in the C++ bindings in Python form; with `--return-types STUB.pyi` (tensorrt-stubs'
`tensorrt_bindings/tensorrt.pyi`, generated from real 10.x bindings) each method and property borrows the
return type of the same class.member there, if the type is a plain name; else `Any`.

Usage (a git mirror of NVIDIA/TensorRT, or a checkout):
    python tools/api/trt_names.py --git /path/to/TensorRT.git --tag 8.5.2 \
        --return-types .../tensorrt_bindings/tensorrt.pyi -o tools/api/tensorrt-8.5.2.json
    python tools/api/trt_names.py --src /path/to/TensorRT-checkout -o out.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

BINDING_DIRS = ("python/src/infer", "python/src/parsers")
BINDING_SKIP = ("pyCaffe.cpp", "pyUff.cpp")  # parsers removed from TensorRT 9; edgecls never uses them
PACKAGE_INITS = ("python/packaging/bindings_wheel/tensorrt/__init__.py", "python/packaging/tensorrt/__init__.py")
HEADER_DIRS = ("include",)


# ----------------------------------------------------------------------------------------------- sources


class Source:
    """Files of one TensorRT source tree: a git mirror at a tag, or a directory."""

    def __init__(self, git_dir: Optional[str], tag: Optional[str], src: Optional[str]) -> None:
        self.git_dir, self.tag, self.src = git_dir, tag, src

    def _git(self, *args: str) -> str:
        assert self.git_dir is not None
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], check=True, capture_output=True,
                              text=True, errors="replace").stdout

    def list(self, folder: str) -> list[str]:
        if self.git_dir:
            out = self._git("ls-tree", "-r", "--name-only", f"{self.tag}", "--", folder)
            return sorted(line for line in out.splitlines() if line)
        base = Path(self.src or ".")
        return sorted(str(p.relative_to(base)) for p in (base / folder).rglob("*") if p.is_file())

    def read(self, path: str) -> Optional[str]:
        if self.git_dir:
            try:
                return self._git("show", f"{self.tag}:{path}")
            except subprocess.CalledProcessError:
                return None
        file = Path(self.src or ".") / path
        return file.read_text(errors="replace") if file.is_file() else None

    def describe(self) -> dict[str, Any]:
        if self.git_dir:
            commit = self._git("rev-parse", f"{self.tag}^{{commit}}").strip()
            return {"repository": "NVIDIA/TensorRT", "tag": self.tag, "commit": commit}
        return {"directory": str(self.src)}


# ------------------------------------------------------------------------------------------------ tokens

TOKEN = re.compile(r"""
    (?P<raw>R"(?P<delim>[^(\s]*)\((?:.|\n)*?\)(?P=delim)")
  | (?P<str>"(?:\\.|[^"\\\n])*")
  | (?P<chr>'(?:\\.|[^'\\\n])+')
  | (?P<lcomment>//[^\n]*)
  | (?P<bcomment>/\*(?:.|\n)*?\*/)
  | (?P<pre>^[ \t]*\#[^\n]*(?:\\\n[^\n]*)*)
  | (?P<id>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<num>\d[\w.']*)
  | (?P<op>::|->|&&|\|\||==|!=|<=|>=|\S)
""", re.VERBOSE | re.MULTILINE)


def tokenize(text: str) -> list[str]:
    """C++ tokens, comments and preprocessor lines dropped; string literals kept whole (as `"..."`)."""
    tokens = []
    for match in TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("lcomment", "bcomment", "pre"):
            continue
        if kind == "delim":  # the raw-string alternative matched (lastgroup is its inner group)
            kind = "raw"
        tokens.append(match.group(0))
    # adjacent string literals concatenate
    merged: list[str] = []
    for token in tokens:
        if token.startswith('"') and merged and merged[-1].startswith('"'):
            merged[-1] = merged[-1][:-1] + token[1:]
        else:
            merged.append(token)
    return merged


def literal(token: str) -> Optional[str]:
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        return token[1:-1]
    return None


OPEN = {"(": ")", "{": "}", "[": "]"}


def skip_group(tokens: list[str], i: int) -> int:
    """tokens[i] is an opening bracket: index just past its matching close."""
    depth = 0
    while i < len(tokens):
        t = tokens[i]
        if t in OPEN:
            depth += 1
        elif t in (")", "}", "]"):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def skip_template(tokens: list[str], i: int) -> int:
    """tokens[i] is '<': index just past the matching '>' (no comparisons appear inside template args here)."""
    depth = 0
    while i < len(tokens):
        t = tokens[i]
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
            if depth == 0:
                return i + 1
        elif t == ">>":
            depth -= 2
            if depth <= 0:
                return i + 1
        elif t in OPEN:
            i = skip_group(tokens, i)
            continue
        i += 1
    return i


def split_args(tokens: list[str], start: int, end: int) -> list[list[str]]:
    """Top-level comma-separated pieces of tokens[start:end] (start/end exclude the brackets)."""
    pieces: list[list[str]] = [[]]
    i = start
    angle = 0
    while i < end:
        t = tokens[i]
        if t in OPEN:
            j = skip_group(tokens, i)
            pieces[-1].extend(tokens[i:j])
            i = j
            continue
        if t == "<" and i > start and re.match(r"[A-Za-z_]", tokens[i - 1]):
            j = skip_template(tokens, i)
            pieces[-1].extend(tokens[i:j])
            i = j
            continue
        if t == "," and angle == 0:
            pieces.append([])
        else:
            pieces[-1].append(t)
        i += 1
    return [p for p in pieces if p] if pieces != [[]] else []


# ------------------------------------------------------------------------------------- C++ declarations


def param_count(params: list[list[str]]) -> tuple[int, Optional[int], bool]:
    """(min, max, has_py_args) of a C++ parameter list split at top-level commas."""
    params = [p for p in params if p != ["void"]]
    variadic = any("args" in p and "py" in p for p in params)
    params = [p for p in params if not ("py" in p and ("args" in p or "kwargs" in p))]
    required = sum(1 for p in params if "=" not in p)
    return required, (None if variadic else len(params)), variadic


class Headers:
    """Method declarations in include/*.h, looked up as Class::method -> (min, max) parameter counts."""

    def __init__(self, source: Source) -> None:
        self.classes: dict[str, tuple[list[str], list[str]]] = {}  # name -> (bases, body tokens)
        for folder in HEADER_DIRS:
            for path in source.list(folder):
                if path.endswith(".h"):
                    self._scan(tokenize(source.read(path) or ""))

    def _scan(self, tokens: list[str]) -> None:
        i = 0
        while i < len(tokens):
            if tokens[i] in ("class", "struct") and i + 1 < len(tokens) and re.match(r"\w", tokens[i + 1]):
                j = i + 1
                while j < len(tokens) and tokens[j] in ("TENSORRTAPI", "TRT_DEPRECATED", "final"):
                    j += 1
                name = tokens[j]
                k = j + 1
                bases: list[str] = []
                if k < len(tokens) and tokens[k] == "final":
                    k += 1
                if k < len(tokens) and tokens[k] == ":":
                    while k < len(tokens) and tokens[k] not in ("{", ";"):
                        if re.match(r"[A-Za-z_]", tokens[k]) and tokens[k] not in ("public", "private", "protected",
                                                                                   "virtual", "nvinfer1", "v_1_0"):
                            bases.append(tokens[k])
                        k += 1
                if k < len(tokens) and tokens[k] == "{":
                    end = skip_group(tokens, k)
                    self.classes.setdefault(name, (bases, tokens[k + 1:end - 1]))
                    i = k + 1
                    continue
            i += 1

    def method(self, cls: str, name: str, seen: Optional[set[str]] = None) -> Optional[tuple[int, Optional[int]]]:
        seen = seen or set()
        if cls in seen or cls not in self.classes:
            return None
        seen.add(cls)
        bases, body = self.classes[cls]
        i, depth = 0, 0
        while i < len(body):
            t = body[i]
            if t == "{":
                i = skip_group(body, i)
                continue
            if t == name and i + 1 < len(body) and body[i + 1] == "(" and (i == 0 or body[i - 1] not in (".", "->")):
                end = skip_group(body, i + 1)
                lo, hi, _ = param_count(split_args(body, i + 2, end - 1))
                return lo, hi
            i += 1
        for base in bases:
            found = self.method(base, name, seen)
            if found:
                return found
        return None


# ----------------------------------------------------------------------------------------------- bindings


class Signature(dict):
    """{'min': int, 'max': int|None, 'names': [keyword names or null], 'static': bool}"""


def lambda_params(tokens: list[str], i: int) -> Optional[tuple[int, Optional[int], list[Optional[str]]]]:
    """tokens[i] == '[' starting a lambda: its (min, max, names) parameter counts, self included."""
    j = skip_group(tokens, i)
    if j >= len(tokens) or tokens[j] != "(":
        return None
    end = skip_group(tokens, j)
    params = split_args(tokens, j + 1, end - 1)
    lo, hi, _ = param_count(params)
    names = [p[-1] if p and re.match(r"[A-Za-z_]\w*$", p[-1]) else None for p in params if p != ["void"]]
    return lo, hi, names


class Bindings:
    def __init__(self, source: Source, headers: Headers) -> None:
        self.source = source
        self.headers = headers
        self.lambdas: dict[str, tuple[int, Optional[int], list[Optional[str]]]] = {}
        self.cpp_to_py: dict[str, str] = {}
        self.classes: dict[str, dict[str, Any]] = {}
        self.enums: dict[str, dict[str, Any]] = {}
        self.functions: dict[str, list[dict[str, Any]]] = {}
        self.attributes: dict[str, str] = {}
        self.unresolved: list[str] = []
        self.files: list[str] = []

    # -- pass 1: lambdas
    def collect_lambdas(self, tokens: list[str]) -> None:
        for i in range(len(tokens) - 3):
            if tokens[i + 1] == "=" and tokens[i + 2] == "[" and re.match(r"[A-Za-z_]\w*$", tokens[i]):
                found = lambda_params(tokens, i + 2)
                if found:
                    self.lambdas.setdefault(tokens[i], found)

    # -- pass 2: py::class_ / py::enum_ / m.def
    def scan(self, tokens: list[str], path: str) -> None:
        variables: dict[str, tuple[str, str]] = {}  # C++ variable -> ("class"|"enum", python name)
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t == "py" and tokens[i + 1:i + 3] in (["::", "class_"], ["::", "enum_"]) and tokens[i + 3] == "<":
                kind = "class" if tokens[i + 2] == "class_" else "enum"
                targs_end = skip_template(tokens, i + 3)
                targs = split_args(tokens, i + 4, targs_end - 1)
                j = targs_end
                var = None
                if re.match(r"[A-Za-z_]\w*$", tokens[j]):
                    var, j = tokens[j], j + 1
                if tokens[j] not in ("(", "{"):
                    i = j
                    continue
                end = skip_group(tokens, j)
                args = split_args(tokens, j + 1, end - 1)
                name = literal(args[1][0]) if len(args) > 1 and args[1] else None
                if name is None:
                    i = end
                    continue
                scope = args[0]
                parent = None
                if scope and scope[0] in variables:
                    parent = variables[scope[0]][1]
                cpp = "".join(targs[0]) if targs else name
                cpp_short = targs[0][-1] if targs and targs[0] else name
                qualified = f"{parent}.{name}" if parent else name
                if kind == "class":
                    bases = []
                    for arg in targs[1:]:
                        base = self.cpp_to_py.get("".join(arg)) or self.cpp_to_py.get(arg[-1] if arg else "")
                        if base and len(arg) <= 3:
                            bases.append(base)
                    entry = self.classes.setdefault(qualified, {"bases": bases, "cpp": cpp_short, "methods": {},
                                                                "properties": {}, "file": path})
                    if any(a == ["py", "::", "buffer_protocol", "(", ")"] for a in args):
                        entry["buffer_protocol"] = True
                else:
                    entry = self.enums.setdefault(qualified, {"members": {}, "cpp": cpp, "file": path})
                self.cpp_to_py.setdefault(cpp, qualified)
                self.cpp_to_py.setdefault(cpp_short, qualified)
                if parent:
                    self.classes[parent].setdefault("nested", {})[name] = kind
                if var:
                    variables[var] = (kind, qualified)
                i = self.chain(tokens, end, kind, qualified, parent)
                continue
            if t in variables and i + 1 < len(tokens) and tokens[i + 1] == "." and (i == 0 or tokens[i - 1] != "."):
                kind, name = variables[t]
                parent = name.rsplit(".", 1)[0] if "." in name else None
                i = self.chain(tokens, i + 1, kind, name, parent)
                continue
            if t == "m" and tokens[i + 1:i + 3] == [".", "def"] and tokens[i + 3] == "(":
                end = skip_group(tokens, i + 3)
                args = split_args(tokens, i + 4, end - 1)
                fname = literal(args[0][0]) if args and args[0] else None
                if fname:
                    sig = self.signature(args[1:], method=False, where=f"{path}: {fname}")
                    self.functions.setdefault(fname, []).append(sig)
                i = end
                continue
            if t == "m" and tokens[i + 1:i + 3] == [".", "attr"] and tokens[i + 3] == "(":
                end = skip_group(tokens, i + 3)
                name = literal(tokens[i + 4])
                if name and end < len(tokens) and tokens[end] == "=":
                    self.attributes[name] = " ".join(tokens[end + 1:end + 4]).split(";")[0].strip()
                i = end
                continue
            i += 1

    def chain(self, tokens: list[str], i: int, kind: str, name: str, parent: Optional[str]) -> int:
        """Consume `.def(...)`/`.value(...)`... calls applied to a class or enum; return the index after."""
        while i + 2 < len(tokens) and tokens[i] == "." and tokens[i + 2] == "(":
            call = tokens[i + 1]
            end = skip_group(tokens, i + 2)
            args = split_args(tokens, i + 3, end - 1)
            self.apply(kind, name, parent, call, args)
            i = end
        return i

    def apply(self, kind: str, name: str, parent: Optional[str], call: str, args: list[list[str]]) -> None:
        first = literal(args[0][0]) if args and args[0] and len(args[0]) == 1 else None
        if kind == "enum":
            if call == "value" and first:
                value = "".join(args[1]) if len(args) > 1 else ""
                self.enums[name]["members"][first] = value
            elif call == "export_values" and parent:
                self.enums[name]["exported_to"] = parent
            elif call in ("def", "def_property", "def_property_readonly") and first:
                self.enums[name].setdefault("extra", []).append(first)
            return
        entry = self.classes[name]
        where = f"{entry['file']}: {name}.{first or call}"
        if call in ("def", "def_static"):
            if args and args[0][:3] == ["py", "::", "init"]:
                sig = self.signature([args[0]] + args[1:], method=False, where=f"{name}.__init__", init=True)
                entry["methods"].setdefault("__init__", []).append(sig)
            elif first:
                sig = self.signature(args[1:], method=(call == "def"), where=where)
                if call == "def_static":
                    sig["static"] = True
                entry["methods"].setdefault(first, []).append(sig)
        elif call in ("def_property", "def_readwrite", "def_property_static"):
            if first:
                setter = args[2] if len(args) > 2 else None
                writable = call == "def_readwrite" or (setter is not None and setter != ["nullptr"])
                readable = not (len(args) > 1 and args[1] == ["nullptr"])
                entry["properties"][first] = {"writable": writable, "readable": readable}
        elif call in ("def_property_readonly", "def_readonly", "def_property_readonly_static", "def_readonly_static"):
            if first:
                entry["properties"][first] = {"writable": False, "readable": True}
        elif call == "def_buffer":
            entry["buffer_protocol"] = True

    def signature(self, args: list[list[str]], method: bool, where: str, init: bool = False) -> dict[str, Any]:
        """Argument counts of one .def: from py::arg annotations, else from the bound function."""
        func = args[0] if args else []
        names: list[Optional[str]] = []
        required = 0
        annotated = False
        kw_only_from: Optional[int] = None
        for piece in args[1:]:
            name, has_default = None, "=" in piece
            if len(piece) >= 2 and literal(piece[0]) is not None and piece[1] == "_a":
                name = literal(piece[0])
            elif piece[:5] == ["py", "::", "arg", "(", piece[4] if len(piece) > 4 else ""] and literal(piece[4]):
                name = literal(piece[4])
            elif piece[:3] == ["py", "::", "kw_only"]:
                kw_only_from = len(names)
                continue
            else:
                continue
            annotated = True
            names.append(name)
            if not has_default:
                required = len(names)
        if annotated:
            sig: dict[str, Any] = {"min": required, "max": len(names), "names": names}
            if kw_only_from is not None:
                sig["kw_only_from"] = kw_only_from
            if self.callable_is_variadic(func):
                sig["max"] = None
            return sig
        found = self.callable_arity(func, method, init)
        if found is None:
            self.unresolved.append(where)
            return {"min": 0, "max": None, "names": [], "unresolved": True}
        lo, hi = found
        return {"min": lo, "max": hi, "names": [None] * (hi if hi is not None else lo)}

    def callable_is_variadic(self, func: list[str]) -> bool:
        if func[:1] == ["["]:
            j = skip_group(func, 0)
            return "args" in func[j:skip_group(func, j)] if j < len(func) else False
        return False

    def callable_arity(self, func: list[str], method: bool, init: bool) -> Optional[tuple[int, Optional[int]]]:
        """(min, max) Python-visible positional args of a bound callable with no py::arg annotations."""
        drop = 1 if method else 0
        if not func:
            return None
        # wrappers whose first argument is the real callable
        for wrapper in (["utils", "::", "deprecate"], ["utils", "::", "deprecateMember"], ["py", "::", "cpp_function"]):
            if func[:3] == wrapper and func[3] == "(":
                end = skip_group(func, 3)
                inner = split_args(func, 4, end - 1)
                return self.callable_arity(inner[0], method, init) if inner else None
        if init:
            # py::init<A, B>() / py::init(lambda or factory)
            if func[3:4] == ["<"]:
                end = skip_template(func, 3)
                count = len(split_args(func, 4, end - 1))
                return count, count
            if func[3:4] == ["("]:
                end = skip_group(func, 3)
                inner = split_args(func, 4, end - 1)
                return self.callable_arity(inner[0], False, False) if inner else None
            return None
        if func[0] == "[":
            found = lambda_params(func, 0)
            if found:
                lo, hi, _ = found
                return max(lo - drop, 0), (None if hi is None else max(hi - drop, 0))
            return None
        if func[:3] == ["py", "::", "overload_cast"] and func[3] == "<":
            end = skip_template(func, 3)
            count = len([a for a in split_args(func, 4, end - 1) if a != ["void"]])
            return count, count
        ident = [t for t in func if t not in ("&", "::", "*", "static_cast")]
        if func[0] == "&" and len(func) >= 4 and func[2] == "::":
            cls, meth = func[1], func[-1]
            found = self.headers.method(cls, meth)
            if found:
                return found
            return None
        if len(ident) >= 1 and ident[-1] in self.lambdas:
            lo, hi, _ = self.lambdas[ident[-1]]
            return max(lo - drop, 0), (None if hi is None else max(hi - drop, 0))
        if func[0] == "&" and len(func) == 2:  # free function
            return None
        return None


def python_package(source: Source, bindings: Bindings) -> Optional[str]:
    """Functions and attributes that the package's __init__.py defines in Python (nptype, __version__...)."""
    for path in PACKAGE_INITS:
        text = source.read(path)
        if text is None:
            continue
        tree = ast.parse(re.sub(r"##(\w+)##", r"\1", text))  # packaging placeholders, e.g. ##TENSORRT_MODULE##
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                a = node.args
                positional = a.posonlyargs + a.args
                lo = len(positional) - len(a.defaults)
                hi = None if a.vararg else len(positional)
                bindings.functions.setdefault(node.name, []).append(
                    {"min": lo, "max": hi, "names": [p.arg for p in positional], "python": True})
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bindings.attributes.setdefault(target.id, "python")
                    elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                          and target.value.id in bindings.classes):
                        bindings.classes[target.value.id]["methods"].setdefault(
                            target.attr, [{"min": 0, "max": None, "names": [], "python": True}])
        return path
    return None


# ------------------------------------------------------------------------------------------- return types

SIMPLE = {"int", "str", "bool", "float", "None", "bytes"}


def stub_return_types(path: Optional[str]) -> dict[str, dict[str, str]]:
    """{class: {member: return annotation}} from a tensorrt-stubs .pyi, for plain-name annotations only."""
    if not path:
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from apicheck import repair_pyi

    tree = ast.parse(repair_pyi(Path(path).read_text())[0])
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = found.setdefault(node.name, {})
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.returns is not None:
                    text = ast.unparse(item.returns)
                    members.setdefault(item.name, text)
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            found.setdefault("", {})[node.name] = ast.unparse(node.returns)
    return found


def plain_type(annotation: Optional[str], known: set[str]) -> str:
    if not annotation:
        return "Any"
    name = annotation.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt.", "").strip()
    if name in SIMPLE or name in known:
        return name
    return "Any"


# ------------------------------------------------------------------------------------------------ main


def generate(source: Source, return_types: Optional[str], version: Optional[str]) -> dict[str, Any]:
    headers = Headers(source)
    bindings = Bindings(source, headers)
    files = [p for folder in BINDING_DIRS for p in source.list(folder)
             if p.endswith(".cpp") and not p.endswith(BINDING_SKIP)]
    token_lists = {p: tokenize(source.read(p) or "") for p in files}
    for tokens in token_lists.values():
        bindings.collect_lambdas(tokens)
    # two rounds so that base classes bound in a later file still resolve (e.g. IVersionedInterface)
    for _ in range(2):
        bindings.classes, bindings.enums, bindings.functions, bindings.attributes = {}, {}, {}, {}
        bindings.unresolved = []
        for path in files:
            bindings.scan(token_lists[path], path)
    init = python_package(source, bindings)
    version_h = source.read("include/NvInferVersion.h") or ""
    parts = [re.search(rf"#define\s+(?:NV_TENSORRT_{k}|TRT_{k}_ENTERPRISE)\s+(\d+)", version_h)
             for k in ("MAJOR", "MINOR", "PATCH")]
    header_version = ".".join(m.group(1) for m in parts if m) or None

    known = set(bindings.classes) | set(bindings.enums)
    stubs = stub_return_types(return_types)
    classes: dict[str, Any] = {}
    for name, entry in sorted(bindings.classes.items()):
        borrowed = stubs.get(name.split(".")[-1], {})
        methods = {}
        for meth, sigs in sorted(entry["methods"].items()):
            returns = plain_type(borrowed.get(meth), known)
            methods[meth] = [{**sig, "returns": returns} for sig in sigs]
        properties = {prop: {**info, "type": plain_type(borrowed.get(prop), known)}
                      for prop, info in sorted(entry["properties"].items())}
        out: dict[str, Any] = {"bases": entry["bases"], "methods": methods, "properties": properties}
        if entry.get("buffer_protocol"):
            out["buffer_protocol"] = True
        if entry.get("nested"):
            out["nested"] = entry["nested"]
        classes[name] = out
    enums = {name: {"members": dict(sorted(e["members"].items())), "cpp": e["cpp"],
                    **({"exported_to": e["exported_to"]} if "exported_to" in e else {})}
             for name, e in sorted(bindings.enums.items())}
    functions = {}
    for fname, sigs in sorted(bindings.functions.items()):
        returns = plain_type(stubs.get("", {}).get(fname), known)
        functions[fname] = [{**sig, "returns": returns} for sig in sigs]
    return {
        "api": "tensorrt",
        "version": version or header_version,
        "header_version": header_version,
        "generated_by": "tools/api/trt_names.py",
        "source": {**source.describe(), "files": files + ([init] if init else [])},
        "return_types_from": Path(return_types).name if return_types else None,
        "unresolved_arity": sorted(bindings.unresolved),
        "module": {"functions": functions, "attributes": dict(sorted(bindings.attributes.items()))},
        "classes": classes,
        "enums": enums,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--git", help="a git directory (bare mirror) of NVIDIA/TensorRT; needs --tag")
    where.add_argument("--src", help="a checkout of NVIDIA/TensorRT at the release to record")
    parser.add_argument("--tag", help="release tag in --git, e.g. 8.5.2, v10.3.0, v11.1")
    parser.add_argument("--version", help="version to record (default: include/NvInferVersion.h)")
    parser.add_argument("--return-types", help="tensorrt-stubs' tensorrt_bindings/tensorrt.pyi to borrow return types")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    if args.git and not args.tag:
        parser.error("--git needs --tag")
    data = generate(Source(args.git, args.tag, args.src), args.return_types, args.version)
    Path(args.output).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    n_methods = sum(len(c["methods"]) + len(c["properties"]) for c in data["classes"].values())
    print(f"{args.output}: TensorRT {data['version']}: {len(data['classes'])} classes, {n_methods} members, "
          f"{len(data['enums'])} enums, {len(data['unresolved_arity'])} bindings of unknown arity", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
