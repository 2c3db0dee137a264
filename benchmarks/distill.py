"""Each distillation variant against plain fine-tuning on the demo with 50% of channels cut.

    python -m benchmarks.distill [--json PATH] [--seeds 0 1 2] [--epochs 1 3] [--variants ...]
                                 [--train-samples N] [--threads 1] [--merge PART.json ...]
                                 [--model minilm --sentences 1000]

The demo CNN is pruned once (the plan of ``demo-structured-kd.yaml``: half of every
convolution's output channels, magnitude importance); every variant then recovers a copy of the
same pruned model for the same epochs, seeds, learning rate and batch size, with the loss the
recover step builds from a ``distill`` section (:func:`build_distillation`), so the figures are
those of real runs. Variants named ``fskd...`` start instead from the cut re-fitted to the
teacher's features in closed form (few-sample KD: what the prune step's ``reconstruct`` does,
on the calibration split; its CPU time is added to the run's); the others start from the bare
cut, as a run with ``prune.reconstruct: false`` does. Accuracy is measured on the demo's 1,000
test digits; CPU seconds per epoch are this process's CPU time (all threads) over the training
alone. Ends with the issue's goal: does some variant beat plain fine-tuning by more than the
seed spread at every epoch count? ``--merge`` joins the files of runs split by variant (run
side by side) and judges them together. ``--model minilm``: the MiniLM rows instead
(:mod:`benchmarks.distill_minilm`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from benchmarks.common import machine_info, write_json
from studio.core.data.task import TaskData, demo_task
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken
from studio.core.methods.distill.recovery import build_distillation
from studio.core.methods.pruning import apply_plan_pruning
from studio.core.methods.pruning.reconstruct_channels import reconstruct_channels
from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import DistillSection, FeaturePair, TeacherSource
from studio.core.resources import resource_path
from studio.core.train.loop import TrainConfig, cross_entropy, evaluate, optimizer_steps, train
from studio.core.workspace import Workspace, open_workspace

RECIPE = "demo-structured-kd.yaml"
"""The pruning plan and the training settings (lr, batch size) every variant uses."""
ONNX_TEACHER = "<onnx teacher>"


class Variant(NamedTuple):
    section: DistillSection | None
    """The recover step's loss: None is plain fine-tuning (cross entropy)."""
    reconstruct: bool = False
    """Start from the cut re-fitted to the teacher's features (few-sample KD)."""


def variants() -> dict[str, Variant]:
    """Plain fine-tuning and each distillation variant: recipe sections and starting points."""
    sections = _sections()
    reconstructed = {"fskd": None, "fskd-logit-kd": sections["logit-kd-t2"],
                     "fskd-feature-kd": sections["feature-kd"]}
    return ({name: Variant(section) for name, section in sections.items()}
            | {name: Variant(section, True) for name, section in reconstructed.items()})


def _sections() -> dict[str, DistillSection | None]:
    """Plain fine-tuning (None) and each distillation loss, as recipe sections."""
    return {
        "plain": None,
        "logit-kd": DistillSection(temperature=4.0, alpha=0.7),
        "logit-kd-t2": DistillSection(temperature=2.0, alpha=0.5),
        "logit-kd-warmup": DistillSection(temperature=4.0, alpha=0.7, alpha_warmup=0.5),
        "feature-kd": DistillSection(temperature=2.0, alpha=0.5,
                                     features=[FeaturePair(student="res", teacher="res")]),
        "dkd": DistillSection(temperature=4.0, alpha=0.5, logit_loss="dkd"),
        "dkd-feature": DistillSection(temperature=4.0, alpha=0.5, logit_loss="dkd",
                                      features=[FeaturePair(student="res", teacher="res")]),
        "dkd-warmup": DistillSection(temperature=4.0, alpha=0.5, logit_loss="dkd",
                                     alpha_warmup=0.5),
        "dkd-b2": DistillSection(temperature=4.0, alpha=0.5, logit_loss="dkd",
                                 dkd_nontarget_weight=2.0),
        "feature-ce": DistillSection(alpha=0.0,
                                     features=[FeaturePair(student="res", teacher="res")]),
        "shift-kd": DistillSection(temperature=2.0, alpha=0.5, augment="shift"),
        "shift-dkd": DistillSection(temperature=4.0, alpha=0.5, logit_loss="dkd",
                                    augment="shift"),
        "mixup-kd": DistillSection(temperature=2.0, alpha=0.5, augment="mixup"),
        # Controls: the same augmentation with the KD weight at 0 (cross entropy alone, through
        # the same code), so a gain of the augmented variants is not credited to the teacher.
        "plain-shift": DistillSection(alpha=0.0, augment="shift"),
        "plain-mixup": DistillSection(alpha=0.0, augment="mixup"),
        "relation-kd": DistillSection(temperature=2.0, alpha=0.5, relation_weight=1.0),
        "onnx-teacher": DistillSection(temperature=2.0, alpha=0.5,
                                       teachers=[TeacherSource(path=ONNX_TEACHER)]),
        "multi-teacher": DistillSection(temperature=2.0, alpha=0.5,
                                        teachers=[TeacherSource(), TeacherSource(
                                            path=ONNX_TEACHER, weight=0.5)],
                                        teacher_weighting="confidence"),
        "self": DistillSection(mode="self", temperature=2.0, alpha=0.5),
        "mutual": DistillSection(mode="mutual", temperature=2.0, alpha=0.5),
    }


def pruned_demo() -> tuple[Workspace, nn.Module, list[dict[str, Any]]]:
    """The demo workspace, its model with the recipe's plan applied (channels removed) and the
    cut groups (which channels each layer kept, for the re-fit)."""
    recipe = read_recipe(resource_path("recipes", RECIPE))
    workspace = open_workspace("demo")
    workspace.apply_recipe_plan(recipe, RECIPE)
    model = copy.deepcopy(workspace.loaded.module)
    assert model is not None and workspace.example is not None
    result = apply_plan_pruning(model, workspace.tree, workspace.plan.resolve(workspace.tree),
                                workspace.example.make_tensor(), None, "magnitude", False)
    return workspace, model, result.report["structured"]["groups"]


def reconstructed(pruned: nn.Module, original: nn.Module, groups: list[dict[str, Any]],
                  data: TaskData) -> tuple[nn.Module, float, float]:
    """A copy of the cut re-fitted as the prune step's ``reconstruct`` does; its test
    accuracy before any training and the CPU seconds the re-fit took."""
    model = copy.deepcopy(pruned)
    cpu = time.process_time()
    reconstruct_channels(model, original, groups, data.calibration.tensors[0])
    cpu = time.process_time() - cpu
    return model, evaluate(model, data.test), cpu


def recover(section: DistillSection | None, pruned: nn.Module, original: nn.Module,
            data: TaskData, config: TrainConfig, example: torch.Tensor, folder: Path,
            onnx_teacher: Path) -> dict[str, Any]:
    """Train a copy of ``pruned`` as the recover step would; accuracy and CPU time."""
    model = copy.deepcopy(pruned)
    loss_fn: Any = cross_entropy
    parameters, close, finish, after_step = None, None, None, None
    if section is not None:
        teachers = [t.model_copy(update={"path": str(onnx_teacher)})
                    if t.path == ONNX_TEACHER else t for t in section.teachers]
        section = section.model_copy(update={"teachers": teachers})
        run = build_distillation(section, model, original, example, data, folder,
                                 seed=config.seed,
                                 total_steps=optimizer_steps(len(data.train), config))
        loss_fn, parameters, close, finish = run.loss_fn, run.parameters, run.close, run.finish
        after_step = run.after_step
    cpu, wall = time.process_time(), time.perf_counter()
    extra: dict[str, Any] = {}
    try:
        for _ in train(model, data.train, config, CancelToken(), loss_fn,
                       "distill" if section else "fine-tune", after_step, parameters):
            pass
        if finish is not None:
            extra = finish()
    finally:
        if close is not None:
            close()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"accuracy": evaluate(model, data.test), "cpu_s": cpu, "wall_s": wall, **extra}


def summarise(runs: list[dict[str, Any]], epochs: int, metric: str = "accuracy"
              ) -> dict[str, Any]:
    accuracies = [r[metric] for r in runs]
    return {
        "metric": metric, "epochs": epochs, "seeds": len(runs),
        "metric_mean": round(statistics.fmean(accuracies), 5),
        "metric_std": round(statistics.stdev(accuracies), 5) if len(runs) > 1 else 0.0,
        "cpu_s_per_epoch": round(statistics.fmean(r["cpu_s"] for r in runs) / epochs, 2),
        "wall_s_per_epoch": round(statistics.fmean(r["wall_s"] for r in runs) / epochs, 2),
        "runs": runs,
    }


def goals(rows: dict[str, dict[str, Any]], epoch_counts: list[int], baseline: str = "plain"
          ) -> dict[str, Any]:
    """Per epoch count: the best variant, its margin over plain fine-tuning (``baseline``) and
    the spread (the larger of the two standard deviations); the goal holds when some variant's
    margin passes the spread at every epoch count."""
    verdict: dict[str, Any] = {}
    if baseline not in rows:
        return {"goal": f"not judged: {baseline} was not run"}
    winners: list[set[str]] = []
    plain_rows = rows[baseline]
    for epochs in epoch_counts:
        beating = {}
        if str(epochs) not in plain_rows:
            continue
        plain = plain_rows[str(epochs)]
        for name, by_epochs in rows.items():
            if str(epochs) not in by_epochs:
                continue
            row = by_epochs[str(epochs)]
            margin = row["metric_mean"] - plain["metric_mean"]
            spread = max(row["metric_std"], plain["metric_std"])
            if name != baseline and margin > spread:
                beating[name] = {"margin": round(margin, 5), "spread": round(spread, 5)}
        best = max((n for n in rows if str(epochs) in rows[n]),
                   key=lambda n: rows[n][str(epochs)]["metric_mean"])
        verdict[f"{epochs}_epochs"] = {"best": best, "beats_plain_beyond_spread": beating}
        winners.append(set(beating))
    judged = len(winners) == len(epoch_counts)
    every = set.intersection(*winners) if winners and judged else set()
    verdict["variants_beating_plain_at_every_epoch_count"] = sorted(every)
    verdict["goal"] = "PASS" if every else "FAIL" if judged else "not judged: runs missing"
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--variants", nargs="+", help="a subset of the variants")
    parser.add_argument("--train-samples", type=int, help="fine-tune on the first N samples")
    parser.add_argument("--no-plain", action="store_true", help="leave plain fine-tuning out "
                        "(a part run beside one that has it; see --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these part files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the CPU "
                        "seconds are not inflated by threads spinning on a shared machine)")
    parser.add_argument("--model", choices=("demo", "minilm"), default="demo",
                        help="minilm: the MiniLM rows (benchmarks.distill_minilm; needs the "
                        "[minilm] extra)")
    parser.add_argument("--sentences", type=int, default=1000,
                        help="minilm: unlabelled training sentences")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json, args.epochs)
    torch.set_num_threads(args.threads)
    if args.model == "minilm":
        return _minilm(args)
    torch.manual_seed(0)
    chosen = {name: variant for name, variant in variants().items()
              if args.variants is None or name in args.variants
              or (name == "plain" and not args.no_plain)}
    workspace, pruned, groups = pruned_demo()
    original = workspace.loaded.module
    assert original is not None and workspace.example is not None
    example = workspace.example.make_tensor()
    data = demo_task(train_samples=args.train_samples)
    starts = {False: (pruned, evaluate(pruned, data.test), 0.0)}
    if any(variant.reconstruct for variant in chosen.values()):
        starts[True] = reconstructed(pruned, original, groups, data)
        print(f"cut: accuracy {starts[False][1]:.4f}; re-fitted to the teacher's features: "
              f"{starts[True][1]:.4f} in {starts[True][2]:.1f} CPU s", flush=True)
    section = read_recipe(resource_path("recipes", RECIPE)).train
    assert section is not None
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        onnx_teacher = export_onnx(original, example, Path(folder) / "teacher.onnx")
        for name, variant in chosen.items():
            rows[name] = {}
            start, start_accuracy, start_cpu = starts[variant.reconstruct]
            for epochs in args.epochs:
                runs = []
                for seed in args.seeds:
                    config = TrainConfig(epochs=epochs, lr=section.lr,
                                         batch_size=section.batch_size, seed=seed)
                    run = recover(variant.section, start, original, data, config, example,
                                  Path(folder) / f"{name}-{epochs}-{seed}", onnx_teacher)
                    run["cpu_s"] += start_cpu
                    runs.append({"seed": seed, **run})
                    print(f"{name:14s} epochs={epochs} seed={seed} "
                          f"accuracy={run['accuracy']:.4f} cpu_s={run['cpu_s']:.1f}",
                          flush=True)
                rows[name][str(epochs)] = summarise(runs, epochs)
                rows[name][str(epochs)]["start"] = {
                    "reconstructed": variant.reconstruct, "accuracy": start_accuracy,
                    "cpu_s": round(start_cpu, 2)}
                if variant.section is not None:
                    rows[name][str(epochs)]["settings"] = variant.section.model_dump(
                        mode="json")
                if args.json:  # after every row: a long run stopped early keeps its figures
                    write_json(args.json, {
                        "benchmark": "distill", "machine": machine_info(),
                        "models": {"demo-cnn-50pct-channels": {
                            "data": data.name, "train_samples": len(data.train),
                            "train": {"lr": section.lr, "batch_size": section.batch_size},
                            "variants": rows, "goal": goals(rows, args.epochs)}}})
    for key, value in goals(rows, args.epochs).items():
        print(f"{key}: {value}")
    return 0


def _minilm(args: argparse.Namespace) -> int:
    """The MiniLM rows, judged against output matching from the bare cut."""
    from benchmarks.distill_minilm import MODEL_KEY, minilm_rows

    rows: dict[str, dict[str, Any]] = {}

    def report_row(name: str, epochs: int, runs: list[dict[str, Any]]) -> None:
        rows.setdefault(name, {})[str(epochs)] = summarise(runs, epochs, "cosine")
        if args.json:
            write_json(args.json, {"benchmark": "distill", "machine": machine_info(),
                                   "models": {MODEL_KEY: {
                                       "sentences": args.sentences, "baseline": "match",
                                       "variants": rows,
                                       "goal": goals(rows, args.epochs, "match")}}})

    minilm_rows(args.seeds, args.epochs, args.sentences, args.variants, report_row)
    for key, value in goals(rows, args.epochs, "match").items():
        print(f"{key}: {value}")
    return 0


def merge(parts: list[Path], out: Path | None, epoch_counts: list[int]) -> int:
    """One file from part runs of the same model, the goal judged over all variants; a
    variant's rows join by epoch count (a later part's row replaces an earlier one's)."""
    figures: dict[str, Any] | None = None
    for part in parts:
        data = json.loads(part.read_text(encoding="utf-8"))
        if figures is None:
            figures = data
            continue
        for name, model in data["models"].items():
            joined = figures["models"][name]["variants"]
            for variant, by_epochs in model["variants"].items():  # a part may add epochs
                joined.setdefault(variant, {}).update(by_epochs)
    assert figures is not None
    for model in figures["models"].values():
        model["goal"] = goals(model["variants"], epoch_counts, model.get("baseline", "plain"))
        for key, value in model["goal"].items():
            print(f"{key}: {value}")
    if out:
        write_json(out, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
