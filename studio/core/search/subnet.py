"""The elastic-subnet search (once-for-all): train a supernet from the recipe's model once,
then search its subnets through the same driver, study and executors as the compression
search, without retraining each.

Proxy (zero-shot): the subnet is cut from the trained supernet as a plain model, its BatchNorm
statistics are re-estimated on a few hundred training samples, and it is scored on the
validation split; its MACs and parameter bytes are counted on the cut model, its latency (when
searched) is summed from a per-layer latency table (each layer configuration timed once in
onnxruntime, ``latency-table.json`` beside the study), else the MACs ratio.

Full: the same subnet fine-tuned for ``full_epochs`` with distillation from the original
model, exported to ONNX (parity checked against torch), its bytes the file's and its latency
timed in onnxruntime side by side with the original's.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import Tensor, nn

from studio.core.atomic import write_bytes_atomic, write_text_atomic
from studio.core.data.metrics import drop, higher_is_better
from studio.core.data.task import TaskData
from studio.core.errors import StudioError
from studio.core.export.layer_latency import LayerLatencyTable
from studio.core.export.measure import inputs_for_batches, latency_ms, parity, zip_bytes
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.jobs import CancelToken, Event, Log, Result
from studio.core.jobs.events import drain
from studio.core.methods.distill.losses import distillation_loss, soft_targets
from studio.core.methods.elastic.supernet import Subnet, Supernet, load_supernet
from studio.core.methods.elastic.training import SupernetConfig, train_supernet
from studio.core.methods.pruning.measure import measure
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DistillSection, ExportSection, TrainSection
from studio.core.reports.run_report import Figures, MetricValue, RunReport
from studio.core.search.compression import open_validation, run_trial
from studio.core.search.problem import TrialOutcome, TrialRequest
from studio.core.search.settings import SearchSettings
from studio.core.train.batch_norm import reestimate_batch_norms
from studio.core.train.loop import TrainConfig, evaluate, train
from studio.core.workspace import Workspace, open_recipe_workspace

SUPERNET_FILE = "supernet.pt"
LATENCY_TABLE_FILE = "latency-table.json"
PARITY_SAMPLES = 64
"""Validation samples the exported file is compared with torch on."""
TABLE_REPEATS = 10
"""Timing rounds per layer configuration: each is timed once for the whole search."""


def supernet_path(folder: Path) -> Path:
    return Path(folder) / SUPERNET_FILE


def _module(workspace: Workspace, source: str) -> tuple[nn.Module, Tensor]:
    module = workspace.loaded.module
    if module is None or not workspace.loaded.capabilities.can_train or workspace.example is None:
        raise StudioError(f"{source}: the subnet search needs a torch model with an example "
                          "input (add example_input: {shape: [...]})")
    return module, workspace.example.make_tensor()


def _train_config(recipe: Recipe, settings: SearchSettings, epochs: int) -> TrainConfig:
    train_section = recipe.section(TrainSection)
    return TrainConfig(epochs=epochs, lr=train_section.lr, batch_size=train_section.batch_size,
                       seed=settings.seed)


def train_supernet_job(recipe: Recipe, base_dir: Path | None, out_dir: Path,
                       token: CancelToken, settings: SearchSettings, trust: bool = False,
                       source: str = "recipe") -> Iterator[Event]:
    """Train the recipe's model as a supernet on the training data left after the validation
    split, and save it as ``out_dir/supernet.pt`` (weights and channel rankings, no code);
    an existing one is never written over."""
    path = supernet_path(out_dir)
    if path.exists():
        raise StudioError(f"{path} exists: a supernet was trained there already; give another "
                          "folder, or delete it to train again")
    workspace, task, _, _ = open_validation(recipe, base_dir, trust, settings, source)
    module, example = _module(workspace, source)
    supernet = Supernet.build(module, example)
    if not supernet.groups and not supernet.blocks:
        raise StudioError(f"{source}: the model has no channel group that may shrink and no "
                          "residual block that may be skipped; there is nothing to search")
    yield Log(f"Supernet: {len(supernet.groups)} elastic channel group(s), "
              f"{len(supernet.blocks)} skippable block(s); training on {len(task.train)} "
              "samples (the validation split held out)")
    base = _train_config(recipe, settings, settings.supernet_epochs)
    config = SupernetConfig(epochs=base.epochs, lr=base.lr, batch_size=base.batch_size,
                            seed=settings.seed, widths=tuple(settings.widths),
                            skip_blocks=settings.skip_blocks)
    started = time.perf_counter()
    summary = yield from train_supernet(supernet, task.train, config, token)
    buffer = io.BytesIO()
    torch.save(supernet.state(), buffer)
    write_bytes_atomic(path, buffer.getvalue())
    yield Result({"supernet": str(path), "seconds": round(time.perf_counter() - started, 1),
                  "groups": [g.key for g in supernet.groups], "blocks": supernet.blocks,
                  **summary})


def read_supernet(path: Path, model: nn.Module, example: Tensor) -> Supernet:
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError) as error:
        raise StudioError(f"{path}: cannot read the supernet ({error}); delete it to train "
                          "it again") from error
    return load_supernet(model, example, state)


@dataclass
class _Prepared:
    workspace: Workspace
    recipe: Recipe
    task: TaskData
    baseline: float
    reference: Tensor | None
    supernet: Supernet
    original: nn.Module
    macs: int
    params: int
    table: LayerLatencyTable | None
    """Per-layer latencies, when latency is searched."""
    base_ms: float
    example: Tensor


_PREPARED: dict[str, _Prepared] = {}
"""Problem key -> its prepared state in this process (a worker keeps it between trials)."""


class SubnetProblem:
    """Search the subnets of the supernet saved in ``folder``. Built in the driver
    (:meth:`create`), evaluated anywhere the folder is readable."""

    def __init__(self, recipe: dict[str, Any], base_dir: str | None, trust: bool,
                 settings: SearchSettings, groups: list[str], blocks: list[str],
                 supernet: str, source: str = "recipe") -> None:
        self.recipe_json, self.base_dir, self.trust = recipe, base_dir, trust
        self.settings, self.groups, self.blocks = settings, groups, blocks
        self.supernet, self.source = supernet, source
        self.objectives = ([] if settings.single_objective else ["drop_pt"]) + list(
            settings.costs)
        self.key = f"{id(self)}-{time.time_ns()}"

    @classmethod
    def create(cls, recipe: Recipe, base_dir: Path | None, trust: bool,
               settings: SearchSettings, folder: Path, source: str = "recipe"
               ) -> SubnetProblem:
        workspace = open_recipe_workspace(recipe, base_dir, trust, source)
        module, example = _module(workspace, source)
        supernet = read_supernet(supernet_path(folder), module, example)
        return cls(recipe.model_dump(mode="json", exclude_none=True),
                   None if base_dir is None else str(base_dir), trust, settings,
                   [g.key for g in supernet.groups],
                   supernet.blocks if settings.skip_blocks else [],
                   str(supernet_path(folder)), source)

    def distributions(self) -> dict[str, BaseDistribution]:
        found: dict[str, BaseDistribution] = {
            f"width/{key}": CategoricalDistribution(sorted(set(self.settings.widths)))
            for key in self.groups}
        for block in self.blocks:
            found[f"skip/{block}"] = CategoricalDistribution([False, True])
        return found

    def subnet(self, params: Mapping[str, Any]) -> Subnet:
        return Subnet({key: float(params.get(f"width/{key}", 1.0)) for key in self.groups},
                      tuple(b for b in self.blocks if params.get(f"skip/{b}", False)))

    def work(self, params: Mapping[str, Any]) -> float:
        """The mean share of channels the subnet keeps, less its skipped blocks' share."""
        subnet = self.subnet(params)
        widths = list(subnet.widths.values()) or [1.0]
        return sum(widths) / len(widths) - len(subnet.skipped) / (len(self.blocks) + 1)

    def describe(self, params: Mapping[str, Any]) -> str:
        subnet = self.subnet(params)
        parts = [f"{key} ×{width:g}" for key, width in subnet.widths.items() if width < 1.0]
        parts += [f"{block} skipped" for block in subnet.skipped]
        return ", ".join(parts) or "the largest subnet"

    def prepare(self) -> None:
        self._prepared()

    def evaluate(self, request: TrialRequest) -> TrialOutcome:
        return run_trial(self.settings, request, self._proxy, self._full)

    def _prepared(self) -> _Prepared:
        prepared = _PREPARED.get(self.key)
        if prepared is None:
            recipe = Recipe.model_validate(self.recipe_json)
            base = None if self.base_dir is None else Path(self.base_dir)
            workspace, task, baseline, reference = open_validation(
                recipe, base, self.trust, self.settings, self.source)
            module, example = _module(workspace, self.source)
            size = measure(module, example)
            supernet = read_supernet(Path(self.supernet), copy.deepcopy(module), example)
            table, base_ms = None, 0.0
            if "latency" in self.settings.costs:
                export = recipe.section(ExportSection)
                table = LayerLatencyTable(export.latency_batch, self.settings.latency_threads,
                                          min(export.latency_repeats, TABLE_REPEATS),
                                          Path(self.supernet).parent / LATENCY_TABLE_FILE)
                base_ms = table.model_ms(module, example)
            prepared = _Prepared(workspace, recipe, task, baseline, reference, supernet,
                                 module, size.macs, size.params, table, base_ms, example)
            _PREPARED.clear()  # one problem per worker at a time
            _PREPARED[self.key] = prepared
        return prepared

    def cut(self, params: Mapping[str, Any]) -> nn.Module:
        """The subnet ``params`` choose, as a plain model with its BatchNorm statistics
        re-estimated on the calibration samples."""
        prepared = self._prepared()
        model = prepared.supernet.extract(self.subnet(params))
        reestimate_batch_norms(model, prepared.task.calibration,
                               prepared.recipe.section(TrainSection).batch_size)
        return model.eval()

    def _figures(self, model: nn.Module) -> dict[str, float]:
        prepared = self._prepared()
        task = prepared.task
        value = evaluate(model, task.test, metric=task.metric, reference=prepared.reference)
        example = prepared.example
        size = measure(model, example)
        macs = size.macs / prepared.macs if prepared.macs else 1.0
        latency = macs
        if prepared.table is not None and prepared.base_ms:
            latency = prepared.table.model_ms(model, example) / prepared.base_ms
        return {"metric": value, "baseline": prepared.baseline,
                "drop_pt": round(100.0 * drop(task.metric, prepared.baseline, value), 6),
                "macs": macs, "bytes": size.params / prepared.params, "latency": latency}

    def _proxy(self, request: TrialRequest) -> TrialOutcome:
        figures = self._figures(self.cut(request.params))
        return TrialOutcome([figures[name] for name in self.objectives], figures, "proxy")

    def _full(self, request: TrialRequest) -> TrialOutcome:
        if request.out_dir is None:
            raise StudioError("a full-fidelity trial needs a folder for its files")
        started = time.perf_counter()
        prepared = self._prepared()
        model = self.cut(request.params)
        stages: dict[str, Any] = {"subnet": self.subnet(request.params).to_json()}
        if self.settings.full_epochs:
            config = _train_config(prepared.recipe, self.settings, self.settings.full_epochs)
            summary = drain(train(model, prepared.task.train, config, CancelToken(),
                                  loss_fn=self._distil_loss(), stage="fine-tune"))
            stages["fine_tune"] = {"epochs": config.epochs, "lr": config.lr,
                                   "teacher": "the original model", **summary.to_json()}
        figures = self._figures(model)
        out = Path(request.out_dir)
        path = export_onnx(model, prepared.example, out / "model.onnx", external_data=False)
        with tempfile.TemporaryDirectory(prefix="studio-subnet-") as scratch:
            base = export_onnx(prepared.original, prepared.example,
                               Path(scratch) / "original.onnx", external_data=False)
            export = prepared.recipe.section(ExportSection)
            timed = latency_ms({"baseline": base, "subnet": path},
                               inputs_for_batches(prepared.task.test, (export.latency_batch,)),
                               repeats=export.latency_repeats,
                               threads=self.settings.latency_threads)
            baseline = self._file_figures(prepared.original, base, figures["baseline"],
                                          timed["baseline"])
        compressed = self._file_figures(model, path, figures["metric"], timed["subnet"])
        figures["parity_max_abs"] = float(compressed.parity.get("max_abs_diff") or 0.0)
        figures["bytes"] = compressed.onnx_bytes / baseline.onnx_bytes
        batch = f"batch_{export.latency_batch}"
        figures["latency"] = compressed.latency_ms[batch] / baseline.latency_ms[batch]
        choice = out / "subnet.json"
        write_text_atomic(choice, json.dumps(stages["subnet"], indent=2) + "\n")
        report = RunReport(
            recipe=self.source, model=str(prepared.recipe.model.path), source_format="torch",
            data=prepared.task.summary(), device="cpu", baseline=baseline,
            compressed=compressed, stages=stages, seed=self.settings.seed,
            elapsed_s=round(time.perf_counter() - started, 2), paths={"model": str(path)},
            notes=[f"A subnet of the supernet ({self.describe(request.params)}), fine-tuned "
                   f"{self.settings.full_epochs} epoch(s) with distillation from the original "
                   "model; scored on the validation split carved from the training data (the "
                   "test split is not read)."])
        return TrialOutcome([figures[name] for name in self.objectives], figures, "full",
                            report=report.to_json(),
                            files={"onnx": str(path), "subnet": str(choice)})

    def _file_figures(self, model: nn.Module, path: Path, value: float,
                      latency: Mapping[int, float]) -> Figures:
        """An exported model measured as a run report measures it."""
        prepared = self._prepared()
        size = measure(model, prepared.example)
        metric = prepared.task.metric
        return Figures(MetricValue(metric, value, higher_is_better(metric)), size.params,
                       size.nonzero_params, size.macs, onnx_file_bytes(path), zip_bytes(path),
                       parity(model, path, prepared.task.test.tensors[0][:PARITY_SAMPLES]),
                       latency_ms={f"batch_{batch}": ms for batch, ms in latency.items()})

    def _distil_loss(self) -> Any:
        """Fine-tuning loss: the recipe's distillation weights (or 0.7 at T 4) with the
        original model as the teacher."""
        prepared = self._prepared()
        section = prepared.recipe.distill or DistillSection()
        teacher = prepared.original.eval()

        def loss(model: nn.Module, inputs: Tensor, labels: Tensor | None) -> Tensor:
            with torch.no_grad():
                target = soft_targets([teacher(inputs)], section.temperature)
            return distillation_loss(model(inputs), target, labels, section.temperature,
                                     section.alpha)
        return loss

