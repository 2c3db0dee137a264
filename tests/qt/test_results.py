"""Results from the window: a first run of the demo lands in a scratch project (no question
asked), its report reads what each stage did, the compressed model exports where the user picks
(never over their files unasked), and the experiments table renames, annotates, deletes to the
trash (undoable) and compares; Save As moves the scratch history. The offscreen grabs of the
table, the report and the export notice are not blank."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget
from safetensors import safe_open

from studio.core.plan.stages import ExportSection, TrainSection
from studio.core.project.experiments import load_experiments
from studio.qt.experiments_table import NAME, NOTES
from studio.qt.jobs.model import PROGRESS
from studio.qt.main_window import MainWindow


def distinct_colours(widget: QWidget, path: Path) -> int:
    """Grab ``widget`` offscreen into ``path``; how many colours it shows (a blank grab has
    one or two)."""
    assert widget.grab().save(str(path))
    image = QImage(str(path))
    step = max(1, image.width() // 200)
    return len({image.pixel(x, y) for x in range(0, image.width(), step)
                for y in range(0, image.height(), step)})


def test_a_first_run_is_kept_reported_exported_and_managed(
        qtbot, demo_window: MainWindow, run_plan_and_wait, tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    assert win.results.model.rowCount() == 0 and not win.results.export_action.isEnabled()
    asked: list[str] = []
    monkeypatch.setattr(win, "ask_path", lambda kind, caption, file_filter="":
                        asked.append(caption))  # no Save dialog before the first run
    win.workspace.stages = {"train": TrainSection(epochs=0),
                            "export": ExportSection(latency_repeats=2, latency_batch=8)}
    win.controller.set_field([""], "sparsity", 0.5)
    win.controller.set_field([""], "granularity", "channels")
    win.controller.set_field([""], "weight_bits", "int8")
    win.controller.set_field([""], "act_bits", "int8")
    win.controller.set_field(["head"], "exclude", True)
    run_plan_and_wait(win)
    assert asked == []
    assert win.jobs.model.index(0, NAME).data() == "Run Plan: experiment 1"
    assert win.jobs.model.index(0, PROGRESS).data() == "done"  # not "quantize 100%"
    assert not win.job_status.isVisible()
    scratch = win.session.project_dir
    assert scratch is not None and scratch.parent == tmp_path / "scratch"
    assert win.session.is_scratch and "(scratch)" in win.windowTitle()

    # the table and the report
    assert win.results.model.rowCount() == 1
    [experiment] = win.session.experiments.values()
    assert win.results.model.index(0, NAME).data() == "experiment 1"
    win.results.show_report()
    assert win.dock["Report"].isVisible()
    text = win.results.report.toPlainText()
    for expected in ("Baseline and compressed", "latency, batch 8 (ms)", "Stage: prune",
                     "32 channels", "Stayed float (excluded)", "Parity"):
        assert expected in text, expected

    # export: the ONNX file and the torch weights with the architecture recorded
    out = tmp_path / "out" / "small.onnx"
    monkeypatch.setattr(win, "ask_path", lambda kind, caption, file_filter="": str(out))
    written = win.results.export(experiment.id)
    assert written == [out, out.with_suffix(".safetensors")]
    assert out.read_bytes() == (scratch / "experiments" / experiment.id / "model.onnx"
                                ).read_bytes()
    with safe_open(str(written[1]), framework="pt") as weights:
        assert weights.metadata()["architecture"] == "studio.core.demo.model:build_demo_cnn"
        assert "stem.0.weight" in json.loads(weights.metadata()["reshaped"])
    assert "Exported experiment 1" in win.notices.text.text()
    assert distinct_colours(win.notices, tmp_path / "export-notice.png") > 3

    out.with_suffix(".safetensors").write_bytes(b"the user's file")
    answers = [False, True]
    replace_asked: list[list[Path]] = []
    monkeypatch.setattr(win, "confirm_replace",
                        lambda paths: replace_asked.append(paths) or answers.pop(0))
    assert win.results.export(experiment.id) == []  # refused: nothing replaced
    assert out.with_suffix(".safetensors").read_bytes() == b"the user's file"
    assert win.results.export(experiment.id) == written
    assert replace_asked[0] == written and out.with_suffix(".safetensors").stat().st_size > 1000

    # open folder, rename and annotate in the table
    opened: list[str] = []
    win.results.open_url = lambda url: opened.append(url.toLocalFile()) or True
    menu = win.results.menu_for(experiment.id)
    [folder_entry] = [a for a in menu.actions() if a.text() == "Open Experiment Folder"]
    folder_entry.trigger()
    assert opened == [str(scratch / "experiments" / experiment.id)]
    assert [a.text() for a in menu.actions() if a.text()] == [
        "Show Report", "Export Compressed Model…", "Open Experiment Folder", "Delete"]
    [baseline_entry] = win.results.menu_for("baseline").actions()  # no files of its own
    assert not baseline_entry.isEnabled()
    table = win.results.table
    assert table.model().setData(table.model().index(0, NAME), "int8 + half channels")
    assert table.model().setData(table.model().index(0, NOTES), "head kept float")
    [saved] = load_experiments(scratch)
    assert (saved.name, saved.note) == ("int8 + half channels", "head kept float")
    assert {p.get("name") for p in win.pareto.points()} == {"baseline", "int8 + half channels"}

    # compare with the baseline: figures side by side
    win.results.compare("baseline", experiment.id)
    assert win.dock["Compare"].isVisible()
    compared = win.results.figures.toPlainText()
    assert "baseline" in compared and "int8 + half channels" in compared

    # the grabs are not blank
    win.resize(1240, 760)
    win.show_dock("Experiments")
    assert distinct_colours(win.results.table, tmp_path / "table.png") > 3
    win.show_dock("Report")
    assert distinct_colours(win.results.report, tmp_path / "report.png") > 3

    # delete to the trash, then undo
    win.results.delete(experiment.id)
    assert win.results.model.rowCount() == 0 and len(win.pareto.points()) == 0
    assert (scratch / ".trash" / experiment.id / "model.onnx").is_file()
    win.results.undo_delete_action.trigger()
    assert win.results.model.rowCount() == 1 and len(win.pareto.points()) == 2

    # Save As moves the scratch history into the chosen folder
    assert win.project.save_project_to(tmp_path / "mine")
    assert [e.id for e in load_experiments(tmp_path / "mine")] == [experiment.id]
    assert not scratch.exists() and not win.session.is_scratch
    assert win.results.model.rowCount() == 1


def test_empty_results_explain_themselves(demo_window: MainWindow, tmp_path: Path) -> None:
    win = demo_window
    assert "No experiment chosen" in win.results.report.toPlainText()
    assert "Nothing to compare yet" in win.results.figures.toPlainText()
    assert win.pareto.status.text() == "No experiments yet"
    assert win.pareto._empty.isVisible()
    win.results.export()  # nothing to export: says so
    assert win.notices.kind == "info" and "No experiment yet" in win.notices.text.text()
