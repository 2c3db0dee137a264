"""The LLM benchmark's rows on a tiny random LLaMA: rows run after the row they build on, and the
combined row (SparseGPT 2:4, LoRA, GPTQ int4) leaves a model whose file holds exactly what was
measured in torch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.llm import (
    ROWS,
    Settings,
    Text,
    decoder_linears,
    export_int4,
    ort_perplexity,
    perplexity,
    run_order,
)
from studio.core.export.measure import count_ops
from studio.core.models.loader import open_model


def test_rows_run_after_their_base_and_unknown_rows_are_named() -> None:
    assert [row.name for row in run_order("combined,gptq_int4")] == [
        "sparsegpt24", "combined", "gptq_int4"]
    assert [row.name for row in run_order("combined_qlora")] == ["sparsegpt24", "combined_qlora"]
    assert [row.name for row in run_order(None)] == [row.name for row in ROWS]
    with pytest.raises(SystemExit, match="unknown rows sparsegpt99"):
        run_order("sparsegpt50,sparsegpt99")


def _after_sparsegpt24(tiny_llama: Path, name: str) -> tuple[Any, Text]:
    """The row ``name`` run as the benchmark runs it, on the tiny LLaMA after the 2:4
    SparseGPT row, with random token blocks (4 calibration, 8 training, 8 held out)."""
    model = open_model(tiny_llama).module
    torch.manual_seed(0)
    blocks = torch.randint(0, 256, (20, 24))
    text = Text(blocks[:4], blocks[4:12], blocks[12:])
    rows = {row.name: row for row in run_order(name)}
    settings = Settings(rank=4, alpha=8.0, lr=1e-2)
    base = rows["sparsegpt24"].compress(copy.deepcopy(model), text, settings).model
    return rows[name].compress(copy.deepcopy(base), text, settings), text


def test_combined_row_keeps_2_4_zeros_on_the_int4_grid(tiny_llama: Path, tmp_path: Path) -> None:
    result, text = _after_sparsegpt24(tiny_llama, "combined")

    modules = dict(result.model.named_modules())
    assert sorted(result.quantized) == sorted(decoder_linears(result.model))
    for name, weight in result.quantized.items():
        actual = modules[name].weight.detach()
        assert torch.equal(actual, weight.dequantized())  # on the int4 grid exactly
        kept = (actual != 0).reshape(actual.shape[0], -1, 4).sum(-1)
        assert int(kept.max()) <= 2  # 2:4 survived the LoRA merge and GPTQ
    assert result.figures["optimizer_steps"] == 2
    written = export_int4(result, text.held_out[:1], tmp_path / "combined.onnx")
    assert written["layers_written"] == f"{len(result.quantized)} of {len(result.quantized)}"
    assert ort_perplexity(tmp_path / "combined.onnx", text.held_out) == pytest.approx(
        perplexity(result.model, text.held_out), rel=1e-4)


def test_qlora_row_keeps_the_adapter_beside_the_int4_base(tiny_llama: Path,
                                                          tmp_path: Path) -> None:
    result, text = _after_sparsegpt24(tiny_llama, "combined_qlora")

    modules = dict(result.model.named_modules())
    for name, weight in result.quantized.items():
        frozen = modules[f"{name}.base_layer"].weight.detach()
        assert torch.equal(frozen, weight.dequantized())  # the trained base is the int4 one
        assert int((frozen != 0).reshape(frozen.shape[0], -1, 4).sum(-1).max()) <= 2
    assert list(result.embeddings) == ["model.model.embed_tokens"]
    written = export_int4(result, text.held_out[:1], tmp_path / "qlora.onnx")
    assert written["layers_written"] == f"{len(result.quantized)} of {len(result.quantized)}"
    assert written["embeddings_written"] == {"model.model.embed_tokens": 2}
    ops = count_ops(tmp_path / "qlora.onnx")
    assert ops["MatMulNBits"] == len(result.quantized)
    assert ops["MatMul"] >= 2 * len(result.quantized)  # each adapter's two float matmuls
    assert ort_perplexity(tmp_path / "qlora.onnx", text.held_out) == pytest.approx(
        perplexity(result.model, text.held_out), rel=1e-4)
