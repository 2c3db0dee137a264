"""Efficient training in the shared loop: gradient accumulation gives the step of the larger
batch, checkpointing gives the same gradients from less saved memory (also for a Hugging Face
model trained in eval mode, where HF's own switch does nothing), bf16 autocast runs when asked
and ``auto`` says why it chose, and a run over its memory limit is refused before any step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Log
from studio.core.train.checkpointing import checkpoint_candidates
from studio.core.train.loop import TrainConfig, TrainSummary, cross_entropy, train
from studio.core.train.precision import MIN_PARAMS_FOR_BF16

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")


def _mlp(width: int = 32, depth: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh())
                           for _ in range(depth)], nn.Linear(width, 4))


def _data(n: int = 64, width: int = 32) -> TensorDataset:
    torch.manual_seed(1)
    return TensorDataset(torch.randn(n, width), torch.randint(0, 4, (n,)))


def _run(model: nn.Module, data: TensorDataset, loss_fn=cross_entropy, dropout: bool = True,
         **config) -> tuple[TrainSummary, list]:
    events: list = []
    generator = train(model, data, TrainConfig(**{"lr": 1e-2, **config}), CancelToken(),
                      loss_fn, dropout=dropout)
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return stop.value, events


def test_accumulated_small_batches_take_the_step_of_the_large_batch():
    data = _data()
    large, small = _mlp(), _mlp()
    big, _ = _run(large, data, batch_size=32, epochs=2)
    accumulated, _ = _run(small, data, batch_size=8, accumulation_steps=4, epochs=2)
    assert big.optimizer_steps == accumulated.optimizer_steps == 4
    for a, b in zip(large.parameters(), small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert accumulated.memory.activations < big.memory.activations  # a batch of 8, not 32


def test_checkpointing_a_hf_model_in_eval_mode_keeps_gradients_and_saves_memory():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2)
    plain = transformers.LlamaForCausalLM(config)
    checked = copy.deepcopy(plain)
    ids = torch.randint(0, 64, (16, 24))

    def loss(model, inputs, _labels):
        return model(inputs, labels=inputs).loss

    blocks = [f"model.layers.{i}" for i in range(3)]
    assert checkpoint_candidates(checked, blocks) == blocks
    data = TensorDataset(ids)
    without, _ = _run(plain, data, loss, dropout=False, batch_size=8)
    with_ckpt, _ = _run(checked, data, loss, dropout=False, batch_size=8,
                        checkpoint=tuple(blocks))
    assert not checked.training and with_ckpt.checkpointed == tuple(blocks)
    assert with_ckpt.memory.activations < 0.6 * without.memory.activations
    for a, b in zip(plain.parameters(), checked.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert "forward" not in vars(checked.get_submodule(blocks[0]))  # unpatched afterwards


def test_batch_norms_are_never_checkpointed():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3),
                                                            nn.BatchNorm2d(4)), nn.Flatten())
    assert checkpoint_candidates(model) == ["0"]


def test_bf16_autocast_runs_when_asked_and_auto_says_why():
    model, seen = _mlp(), []
    model[0][0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    summary, events = _run(model, _data(), batch_size=32, precision="bf16")
    assert summary.precision.used == "bf16" and torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(isinstance(e, Log) and e.message.startswith("fine-tune: bf16") for e in events)
    small, _ = _run(_mlp(), _data(), batch_size=32, precision="auto")
    assert small.precision.used == "fp32" and "too small" in small.precision.reason
    wide = _mlp(width=640, depth=3)
    assert sum(p.numel() for p in wide.parameters()) >= MIN_PARAMS_FOR_BF16
    timed, _ = _run(wide, _data(32, 640), batch_size=16, precision="auto")
    assert set(timed.precision.step_ms) == {"fp32", "bf16"}
    faster = min(timed.precision.step_ms, key=timed.precision.step_ms.get)
    assert timed.precision.used == faster and "timed 3 steps" in timed.precision.reason


def test_a_run_over_its_memory_limit_is_refused_before_any_step():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(StudioError, match=r"training needs about .* over the limit of 0\.00 GB"):
        _run(model, _data(), batch_size=32, memory_limit=1000)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
