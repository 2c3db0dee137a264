"""The engine's compressions against the same steps done by hand, on the demo task.

    python -m benchmarks.pareto [--json PATH] [--out DIR] [--quick]

Runs the demo recipes in-process through the engine (int8 PTQ, structured 50% + KD, both
together, QAT int4/int8 mix), then the plain baselines a user would write without the studio
(torch-pruning magnitude pruning + cross-entropy fine-tuning, onnxruntime ``quantize_static``
with its defaults, and both). Every row's ONNX file is measured the same way: accuracy in
onnxruntime on the demo test split, bytes on disk, MACs of the torch model, and latency from ONE
side-by-side ``latency_ms`` call over all files (timings from separate processes can differ 2x,
so only ratios from one call are compared). Ends with the issue's measured goals, PASS or FAIL.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime
import torch
import torch_pruning as tp
from torch import nn

from benchmarks.baselines import (
    PLAIN_INT8_SETTINGS,
    PLAIN_PRUNING_RATIO,
    fine_tune,
    ort_static_int8,
    torch_pruning_magnitude,
)
from benchmarks.common import machine_info, write_json
from studio.core.data.task import TaskData, demo_task
from studio.core.demo.model import DEMO_INPUT_SHAPE
from studio.core.engine.run import run_recipe
from studio.core.export.measure import (
    inputs_for_batches,
    latency_ms,
    onnx_accuracy,
    run_onnx,
    zip_bytes,
)
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.jobs import CancelToken, Result
from studio.core.models.inputs import InputSpec
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.plan.stages import TrainSection
from studio.core.resources import resource_path
from studio.core.train.loop import TrainConfig
from studio.core.workspace import open_workspace

ENGINE_ROWS = {
    "engine-int8-ptq": "demo-int8.yaml",
    "engine-structured-kd": "demo-structured-kd.yaml",
    "engine-combined": "demo-combined.yaml",
    "engine-qat-mixed": "demo-qat-mixed.yaml",
}
PLAIN_ROWS = ("plain-torch-pruning", "plain-ort-int8", "plain-torch-pruning+ort-int8")
STRUCTURED_RECIPE = "demo-structured-kd.yaml"
"""The plain pruning baseline fine-tunes with this recipe's epochs, lr and batch size."""
BATCHES = (1, 64)
LATENCY_REPEATS = 30
LATENCY_THREADS = 2
"""onnxruntime threads per session while timing, as the engine times its reports. Sessions are
made by ``studio.core.export.measure.ort_session``, whose idle workers do not spin: with spinning
on, the pools of the models just run starved the one being timed on 2 cores, so a model's latency
depended on which model ran before it."""
QUICK_EPOCHS = 1
QUICK_REPEATS = 10
EXAMPLE = InputSpec(DEMO_INPUT_SHAPE)
EQUAL_SIZE_PAIRS = (
    ("engine-structured-kd", "plain-torch-pruning"),
    ("engine-int8-ptq", "plain-ort-int8"),
    ("engine-combined", "plain-torch-pruning+ort-int8"),
)
"""(engine row, plain row) compressed to the same target: the engine must be at least as good."""


def load_recipe(name: str, quick: bool) -> Recipe:
    """A shipped demo recipe; ``quick`` cuts every training stage to one epoch (smoke runs)."""
    recipe = read_recipe(resource_path("recipes", name))
    if quick and recipe.train is not None and recipe.train.epochs > QUICK_EPOCHS:
        recipe = recipe.model_copy(
            update={"train": recipe.train.model_copy(update={"epochs": QUICK_EPOCHS})})
    return recipe


def run_engine(recipe: Recipe, out_dir: Path, source: str) -> dict[str, Any]:
    """Run one recipe in-process, as the CLI and GUI do, and return its report."""
    report: dict[str, Any] | None = None
    for event in run_recipe(recipe, resource_path("recipes"), out_dir, CancelToken(),
                            source=source):
        if isinstance(event, Result):
            report = event.report
    if report is None:
        raise RuntimeError(f"{source}: the engine finished without a Result event")
    return report


def torch_macs(model: nn.Module) -> int:
    """MACs per image of a torch model, counted as the engine's reports count them."""
    return build_torch_tree(model, EXAMPLE, "m").root.total_macs


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - start, 2)


def _engine_rows(out: Path, quick: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Engine rows and the fp32 row (from the first report's baseline, the same for all)."""
    rows: dict[str, dict[str, Any]] = {}
    fp32: dict[str, Any] | None = None
    for name, file in ENGINE_ROWS.items():
        print(f"[engine] {name} ({file})", flush=True)
        report, seconds = _timed(run_engine, load_recipe(file, quick), out / name, file)
        compressed = report["compressed"]
        rows[name] = {
            "source": "engine", "recipe": file, "onnx_path": report["paths"]["model"],
            "macs": compressed["macs"], "params": compressed["params"],
            "run_s": seconds,
            "engine_report": {
                "accuracy": compressed["metric"]["value"],
                "baseline_accuracy": report["baseline"]["metric"]["value"],
                "latency_ms": compressed["latency_ms"],
                "baseline_latency_ms": report["baseline"]["latency_ms"],
                "parity": compressed["parity"], "notes": report["notes"],
                "stages": {k: v for k, v in report["stages"].items() if k != "prune"},
                "elapsed_s": report["elapsed_s"],
            },
        }
        if fp32 is None:
            baseline = report["baseline"]
            fp32 = {"source": "engine baseline", "onnx_path": report["paths"]["baseline"],
                    "macs": baseline["macs"], "params": baseline["params"]}
    assert fp32 is not None
    return rows, fp32


def _plain_rows(out: Path, data: TaskData, fp32_path: Path, quick: bool
                ) -> dict[str, dict[str, Any]]:
    """The baselines written with torch-pruning and onnxruntime directly (no studio methods)."""
    module = open_workspace("demo").loaded.module
    assert module is not None
    original = module.cpu().eval()
    example = EXAMPLE.make_tensor()
    section = load_recipe(STRUCTURED_RECIPE, quick).train or TrainSection()
    config = TrainConfig(epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
                         weight_decay=section.weight_decay, seed=section.seed)
    plain = out / "plain"
    rows: dict[str, dict[str, Any]] = {}

    print("[plain] plain-torch-pruning", flush=True)

    def prune_and_tune() -> nn.Module:
        return fine_tune(torch_pruning_magnitude(original, example), data.train, config)

    pruned, seconds = _timed(prune_and_tune)
    pruned_path = export_onnx(pruned, example, plain / "torch-pruning.onnx")
    rows["plain-torch-pruning"] = {
        "source": "plain", "onnx_path": str(pruned_path), "macs": torch_macs(pruned),
        "params": sum(p.numel() for p in pruned.parameters()), "run_s": seconds,
        "settings": {"pruner": "tp.pruner.MetaPruner", "importance": "MagnitudeImportance(p=2)",
                     "pruning_ratio": PLAIN_PRUNING_RATIO, "ignored_layers": ["final Linear"],
                     "fine_tune": {"loss": "cross_entropy", "epochs": config.epochs,
                                   "lr": config.lr, "batch_size": config.batch_size}},
    }

    print("[plain] plain-ort-int8", flush=True)
    int8_path, seconds = _timed(
        lambda: ort_static_int8(fp32_path, plain / "ort-int8.onnx", data.calibration))
    rows["plain-ort-int8"] = {
        "source": "plain", "onnx_path": str(int8_path), "macs": torch_macs(original),
        "params": sum(p.numel() for p in original.parameters()), "run_s": seconds,
        "settings": PLAIN_INT8_SETTINGS,
    }

    print("[plain] plain-torch-pruning+ort-int8", flush=True)
    both_path, seconds = _timed(
        lambda: ort_static_int8(pruned_path, plain / "torch-pruning-ort-int8.onnx",
                                data.calibration))
    rows["plain-torch-pruning+ort-int8"] = {
        "source": "plain", "onnx_path": str(both_path), "macs": rows["plain-torch-pruning"]["macs"],
        "params": rows["plain-torch-pruning"]["params"],
        "run_s": rows["plain-torch-pruning"]["run_s"] + seconds,
        "settings": PLAIN_INT8_SETTINGS,
    }
    return rows


def _measure(rows: dict[str, dict[str, Any]], data: TaskData, repeats: int,
             threads: int = LATENCY_THREADS) -> None:
    """Accuracy and bytes per file, then one interleaved latency call over every file.

    ``top1_agreement_vs_fp32`` (share of test digits where a row predicts what the fp32 file
    predicts) is less noisy than accuracy on 1,000 digits, where one digit is 0.1 point.
    """
    images = data.test.tensors[0]
    reference = run_onnx(rows["fp32"]["onnx_path"], images).argmax(-1)
    for row in rows.values():
        path = Path(row["onnx_path"])
        row["accuracy"] = onnx_accuracy(path, data.test)
        row["top1_agreement_vs_fp32"] = float((run_onnx(path, images).argmax(-1)
                                               == reference).mean())
        row["onnx_bytes"] = onnx_file_bytes(path)
        row["zip_bytes"] = zip_bytes(path)
    print(f"[latency] {len(rows)} files side by side, batches {BATCHES}, {repeats} repeats, "
          f"{threads} thread(s)", flush=True)
    timings = latency_ms({name: row["onnx_path"] for name, row in rows.items()},
                         inputs_for_batches(data.test, BATCHES), repeats, threads=threads)
    for name, row in rows.items():
        row["latency_ms"] = {f"batch_{b}": timings[name][b] for b in BATCHES}


def _ratios(rows: dict[str, dict[str, Any]]) -> None:
    base = rows["fp32"]
    for row in rows.values():
        row["bytes_ratio"] = row["onnx_bytes"] / base["onnx_bytes"]
        row["macs_ratio"] = row["macs"] / base["macs"]
        for batch in BATCHES:
            key = f"batch_{batch}"
            row[f"latency_ratio_{key}"] = row["latency_ms"][key] / base["latency_ms"][key]
        row["accuracy_drop_points"] = round((base["accuracy"] - row["accuracy"]) * 100, 4)


def _at_most(value: float, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "pass": bool(value <= limit)}


def evaluate_goals(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's measured goals; ``value`` and ``limit`` are ratios vs fp32 or points.

    "Batch latency" is the batch-64 ratio. The equal-size goals compare accuracy in points
    (engine minus plain, must be >= 0) and carry both files' bytes and MACs, so a reader can see
    whether the two really are the same size.
    """
    int8, kd, combined = (rows["engine-int8-ptq"], rows["engine-structured-kd"],
                          rows["engine-combined"])
    goals = {
        "int8-ptq: onnx_bytes <= 0.27x": _at_most(int8["bytes_ratio"], 0.27),
        "int8-ptq: accuracy drop <= 0.3 points": _at_most(int8["accuracy_drop_points"], 0.3),
        "int8-ptq: batch-64 latency <= 0.6x": _at_most(int8["latency_ratio_batch_64"], 0.6),
        "structured-kd: MACs <= 0.35x": _at_most(kd["macs_ratio"], 0.35),
        "structured-kd: accuracy drop <= 0.5 points": _at_most(kd["accuracy_drop_points"], 0.5),
        "structured-kd: batch-64 latency <= 0.6x": _at_most(kd["latency_ratio_batch_64"], 0.6),
        "combined: onnx_bytes <= 0.15x": _at_most(combined["bytes_ratio"], 0.15),
        "combined: accuracy drop <= 1 point": _at_most(combined["accuracy_drop_points"], 1.0),
    }
    for engine, plain in EQUAL_SIZE_PAIRS:
        e, p = rows[engine], rows[plain]
        margin = round((e["accuracy"] - p["accuracy"]) * 100, 4)
        goals[f"equal size: {engine} accuracy >= {plain}"] = {
            "value": margin, "limit": 0.0, "pass": bool(margin >= 0),
            "unit": "points (engine - plain)",
            "onnx_bytes": {"engine": e["onnx_bytes"], "plain": p["onnx_bytes"]},
            "macs": {"engine": e["macs"], "plain": p["macs"]},
            "top1_agreement_vs_fp32": {"engine": e["top1_agreement_vs_fp32"],
                                       "plain": p["top1_agreement_vs_fp32"]},
        }
    return goals


def run(out: Path, quick: bool = False, threads: int = LATENCY_THREADS) -> dict[str, Any]:
    """Every row, measured side by side, with goals; a dict ready for JSON."""
    started = time.perf_counter()
    torch.manual_seed(0)
    data = demo_task()
    engine, fp32 = _engine_rows(out, quick)
    plain = _plain_rows(out, data, Path(fp32["onnx_path"]), quick)
    rows = {"fp32": fp32, **engine, **plain}
    repeats = QUICK_REPEATS if quick else LATENCY_REPEATS
    _measure(rows, data, repeats, threads)
    _ratios(rows)
    result: dict[str, Any] = dict(rows)
    result.update(
        row_order=list(rows), goals=evaluate_goals(rows),
        machine=machine_info(onnxruntime_version=onnxruntime.__version__,
                             torch_pruning_version=tp.__version__),
        settings={"quick": quick, "batches": list(BATCHES), "latency_repeats": repeats,
                  "latency_threads": threads,
                  "test_samples": len(data.test), "calibration_samples": len(data.calibration),
                  "data": data.name, "out_dir": str(out)},
        total_s=round(time.perf_counter() - started, 1),
    )
    return result


def print_table(result: dict[str, Any]) -> None:
    """Rows x (accuracy, drop, bytes, MACs, latency) and the goals with PASS/FAIL."""
    machine = result["machine"]
    print(f"\nmachine: {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch_version']}, onnxruntime {machine['onnxruntime_version']}, "
          f"torch-pruning {machine['torch_pruning_version']}; latency: "
          f"{result['settings']['latency_threads']} onnxruntime thread(s) per session, "
          f"median of {result['settings']['latency_repeats']} interleaved runs")
    print(f"test set: {result['settings']['test_samples']} digits (0.1 point = 1 digit); "
          "agree = % of test digits predicted as the fp32 file predicts them; "
          "x = ratio to fp32")
    header = (f"{'row':<30} {'acc %':>6} {'drop':>6} {'agree':>6} {'bytes':>9} {'x':>6} "
              f"{'MACs x':>6} {'b1 ms':>7} {'b1 x':>5} {'b64 ms':>7} {'b64 x':>5}")
    print(header)
    print("-" * len(header))
    for name in result["row_order"]:
        row = result[name]
        latency = row["latency_ms"]
        cells = [
            f"{name:<30}", f"{row['accuracy'] * 100:>6.1f}",
            f"{row['accuracy_drop_points']:>+6.1f}",
            f"{row['top1_agreement_vs_fp32'] * 100:>6.1f}", f"{row['onnx_bytes']:>9,}",
            f"{row['bytes_ratio']:>6.3f}", f"{row['macs_ratio']:>6.3f}",
            f"{latency['batch_1']:>7.3f}", f"{row['latency_ratio_batch_1']:>5.2f}",
            f"{latency['batch_64']:>7.2f}", f"{row['latency_ratio_batch_64']:>5.2f}",
        ]
        print(" ".join(cells))
    print("\ngoals:")
    for goal, verdict in result["goals"].items():
        comparison = ">=" if goal.startswith("equal size") else "<="
        print(f"  {'PASS' if verdict['pass'] else 'FAIL'}  {goal:<70} "
              f"{verdict['value']:+.3f} ({comparison} {verdict['limit']})")
    passed = sum(v["pass"] for v in result["goals"].values())
    print(f"{passed}/{len(result['goals'])} goals pass; total {result['total_s']} s")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run, print, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--out", type=Path,
                        help="folder for the ONNX files (default: a temporary folder, removed)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} training epoch and {QUICK_REPEATS} latency repeats "
                             "(a smoke run; the goals are not meaningful)")
    parser.add_argument("--threads", type=int, default=LATENCY_THREADS,
                        help="onnxruntime threads per session while timing (default "
                             f"{LATENCY_THREADS}: see LATENCY_THREADS for why)")
    args = parser.parse_args(argv)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = run(args.out, args.quick, args.threads)
    else:
        with tempfile.TemporaryDirectory(prefix="pareto-") as scratch:
            result = run(Path(scratch), args.quick, args.threads)
        result["settings"]["out_dir"] = None  # the onnx_path figures name removed files
    print_table(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
