"""The quantize steps' accuracy-aware mode (QuantizeSection.max_drop): score the float file and
trials with layers kept float on the test split, keep the best file, report what it cost.

The score is the run's own metric on the test split, as the report measures it (peers' tuners
score an evaluation set the same way); a separate ``test_path`` keeps the final figure unbiased.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from studio.core.export.measure import latency_ms
from studio.core.export.onnx_export import onnx_file_bytes, remove_onnx
from studio.core.jobs import Event, Log
from studio.core.methods.quantization.accuracy_aware import allowed_drop, search
from studio.core.methods.quantization.ort_plan import keep_float, neighbour_activations
from studio.core.pipeline.context import RunContext
from studio.core.plan.ort_rules import QuantPlan
from studio.core.plan.stages import QuantizeSection

KEPT_FLOAT = "accuracy-aware: kept float to meet max_drop"


def accuracy_aware(context: RunContext, float_path: Path, plan: QuantPlan,
                   quantize: Callable[[QuantPlan, Path], None], feeds: dict[str, np.ndarray],
                   report: dict[str, Any]) -> Generator[Event, None, QuantPlan]:
    """``context.model_path`` (every layer quantized) is replaced by the best trial; returns
    the plan that made it. ``quantize(plan, target)`` writes a trial."""
    section = context.settings(QuantizeSection)
    measured = context.backend.measure(context, float_path).metric
    base_score = context.backend.measure(context, context.model_path).metric.value
    allowed = allowed_drop(section.max_drop or 0.0, section.max_drop_relative, measured.value)
    layers = list(plan.quantize_nodes)
    graph = onnx.load(str(float_path), load_external_data=False).graph

    def floated(floats: tuple[str, ...]) -> QuantPlan:
        return keep_float(plan, floats, KEPT_FLOAT, neighbour_activations(graph, floats))
    with tempfile.TemporaryDirectory(prefix=".aware.", dir=context.out_dir) as scratch:
        trial_path, best_path = Path(scratch) / "trial.onnx", Path(scratch) / "best.onnx"
        best: list[tuple[float, tuple[str, ...]]] = []  # the trial kept at best_path

        def score_with_float(floats: tuple[str, ...]) -> float:
            context.token.check()
            quantize(floated(floats), trial_path)
            score = context.backend.measure(context, trial_path).metric.value
            drop = measured.value - score if measured.higher_is_better else score - measured.value
            if not best or drop < best[0][0]:
                best[:] = [(drop, floats)]
                os.replace(trial_path, best_path)
            return score

        yield Log(f"Accuracy-aware: float {measured.name} {measured.value:.4f}, every layer "
                  f"int8 {base_score:.4f}; allowed drop {allowed:.4g}")
        tree = context.quant_tree
        trials = search(layers, measured.value, measured.higher_is_better, allowed, base_score,
                        score_with_float, section.max_float_layers,
                        lambda name: tree.get(name).macs if tree and name in tree else 0.0)
        try:
            while True:
                trial = next(trials)
                yield Log(f"Accuracy-aware: {len(trial.floats)} float "
                          f"({', '.join(plan.layers.get(n, n) for n in trial.floats)}): "
                          f"{measured.name} {trial.score:.4f}")
        except StopIteration as stop:
            result = stop.value
        chosen = floated(result.best.floats) if result.best.floats else plan
        all_int8_bytes = onnx_file_bytes(context.model_path)
        cost: dict[str, Any] = {}
        if result.best.floats:
            if result.best.floats != best[0][1]:  # a trial with the same drop was kept
                quantize(chosen, best_path)
            rows = len(next(iter(feeds.values())))
            timed = latency_ms({"int8": context.model_path, "chosen": best_path},
                               {rows: feeds}, repeats=5, warmup=1)
            cost = {"bytes_vs_all_int8": round(onnx_file_bytes(best_path) / all_int8_bytes, 3),
                    "latency_vs_all_int8": round(timed["chosen"][rows]
                                                 / max(timed["int8"][rows], 1e-9), 3)}
            remove_onnx(context.model_path)
            os.replace(best_path, context.model_path)
    floats = [plan.layers.get(n, n) for n in result.best.floats]
    report["accuracy_aware"] = {
        "metric": measured.name, "float_score": measured.value, "allowed_drop": allowed,
        "met": result.met, "float_layers": floats, "drop": result.best.drop,
        "all_int8_drop": result.base.drop, "trials": [t.to_json() for t in result.trials],
        **cost}
    said = ", ".join(repr(f) for f in floats) or "none"
    if result.met:
        context.note(f"Accuracy-aware int8: {measured.name} drop {result.best.drop:.4g} within "
                     f"{allowed:.4g} with {len(floats)} layer(s) kept float ({said})"
                     + (f"; {cost['bytes_vs_all_int8']}x the bytes and "
                        f"{cost['latency_vs_all_int8']}x the latency of all-int8" if cost
                        else "") + ".")
    else:
        context.note(f"Accuracy-aware int8: no trial met the allowed drop {allowed:.4g} "
                     f"(all-int8 drop {result.base.drop:.4g}); kept the best found, drop "
                     f"{result.best.drop:.4g} with layers float: {said}. Raise "
                     "max_float_layers or max_drop, or try calibration: auto / "
                     "bias_correction.")
    return chosen
