"""A causal LM exported with its key/value cache generates, in onnxruntime, exactly the tokens
torch's greedy loop writes, from one file that reads the prompt (empty past) and every later
step; each layer keeps its own head count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from studio.core.errors import StudioError
from studio.core.export.kv_cache import (
    cache_layout,
    compare_generation,
    empty_past,
    export_with_cache,
    greedy_onnx,
)
from studio.core.export.measure import ort_session
from studio.core.methods.pruning.transformer import drop_blocks
from studio.core.models.generate import greedy_ids
from studio.core.models.loader import open_model

from .conftest import VOCAB


@pytest.fixture(scope="module")
def llama_with_cache(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> tuple[torch.nn.Module, Path]:
    model = open_model(tiny_llama).module
    return model, export_with_cache(model.model, tmp_path_factory.mktemp("kv") / "kv.onnx")


def test_the_cached_file_matches_torch_with_and_without_a_past(llama_with_cache) -> None:
    model, path = llama_with_cache
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "past.0.key", "past.0.value",
                                             "past.1.key", "past.1.value"]
    session = ort_session(path, 1)
    ids = torch.randint(0, VOCAB, (3, 11))
    with torch.no_grad():
        expected = model(ids).numpy()
    empty = {name: t.repeat(3, 1, 1, 1).numpy() for name, t in
             zip([i.name for i in graph.input][1:], empty_past(cache_layout(model.model)),
                 strict=True)}
    whole = session.run(None, {"input_ids": ids.numpy(), **empty})
    assert np.abs(whole[0] - expected).max() < 1e-4
    assert whole[1].shape == (3, 2, 11, 8)  # 2 key/value heads of 8 (grouped-query)
    # the first 7 tokens, then the last 4 over their cache: the same logits as all at once
    head = session.run(None, {"input_ids": ids[:, :7].numpy(), **empty})
    past = dict(zip([i.name for i in graph.input][1:], head[1:], strict=True))
    tail = session.run(None, {"input_ids": ids[:, 7:].numpy(), **past})
    assert np.abs(tail[0] - expected[:, 7:]).max() < 1e-4


def test_cached_greedy_generation_writes_torchs_tokens(llama_with_cache) -> None:
    model, path = llama_with_cache
    prompt = torch.tensor([72, 101, 108, 108, 111])
    expected = greedy_ids(model, prompt, 12).tolist()
    tokens, times = greedy_onnx(ort_session(path, 1), prompt.tolist(), 12)
    assert tokens == expected and len(times) == 12
    uncached, _ = greedy_onnx(ort_session(path, 1), prompt.tolist(), 12, cached=False)
    assert uncached == expected
    result = compare_generation(path, expected, len(prompt))
    assert result.same_tokens_as_torch and result.new_tokens == 12
    assert result.ms_per_token_cached > 0 and result.ms_per_token_uncached > 0


def test_a_model_with_fewer_heads_in_one_layer_exports_its_own_cache_shapes(
        tiny_llama: Path, tmp_path: Path) -> None:
    model = open_model(tiny_llama).module
    layer = model.model.model.layers[1].self_attn
    head = layer.head_dim  # keep one of the two key/value heads (and its two query heads)
    with torch.no_grad():
        layer.k_proj.weight = torch.nn.Parameter(layer.k_proj.weight[:head].clone())
        layer.v_proj.weight = torch.nn.Parameter(layer.v_proj.weight[:head].clone())
        layer.q_proj.weight = torch.nn.Parameter(layer.q_proj.weight[:2 * head].clone())
        layer.o_proj.weight = torch.nn.Parameter(layer.o_proj.weight[:, :2 * head].clone())
    shapes = [tuple(t.shape) for t in empty_past(cache_layout(model.model))]
    assert shapes == [(1, 2, 0, 8)] * 2 + [(1, 1, 0, 8)] * 2
    path = export_with_cache(model.model, tmp_path / "pruned-kv.onnx")
    prompt = torch.tensor([3, 4, 5])
    tokens, _ = greedy_onnx(ort_session(path, 1), prompt.tolist(), 6)
    assert tokens == greedy_ids(model, prompt, 6).tolist()


def test_a_dropped_block_has_no_cache_and_the_rest_still_generate(tiny_llama: Path,
                                                                  tmp_path: Path) -> None:
    model = open_model(tiny_llama).module
    drop_blocks(model, torch.zeros(1, 8, dtype=torch.int64), ["model.model.layers.0"])
    assert [layer.index for layer in cache_layout(model.model)] == [1]
    path = export_with_cache(model.model, tmp_path / "dropped-kv.onnx")
    assert [i.name for i in onnx.load(str(path)).graph.input] == [
        "input_ids", "past.1.key", "past.1.value"]
    prompt = torch.tensor([9, 8, 7, 6])
    tokens, _ = greedy_onnx(ort_session(path, 1), prompt.tolist(), 5)
    assert tokens == greedy_ids(model, prompt, 5).tolist()


def test_a_model_without_a_cache_is_a_clear_error(tmp_path: Path) -> None:
    class NoCache(torch.nn.Module):  # logits, but nothing cached
        def forward(self, input_ids: torch.Tensor, cache: object = None,
                    use_cache: bool = True) -> dict[str, object]:
            return {"logits": torch.zeros(1, 1, 4), "cache": None}

    with pytest.raises(StudioError, match="no key/value cache"):
        export_with_cache(NoCache(), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []
