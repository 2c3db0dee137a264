"""SparseGPT, Wanda, RTN and GPTQ on tiny random causal LMs (LLaMA- and GPT-2-style, built
from transformers configs: nothing downloads), with the layers' real calibration inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from studio.core.methods.layerwise.apply import (
    PruneTarget,
    QuantTarget,
    prune_layerwise,
    quantize_layerwise,
)
from studio.core.methods.layerwise.blocks import decoder_blocks, linear_names, weight_matrix
from studio.core.methods.layerwise.quantize import gptq_quantize, rtn_quantize
from studio.core.methods.layerwise.sparsegpt import sparsegpt_prune
from studio.core.methods.layerwise.stats import ColumnNorms, Hessian
from studio.core.methods.layerwise.wanda import wanda_mask

VOCAB = 96


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=0,
                                      eos_token_id=0)).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return MODELS[request.param]()


def tokens(count: int = 16, length: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (count, length), generator=torch.Generator().manual_seed(1))


def layer_inputs(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The real inputs [tokens, in] of one Linear layer of the dense model."""
    caught: list[torch.Tensor] = []
    module = model.get_submodule(name)
    handle = module.register_forward_hook(lambda _m, args, _o: caught.append(args[0]))
    with torch.no_grad():
        model(tokens())
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in caught])


def output_error(weight: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ (changed - weight).t()) / torch.linalg.norm(x @ weight.t()))


def hessian_of(model: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    stats = Hessian(model.get_submodule(name))
    stats.add(x)
    return stats.matrix


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_sparsegpt_update_lowers_the_layer_output_error_against_the_same_mask(
        model: torch.nn.Module, nm: tuple[int, int] | None) -> None:
    for name in linear_names(model)[:3]:
        x = layer_inputs(model, name)
        weight = weight_matrix(model.get_submodule(name))
        pruned, mask = sparsegpt_prune(weight, hessian_of(model, name, x), 0.5, nm,
                                       block_size=32)
        assert (pruned[~mask] == 0).all()
        assert abs(1 - float(mask.float().mean()) - 0.5) < 0.01
        masked_only = output_error(weight, weight * mask, x)
        assert output_error(weight, pruned, x) < 0.9 * masked_only


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_error_is_below_round_to_nearest(model: torch.nn.Module, act_order: bool) -> None:
    for name in linear_names(model)[:3]:
        x = layer_inputs(model, name)
        weight = weight_matrix(model.get_submodule(name))
        for bits, symmetric in ((4, False), (4, True), (3, False)):
            rtn = rtn_quantize(weight, bits, 32, symmetric).dequantized()
            gptq = gptq_quantize(weight, hessian_of(model, name, x), bits, 32,
                                 symmetric, act_order=act_order).dequantized()
            assert output_error(weight, gptq, x) < output_error(weight, rtn, x)


def test_act_order_keeps_each_group_on_its_grid_fitted_on_the_original_weights() -> None:
    x = torch.randn(512, 64) * torch.linspace(0.1, 3.0, 64)  # unequal input energies
    weight = torch.randn(16, 64)
    hessian = 2 * x.t() @ x / len(x)
    mask = torch.rand(16, 64) > 0.5
    quantized = gptq_quantize(weight * mask, hessian, 4, 32, mask=mask, act_order=True)
    rounded = rtn_quantize(weight * mask, 4, 32)
    # static groups: each group's scale and zero point are round-to-nearest's, column order
    # only decides where the errors go
    assert torch.equal(quantized.scales, rounded.scales)
    assert torch.equal(quantized.zeros, rounded.zeros)
    assert (quantized.dequantized()[~mask] == 0).all()
    assert not torch.equal(quantized.q, rounded.q)


def test_quantized_weights_lie_on_their_group_grid() -> None:
    weight = torch.randn(8, 80)
    quantized = rtn_quantize(weight, 4, 32, symmetric=False)
    assert quantized.scales.shape == quantized.zeros.shape == (8, 3)
    assert int(quantized.q.max()) <= 15
    assert torch.allclose(quantized.dequantized(), weight, atol=float(quantized.scales.max()))
    symmetric = rtn_quantize(weight, 4, 32, symmetric=True)
    assert (symmetric.zeros == 8).all()


def test_gptq_keeps_pruned_weights_at_zero() -> None:
    x = torch.randn(256, 64) @ torch.randn(64, 64)
    weight = torch.randn(16, 64)
    mask = torch.rand(16, 64) > 0.5
    hessian = 2 * x.t() @ x / len(x)
    quantized = gptq_quantize(weight * mask, hessian, 4, 32, mask=mask).dequantized()
    assert (quantized[~mask] == 0).all()


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_nm_groups_are_exact_in_every_layer(model: torch.nn.Module, nm: tuple[int, int],
                                            method: str) -> None:
    names = linear_names(model)
    result = prune_layerwise(model, tokens(), {n: PruneTarget(0.0, nm) for n in names},
                             method)  # type: ignore[arg-type]
    assert sorted(result.masks) == sorted(names)
    for name in names:
        weight = weight_matrix(model.get_submodule(name))
        groups = (weight != 0).reshape(weight.shape[0], -1, nm[1]).sum(-1)
        assert (groups == nm[0]).all(), name
        # The masks are laid out like the module's weight (GPT-2's Conv1D stores [in, out]).
        assert torch.equal(model.get_submodule(name).weight != 0, result.masks[name])


def test_unstructured_pruning_reaches_the_sparsity_and_sparsegpt_beats_wanda_on_output(
        model: torch.nn.Module) -> None:
    names = linear_names(model)
    with torch.no_grad():
        dense = model(tokens()).logits
    errors = {}
    for method in ("sparsegpt", "wanda"):
        pruned = copy.deepcopy(model)
        result = prune_layerwise(pruned, tokens(), {n: PruneTarget(0.5) for n in names},
                                 method)  # type: ignore[arg-type]
        for name in names:
            zeros = float((weight_matrix(pruned.get_submodule(name)) == 0).float().mean())
            assert abs(zeros - 0.5) < 0.01
            assert abs(result.masks.sparsity()[name] - 0.5) < 0.01
        with torch.no_grad():
            errors[method] = float((pruned(tokens()).logits - dense).pow(2).mean())
    assert errors["sparsegpt"] < errors["wanda"]


def test_wanda_prunes_each_row_by_weight_times_input_norm() -> None:
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    norms = torch.tensor([100.0, 1.0, 1.0, 0.01])  # mean squares: input 0 is loud
    mask = wanda_mask(weight, norms, 0.5)
    assert mask.tolist() == [[True, False, True, False], [True, True, False, False]]
    stats = ColumnNorms(torch.nn.Linear(4, 2))
    stats.add(torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0]]))
    assert stats.squares.tolist() == [5.0, 4.0, 0.0, 0.0]


def test_gptq_over_the_model_quantizes_every_target_and_rounds_the_head(
        model: torch.nn.Module) -> None:
    names = linear_names(model)
    head = "lm_head"
    targets = {n: QuantTarget(4, 32) for n in [*names, head]}
    result = quantize_layerwise(model, tokens(), targets, "gptq")
    assert sorted(result.quantized) == sorted(targets)
    assert result.rounded_only == [head]
    for name in names:
        assert torch.equal(weight_matrix(model.get_submodule(name)),
                           result.quantized[name].dequantized())


def test_blocks_are_found_in_both_families() -> None:
    assert decoder_blocks(tiny_llama())[0] == "model.layers"
    assert decoder_blocks(tiny_gpt2())[0] == "transformer.h"
