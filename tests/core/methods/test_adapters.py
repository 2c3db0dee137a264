"""LoRA and DoRA through peft on tiny models: only the adapters train (the base stays bit for
bit), the merge is exact (onnxruntime on the merged export equals torch with the adapter),
rank and alpha follow the plan per layer, the adapter saved alone loads back with peft, and the
QLoRA-style base lies on the plan's int grid."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.export.measure import run_onnx
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken
from studio.core.methods.adapters.peft_adapters import (
    ADAPTER_FILES,
    adapter_targets,
    attach_adapters,
    merge_adapters,
    quantize_base,
    save_adapter,
)
from studio.core.plan.plan import ResolvedSpec
from studio.core.train.loop import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning")


def _resolved(model: nn.Module, layers: dict[str, dict] | None = None, **defaults
              ) -> dict[str, ResolvedSpec]:
    """Plan settings per module: ``defaults`` everywhere, ``layers`` on top by name."""
    base = {"sparsity": 0.0, "granularity": "unstructured", "weight_bits": None,
            "act_bits": None, "exclude": False, "sources": {}}
    return {name: ResolvedSpec(**base, **{**defaults, **(layers or {}).get(name, {})})
            for name, _ in model.named_modules()}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 5))


def _regression(n: int = 64) -> TensorDataset:
    torch.manual_seed(1)
    x = torch.randn(n, 12)
    return TensorDataset(x, torch.randint(0, 5, (n,)))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_only_the_adapters_train_and_the_merged_export_equals_torch_with_them(kind, tmp_path):
    model = _mlp()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    targets, notes = adapter_targets(model, _resolved(model, adapter=kind, adapter_rank=4))
    assert [t.name for t in targets] == ["0", "2", "4"] and notes == []
    attached = attach_adapters(model, targets)
    list(train(model, _regression(), TrainConfig(epochs=3, lr=1e-2, batch_size=16),
               CancelToken()))
    moved = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved and all("lora_" in n for n in moved)
    for name, weight in base.items():  # the frozen base, bit for bit
        layer, leaf = name.rsplit(".", 1)
        assert torch.equal(model.get_submodule(f"{layer}.base_layer").get_parameter(leaf),
                           weight), name
    x = torch.randn(8, 12)
    with torch.no_grad():
        with_adapter = model(x)
        assert not torch.allclose(with_adapter, _mlp()(x), atol=1e-3)  # training changed it
    merged = merge_adapters(attached)
    assert [n for n, _ in merged.named_parameters()] == list(base)  # plain layers again
    path = export_onnx(merged.eval(), x[:1], tmp_path / "merged.onnx")
    assert torch.allclose(torch.from_numpy(run_onnx(path, x)), with_adapter, atol=1e-5)


def test_rank_and_alpha_follow_the_plan_per_layer_and_none_leaves_a_layer_out():
    model = _mlp()
    resolved = _resolved(model, {"2": {"adapter_rank": 2, "adapter_alpha": 2.0},
                                 "4": {"adapter": "none"}}, adapter_rank=6)
    targets, _ = adapter_targets(model, resolved)
    attach_adapters(model, targets)
    layers = dict(model.named_modules())
    assert layers["0.lora_A.default"].weight.shape == (6, 12)
    assert layers["2.lora_A.default"].weight.shape == (2, 32)
    assert layers["0"].scaling["default"] == 16.0 / 6 and layers["2"].scaling["default"] == 1.0
    assert "4.lora_A" not in layers and isinstance(layers["4"], nn.Linear)


def test_mixed_kinds_are_refused_with_the_reason():
    model = _mlp()
    targets, _ = adapter_targets(model, _resolved(model, {"2": {"adapter": "dora"}}))
    with pytest.raises(StudioError, match="one adapter kind and one dropout"):
        attach_adapters(model, targets)


def test_the_adapter_saved_alone_loads_back_with_peft(tmp_path):
    from peft import PeftModel

    model = _mlp()
    attached = attach_adapters(model, adapter_targets(model, _resolved(model))[0])
    list(train(model, _regression(), TrainConfig(epochs=2, lr=1e-2, batch_size=16),
               CancelToken()))
    files = save_adapter(attached, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ADAPTER_FILES) == sorted(
        p.name for p in files)
    x = torch.randn(4, 12)
    loaded = PeftModel.from_pretrained(_mlp(), str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)


def test_a_tied_head_gets_no_adapter_and_the_quantized_base_lies_on_the_grid():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    resolved = _resolved(model)
    targets, notes = adapter_targets(model, resolved)
    assert "lm_head" not in {t.name for t in targets} and "lm_head" in notes[0]
    assert len(targets) == 2 * 7  # q, k, v, o, gate, up, down per block
    bits = {t.name: 4 for t in targets}
    quantize_base(model, bits)
    weight = model.get_submodule(targets[0].name).weight
    assert all(len(row.unique()) <= 15 for row in weight)  # 2^4 - 1 symmetric levels
    ids = torch.randint(0, 64, (2, 8))
    frozen = copy.deepcopy(model)
    attached = attach_adapters(model, targets)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        with_adapter = model(ids).logits
        assert not torch.allclose(with_adapter, frozen(ids).logits, atol=1e-4)
        merged = merge_adapters(attached)
        assert torch.allclose(merged(ids).logits, with_adapter, atol=1e-5)
