"""Weights read inside If/Loop/Scan bodies (outer-scope initializers, the body's own
initializers and Constants) count on the body node that reads them, and pruning and dynamic
int8 reach them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core.engine.run import run_recipe
from studio.core.graph.onnx_walk import all_graphs
from studio.core.jobs import CancelToken, Result
from studio.core.methods.pruning.onnx_initializers import prune_initializers
from studio.core.plan.ort_rules import plan_to_ort
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_workspace

WIDTH = 16
RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def if_model(path: Path) -> Path:
    """``y = x @ W_outer @ W_then + C`` when sum(x) > -1e9 (always), else ``x``: the then
    branch reads an outer initializer, its own initializer and a Constant."""
    constant = helper.make_node("Constant", [], ["C"], name="bias",
                                value=numpy_helper.from_array(np.ones(WIDTH, np.float32)))
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W_outer"], ["t1"], name="first"),
         helper.make_node("MatMul", ["t1", "W_then"], ["t2"], name="second"), constant,
         helper.make_node("Add", ["t2", "C"], ["then_out"], name="add")],
        "then", [], [_value("then_out", ["batch", WIDTH])], [_weight("W_then", WIDTH, WIDTH)])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"], name="same")],
        "else", [], [_value("else_out", ["batch", WIDTH])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
         helper.make_node("Greater", ["total", "floor"], ["positive"], name="test"),
         helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_branch,
                          else_branch=else_branch)],
        "gated", [_value("x", ["batch", WIDTH])], [_value("y", ["batch", WIDTH])],
        [_weight("W_outer", WIDTH, WIDTH),
         numpy_helper.from_array(np.array(-1e9, np.float32), "floor")])
    return _save(graph, path)


def loop_model(path: Path) -> Path:
    """Three steps of ``h = tanh(h @ W_loop + B_loop)``: an outer weight, a body bias."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "W_loop"], ["product"], name="step"),
         helper.make_node("Add", ["product", "B_loop"], ["pre"], name="shift"),
         helper.make_node("Tanh", ["pre"], ["h_out"], name="squash"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="again")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 _value("h_in", ["batch", WIDTH])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         _value("h_out", ["batch", WIDTH])], [_weight("B_loop", WIDTH)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "x"], ["y"], name="repeat", body=body)],
        "looped", [_value("x", ["batch", WIDTH])], [_value("y", ["batch", WIDTH])],
        [_weight("W_loop", WIDTH, WIDTH), numpy_helper.from_array(np.array(3, np.int64), "steps"),
         numpy_helper.from_array(np.array(True), "go")])
    return _save(graph, path)


def scan_model(path: Path) -> Path:
    """A recurrent cell over a sequence: ``h = tanh(x_t @ W_in + h @ W_rec)``."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "W_in"], ["a"], name="input_proj"),
         helper.make_node("MatMul", ["h_in", "W_rec"], ["b"], name="recurrent"),
         helper.make_node("Add", ["a", "b"], ["s"], name="sum"),
         helper.make_node("Tanh", ["s"], ["h_out"], name="squash"),
         helper.make_node("Identity", ["h_out"], ["y_t"], name="emit")],
        "cell", [_value("h_in", [WIDTH]), _value("x_t", [WIDTH])],
        [_value("h_out", [WIDTH]), _value("y_t", [WIDTH])], [_weight("W_rec", WIDTH, WIDTH)])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["h0", "xs"], ["h_last", "ys"], name="rnn", body=body,
                          num_scan_inputs=1)],
        "scanned", [_value("xs", [5, WIDTH])],
        [_value("h_last", [WIDTH]), _value("ys", [5, WIDTH])],
        [_weight("W_in", WIDTH, WIDTH), numpy_helper.from_array(np.zeros(WIDTH, np.float32), "h0")])
    return _save(graph, path)


SQUARE = WIDTH * WIDTH


@pytest.mark.parametrize("build, readers, nbytes", [
    (if_model, {"branch/then_branch/first": SQUARE, "branch/then_branch/second": SQUARE,
                "branch/then_branch/add": WIDTH, "test": 1}, 4 * (2 * SQUARE + WIDTH + 1)),
    (loop_model, {"repeat/body/step": SQUARE, "repeat/body/shift": WIDTH, "repeat": 2},
     4 * (SQUARE + WIDTH) + 8 + 1),  # the trip count is an int64, the condition a bool
    (scan_model, {"rnn/body/input_proj": SQUARE, "rnn/body/recurrent": SQUARE, "rnn": WIDTH},
     4 * (2 * SQUARE + WIDTH)),
])
def test_weights_in_bodies_count_on_the_node_that_reads_them(tmp_path, build, readers, nbytes):
    tree = open_workspace(str(build(tmp_path / "model.onnx"))).tree
    counted = {node.name: node.params for node in tree if node.params}
    assert counted == readers
    assert tree.root.total_params == sum(readers.values())
    stored = sum(int(np.prod(t.dims)) for g in all_graphs(onnx.load(
        str(tmp_path / "model.onnx")).graph) for t in g.initializer)
    assert tree.root.total_params >= stored  # every initializer counted (plus Constants)
    matmul = tree.get(next(name for name, count in readers.items() if count == SQUARE))
    assert matmul.prunable and matmul.weight_bits == 32
    body = tree.nodes[matmul.parent]
    assert body.op_type == "Body" and tree.nodes[body.parent].op_type in ("If", "Loop", "Scan")
    assert tree.root.total_nbytes == nbytes


def test_pruning_reaches_weights_inside_a_loop_body(tmp_path):
    path = loop_model(tmp_path / "loop.onnx")
    model = onnx.load(str(path))
    report = prune_initializers(model, {"repeat/body/step": 0.5})
    assert report["layers"]["repeat/body/step"]["sparsity"] == pytest.approx(0.5)
    pruned = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["W_loop"]
    assert np.count_nonzero(pruned) == SQUARE // 2
    onnx.save(model, str(tmp_path / "pruned.onnx"))
    x = RNG.standard_normal((2, WIDTH)).astype(np.float32)
    out = ort.InferenceSession(str(tmp_path / "pruned.onnx")).run(None, {"x": x})[0]
    h = x
    for _ in range(3):
        h = np.tanh(h @ pruned + numpy_helper.to_array(
            model.graph.node[0].attribute[0].g.initializer[0]))
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)


def test_a_run_prunes_and_quantizes_inside_an_if_body(tmp_path):
    if_model(tmp_path / "gated.onnx")
    np.savez(tmp_path / "x.npz", x=RNG.standard_normal((40, WIDTH)).astype(np.float32))
    recipe = parse_recipe(
        "schema_version: 1\nmodel: {path: gated.onnx}\n"
        "plan: {defaults: {weight_bits: int8, sparsity: 0.5}}\n"
        "data: {source: arrays, path: x.npz, calibration_samples: 8}\n"
        "export: {latency_repeats: 1, latency_batch: 4}\n")
    events = list(run_recipe(recipe, tmp_path, tmp_path / "out", CancelToken()))
    assert isinstance(events[-1], Result)
    report = events[-1].report
    assert set(report["stages"]["prune"]["layers"]) == {"branch/then_branch/first",
                                                       "branch/then_branch/second"}
    decisions = report["stages"]["quantize"]["decisions"]
    assert decisions["branch/then_branch/first"] == "int8 dynamic"
    quantized = onnx.load(str(tmp_path / "out" / "model.onnx"))
    then_ops = [n.op_type for g in all_graphs(quantized.graph) if g.name == "then"
                for n in g.node]
    assert then_ops.count("MatMulInteger") == 2
    assert report["baseline"]["params"] == 2 * SQUARE + WIDTH + 1
    assert 0.8 < report["compressed"]["metric"]["value"] < 1.0  # half the weights are gone
    assert not any("left float" in note for note in report["notes"])


def test_static_int8_says_it_leaves_body_weights_float(tmp_path):
    tree = open_workspace(str(if_model(tmp_path / "gated.onnx"))).tree
    spec = ResolvedSpec(0.0, "weights", "int8", "int8", False, {})
    plan = plan_to_ort(tree, {"": spec})
    assert plan.mode is None  # the only weighted nodes are in the body
    assert plan.decisions["branch/then_branch/second"] == \
        "float (static int8 does not reach If/Loop/Scan bodies)"
    assert any("'branch/then_branch/first'" in note and "left float" in note
               for note in plan.notes)
