"""Feeds the layer view: computes the selected layer's statistics in a worker thread, one at a
time, caches them by (layer, its resolved settings, sensitivity report), and keeps the tree's
SQNR column up to date after plan edits (also in a worker; edits that arrive while it runs are
folded into one more run, so a slider drag costs two runs, not one per step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal
from shiboken6 import isValid
from superqt.utils import create_worker

from studio.core.engine.layer_stats import LayerStats, layer_stats, sqnr_by_layer, view_samples
from studio.core.graph.tree import LayerNode
from studio.core.workspace import Workspace
from studio.qt.plots.layer_view import LayerView
from studio.qt.session import QtSession


class LayerViewController(QObject):
    statsReady = Signal(object)
    """A :class:`LayerStats` was computed (shown if its layer is still the selected one)."""
    sqnrChanged = Signal(dict)
    """Layer name -> SQNR in dB at its planned bits, for the tree's SQNR column."""

    def __init__(self, qsession: QtSession, view: LayerView,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.qsession, self.view = qsession, view
        self._workers: set[Any] = set()
        self.cache: dict[tuple[Any, ...], LayerStats] = {}
        self._name: str | None = None
        self._running: tuple[Any, ...] | None = None
        self._samples: tuple[Any, str] | None = None
        self._sqnr_running = self._sqnr_again = False
        qsession.opened.connect(self._opened)
        qsession.sensitivityChanged.connect(lambda _report: self.refresh())
        qsession.historyLoaded.connect(self.refresh)

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    def _in_background(self, task: Callable[[], Any], done: Callable[[Any], None],
                       failed: Callable[[BaseException], None]) -> None:
        """Run ``task`` in a pool thread. Its results are queued to the GUI thread, which may
        deliver them after the window is gone (the window waits for the pool on close, not
        for the queue): then they are dropped. The view says "Computing…" itself, so the
        status bar is left to the user's own actions."""
        worker = create_worker(task, _start_thread=False, _connect={
            "returned": lambda value: isValid(self) and done(value),
            "errored": lambda error: isValid(self) and failed(error)})
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()

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
        self._compute_sqnr()

    def _plan_changed(self, _names: list[str]) -> None:
        self.refresh()
        self._compute_sqnr()

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

        self._in_background(task, lambda stats: self._done(key, stats), self._failed)

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
        if self._sqnr_running:
            self._sqnr_again = True
            return
        if workspace is None or plan is None or workspace.loaded.module is None or not any(
                spec.weight_bits not in (None, "fp32") and not spec.exclude
                for spec in plan.resolved):
            self.sqnrChanged.emit({})  # nothing quantized: no worker needed
            return
        module, tree, resolved = workspace.loaded.module, workspace.tree, list(plan.resolved)
        self._sqnr_running = True

        def finished(values: dict[str, float]) -> None:
            self._sqnr_running = False
            if self._sqnr_again:
                self._sqnr_again = False
                self._compute_sqnr()
            else:
                self.sqnrChanged.emit(values)

        def failed(_error: BaseException) -> None:
            finished({})

        self._in_background(lambda: sqnr_by_layer(module, tree, resolved), finished, failed)
