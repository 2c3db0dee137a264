"""What runs a model: the torch backend (a module that can be trained and traced) or the ONNX
backend (a graph that onnxruntime runs; nothing can be trained). The pipeline asks the backend
to open the data, write and measure files, and time them; steps say what they need
(:class:`Need`) and run only where the backend provides it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from studio.core.export.measure import Feed
from studio.core.jobs import Event
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need
from studio.core.reports.run_report import Figures


class Backend(Protocol):
    name: str
    """``torch`` or ``onnx``: the report's ``source_format``."""
    provides: frozenset[Need]
    device: str
    seed: int | None
    reference: Any
    """The uncompressed model's outputs on the test split, once the baseline is known: what
    agreement metrics compare with."""

    def open(self, context: RunContext) -> Iterator[Event]:
        """Check the model and the settings, load the data (``context.data``) and check it fits,
        and put a working copy of the model in ``context.model``."""

    def write_baseline(self, context: RunContext, path: Path) -> Figures:
        """Write the prepared model as ONNX at ``path`` and measure it."""

    def measure(self, context: RunContext, path: Path) -> Figures:
        """Figures of the compressed file at ``path``, against the baseline."""

    def latency_feeds(self, context: RunContext) -> dict[int, Feed]:
        """Batch size -> inputs to time both files on."""

    def write_weights(self, context: RunContext) -> list[Path]:
        """Write the compressed model's own weights (not ONNX) into ``context.out_dir``, where
        the backend has any; returns the files written."""
