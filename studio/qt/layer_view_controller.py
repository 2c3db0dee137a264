"""Feeds the layer view: computes the selected layer's statistics in a worker thread, one at a
time, caches them by (layer, its resolved settings, sensitivity report), and keeps the tree's
SQNR column up to date after plan edits (debounced, also in a worker)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from studio.core.engine.layer_stats import LayerStats, layer_stats, sqnr_by_layer, view_samples
from studio.core.graph.tree import LayerNode
from studio.core.workspace import Workspace
from studio.qt.data_controller import Background
from studio.qt.plots.layer_view import LayerView
from studio.qt.session import QtSession

SQNR_DELAY_MS = 300
"""Plan edits come in bursts (a slider drag): the whole-model SQNR waits for a pause."""


class LayerViewController(QObject):
    statsReady = Signal(object)
    """A :class:`LayerStats` was computed (shown if its layer is still the selected one)."""
    sqnrChanged = Signal(dict)
    """Layer name -> SQNR in dB at its planned bits, for the tree's SQNR column."""

    def __init__(self, qsession: QtSession, view: LayerView, run_in_background: Background,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.qsession, self.view, self.run_in_background = qsession, view, run_in_background
        self.cache: dict[tuple[Any, ...], LayerStats] = {}
        self._name: str | None = None
        self._running: tuple[Any, ...] | None = None
        self._samples: tuple[Any, str] | None = None
        self._sqnr_timer = QTimer(self)
        self._sqnr_timer.setSingleShot(True)
        self._sqnr_timer.setInterval(SQNR_DELAY_MS)
        self._sqnr_timer.timeout.connect(self._compute_sqnr)
        qsession.opened.connect(self._opened)
        qsession.sensitivityChanged.connect(lambda _report: self.refresh())
        qsession.historyLoaded.connect(self.refresh)

    @property
    def workspace(self) -> Workspace | None:
        return self.qsession.core.workspace

    def _opened(self) -> None:
        """A new model or a re-traced one: weights and shapes may differ, start afresh."""
        self.cache.clear()
        self._samples = None
        assert self.qsession.plan is not None
        self.qsession.plan.planChanged.connect(self._plan_changed)
        self._name = None
        self.view.show_message("Select a Conv or Linear layer to see its weights.")
        self._sqnr_timer.start()

    def _plan_changed(self, _names: list[str]) -> None:
        self.refresh()
        self._sqnr_timer.start()

    def select(self, nodes: list[LayerNode]) -> None:
        """The tree's selection changed."""
        workspace = self.workspace
        if workspace is None or workspace.loaded.module is None:
            self._name = None
            self.view.show_message("The layer view reads torch weights; this model is ONNX.")
            return
        weighted = [node for node in nodes if node.prunable]
        if len(nodes) != 1 or not weighted:
            self._name = None
            self.view.show_message("Select one Conv or Linear layer to see its weights." if
                                   len(nodes) != 1 else
                                   f"{nodes[0].name or 'The model'} has no weight matrix of its "
                                   "own; select a Conv or Linear layer inside it.")
            return
        self._name = weighted[0].name
        self.refresh()

    def _key(self, name: str) -> tuple[Any, ...]:
        workspace = self.workspace
        assert workspace is not None and self.qsession.plan is not None
        spec = self.qsession.plan.resolved[workspace.tree.get(name).id]
        report = self.qsession.core.sensitivity
        return (name, spec.effective_sparsity, spec.granularity, spec.weight_bits, spec.exclude,
                id(report))

    def refresh(self) -> None:
        """Show the selected layer: from the cache, or computed (one worker at a time; the
        newest request runs when the current one finishes)."""
        if self._name is None or self.workspace is None or self.qsession.plan is None:
            return
        key = self._key(self._name)
        if key in self.cache:
            self.view.show_stats(self.cache[key])
            return
        self.view.show_message(f"Computing {self._name}…")
        if self._running is None:
            self._compute(key)

    def _compute(self, key: tuple[Any, ...]) -> None:
        workspace = self.workspace
        plan = self.qsession.plan
        assert workspace is not None and plan is not None
        name = key[0]
        spec = plan.resolved[workspace.tree.get(name).id]
        report = self.qsession.core.sensitivity
        module = workspace.loaded.module
        self._running = key

        def task() -> LayerStats:
            if self._samples is None:
                self._samples = view_samples(workspace)
            inputs, label = self._samples
            return layer_stats(module, name, spec, inputs, report, inputs_label=label)

        self.run_in_background(task, lambda stats: self._done(key, stats), self._failed,
                               f"Computing the layer view of {name}…")

    def _done(self, key: tuple[Any, ...], stats: LayerStats) -> None:
        self._running = None
        self.cache[key] = stats
        self.statsReady.emit(stats)
        self.refresh()

    def _failed(self, error: BaseException) -> None:
        self._running = None
        self.view.show_message(f"The layer view could not be computed: {error}")

    def _compute_sqnr(self) -> None:
        workspace, plan = self.workspace, self.qsession.plan
        if workspace is None or plan is None or workspace.loaded.module is None:
            self.sqnrChanged.emit({})
            return
        module, tree, resolved = workspace.loaded.module, workspace.tree, list(plan.resolved)
        self.run_in_background(lambda: sqnr_by_layer(module, tree, resolved),
                               self.sqnrChanged.emit,
                               lambda error: self.sqnrChanged.emit({}),
                               "Measuring quantization error per layer…")
