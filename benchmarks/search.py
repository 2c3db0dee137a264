"""Compression search on the demo against the example recipes and the greedy allocator at the
same CPU budget (hypervolume of metric drop against ONNX bytes), and trials per minute with 1
and 2 local workers and a local Ray of 2 CPUs on the same trials.

Every figure is on the validation split carved from the training data (500 digits): the search
selects on it, so the recipes and the allocator are scored on it too, and the test split is
never read. Hypervolume: the area each method's points dominate in (drop in points, bytes ratio)
up to (10 points, 1.0), every value minimised.

The elastic-subnet rows (``--only subnet`` runs just them): a supernet trained once from the
demo with progressive shrinking, searched under MACs <= 0.25x on the validation split; the best
feasible subnet by the zero-shot score and a spread of others are fine-tuned, giving
``subnet_macs_ratio`` and ``subnet_drop_pt`` (the best's, after fine-tuning) and
``subnet_spearman`` (zero-shot drop against fine-tuned drop over those subnets, all fine-tuned
alike); the best is then fine-tuned longer (``--best-epochs``), and its figures, on validation
and on the test split (reported, never used to choose), are the goal's.

    python -m benchmarks.search --json PATH [--throughput-trials N]
                                [--only hypervolume|throughput|subnet]
                                [--budget-cpu-s S] [--epochs E] [--supernet-epochs E]
                                [--subnet-trials N] [--finetune-epochs F] [--spread K]
                                [--best-epochs B]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scipy.stats
import torch

from benchmarks.common import machine_info, write_json
from benchmarks.pareto import load_recipe, run_engine
from studio.core.data.sources import load_task
from studio.core.engine.allocate import Target, allocate
from studio.core.engine.sensitivity import sensitivity_workspace
from studio.core.export.measure import onnx_metric
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken, Result
from studio.core.methods.elastic.supernet import Supernet
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.plan.stages import DataSection, TrainSection
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.core.resources import resource_path
from studio.core.search.compression import CompressionProblem, full_figures
from studio.core.search.driver import run_search
from studio.core.search.executors import InProcess, LocalProcesses, RayCluster
from studio.core.search.front import hypervolume
from studio.core.search.problem import TrialRequest
from studio.core.search.settings import SearchSettings
from studio.core.search.subnet import SubnetProblem, train_supernet_job
from studio.core.train.batch_norm import reestimate_batch_norms
from studio.core.train.loop import evaluate
from studio.core.workspace import open_recipe_workspace

VALIDATION = 500
REFERENCE = (10.0, 1.0)
RECIPES = ("demo-int8.yaml", "demo-structured-kd.yaml", "demo-combined.yaml",
           "demo-qat-mixed.yaml")
SIZE_TARGETS = (0.5, 0.3, 0.2, 0.1)
BASE = "demo-combined.yaml"
"""The search's and the allocator's recipe: its data, KD and quantization settings; the plan
is theirs, with one recovery epoch."""


def _cpu_s() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _on_validation(recipe: Recipe) -> Recipe:
    data = recipe.section(DataSection).model_copy(update={"validation_samples": VALIDATION})
    return recipe.model_copy(update={"data": data})


def _point(report: dict[str, Any]) -> list[float]:
    figures = full_figures(report)
    return [figures["drop_pt"], figures["bytes"]]


def _timed(run: Callable[[], list[list[float]]]) -> tuple[list[list[float]], float, float]:
    cpu, wall = _cpu_s(), time.perf_counter()
    points = run()
    return points, round(_cpu_s() - cpu, 1), round(time.perf_counter() - wall, 1)


def recipes(out: Path) -> list[list[float]]:
    return [_point(run_engine(_on_validation(load_recipe(name, False)), out / name, name))
            for name in RECIPES]


def allocator(out: Path, epochs: int) -> list[list[float]]:
    base = _on_validation(load_recipe(BASE, False))
    workspace = open_recipe_workspace(base, resource_path("recipes"))
    task = load_task(base.section(DataSection), resource_path("recipes"))
    report = None
    for event in sensitivity_workspace(workspace, CancelToken(), granularity="channels",
                                       subset=VALIDATION, task=task,
                                       section=base.section(DataSection)):
        if isinstance(event, Result):
            report = SensitivityReport.from_json(event.report)
    assert report is not None
    start = Plan({ROOT: LayerSpec(act_bits="int8")})
    points = []
    train = base.section(TrainSection).model_copy(update={"epochs": epochs})
    for target in SIZE_TARGETS:
        plan = allocate(workspace.tree, report, Target("size", target), base_plan=start).plan
        recipe = Recipe.build(plan, base.model, None, base.stages()).model_copy(
            update={"train": train})
        points.append(_point(run_engine(recipe, out / f"allocate-{target}",
                                        f"allocate size {target}")))
    return points


def search(out: Path, budget_cpu_s: float, epochs: int, seeded: bool
           ) -> tuple[list[list[float]], dict[str, Any]]:
    """The search on one core in this process, stopped by CPU time (this process and its
    children) at ``budget_cpu_s``; ``seeded``: its first generation starts with the example
    recipes' plans (mapped onto its space). Its points are its full-fidelity trials."""
    settings = SearchSettings(costs=["bytes"], trials=10_000, minutes=budget_cpu_s / 60,
                              full_epochs=epochs, validation_samples=VALIDATION)
    problem = CompressionProblem.create(load_recipe(BASE, False), resource_path("recipes"),
                                        False, settings, BASE)
    seeds = problem.seed_params([load_recipe(name, False).to_plan() for name in RECIPES]
                                ) if seeded else []
    report = None
    for event in run_search(problem, settings, out / ("seeded" if seeded else "cold"),
                            CancelToken(), InProcess(), seeds=seeds, clock=_cpu_s):
        if isinstance(event, Result):
            report = event.report
    assert report is not None
    full = [row for row in report["trials"] if row["fidelity"] == "full"
            and row["state"] == "complete"]
    return [[row["figures"]["drop_pt"], row["figures"]["bytes"]] for row in full], {
        "trials": len(report["trials"]), "full_trials": len(full), "seeds": seeds,
        "full_epochs": epochs, "granularities": settings.granularities, "bits": settings.bits}


def throughput(out: Path, trials: int) -> dict[str, Any]:
    """The same proxy-only trials in one process, two local processes and a local Ray. Each
    executor is started and warm (every worker has opened the model and the data) before the
    steady-state clock starts: ``startup_s_*`` is that cost, ``trials_per_min_*`` the
    trials after it, ``trials_per_min_with_startup_*`` both together."""
    settings = SearchSettings(costs=["bytes"], trials=trials, population=trials // 2,
                              full_fidelity=False, validation_samples=VALIDATION)
    problem = CompressionProblem.create(load_recipe(BASE, False), resource_path("recipes"),
                                        False, settings, BASE)
    executors: dict[str, Callable[[], Any]] = {"1": InProcess, "2": lambda: LocalProcesses(2)}
    if importlib.util.find_spec("ray") is not None:
        executors["ray"] = lambda: RayCluster("local", 2)
    figures: dict[str, Any] = {"throughput_trials": trials,
                               "throughput_population": settings.population}
    reference = None
    for name, make in executors.items():
        started = time.perf_counter()
        executor = make()
        executor.start(problem)
        ready = time.perf_counter()
        rows = None
        for event in run_search(problem, settings, out / f"speed-{name}", CancelToken(),
                                executor):
            if isinstance(event, Result):
                rows = [(row["number"], row["params"], row["proxy"])
                        for row in event.report["trials"]]
        total = time.perf_counter() - started
        figures[f"trials_per_min_{name}"] = round(trials / (total - (ready - started)) * 60, 1)
        figures[f"trials_per_min_with_startup_{name}"] = round(trials / total * 60, 1)
        figures[f"startup_s_{name}"] = round(ready - started, 1)
        figures[f"wall_s_{name}"] = round(total, 1)
        if reference is None:
            reference = rows
        figures[f"identical_{name}"] = rows == reference
    for name in ("2", "ray"):
        if f"trials_per_min_{name}" in figures:
            figures[f"speedup_{name}"] = round(
                figures[f"trials_per_min_{name}"] / figures["trials_per_min_1"], 2)
            figures[f"speedup_with_startup_{name}"] = round(
                figures[f"trials_per_min_with_startup_{name}"]
                / figures["trials_per_min_with_startup_1"], 2)
    return figures


SUBNET_MACS = 0.25
SUBNET_RECIPE = {"schema_version": 1, "model": {"path": "demo"},
                 "data": {"source": "demo", "calibration_samples": 256},
                 "train": {"epochs": 0, "lr": 0.005, "batch_size": 32, "seed": 0}}
"""The supernet and the fine-tuning train at this lr and batch (on 2 supernet epochs of the
demo, lr 0.005 at batch 32 gave the smallest subnet 74% zero-shot, lr 0.002 at batch 64 about
60%); fine-tuning distils from the original model at the studio's default T 4, alpha 0.7."""


def _spread(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` distinct subnets evenly spread over the zero-shot drops."""
    distinct = {json.dumps(row["params"], sort_keys=True): row for row in rows}
    ordered = sorted(distinct.values(), key=lambda row: row["proxy"]["drop_pt"])
    if len(ordered) <= count:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)]


def _test_figures(folder: Path) -> dict[str, float]:
    """The chosen subnet (selected on validation) and the original, exported, on the demo's
    test split: reported, never used to choose."""
    task = load_task(Recipe.model_validate(SUBNET_RECIPE).section(DataSection))
    workspace = open_recipe_workspace(Recipe.model_validate(SUBNET_RECIPE),
                                      resource_path("recipes"))
    assert workspace.loaded.module is not None and workspace.example is not None
    original = export_onnx(workspace.loaded.module, workspace.example.make_tensor(),
                           folder / "original.onnx", external_data=False)
    base = onnx_metric(original, task.test)
    value = onnx_metric(folder / "model.onnx", task.test)
    return {"test_samples": len(task.test), "baseline": base, "metric": value,
            "drop_pt": round(100.0 * (base - value), 3)}


def smallest_zero_shot(problem: SubnetProblem) -> dict[str, float]:
    """The smallest subnet's validation accuracy without fine-tuning: cut from the trained
    supernet, and cut the same way from the plain model (BatchNorms re-estimated in both)."""
    smallest = {name: min(dist.choices) for name, dist in problem.distributions().items()
                if name.startswith("width/")}
    smallest |= {f"skip/{block}": True for block in problem.blocks}
    from_supernet = problem.evaluate(TrialRequest(-1, smallest, "proxy")).figures
    prepared = problem._prepared()
    plain = Supernet.build(copy.deepcopy(prepared.original), prepared.example)
    model = plain.extract(problem.subnet(smallest))
    reestimate_batch_norms(model, prepared.task.calibration, 64)
    return {"macs": round(from_supernet["macs"], 4),
            "from_supernet": from_supernet["metric"],
            "from_plain_model": evaluate(model, prepared.task.test)}


def subnets(out: Path, supernet_epochs: int, trials: int, finetune_epochs: int,
            spread: int, best_epochs: int) -> dict[str, Any]:
    """Train the supernet, search it zero-shot under MACs <= 0.25x; fine-tune the best
    feasible subnet and a spread of others alike (Spearman), then the best for
    ``best_epochs`` (its drop is the goal's figure)."""
    recipe = Recipe.model_validate(SUBNET_RECIPE)
    base = resource_path("recipes")
    settings = SearchSettings(space="subnet", costs=["macs"], max_cost_ratio=SUBNET_MACS,
                              trials=trials, population=8, full_fidelity=False,
                              full_epochs=finetune_epochs, supernet_epochs=supernet_epochs,
                              validation_samples=VALIDATION)
    folder = out / "subnet"
    started = time.perf_counter()
    trained: dict[str, Any] = {}
    for event in train_supernet_job(recipe, base, folder, CancelToken(), settings):
        if isinstance(event, Result):
            trained = event.report
    supernet_s = time.perf_counter() - started
    problem = SubnetProblem.create(recipe, base, False, settings, folder)
    smallest = smallest_zero_shot(problem)
    report = None
    started = time.perf_counter()
    for event in run_search(problem, settings, folder, CancelToken(), InProcess()):
        if isinstance(event, Result):
            report = event.report
    assert report is not None
    search_s = time.perf_counter() - started
    rows = [row for row in report["trials"] if row["state"] == "complete"]
    feasible = sorted((row for row in rows if row["proxy"]["macs"] <= SUBNET_MACS),
                      key=lambda row: (row["proxy"]["drop_pt"], row["proxy"]["macs"]))
    chosen = feasible[:1] + [row for row in _spread(rows, spread)
                             if not feasible or row["params"] != feasible[0]["params"]]
    started = time.perf_counter()
    tuned = []
    for row in chosen:
        outcome = problem.evaluate(TrialRequest(row["number"], row["params"], "full",
                                                str(folder / "tuned" / str(row["number"]))))
        tuned.append({"number": row["number"], "subnet": problem.describe(row["params"]),
                      "zero_shot": row["proxy"], "fine_tuned": outcome.figures})
    best = None
    if feasible:  # the chosen subnet, fine-tuned longer: the figure the goal is about
        longer = SubnetProblem.create(recipe, base, False, settings.model_copy(
            update={"full_epochs": best_epochs}), folder)
        row = feasible[0]
        outcome = longer.evaluate(TrialRequest(row["number"], row["params"], "full",
                                               str(folder / "best")))
        best = {"number": row["number"], "subnet": problem.describe(row["params"]),
                "zero_shot": row["proxy"], "fine_tuned": outcome.figures,
                "epochs": best_epochs}
    finetune_s = time.perf_counter() - started
    test = _test_figures(folder / "best") if best else {}
    spearman = scipy.stats.spearmanr([t["zero_shot"]["drop_pt"] for t in tuned],
                                     [t["fine_tuned"]["drop_pt"] for t in tuned]).statistic
    return {
        "subnet_macs_ratio": None if best is None else round(best["fine_tuned"]["macs"], 4),
        "subnet_drop_pt": None if best is None else round(best["fine_tuned"]["drop_pt"], 3),
        "subnet_spearman": round(float(spearman), 3),
        "subnet_goal_met": bool(best and best["fine_tuned"]["macs"] <= SUBNET_MACS
                                and best["fine_tuned"]["drop_pt"] <= 0.5),
        "subnet_test": test,
        "subnet_best": best,
        "subnet_smallest_zero_shot": smallest,
        "subnet": {"supernet": trained, "supernet_s": round(supernet_s, 1),
                   "search_s": round(search_s, 1), "finetune_s": round(finetune_s, 1),
                   "trials": len(rows), "feasible": len(feasible),
                   "finetune_epochs": finetune_epochs, "tuned": tuned,
                   "validation_samples": VALIDATION},
    }


def compare(out: Path, budget_cpu_s: float | None, epochs: int | None) -> dict[str, Any]:
    """The hypervolume rows: recipes, allocator, then the cold and the seeded search, each
    search given the same CPU seconds (the larger of what the other two took, by default)."""
    torch.set_num_threads(1)  # one core per trial, as the search's workers run
    if epochs is None:  # the allocator's and the search's runs recover as the base recipe does
        epochs = load_recipe(BASE, False).section(TrainSection).epochs
    recipe_points, recipe_cpu, recipe_wall = _timed(lambda: recipes(out))
    allocator_points, allocator_cpu, allocator_wall = _timed(lambda: allocator(out, epochs))
    budget = budget_cpu_s if budget_cpu_s is not None else max(recipe_cpu, allocator_cpu)
    found: dict[str, Any] = {}
    cold_points, cold_cpu, cold_wall = _timed(
        lambda: found.setdefault("cold", search(out, budget, epochs, False))[0])
    seeded_points, seeded_cpu, seeded_wall = _timed(
        lambda: found.setdefault("seeded", search(out, budget, epochs, True))[0])
    return {
        "reference_point": list(REFERENCE),
        "budget_cpu_s": budget,
        "search_hypervolume": hypervolume(cold_points, REFERENCE),
        "search_seeded_hypervolume": hypervolume(seeded_points, REFERENCE),
        "recipes_hypervolume": hypervolume(recipe_points, REFERENCE),
        "allocator_hypervolume": hypervolume(allocator_points, REFERENCE),
        "search": {"points": cold_points, "budget_cpu_s": budget, "cpu_s": cold_cpu,
                   "wall_s": cold_wall, **found["cold"][1]},
        "search_seeded": {"points": seeded_points, "budget_cpu_s": budget,
                          "cpu_s": seeded_cpu, "wall_s": seeded_wall, **found["seeded"][1]},
        "recipes": {"points": recipe_points, "budget_cpu_s": budget, "cpu_s": recipe_cpu,
                    "wall_s": recipe_wall, "names": list(RECIPES)},
        "allocator": {"points": allocator_points, "budget_cpu_s": budget,
                      "cpu_s": allocator_cpu, "wall_s": allocator_wall,
                      "size_targets": list(SIZE_TARGETS), "epochs": epochs},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--budget-cpu-s", type=float,
                        help="CPU seconds (this process and its children) each search gets "
                             "(default: what the recipes or the allocator took, the larger)")
    parser.add_argument("--throughput-trials", type=int, default=16)
    parser.add_argument("--epochs", type=int,
                        help="recovery epochs of the search's full trials and the allocator's "
                             "runs (default: the base recipe's, 3)")
    parser.add_argument("--only", choices=("all", "hypervolume", "subnet", "throughput"),
                        default="all",
                        help="hypervolume: only the search against the recipes and the "
                             "allocator; subnet: only the elastic-subnet rows; throughput: "
                             "only the trials per minute with 1 and 2 workers and a local Ray")
    parser.add_argument("--supernet-epochs", type=int, default=4)
    parser.add_argument("--subnet-trials", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=2,
                        help="fine-tuning epochs of each chosen subnet")
    parser.add_argument("--spread", type=int, default=6,
                        help="subnets fine-tuned for the Spearman figure, beside the best")
    parser.add_argument("--best-epochs", type=int, default=5,
                        help="fine-tuning epochs of the chosen subnet")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="search-bench-"))
    try:
        torch.set_num_threads(1)
        result: dict[str, Any] = {"machine": machine_info()}
        if args.only in ("all", "hypervolume"):
            result.update(compare(scratch, args.budget_cpu_s, args.epochs))
        if args.only in ("all", "throughput"):
            result.update(throughput(scratch, args.throughput_trials))
        if args.only in ("all", "subnet"):
            result.update(subnets(scratch, args.supernet_epochs, args.subnet_trials,
                                  args.finetune_epochs, args.spread, args.best_epochs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key in ("budget_cpu_s", "search_hypervolume", "search_seeded_hypervolume",
                "recipes_hypervolume", "allocator_hypervolume", "trials_per_min_1",
                "trials_per_min_2", "trials_per_min_ray", "startup_s_1", "startup_s_2",
                "startup_s_ray", "speedup_2", "speedup_ray",
                "subnet_macs_ratio", "subnet_drop_pt", "subnet_spearman"):
        print(f"{key}: {result.get(key)}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
