"""Which nodes static int8 leaves float as the attention-mask path: the -3.4e38 bias up to the
softmax, and nothing else a huge constant touches."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from studio.core.methods.quantization.mask_path import mask_path_nodes

FLOAT_MIN = float(np.finfo(np.float32).min)


def _model(nodes: list[onnx.NodeProto], constants: dict[str, float]) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(np.array(value, np.float32), name)
                    for name, value in constants.items()]
    initializers.append(numpy_helper.from_array(np.ones((4, 4), np.float32), "weight"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4])
                     for n in ("scores", "mask")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], initializers)
    return helper.make_model(graph)


def test_the_bias_the_masked_scores_and_their_softmax_but_not_what_follows() -> None:
    model = _model([
        helper.make_node("Mul", ["mask", "fill"], ["bias"], name="bias"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], name="masked"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax"),
        helper.make_node("MatMul", ["probs", "weight"], ["out"], name="mix"),
    ], {"fill": FLOAT_MIN})
    assert mask_path_nodes(model) == ["bias", "masked", "softmax"]


def test_a_huge_constant_that_never_reaches_a_softmax_is_left_alone() -> None:
    model = _model([
        helper.make_node("Clip", ["scores", "low", "high"], ["clipped"], name="clip"),
        helper.make_node("MatMul", ["clipped", "weight"], ["out"], name="mix"),
    ], {"low": FLOAT_MIN, "high": -FLOAT_MIN})
    assert mask_path_nodes(model) == []
