"""A short real search driven through the window: the Search dialog (generated form, time
estimate), the live trial table, pause and resume on the same study, full-fidelity trials on
the Experiments plot, a click restoring a trial's plan."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt

from studio.core.plan.stages import ExportSection, TrainSection
from studio.core.project.experiments import load_experiments
from studio.core.search.settings import SearchSettings
from studio.qt.main_window import MainWindow
from studio.qt.search_dialog import SearchDialog

SHOTS = os.environ.get("STUDIO_SCREENSHOTS")
"""A folder to save the dialog and the window in (to look at them); unset in CI."""
WAIT_MS = 600_000


def _tiny() -> SearchSettings:
    return SearchSettings(trials=4, population=2, seed=1, layers=["block1.0", "res.conv1.0"],
                          granularities=["unstructured"], bits=["fp32", "int8"],
                          sparsity_levels=[0.0, 0.5, 0.9], validation_samples=100,
                          proxy_samples=64, promote_fraction=0.5, full_epochs=0)


def _answer_with_dialog(win: MainWindow, seen: list[str]
                        ) -> Callable[[SearchSettings, Callable], SearchSettings | None]:
    def ask(settings: SearchSettings, estimate: Callable) -> SearchSettings | None:
        dialog = SearchDialog(settings, estimate, win)
        dialog.form.set_value(_tiny())
        dialog.form.touched.emit()
        seen.append(dialog.findChild(type(dialog.estimate_label), "estimate").text())
        if SHOTS:
            dialog.grab().save(str(Path(SHOTS) / "search-dialog.png"))
        return dialog.settings()
    return ask


def test_a_search_runs_from_the_window_pauses_resumes_and_fills_the_plot(
        qtbot, demo_window: MainWindow, tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    win.workspace.stages = {"train": TrainSection(epochs=0),
                            "export": ExportSection(latency_repeats=2, latency_batch=8)}
    assert win.project.save_project_to(tmp_path / "project")
    seen: list[str] = []
    monkeypatch.setattr(win, "ask_search", _answer_with_dialog(win, seen))
    search = win.search

    with qtbot.waitSignal(search.trialUpdated, timeout=WAIT_MS,
                          check_params_cb=lambda t: t.state == "complete"):
        win.start_search()
    assert seen and seen[0].startswith("Estimated time: about")
    with qtbot.waitSignal(search.stateChanged, timeout=WAIT_MS,
                          check_params_cb=lambda state: state == "paused"):
        search.pause()
    assert win.search_panel.resume_button.isEnabled()
    kept = [row.number for row in win.search_panel.table_model.rows if row.state == "complete"]
    assert kept

    with qtbot.waitSignal(search.stateChanged, timeout=WAIT_MS,
                          check_params_cb=lambda state: state == "finished"):
        search.resume()
    rows = win.search_panel.table_model.rows
    complete = {row.number for row in rows if row.state == "complete"}
    assert len(complete) >= 4 and set(kept) <= complete, [  # on failure: what each row says
        (row.number, row.state, row.fidelity, row.reason) for row in rows]
    full = [row for row in rows if row.fidelity == "full" and row.state == "complete"]
    assert full and all("bytes" in row.figures for row in full)

    experiments = load_experiments(tmp_path / "project")
    assert {row.experiment for row in full} <= {e.id for e in experiments}
    assert {e.id for e in experiments} <= {p["id"] for p in win.pareto.points()}
    if SHOTS:
        win.show_dock("Search")
        win.resize(1400, 900)
        win.grab().save(str(Path(SHOTS) / "search-window.png"))
        win.show_dock("Experiments")
        win.grab().save(str(Path(SHOTS) / "search-experiments.png"))

    chosen = next(e for e in experiments if e.id == full[0].experiment)
    win.pareto._on_points_clicked([chosen.id], Qt.KeyboardModifier.NoModifier)
    assert win.workspace.plan.spec("block1.0") == chosen.settings()[0].spec("block1.0")
