"""edgecls.onnx_graph: loading, checking, saving and walking ONNX graphs, on small graphs built here."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecls.errors import EdgeclsError
from edgecls.onnx_graph import consumers, drop_unused_initializers, load_onnx, save_checked, topological_sort


def chain(order: tuple[int, ...] = (0, 1, 2)) -> onnx.ModelProto:
    """x -> Relu -> a; a + bias -> b; b * a -> y (a is read twice), with the nodes listed in `order`, and an
    initializer no node reads."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Add", ["a", "bias"], ["b"], name="add"),
             helper.make_node("Mul", ["b", "a"], ["y"], name="mul")]
    graph = helper.make_graph([nodes[i] for i in order], "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.ones(2, np.float32), "bias"),
                               numpy_helper.from_array(np.zeros(2, np.float32), "unused")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_load_onnx_reads_a_model_or_says_why_not(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(EdgeclsError) as info:
        load_onnx(path)
    assert str(info.value) == f"ONNX file {path} does not exist; write it with `edgecls export`"
    path.write_bytes(b"\x08\x07garbage that is no protobuf \xff\xff")
    with pytest.raises(EdgeclsError) as info:
        load_onnx(str(path))
    assert re.fullmatch(rf"{re.escape(str(path))} is not a readable ONNX model \(\w+(Error|Warning)\); re-export it "
                        r"with `edgecls export`", str(info.value))  # says what the reader found wrong
    path.write_bytes(chain().SerializeToString())
    assert load_onnx(path) == chain()


def test_save_checked_writes_only_a_graph_that_passes_the_checker(tmp_path):
    out = tmp_path / "model.onnx"
    assert save_checked(chain(), str(out)) == out
    assert onnx.load(str(out)) == chain()
    broken = chain()
    broken.graph.node[1].input[1] = "nowhere"
    with pytest.raises(EdgeclsError) as info:
        save_checked(broken, tmp_path / "broken.onnx")
    assert str(info.value).startswith(f"the exported graph for {tmp_path / 'broken.onnx'} fails onnx.checker: ")
    assert "nowhere" in str(info.value) and "\n" not in str(info.value)
    # The full check infers shapes: adding a [3] tensor to a [2] one passes the plain checker, not this one.
    mismatched = chain()
    mismatched.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "bias"))
    onnx.checker.check_model(mismatched)
    with pytest.raises(EdgeclsError) as info:
        save_checked(mismatched, tmp_path / "mismatched.onnx")
    assert str(info.value).startswith(f"the exported graph for {tmp_path / 'mismatched.onnx'} fails onnx.checker: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_consumers_lists_every_reader_of_each_tensor():
    users = consumers(chain().graph)
    assert {name: [node.name for node in nodes] for name, nodes in users.items()} == {
        "x": ["relu"], "a": ["add", "mul"], "bias": ["add"], "b": ["mul"]}


def test_topological_sort_puts_producers_first_and_keeps_the_order_otherwise():
    model = chain((2, 1, 0))
    topological_sort(model.graph)
    assert [node.name for node in model.graph.node] == ["relu", "add", "mul"]
    onnx.checker.check_model(model)
    optional = chain((1, 0, 2))
    optional.graph.node[0].input.append("")  # an optional input left out is named ""
    optional.graph.node.append(helper.make_node("Neg", ["x"], ["unrelated"], name="neg"))
    topological_sort(optional.graph)
    assert [node.name for node in optional.graph.node] == ["relu", "neg", "add", "mul"]


def test_topological_sort_refuses_a_cycle_or_a_dangling_input():
    model = chain()
    model.graph.node[0].input[0] = "y"  # relu now reads mul's output
    with pytest.raises(EdgeclsError) as info:
        topological_sort(model.graph)
    assert str(info.value) == "graph 'chain' has a cycle or a dangling input; re-export it"
    assert [node.name for node in model.graph.node] == ["relu", "add", "mul"]  # left as it was


def test_drop_unused_initializers_keeps_what_nodes_read():
    model = chain()
    drop_unused_initializers(model.graph)
    assert [init.name for init in model.graph.initializer] == ["bias"]
