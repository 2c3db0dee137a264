"""The experiment report view: baseline against compressed, parity, what each stage did and the
report's plain-words notes, as one readable page.

A read-only rich-text page (``QTextBrowser``) rather than a grid of widgets: the report is
read top to bottom, copied and printed, and it reflows at any dock size. The words come from
:mod:`studio.core.reports.report_summary`.
"""

from __future__ import annotations

from html import escape

from PySide6.QtWidgets import QTextBrowser, QWidget

from studio.core.project.experiments import Experiment
from studio.core.reports.report_summary import (
    FigureRow,
    compare_rows,
    figure_rows,
    generations,
    parity_lines,
    stage_sections,
)
from studio.core.reports.run_report import RunReport
from studio.qt.experiments_table import local_date

EMPTY_REPORT = ("<h3>No experiment chosen</h3><p>Pick an experiment in the table or on the "
                "Pareto plot (right-click ▸ Show Report) to read what it did: the figures "
                "against the baseline, what each stage cut, what stayed float and why.</p>")
EMPTY_COMPARE = ("<h3>Nothing to compare yet</h3><p>Select two experiments in the table "
                 "(Ctrl+click) and choose Compare, or Ctrl+click two points on the plot: their "
                 "figures appear here side by side, and their plans below.</p>")
STYLE = ("<style>table{border-collapse:collapse} td,th{padding:2px 10px;"
         "border-bottom:1px solid #ddd} th{text-align:left;background:#f3f3f3}"
         " td.n{text-align:right} p.sample{white-space:pre-wrap}</style>")


def figures_table(rows: list[FigureRow], headers: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in ["", *headers, "change"])
    body = "".join(
        "<tr><td>" + escape(row.label) + "</td>"
        + "".join(f"<td class='n'>{escape(v)}</td>" for v in row.values)
        + f"<td class='n'>{escape(row.change)}</td></tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"


def report_html(experiment: Experiment, report: RunReport) -> str:
    parts = [STYLE, f"<h3>{escape(experiment.name)}</h3>",
             f"<p>{escape(local_date(experiment.created))} · {escape(report.model)} · "
             f"{escape(report.source_format)} backend on {escape(report.device or 'cpu')} · "
             f"{report.elapsed_s:.0f} s</p>"]
    if experiment.note:
        parts.append(f"<p><i>{escape(experiment.note)}</i></p>")
    parts += ["<h4>Baseline and compressed</h4>",
              figures_table(figure_rows(report), ["baseline", "compressed"])]
    written = generations(report)
    if written:
        parts.append("<h4>Generated text (greedy)</h4>")
        parts += [f"<p class='sample'>{escape(name)}: <b>{escape(prompt)}</b>{escape(text)}</p>"
                  for name, prompt, text in written]
    parity = parity_lines(report)
    if parity:
        parts += ["<h4>Parity</h4>", _list(parity)]
    if report.notes:
        parts += ["<h4>Notes</h4>", _list(report.notes)]
    for name, lines in stage_sections(report):
        parts += [f"<h4>Stage: {escape(name)}</h4>", _list(lines)]
    return "".join(parts)


class ReportView(QTextBrowser):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.experiment_id: str | None = None
        self.show_experiment(None)

    def show_experiment(self, experiment: Experiment | None) -> None:
        """Show ``experiment``'s report (``None``: say how to pick one)."""
        self.experiment_id = experiment.id if experiment is not None else None
        if experiment is None or experiment.report is None:
            self.setHtml(EMPTY_REPORT)
            return
        try:
            report = RunReport.from_json(experiment.report)
        except ValueError as error:
            self.setHtml(f"<h3>{escape(experiment.name)}</h3><p>Its report cannot be read: "
                         f"{escape(str(error))}</p>")
            return
        self.setHtml(report_html(experiment, report))


class CompareFigures(QTextBrowser):
    """The compressed figures of two experiments side by side (the plans differ below)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names: list[str] = []
        self.show_pair([])

    def show_pair(self, experiments: list[tuple[str, RunReport]]) -> None:
        """``(name, report)`` of each experiment; fewer than two: say how to pick them."""
        self.names = [name for name, _ in experiments]
        if len(experiments) < 2:
            self.setHtml(EMPTY_COMPARE)
            return
        rows = compare_rows([report for _, report in experiments])
        self.setHtml(STYLE + f"<h4>{' vs '.join(escape(n) for n in self.names)}</h4>"
                     + figures_table(rows, self.names))
