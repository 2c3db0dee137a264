"""Runs compression and sensitivity jobs for the open project, and keeps the plots in step.

Long jobs run out of process (:class:`ProcessJob`), so a crash or out-of-memory never takes the
window down; every finished experiment is saved into the project (by the core session) as it
finishes, so the history and the Pareto plot survive a closed window, a crash or a killed job.
The controller reads the open workspace through the session, follows its signals and says what
happened through :attr:`CompressController.notice`; it never touches the window. Its modal
questions (how to sweep, which target, where to export) go through the
:class:`CompressQuestions` it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtCore import QObject, Signal

from studio.core.data.consent import FunctionCode
from studio.core.engine.allocate import Target, allocate
from studio.core.errors import StudioError
from studio.core.export.torch_weights import ADAPTERS_FILE, WEIGHTS_FILE
from studio.core.jobs import Metric
from studio.core.models.factory import is_built_in
from studio.core.pipeline.pipeline import check_recipe_fits
from studio.core.plan.plan import Plan
from studio.core.project.experiments import (
    Experiment,
    experiment_dir,
    experiment_point,
    new_experiment,
)
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.qt.compress_dialogs import SweepChoice
from studio.qt.data_controller import Background
from studio.qt.jobs import ProcessJob
from studio.qt.plots import CurvesPlot, ParetoPlot, SensitivityHeatmap
from studio.qt.plots.metric import metric_axis
from studio.qt.session import QtSession

if TYPE_CHECKING:
    from studio.qt.jobs import JobsPanel


class CompressQuestions(Protocol):
    """The modal questions the compression flows ask (the window answers them; tests replace
    them on the window, so they are looked up when asked)."""

    def ask_path(self, kind: str, caption: str, file_filter: str = "") -> str | None: ...
    def ask_sweep(self, seconds: float) -> SweepChoice | None: ...
    def ask_target(self, metric_label: str) -> Target | None: ...


class CompressController(QObject):
    notice = Signal(str, str)
    """(kind, message): ``"error"`` or ``"info"``, for the window's notice bar."""

    def __init__(self, session: QtSession, jobs: JobsPanel, pareto: ParetoPlot,
                 curves: CurvesPlot, heatmap: SensitivityHeatmap,
                 job_consent: Callable[[], tuple[FunctionCode, ...] | None],
                 questions: CompressQuestions,
                 run_in_background: Background, parent: QObject | None = None) -> None:
        """``job_consent``: the data function code a job about to start may run (``None``:
        refused);
        ``run_in_background``: see :data:`~studio.qt.data_controller.Background`."""
        super().__init__(parent)
        self.session = session
        self.jobs = jobs
        self.pareto = pareto
        self.curves = curves
        self.heatmap = heatmap
        self.job_consent = job_consent
        self.questions = questions
        self.run_in_background = run_in_background
        pareto.pointClicked.connect(self.restore_plan)
        session.historyLoaded.connect(self.load_history)
        session.experimentAdded.connect(self._experiment_added)
        session.sensitivityChanged.connect(self.heatmap.set_report)

    @property
    def experiments(self) -> dict[str, Experiment]:
        return self.session.core.experiments

    @property
    def sensitivity(self) -> SensitivityReport | None:
        return self.session.core.sensitivity

    # --- project history -------------------------------------------------------------------
    def load_history(self) -> None:
        """Bring back the plot and the sensitivity heatmap of the open project."""
        finished = list(self.experiments.values())
        points = [self._point(finished[0], "baseline")] if finished else []
        points += [self._point(experiment) for experiment in finished]
        self.pareto.set_points(points)
        if self.sensitivity is not None:
            self.heatmap.set_report(self.sensitivity)

    def _experiment_added(self, experiment: Experiment) -> None:
        if len(self.experiments) == 1:
            self.pareto.add_point(self._point(experiment, "baseline"))
        self.pareto.add_point(self._point(experiment))

    def _point(self, experiment: Experiment, which: str = "compressed") -> dict[str, Any]:
        baseline = which == "baseline"
        return {"id": "baseline" if baseline else experiment.id,
                "name": "baseline" if baseline else experiment.name,
                "plan": {} if baseline else experiment.plan,
                **experiment_point(experiment, which)}

    def _require_project(self) -> Path | None:
        """The project's folder; an unsaved model gets a scratch project (File ▸ Save Project
        As moves it and its experiments where the user wants them)."""
        try:
            return self.session.core.ensure_project()
        except StudioError as error:
            self.notice.emit("error", str(error))
            return None

    def _job_trust(self) -> dict[str, Any] | None:
        """What the child may run: ``trust`` reopens the model file the user trusted when
        opening it (a pickle, a ``.pt2`` that needs it); ``architecture`` is the one outside
        the registry they named or allowed, and allows nothing else;
        ``data_consent`` is the data function code they allowed, which the child checks again
        before running it. ``None``: they refused; start nothing."""
        allowed = self.job_consent()
        workspace = self.session.core.workspace
        if allowed is None or workspace is None:
            return None
        custom = workspace.architecture is not None and not is_built_in(workspace.architecture)
        return {"trust": workspace.loaded.trusted,
                "architecture": workspace.architecture if custom else None,
                "data_consent": [code.to_json() for code in allowed]}

    def _start(self, kind: str, out_dir: Path, consent: dict[str, Any],
               options: dict[str, Any] | None = None) -> ProcessJob | None:
        """Save the project (the job reads it as it is now) and make the child's job, with the
        consent :meth:`_job_trust` gave."""
        try:
            self.session.core.save()
            spec = self.session.core.job_spec(kind, out_dir, consent, self.jobs.device(),
                                              options)
        except StudioError as error:
            self.notice.emit("error", str(error))
            return None
        return ProcessJob(spec)

    # --- jobs ------------------------------------------------------------------------------
    def run_plan(self) -> ProcessJob | None:
        """Run the current plan and settings as an experiment; saved into the project when it
        ends, with the whole recipe it ran."""
        session = self.session.core
        workspace = session.workspace
        if workspace is None:
            return None
        try:  # say at once what the model's backend cannot do (an ONNX file cannot train)
            check_recipe_fits(workspace, workspace.to_recipe(), "Run Plan")
        except StudioError as error:
            self.notice.emit("error", str(error))
            return None
        consent = self._job_trust()
        folder = self._require_project() if consent is not None else None
        if folder is None:
            return None
        experiment = new_experiment(f"experiment {len(self.experiments) + 1}",
                                    recipe=workspace.to_recipe(base=folder), status="cancelled")
        out_dir = experiment_dir(folder, experiment.id)
        job = self._start("run", out_dir, consent)
        if job is None:
            return None
        job.event.connect(self._on_event)
        job.finished.connect(lambda status, report, error: self._run_finished(
            experiment, out_dir, status, report, error))
        self.curves.clear()
        self.jobs.submit(f"Run Plan: {experiment.name}", job)
        return job

    def _on_event(self, event: object) -> None:
        """Training curves: the compressed file is measured after the last epoch, so its
        point goes there (the engine sends it at step 0, like the baseline)."""
        if isinstance(event, Metric):
            step = event.step
            if event.stage == "compressed":
                step = self.curves.last_epoch()
            self.curves.append(event.stage, event.name, step, event.value)

    def _run_finished(self, experiment: Experiment, out_dir: Path, status: str,
                      report: dict[str, Any] | None, error: str) -> None:
        experiment.status = status if status in ("finished", "failed", "cancelled") else "failed"
        experiment.report = report
        experiment.error = error or None
        files = {}
        if report is not None:
            files = {kind: out_dir / name for kind, name in
                     (("onnx", "model.onnx"), ("report", "report.json"),
                      ("weights", WEIGHTS_FILE), ("adapters", ADAPTERS_FILE))
                     if (out_dir / name).is_file()}
        try:
            self.session.core.record_experiment(experiment, files)
        except StudioError as failure:
            self.notice.emit("error", str(failure))
            return
        if status == "failed":
            self.notice.emit("error", f"{experiment.name} failed: {error}")
        elif status == "finished" and report is not None:
            self.notice.emit("info", f"{experiment.name} finished and was saved in the "
                                     "project.")

    def choose_sensitivity(self) -> None:
        """Time one evaluation on the task's data (in the background), then ask how to sweep."""
        workspace = self.session.core.workspace
        if workspace is None or not workspace.loaded.capabilities.can_sweep:
            self.notice.emit("error", "Sensitivity analysis needs the torch model (a .pt/"
                             ".safetensors/.pt2 file); an ONNX file alone can still be pruned "
                             "and quantized with Compress ▸ Run Plan.")
            return
        allowed = self.job_consent()
        if allowed is None:
            return
        self.run_in_background(lambda: self.session.core.sensitivity_seconds(allowed),
                               self._ask_sweep,
                               lambda error: self.notice.emit("error", str(error)),
                               "Timing one evaluation on the data…")

    def _ask_sweep(self, seconds: float) -> None:
        choice = self.questions.ask_sweep(seconds)
        if choice is not None:
            self.run_sensitivity(**choice.options())

    def run_sensitivity(self, granularity: str = "unstructured", subset: int = 500,
                        **sweep: Any) -> ProcessJob | None:
        """Start a sweep; ``sweep``: the job's other options (``sparsity_levels``,
        ``bit_levels``, ``layers``)."""
        consent = self._job_trust()
        folder = self._require_project() if consent is not None else None
        if folder is None:
            return None
        job = self._start("sensitivity", folder / ".sensitivity", consent,
                          {"granularity": granularity, "subset": subset, **sweep})
        if job is None:
            return None
        job.finished.connect(self._sensitivity_finished)
        scope = f"{len(sweep['layers'])} layers" if sweep.get("layers") else "every layer"
        self.jobs.submit(f"Sensitivity sweep ({granularity}, {scope}, {subset} samples)", job)
        return job

    def _sensitivity_finished(self, status: str, report: dict[str, Any] | None,
                              error: str) -> None:
        if status != "finished" or report is None:
            if status == "failed":
                self.notice.emit("error", f"Sensitivity analysis failed: {error}")
            return
        try:  # the child sends JSON; typed from here on
            self.session.core.set_sensitivity(SensitivityReport.from_json(report))
        except ValueError as failure:
            self.notice.emit("error", f"Sensitivity analysis sent no usable result ({failure})")
            return
        except StudioError as failure:
            self.notice.emit("error", str(failure))
        self.notice.emit("info", "Sensitivity analysis finished: see the Sensitivity tab; "
                                 "Compress ▸ Allocate to Target uses it.")

    # --- plans -----------------------------------------------------------------------------
    def choose_target(self) -> None:
        """Ask for a target (the metric named as the sensitivity sweep measured it), then
        allocate to it."""
        sweep = self.sensitivity
        target = self.questions.ask_target(metric_axis(sweep.metric if sweep else None).label)
        if target is not None:
            self.allocate_to(target)

    def allocate_to(self, target: Target) -> None:
        """Propose a plan for ``target`` from the sensitivity results; layers the user set
        explicitly are pinned. The proposal is one undoable edit."""
        workspace, controller = self.session.core.workspace, self.session.plan
        if workspace is None or controller is None:
            return
        if self.sensitivity is None:
            self.notice.emit("error", "Run a sensitivity analysis first (Compress ▸ "
                                      "Sensitivity).")
            return
        pinned = {name: spec for name, spec in workspace.plan.specs.items() if name}
        try:
            result = allocate(workspace.tree, self.sensitivity, target, pinned, workspace.plan)
        except StudioError as error:
            self.notice.emit("error", str(error))
            return
        controller.replace_plan(result.plan, f"Allocate to {target.kind} {target.value}")
        verdict = "meets" if result.met else "does not meet"
        notes = " ".join(result.notes)
        metric = metric_axis(self.sensitivity.metric).label.lower()
        self.notice.emit("info", f"The proposed plan {verdict} the target (predicted {metric} "
                                 f"drop {result.predicted_drop * 100:.2f} points). {notes}")

    def export_plot(self) -> None:
        """Ask where, then write the Pareto plot as CSV (by extension) or PNG."""
        path = self.questions.ask_path("save", "Export the Pareto plot",
                                       "PNG image (*.png);;CSV (*.csv)")
        if not path:
            return
        try:
            if path.lower().endswith(".csv"):
                self.pareto.export_csv(path)
            else:
                self.pareto.export_png(path if path.lower().endswith(".png") else f"{path}.png")
        except OSError as error:
            self.notice.emit("error", f"cannot write {path}: {error}")

    def restore_plan(self, experiment_id: str) -> None:
        """Clicking a point puts that experiment's plan and run settings back (one undoable
        step); the baseline's point clears the plan, and an experiment saved before
        experiments kept their whole recipe brings back its plan only."""
        controller = self.session.plan
        if controller is None:
            return
        if experiment_id == "baseline":
            controller.replace_plan(Plan(), "Restore the plan of the baseline")
            return
        experiment = self.experiments[experiment_id]
        if experiment.recipe is None and "subnet" in ((experiment.report or {}).get("stages")
                                                      or {}):
            self.notice.emit("info", f"{experiment.name} is a subnet of a supernet, not a plan: "
                             "its model is the experiment's ONNX file; the plan is unchanged.")
            return
        plan, sections = experiment.settings()
        if sections is None:
            controller.replace_plan(plan, f"Restore the plan of {experiment.name}")
        else:
            controller.replace_recipe(plan, sections, f"Restore the settings of "
                                                      f"{experiment.name}")
