"""Layer trees from torch (hooks and a MAC-counting function mode) and from ONNX graphs."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from studio.core.demo.model import DEMO_INPUT_SHAPE
from studio.core.errors import InputError
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.models.inputs import InputSpec
from studio.core.models.loader import open_model

DEMO_EXAMPLE = InputSpec(DEMO_INPUT_SHAPE)


def _real_output_shapes(module: nn.Module, inputs: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Each module's output shape in an ordinary forward pass (the first call, for reused ones)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, sub in module.named_modules():
        def hook(_sub, _inputs, output, name=name):
            if isinstance(output, tuple):
                output = output[0]
            shapes.setdefault(name, tuple(output.shape))
        handles.append(sub.register_forward_hook(hook))
    with torch.no_grad():
        module(inputs)
    for handle in handles:
        handle.remove()
    return shapes


# --- the demo traced from torch ----------------------------------------------------------------

def test_demo_totals_match_the_module(demo_module):
    tree = build_torch_tree(demo_module, DEMO_EXAMPLE, "demo")
    assert tree.root.total_params == sum(p.numel() for p in demo_module.parameters())
    expected_bytes = sum(p.numel() * p.element_size() for p in demo_module.parameters()) + sum(
        b.numel() * b.element_size() for b in demo_module.buffers())
    assert tree.root.total_nbytes == expected_bytes
    # Every module becomes a node with its dotted name, parents before children.
    assert tree.names() == [name for name, _ in demo_module.named_modules()]
    for node in tree.nodes[1:]:
        assert tree.nodes[node.parent].name == node.name.rpartition(".")[0]
        assert node.parent < node.id
    assert tree.example_input == DEMO_INPUT_SHAPE


def test_demo_output_shapes_match_a_real_forward(demo_module):
    example = InputSpec((3, 1, 28, 28))
    tree = build_torch_tree(demo_module, example, "demo")
    real = _real_output_shapes(demo_module, example.make_tensor())
    assert real  # the hooks saw the modules
    for name, shape in real.items():
        assert tree.get(name).output_shape == shape, name


def test_conv_and_linear_macs_follow_the_formula(demo_module):
    example = InputSpec((2, 1, 28, 28))
    tree = build_torch_tree(demo_module, example, "demo")
    expected_total = 0
    convs = 0
    for name, sub in demo_module.named_modules():
        node = tree.get(name)
        if isinstance(sub, nn.Conv2d):
            kh, kw = sub.kernel_size
            out_elements = math.prod(node.output_shape)
            expected = out_elements * (sub.in_channels // sub.groups) * kh * kw
            convs += 1
        elif isinstance(sub, nn.Linear):
            expected = math.prod(node.output_shape) * sub.in_features
        else:
            expected = 0
        assert node.macs == expected, name
        expected_total += expected
    assert convs == 5
    assert tree.root.total_macs == expected_total
    # Subtree totals add up: a parent holds the sum of its children.
    for node in tree.nodes:
        assert node.total_macs == node.macs + sum(tree.nodes[c].total_macs for c in node.children)


def test_grouped_strided_conv_macs():
    model = nn.Sequential(nn.Conv2d(8, 16, (3, 5), stride=2, padding=1, groups=4),
                          nn.ConvTranspose2d(16, 4, 2, stride=2))
    tree = build_torch_tree(model, InputSpec((2, 8, 15, 17)), "m")
    up = model[1]
    real = _real_output_shapes(model, torch.zeros(2, 8, 15, 17))
    assert tree.get("0").output_shape == real["0"]
    assert tree.get("0").macs == math.prod(real["0"]) * (8 // 4) * 3 * 5
    # A transposed conv spreads every input element over out_channels x kernel outputs.
    assert tree.get("1").macs == math.prod(real["0"]) * up.out_channels * 2 * 2
    assert tree.get("1").out_channels == up.weight.shape[0]


def test_sparsity_counts_exact_zeros(demo_module):
    model = copy.deepcopy(demo_module)
    conv = model.block1[0]
    with torch.no_grad():
        flat = conv.weight.view(-1)
        flat[: flat.numel() // 2] = 0.0
    zeros = int((conv.weight == 0).sum())
    assert zeros >= conv.weight.numel() // 2

    tree = build_torch_tree(model, None, "demo")
    node = tree.get("block1.0")
    assert node.zeros == zeros
    assert node.sparsity == pytest.approx(zeros / conv.weight.numel())
    assert node.sparsity >= 0.5
    block = tree.get("block1")
    block_params = sum(p.numel() for p in model.block1.parameters())
    block_zeros = sum(int((p == 0).sum()) for p in model.block1.parameters())
    assert block.sparsity == pytest.approx(block_zeros / block_params)
    # The original is untouched and (trained weights) has next to no exact zeros.
    assert build_torch_tree(demo_module, None, "demo").get("block1.0").sparsity < 0.01


class _Tied(nn.Module):
    """An embedding whose matrix is reused by the output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def test_shared_parameter_counted_once():
    model = _Tied()
    tree = build_torch_tree(model, InputSpec((2, 5), "int64"), "tied")
    unique = {id(p): p for p in model.parameters()}  # parameters() already skips duplicates
    assert tree.root.total_params == sum(p.numel() for p in unique.values()) == 20 * 8 + 72
    assert tree.get("embed").params == 160
    assert tree.get("out").params == 0
    assert tree.root.total_nbytes == 4 * tree.root.total_params
    # The tied matrix is one prunable weight, not two (else estimates count its bytes twice).
    assert sum(node.weight_params for node in tree.nodes) == 160 + 64
    # MACs of the output projection are still charged where it runs.
    assert tree.get("out").macs == 2 * 5 * 20 * 8


def test_wrong_input_shape_raises_input_error_and_restores_the_model(demo_module):
    model = demo_module
    model.train()
    model.res.eval()  # a mixed state that a blanket .train()/.eval() afterwards would lose
    before = {name: sub.training for name, sub in model.named_modules()}

    with pytest.raises(InputError) as raised:
        build_torch_tree(model, InputSpec((1, 3, 28, 28)), "demo")
    assert "[1, 3, 28, 28]" in str(raised.value)
    assert {name: sub.training for name, sub in model.named_modules()} == before
    assert all(not sub._forward_hooks and not sub._forward_pre_hooks for sub in model.modules())

    tree = build_torch_tree(model, DEMO_EXAMPLE, "demo")
    assert tree.root.total_macs > 0
    assert {name: sub.training for name, sub in model.named_modules()} == before
    assert all(not sub._forward_hooks and not sub._forward_pre_hooks for sub in model.modules())


def test_trace_runs_in_eval_mode_without_touching_batch_norm_statistics(demo_module):
    demo_module.train()
    running = demo_module.stem[1].running_mean.clone()
    build_torch_tree(demo_module, InputSpec((4, 1, 28, 28)), "demo")
    assert torch.equal(demo_module.stem[1].running_mean, running)
    assert demo_module.training


def test_without_example_the_tree_has_sizes_but_no_shapes(demo_module):
    tree = build_torch_tree(demo_module, None, "demo")
    assert tree.root.total_params > 0
    assert tree.root.total_macs == 0
    assert all(node.output_shape is None for node in tree.nodes)
    assert tree.example_input is None


# --- attention -----------------------------------------------------------------------------------

class _CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = x[:, :3] if self.batch_first else x[:3]  # 3 keys for every query
        return self.attn(x, memory, memory)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_macs(batch_first):
    batch, queries, keys, width = 2, 5, 3, 16
    shape = (batch, queries, width) if batch_first else (queries, batch, width)
    model = _CrossAttention(width, heads=4, batch_first=batch_first)
    tree = build_torch_tree(model, InputSpec(shape), "mha")
    node = tree.get("attn")
    assert node.output_shape == shape
    projections = (2 * batch * queries + 2 * batch * keys) * width * width  # q, out; k, v
    scores_and_mix = 2 * batch * queries * keys * width  # q·kᵀ and softmax·v
    assert node.total_macs == projections + scores_and_mix
    assert tree.root.total_macs == node.total_macs


class _HandAttention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        return torch.matmul(scores.softmax(-1), x)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = _HandAttention(width)
        self.sdpa_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        q = self.sdpa_proj(x).unflatten(-1, (2, -1)).transpose(1, 2)  # 2 heads
        return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).flatten(-2)


def test_hand_written_attention_macs_are_charged_to_its_module():
    batch, length, width = 2, 7, 8
    model = _Block(width)
    tree = build_torch_tree(model, InputSpec((batch, length, width)), "block")
    attention = tree.get("attention")
    assert attention.macs == 2 * batch * length * length * width  # scores + mix, own matmuls
    assert tree.get("attention.q").macs == batch * length * width * width
    assert attention.total_macs == attention.macs + 2 * batch * length * width * width
    # scaled_dot_product_attention runs in the root's forward: charged to the root.
    assert tree.root.macs == 2 * batch * length * length * width


# --- ONNX trees ----------------------------------------------------------------------------------

def test_onnx_tree_of_a_legacy_export_matches_the_torch_tree(demo_onnx_path, demo_module):
    loaded = open_model(demo_onnx_path)
    onnx_tree = build_onnx_tree(loaded.onnx_model, "demo")
    torch_tree = build_torch_tree(demo_module, DEMO_EXAMPLE, "demo")

    for name in ("stem", "res", "res.conv1", "res.conv1.0", "res.conv2", "head.2"):
        assert name in onnx_tree, name
        assert onnx_tree.get(name).output_shape == torch_tree.get(name).output_shape, name
        assert onnx_tree.get(name).total_macs == torch_tree.get(name).total_macs, name
    assert onnx_tree.get("res.conv1").label == "conv1"
    assert onnx_tree.get("res.conv1.0").label == "0"
    assert onnx_tree.root.total_macs == torch_tree.root.total_macs > 0

    # The exporter folds each batch norm into the conv before it: a conv gains a bias of one
    # value per output channel, and the batch norms disappear.
    convs = [m for m in demo_module.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in demo_module.modules() if isinstance(m, nn.Linear)]
    expected = sum(c.weight.numel() + c.out_channels for c in convs) + sum(
        p.numel() for m in linears for p in m.parameters())
    assert onnx_tree.root.total_params == expected
    assert onnx_tree.root.total_nbytes == 4 * expected

    conv = onnx_tree.get("res.conv1.0")
    (leaf,) = (onnx_tree.nodes[c] for c in conv.children if onnx_tree.nodes[c].op_type == "Conv")
    assert leaf.weight_params == demo_module.res.conv1[0].weight.numel()
    assert leaf.out_channels == 64 and leaf.weight_bits == 32
    gemm = next(n for n in onnx_tree.subtree(onnx_tree.get("head.2")) if n.op_type == "Gemm")
    assert gemm.out_channels == 10 and gemm.weight_params == 640


def _tiny_scoped_graph() -> onnx.ModelProto:
    """x(2,4) -> MatMul W(4,3) -> Add b -> Relu, with the dynamo exporter's scope metadata."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0  # one exact zero
    bias = np.zeros(3, dtype=np.float32)

    def scoped(node: onnx.NodeProto, scopes: list[str], classes: list[str]) -> onnx.NodeProto:
        for key, value in (("pkg.torch.onnx.name_scopes", repr(scopes)),
                           ("pkg.torch.onnx.class_hierarchy", repr(classes))):
            prop = node.metadata_props.add()
            prop.key, prop.value = key, value
        return node

    nodes = [
        scoped(helper.make_node("MatMul", ["x", "W"], ["h"], name="node_matmul"),
               ["", "encoder", "encoder.proj", "matmul"],
               ["pkg.Net", "pkg.Encoder", "torch.nn.modules.linear.Linear", "aten.matmul"]),
        scoped(helper.make_node("Add", ["h", "b"], ["hb"], name="node_add"),
               ["", "encoder", "encoder.proj", "add"],
               ["pkg.Net", "pkg.Encoder", "torch.nn.modules.linear.Linear", "aten.add"]),
        scoped(helper.make_node("Relu", ["hb"], ["y"], name="node_relu"),
               ["", "encoder", "encoder.act", "relu"],
               ["pkg.Net", "pkg.Encoder", "torch.nn.modules.activation.ReLU", "aten.relu"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_tree_from_exporter_scope_metadata():
    model = _tiny_scoped_graph()
    onnx.checker.check_model(model)
    tree = build_onnx_tree(model, "tiny")
    assert tree.get("encoder").op_type == "Encoder"
    assert tree.get("encoder.proj").op_type == "Linear"
    assert tree.get("encoder.act").op_type == "ReLU"
    assert tree.get("encoder.proj").parent == tree.get("encoder").id
    matmul = tree.get("node_matmul")
    assert matmul.parent == tree.get("encoder.proj").id
    assert matmul.params == 12 and matmul.zeros == 1
    assert matmul.weight_params == 12 and matmul.out_channels == 3
    assert tree.get("node_add").params == 3 and tree.get("node_add").zeros == 3
    assert tree.get("encoder.proj").total_params == 15
    assert tree.root.total_params == 15 and tree.root.total_nbytes == 60
    # The batch is symbolic: shapes keep the symbol, MACs are counted per sample (4 x 3).
    assert matmul.output_shape == ("batch", 3)
    assert tree.root.total_macs == 12


def test_onnx_tree_counts_macs_when_shapes_are_known():
    model = _tiny_scoped_graph()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5
    tree = build_onnx_tree(model, "tiny")
    assert tree.get("node_matmul").macs == 5 * 3 * 4
    assert tree.get("encoder").total_macs == 60
    assert tree.get("encoder.act").output_shape == (5, 3)
