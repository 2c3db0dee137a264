"""Runs compression and sensitivity jobs for the open project, and keeps the plots in step.

Long jobs run out of process (:class:`ProcessJob`), so a crash or out-of-memory never takes the
window down; every finished experiment is saved into the project as it finishes, so the history
and the Pareto plot survive a closed window, a crash or a killed job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject

from studio.core.atomic import write_text_atomic
from studio.core.engine.allocate import Target, allocate
from studio.core.errors import StudioError
from studio.core.jobs import Metric
from studio.core.jobs.kinds import JobSpec
from studio.core.pipeline.pipeline import check_recipe_fits
from studio.core.plan.plan import Plan
from studio.core.plan.recipe import PlanSection
from studio.core.project.experiments import (
    Experiment,
    experiment_dir,
    experiment_point,
    load_experiments_report,
    new_experiment,
    save_experiment,
)
from studio.qt.jobs import ProcessJob
from studio.qt.plots import CurvesPlot, ParetoPlot, PlanDiffView, SensitivityHeatmap
from studio.qt.plots.metric import metric_axis

if TYPE_CHECKING:
    from studio.qt.jobs import JobsPanel
    from studio.qt.main_window import MainWindow

SENSITIVITY_FILE = "sensitivity.json"


class CompressController(QObject):
    def __init__(self, window: MainWindow, jobs: JobsPanel, pareto: ParetoPlot,
                 curves: CurvesPlot, heatmap: SensitivityHeatmap, diff: PlanDiffView) -> None:
        super().__init__(window)
        self.window = window
        self.jobs = jobs
        self.pareto = pareto
        self.curves = curves
        self.heatmap = heatmap
        self.diff = diff
        self.experiments: dict[str, Experiment] = {}
        self.sensitivity: dict[str, Any] | None = None
        pareto.pointClicked.connect(self.restore_plan)
        pareto.compareRequested.connect(self.compare)

    # --- project history -------------------------------------------------------------------
    @property
    def project_dir(self) -> Path | None:
        path = self.window.project_path
        return path.parent if path is not None else None

    def load_history(self) -> None:
        """Bring back the plot and the sensitivity heatmap of the open project."""
        self.experiments.clear()
        self.sensitivity = None
        self.window.tree_model.set_sensitivity(None)
        points: list[dict[str, Any]] = []
        folder = self.project_dir
        if folder is not None:
            history = load_experiments_report(folder)
            for problem in history.problems:
                self.window.show_info(f"Skipped a damaged experiment: {problem}")
            finished = [e for e in history.experiments if e.status == "finished" and e.report]
            if finished:
                points.append(self._point(finished[0], "baseline"))
            for experiment in finished:
                self.experiments[experiment.id] = experiment
                points.append(self._point(experiment))
            saved = folder / SENSITIVITY_FILE
            if saved.is_file():
                try:
                    self.sensitivity = json.loads(saved.read_text(encoding="utf-8"))
                    self.heatmap.set_report(self.sensitivity)
                    self.window.tree_model.set_sensitivity(self.sensitivity)
                except (OSError, ValueError) as error:
                    self.window.show_info(f"{saved}: could not be read ({error})")
        self.pareto.set_points(points)

    def _point(self, experiment: Experiment, which: str = "compressed") -> dict[str, Any]:
        baseline = which == "baseline"
        return {"id": "baseline" if baseline else experiment.id,
                "name": "baseline" if baseline else experiment.name,
                "plan": {} if baseline else experiment.plan,
                **experiment_point(experiment, which)}

    def _require_project(self) -> Path | None:
        if self.window.workspace is None:
            return None
        if self.project_dir is None:
            self.window.show_info("Save the project first: experiments are kept in its folder.")
            if not self.window.save_as():
                return None
        return self.project_dir

    def _job_trust(self) -> dict[str, Any] | None:
        """What the child may run: ``trust`` unpickles the module the user trusted when opening
        it; ``data_consent`` is the data function code they allowed, which the child checks
        again before running it. ``None``: they refused; start nothing."""
        allowed = self.window.data.job_consent()
        workspace = self.window.workspace
        if allowed is None or workspace is None:
            return None
        return {"trust": bool(allowed) or workspace.loaded.format == "pickled_module",
                "data_consent": [code.to_json() for code in allowed]}

    def _spec(self, kind: str, folder: Path, out_dir: Path, trust: dict[str, Any],
              options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The child's job, with the consent :meth:`_job_trust` gave."""
        workspace = self.window.workspace
        assert workspace is not None
        return JobSpec(kind, workspace.to_recipe(base=folder), folder, out_dir,
                       self.jobs.device(), trust["trust"], options or {},
                       trust["data_consent"]).to_json()

    # --- jobs ------------------------------------------------------------------------------
    def run_plan(self) -> ProcessJob | None:
        """Run the current plan as an experiment; saved into the project when it ends."""
        workspace = self.window.workspace
        if workspace is None:
            return None
        try:  # say at once what the model's backend cannot do (an ONNX file cannot train)
            check_recipe_fits(workspace, workspace.to_recipe(), "Run Plan")
        except StudioError as error:
            self.window.show_error(str(error))
            return None
        trust = self._job_trust()
        folder = self._require_project() if trust is not None else None
        if folder is None:
            return None
        self.window.save()  # the job reads the plan from the project as it is now
        plan = workspace.to_recipe(base=folder).plan.model_dump(mode="json", exclude_none=True)
        experiment = new_experiment(f"experiment {len(self.experiments) + 1}", plan,
                                    status="cancelled")
        out_dir = experiment_dir(folder, experiment.id)
        job = ProcessJob(self._spec("run", folder, out_dir, trust))
        job.event.connect(self._on_event)
        job.finished.connect(lambda status, report, error: self._run_finished(
            folder, experiment, out_dir, status, report, error))
        self.curves.clear()
        self.jobs.submit(experiment.name, job)
        return job

    def _on_event(self, event: object) -> None:
        if isinstance(event, Metric):
            self.curves.append(event.stage, event.name, event.step, event.value)

    def _run_finished(self, folder: Path, experiment: Experiment, out_dir: Path, status: str,
                      report: dict[str, Any] | None, error: str) -> None:
        experiment.status = status if status in ("finished", "failed", "cancelled") else "failed"
        experiment.report = report
        experiment.error = error or None
        files = {}
        if report is not None:
            files = {kind: out_dir / name for kind, name in
                     (("onnx", "model.onnx"), ("report", "report.json"))
                     if (out_dir / name).is_file()}
        try:
            save_experiment(folder, experiment, files)
        except StudioError as failure:
            self.window.show_error(str(failure))
            return
        if status != "finished" or report is None:
            if status == "failed":
                self.window.show_error(f"{experiment.name} failed: {error}")
            return
        if not self.experiments:
            self.pareto.add_point(self._point(experiment, "baseline"))
        self.experiments[experiment.id] = experiment
        self.pareto.add_point(self._point(experiment))
        self.window.show_info(f"{experiment.name} finished and was saved in the project.")

    def run_sensitivity(self, granularity: str = "unstructured", subset: int = 500
                        ) -> ProcessJob | None:
        trust = self._job_trust()
        folder = self._require_project() if trust is not None else None
        if folder is None:
            return None
        self.window.save()
        out_dir = folder / ".sensitivity"
        job = ProcessJob(self._spec("sensitivity", folder, out_dir, trust,
                                    {"granularity": granularity, "subset": subset}))
        job.finished.connect(lambda status, report, error: self._sensitivity_finished(
            folder, status, report, error))
        self.jobs.submit(f"sensitivity ({granularity})", job)
        return job

    def _sensitivity_finished(self, folder: Path, status: str, report: dict[str, Any] | None,
                              error: str) -> None:
        if status != "finished" or report is None:
            if status == "failed":
                self.window.show_error(f"Sensitivity analysis failed: {error}")
            return
        self.sensitivity = report
        try:
            write_text_atomic(folder / SENSITIVITY_FILE, json.dumps(report, indent=1) + "\n")
        except StudioError as failure:
            self.window.show_error(str(failure))
        self.heatmap.set_report(report)
        self.window.tree_model.set_sensitivity(report)
        self.window.show_info("Sensitivity analysis finished: see the Sensitivity tab; "
                              "Compress ▸ Allocate to Target uses it.")

    # --- plans -----------------------------------------------------------------------------
    def allocate_to(self, target: Target) -> None:
        """Propose a plan for ``target`` from the sensitivity results; layers the user set
        explicitly are pinned. The proposal is one undoable edit."""
        window = self.window
        if window.workspace is None or window.controller is None:
            return
        if self.sensitivity is None:
            window.show_error("Run a sensitivity analysis first (Compress ▸ Sensitivity).")
            return
        pinned = {name: spec for name, spec in window.workspace.plan.specs.items() if name}
        try:
            result = allocate(window.workspace.tree, self.sensitivity, target, pinned,
                              window.workspace.plan)
        except StudioError as error:
            window.show_error(str(error))
            return
        window.controller.replace_plan(result.plan, f"Allocate to {target.kind} {target.value}")
        verdict = "meets" if result.met else "does not meet"
        notes = " ".join(result.notes)
        metric = metric_axis(self.sensitivity.get("metric")).label.lower()
        window.show_info(f"The proposed plan {verdict} the target (predicted {metric} drop "
                         f"{result.predicted_drop * 100:.2f} points). {notes}")

    def restore_plan(self, experiment_id: str) -> None:
        """Clicking a point puts that experiment's plan back in the tree (undoable)."""
        controller = self.window.controller
        if controller is None:
            return
        plan = Plan() if experiment_id == "baseline" else PlanSection.model_validate(
            self.experiments[experiment_id].plan).to_plan()
        name = "the baseline" if experiment_id == "baseline" else \
            self.experiments[experiment_id].name
        controller.replace_plan(plan, f"Restore the plan of {name}")

    def compare(self, first: str, second: str) -> None:
        plans = {key: ({} if key == "baseline" else self.experiments[key].plan)
                 for key in (first, second)}
        names = {key: ("baseline" if key == "baseline" else self.experiments[key].name)
                 for key in (first, second)}
        self.diff.set_plans(plans[first], plans[second], names[first], names[second])
