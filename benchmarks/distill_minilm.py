"""The MiniLM rows of ``benchmarks.distill``: 25% of heads and 30% of FFN units cut from
all-MiniLM-L6-v2, recovered without labels, as real engine runs.

Without labels, plain fine-tuning is not possible; its counterpart is output matching (the
recover step's default: the uncompressed model's embeddings and every encoder block's hidden
states, on unlabelled general English). Variants:

- ``match``: output matching from the bare cut (``prune.reconstruct: false``);
- ``fskd``: the cut blocks' output projections first re-fitted by least squares to the
  uncompressed model's block outputs on calibration sentences (``prune.reconstruct``, the
  default; the transformer form of few-sample KD, :mod:`studio.core.methods.pruning.reconstruct`,
  not the channel re-fit the demo's ``fskd`` rows use), then the same output matching.

Every run is ``run_workspace`` on the model folder with a recipe built here, the seeds changing
the order of the training sentences; the metric is the run's own: mean cosine of the exported
file's embeddings with the fp32 model's on the benchmark's everyday sentences (a domain the
recovery never saw). CPU seconds per epoch are this process's CPU time from the recover step's
start to its metric.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.transformer import minilm_folder
from benchmarks.transformer_text import EVALUATION_SENTENCES, training_sentences
from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, Log, Metric, Result
from studio.core.models.hf import tokenize
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

MODEL_KEY = "minilm-25pct-heads-30pct-ffn"
VARIANTS = {"match": False, "fskd": True}
"""Variant -> ``prune.reconstruct``."""


def _plan() -> dict[str, LayerSpec]:
    plan = {}
    for block in range(6):
        layer = f"model.encoder.layer.{block}"
        plan[f"{layer}.attention"] = LayerSpec(sparsity=0.25, granularity="channels")
        plan[f"{layer}.intermediate.dense"] = LayerSpec(sparsity=0.3, granularity="channels")
    return plan


def _run(folder: Path, stages: dict[str, Any], out: Path) -> dict[str, Any]:
    """One engine run: the cosine of the exported file and the recover step's CPU seconds."""
    workspace = open_workspace(str(folder))
    for name, spec in _plan().items():
        workspace.plan.set_spec(name, spec)
    recipe = Recipe.model_validate({"schema_version": 1, **stages})
    started, cpu, wall = 0.0, 0.0, time.perf_counter()
    report: dict[str, Any] = {}
    for event in run_workspace(workspace, recipe, out, CancelToken(), base_dir=out.parent):
        if isinstance(event, Log) and event.message.startswith("Recovering"):
            started = time.process_time()
        elif isinstance(event, Metric) and event.stage in ("match", "distill") and started:
            cpu = time.process_time() - started
        elif isinstance(event, Result):
            report = event.report
    return {"cosine": report["compressed"]["metric"]["value"], "cpu_s": cpu,
            "wall_s": time.perf_counter() - wall,
            "torch_cosine": report["stages"]["recover"]["torch_metric"]["value"]}


def minilm_rows(seeds: list[int], epoch_counts: list[int], sentences: int,
                variants: list[str] | None, report_row: Any) -> None:
    """Each variant at each epoch count over the seeds; ``report_row(name, epochs, runs)``
    receives every finished row."""
    folder = minilm_folder()
    with tempfile.TemporaryDirectory(prefix="distill-minilm-") as scratch:
        work = Path(scratch)
        np.savez(work / "train.npz", input_ids=tokenize(
            folder, training_sentences(sentences), 32).numpy())
        np.savez(work / "test.npz", input_ids=tokenize(folder, EVALUATION_SENTENCES, 32).numpy())
        data = {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                "calibration_samples": 256}
        for name, reconstruct in VARIANTS.items():
            if variants is not None and name not in variants and name != "match":
                continue
            for epochs in epoch_counts:
                runs = []
                for seed in seeds:
                    stages = {"data": data, "prune": {"reconstruct": reconstruct},
                              "train": {"epochs": epochs, "lr": 5e-4, "batch_size": 32,
                                        "seed": seed},
                              "export": {"latency_batch": 1, "latency_repeats": 1}}
                    run = _run(folder, stages, work / f"{name}-{epochs}-{seed}")
                    runs.append({"seed": seed, **run})
                    print(f"{name:14s} epochs={epochs} seed={seed} cosine={run['cosine']:.4f} "
                          f"cpu_s={run['cpu_s']:.1f}", flush=True)
                report_row(name, epochs, runs)
