"""What a step is: one method applied to the working model, with the settings it reads, what it
needs, when it applies, and the report it leaves.

A step is a class with the attributes and methods of :class:`Step` (subclass it for the
defaults). :meth:`Step.run` is a generator: it yields events and checks the cancel token; the
value it returns is its stage report, which the pipeline stores under ``report.stages[name]``
(``None``: nothing to report). Notes for the user go through ``context.note``.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from studio.core.jobs import Event
from studio.core.plan.recipe import Recipe

if TYPE_CHECKING:  # the context names the steps' backend; only for type hints
    from studio.core.pipeline.context import RunContext
    from studio.core.workspace import Workspace


class Need(enum.Enum):
    """What a step cannot do without; a backend provides some of them."""

    TORCH = "the torch module"
    ONNX = "the ONNX graph"
    LABELS = "labels"
    GPU = "a GPU"


class Phase(enum.Enum):
    PREPARE = "prepare"
    """Runs before the baseline is measured: the baseline is the prepared model (a repaired
    ONNX file), so what follows is compared with what it started from."""
    COMPRESS = "compress"


StageReport = dict[str, Any] | None


class Step:
    """Defaults for a step; subclasses set the class attributes and :meth:`run`."""

    name: ClassVar[str]
    """Its key in ``report.stages`` and its name in the log."""
    settings: ClassVar[type[BaseModel] | None] = None
    """The recipe section holding its settings (a pydantic model with limits and help)."""
    needs: ClassVar[frozenset[Need]] = frozenset()
    phase: ClassVar[Phase] = Phase.COMPRESS

    def asks_for(self, recipe: Recipe) -> list[str]:
        """The recipe's settings that call for this step, in words: a backend that cannot run
        it refuses the recipe before any work, naming them."""
        return []

    def refuses(self, workspace: Workspace, recipe: Recipe) -> list[str]:
        """Why this model cannot do what the recipe asks of this step, checked before any
        work (empty when it can)."""
        return []

    def applies(self, context: RunContext) -> bool:
        return True

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        """Yield events; return the stage report."""
        raise NotImplementedError
