"""Transformer pruning on tiny models built here: attention heads (torch's MultiheadAttention and
a hand-written BERT-like attention), FFN width, and dropping whole residual blocks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.methods.pruning.attention import HeadPrunedAttention
from studio.core.methods.pruning.importance import accumulate_gradients, clear_gradients
from studio.core.methods.pruning.transformer import (
    HeadLayout,
    SkippedBlock,
    block_influence,
    drop_blocks,
    ffn_layers,
    head_scores,
    prune_ffn,
    prune_heads,
)

D_MODEL, HEADS, HEAD_DIM = 32, 4, 8


class TinyEncoder(nn.Module):
    """Two torch encoder layers (d_model 32, 4 heads) and a 3-class head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(1))


class SelfAttention(nn.Module):
    """Hand-written attention as BERT writes it: separate q/k/v Linears and a head count."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_size = HEADS, HEAD_DIM
        self.query, self.key, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        self.dense = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_size), dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.dense(context)


class Block(nn.Module):
    """A residual block, ``x + f(x)``, as a layer of a plain ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = SelfAttention()
        self.norm = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 64), nn.GELU(), nn.Linear(64, D_MODEL))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm(x))
        return x + self.mlp(x)


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Block() for _ in range(3))
        self.out = nn.Linear(D_MODEL, 3)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layer:
            x = block(x)
        return self.out(x[:, 0])


def _inputs(seed: int = 0) -> Tensor:
    return torch.randn(2, 7, D_MODEL, generator=torch.Generator().manual_seed(seed))


def _silence_head(q: Tensor | None, v_rows: Tensor, out_columns: Tensor, head: int) -> None:
    """Make one head contribute nothing: zero its value rows and output columns."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    with torch.no_grad():
        v_rows[rows] = 0.0
        out_columns[:, rows] = 0.0
        if q is not None:
            q[rows] = 0.0


def test_head_pruned_attention_equals_multihead_attention_with_all_heads() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True).eval()
    copy_ = HeadPrunedAttention.keeping(attention, range(HEADS)).eval()
    x = _inputs()
    padding = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal},
                   {"attn_mask": causal, "key_padding_mask": padding}):
        expected, expected_weights = attention(x, x, x, **kwargs)
        got, weights = copy_(x, x, x, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=0)


def test_head_pruning_removes_the_least_important_heads_of_multihead_attention() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = _inputs()
    attention = model.encoder.layers[0].self_attn
    _silence_head(None, attention.in_proj_weight[2 * D_MODEL:], attention.out_proj.weight, 2)
    with torch.no_grad():
        attention.in_proj_bias[2 * D_MODEL + 2 * HEAD_DIM: 2 * D_MODEL + 3 * HEAD_DIM] = 0.0
        expected = model(x)
    assert int(head_scores(attention).argmin()) == 2
    report = prune_heads(model, x, {"encoder.layers.0.self_attn": 0.25})
    assert report.changed == {"encoder.layers.0.self_attn": [4, 3]}
    assert report.removed == {"encoder.layers.0.self_attn": [2]}
    with torch.no_grad():  # the head that contributed nothing is gone; nothing else changed
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)

    report = prune_heads(model, x, {"encoder.layers.1.self_attn": 0.5})
    first, second = (model.encoder.layers[i].self_attn for i in range(2))
    assert isinstance(first, HeadPrunedAttention) and isinstance(second, HeadPrunedAttention)
    assert (first.num_heads, second.num_heads) == (3, 2)
    assert second.in_proj_weight.shape == (3 * 2 * HEAD_DIM, D_MODEL)
    assert second.out_proj.in_features == 2 * HEAD_DIM
    assert report.after.params < report.before.params
    assert report.after.macs < report.before.macs
    model.train()
    model(x).sum().backward()  # it still trains
    assert second.in_proj_weight.grad is not None


def test_taylor_head_importance_uses_gradients() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = _inputs()
    data = TensorDataset(torch.randn(32, 7, D_MODEL, generator=torch.Generator().manual_seed(3)),
                         torch.arange(32) % 3)
    attention = model.encoder.layers[1].self_attn
    accumulate_gradients(model, data, n_batches=2, batch_size=16)
    taylor = head_scores(attention, taylor=True)
    clear_gradients(model)
    magnitude = head_scores(attention)
    assert bool((taylor > 0).all()) and not torch.allclose(taylor / taylor.sum(),
                                                           magnitude / magnitude.sum())
    report = prune_heads(model, x, {"encoder.layers.1.self_attn": 0.5}, importance="taylor",
                         data=data)
    expected = sorted(torch.argsort(taylor)[:2].tolist())
    assert report.removed == {"encoder.layers.1.self_attn": expected}
    assert all(p.grad is None for p in model.parameters())


def test_head_pruning_of_a_hand_written_attention() -> None:
    torch.manual_seed(1)
    model = TinyBert().eval()
    x = _inputs(1)
    attention = model.layer[1].attention
    _silence_head(attention.query.weight, attention.value.weight, attention.dense.weight, 3)
    with torch.no_grad():
        attention.value.bias[3 * HEAD_DIM:] = 0.0
        expected = model(x)
    layout = HeadLayout(output="dense")
    report = prune_heads(model, x, {"layer.1.attention": 0.25},
                         layouts={"layer.1.attention": layout})
    assert report.removed == {"layer.1.attention": [3]}
    assert attention.num_heads == 3
    assert attention.query.out_features == attention.value.out_features == 3 * HEAD_DIM
    assert attention.key.weight.shape == (3 * HEAD_DIM, D_MODEL)
    assert attention.dense.in_features == 3 * HEAD_DIM
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    prune_heads(model, x, {"layer.0.attention": 0.5}, layouts={"layer.0.attention": layout})
    assert model.layer[0].attention.num_heads == 2 and model(x).shape == (2, 3)


class Rigid(SelfAttention):
    """Reads the model width where it means the heads' width, as some attentions do."""

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        q, k, v = (p(x).view(batch, length, self.num_heads, -1).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        context = (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).transpose(1, 2)
        return self.dense(context.reshape(x.shape))


def test_an_attention_whose_forward_reads_old_sizes_is_reported() -> None:
    model = nn.Sequential(Rigid())
    with pytest.raises(StudioError, match="no longer runs"):
        prune_heads(model, _inputs(), {"0": 0.5}, layouts={"0": HeadLayout(output="dense")})
    with pytest.raises(ValueError, match="HeadLayout"):
        prune_heads(nn.Sequential(SelfAttention()), _inputs(), {"0": 0.5})


def test_ffn_width_pruning_shrinks_only_the_hidden_units() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = _inputs()
    names = ffn_layers(model)
    assert names == ["encoder.layers.0.linear1", "encoder.layers.1.linear1"]
    report = prune_ffn(model, x, dict.fromkeys(names, 0.5))
    for layer in model.encoder.layers:
        assert layer.linear1.out_features == 32 and layer.linear2.in_features == 32
        assert layer.linear2.out_features == D_MODEL and layer.self_attn.embed_dim == D_MODEL
    assert report.macs_ratio < 0.9 and model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="not the first Linear of an FFN"):
        prune_ffn(model, x, {"encoder.layers.0.linear2": 0.5})


def test_heads_then_ffn_then_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = _inputs()
    prune_heads(model, x, {"encoder.layers.0.self_attn": 0.5})
    prune_ffn(model, x, {"encoder.layers.1.linear1": 0.25})
    assert model.encoder.layers[1].linear1.out_features == 48
    path = tmp_path / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-4)


def test_dropping_blocks_keeps_shapes_and_the_least_influential_goes_first() -> None:
    torch.manual_seed(0)
    model = TinyBert().eval()
    x = _inputs()
    with torch.no_grad():  # block 2 adds nothing: its attention and MLP outputs are zero
        for layer in (model.layer[2].attention.dense, model.layer[2].mlp[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        expected = model(x)
    influence = block_influence(model, ["layer.0", "layer.1", "layer.2"], x)
    assert min(influence, key=influence.get) == "layer.2"
    assert influence["layer.2"] == pytest.approx(0.0, abs=1e-6)
    assert min(influence["layer.0"], influence["layer.1"]) > 1e-3
    report = drop_blocks(model, x, ["layer.2"])
    assert isinstance(model.layer[2], SkippedBlock) and report.changed == {"layer.2": [1, 0]}
    assert report.after.params < report.before.params and not report.renamed
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert "layer.1.attention.query" in dict(model.named_modules())  # other names stay
    with pytest.raises(ValueError, match="changes the shape"):
        drop_blocks(model, x, ["out"])


def test_dropping_a_torch_encoder_layer_renumbers_the_rest() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = _inputs()
    report = drop_blocks(model, x, ["encoder.layers.0"])
    assert len(model.encoder.layers) == model.encoder.num_layers == 1
    assert report.renamed == {"encoder.layers.1": "encoder.layers.0"}
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="keep at least one"):
        drop_blocks(model, x, ["encoder.layers.0"])
