"""The Search dialog picks the elastic-subnet search, and a tiny real one runs through the
window: the supernet trains in the job process, its subnets fill the trial table, the chosen
one lands on the Experiments plot with its ONNX file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox

from studio.core.plan.stages import DataSection, ExportSection, TrainSection
from studio.core.project.experiments import artifact_path, load_experiments
from studio.core.search.settings import SearchSettings
from studio.qt.main_window import MainWindow
from studio.qt.search_dialog import SearchDialog

WAIT_MS = 600_000


def _pick_subnet(win: MainWindow, estimates: list[float]
                 ) -> Callable[[SearchSettings, Callable], SearchSettings | None]:
    def ask(settings: SearchSettings, estimate: Callable) -> SearchSettings | None:
        dialog = SearchDialog(settings, estimate, win)
        dialog.form.set_value(SearchSettings(
            trials=2, population=2, seed=1, costs=["macs"], widths=[0.5, 1.0],
            supernet_epochs=1, validation_samples=64, proxy_samples=32, promote_fraction=0.5,
            full_epochs=0))
        estimates.append(estimate(dialog.settings()))
        space = dialog.form.findChild(QComboBox, "space")
        space.setCurrentText("subnet")  # as a user picks it
        skip = dialog.form.findChild(QCheckBox, "skip_blocks")
        assert skip.isChecked()
        chosen = dialog.settings()
        assert chosen is not None and chosen.space == "subnet"
        estimates.append(estimate(chosen))
        return chosen
    return ask


def test_the_search_dialog_runs_a_tiny_subnet_search(qtbot, demo_window: MainWindow,
                                                     tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    win.workspace.stages = {
        "data": DataSection(source="demo", train_samples=128, calibration_samples=32),
        "train": TrainSection(epochs=0, batch_size=32),
        "export": ExportSection(latency_repeats=2, latency_batch=8)}
    assert win.project.save_project_to(tmp_path / "project")
    estimates: list[float] = []
    monkeypatch.setattr(win, "ask_search", _pick_subnet(win, estimates))
    search = win.search

    with qtbot.waitSignal(search.stateChanged, timeout=WAIT_MS,
                          check_params_cb=lambda state: state in ("finished", "stopped")):
        win.start_search()
    assert search.state == "finished", win.search_panel.status.text()
    assert estimates[1] > estimates[0]  # the supernet's training is in the estimate
    rows = win.search_panel.table_model.rows
    assert {row.number for row in rows if row.state == "complete"} == {0, 1}
    assert all(any(key.startswith("width/") for key in row.params) for row in rows)
    full = [row for row in rows if row.fidelity == "full" and row.state == "complete"]
    assert len(full) == 1 and full[0].figures["parity_max_abs"] < 1e-4

    (experiment,) = load_experiments(tmp_path / "project")
    assert experiment.id == full[0].experiment
    assert artifact_path(tmp_path / "project", experiment, "onnx") is not None
    assert experiment.id in {p["id"] for p in win.pareto.points()}
    assert any((tmp_path / "project").rglob("supernet.pt"))  # trained once, kept for a resume

    win.results.report.show_experiment(experiment)  # a typed run report the view reads
    shown = win.results.report.toPlainText()
    assert "cannot be read" not in shown and "Stage: subnet" in shown

    plan = win.workspace.plan
    notices: list[str] = []
    win.compress.notice.connect(lambda _kind, text: notices.append(text))
    win.pareto._on_points_clicked([experiment.id], Qt.KeyboardModifier.NoModifier)
    assert notices and "is a subnet of a supernet, not a plan" in notices[0]
    assert win.workspace.plan is plan
