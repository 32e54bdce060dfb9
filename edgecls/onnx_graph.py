"""Loading, checking, saving and walking ONNX graphs: the pieces export and quantization both need."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from edgecls.artifacts import atomic_write
from edgecls.errors import EdgeclsError, first_line


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, or raise one line saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"ONNX file {path} does not exist; write it with `edgecls export`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError... depending on the bytes
        raise EdgeclsError(f"{path} is not a readable ONNX model ({type(exc).__name__}); "
                           "re-export it with `edgecls export`") from exc


def save_checked(model: onnx.ModelProto, out_path: str | os.PathLike) -> Path:
    """Run onnx's full check (strict shape inference included), then write the file atomically."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # the full check infers shapes
        raise EdgeclsError(f"the exported graph for {out_path} fails onnx.checker: {first_line(exc)}") from exc
    with atomic_write(out_path) as handle:
        handle.write(model.SerializeToString())
    return Path(out_path)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (a node reading a tensor twice is listed twice)."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder the graph's nodes so that every node comes after the producers of its inputs (stable)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise EdgeclsError(f"graph {graph.name!r} has a cycle or a dangling input; re-export it")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [node for node in pending if node not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
