"""The typed state of one run, handed to the backend and to every step in turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from studio.core.data.task import TaskData
from studio.core.graph.tree import LayerTree
from studio.core.jobs import CancelToken
from studio.core.plan.ort_rules import QuantPlan
from studio.core.plan.recipe import Recipe
from studio.core.workspace import Workspace

if TYPE_CHECKING:  # the backend module imports this one
    from studio.core.pipeline.backend import Backend

S = TypeVar("S", bound=BaseModel)


@dataclass
class RunContext:
    """``model`` is the working copy the steps change (an ``nn.Module`` or an
    ``onnx.ModelProto``, as the backend holds it); the workspace's model is never changed."""

    workspace: Workspace
    recipe: Recipe
    """The settings: the recipe's sections (with a device given on the command line)."""
    backend: Backend
    out_dir: Path
    model_path: Path
    """Where the compressed file goes; the step that writes it (the quantize step) sets
    ``compressed`` once it is there."""
    token: CancelToken
    source: str
    data: TaskData | None = None
    model: Any = None
    stages: dict[str, Any] = field(default_factory=dict)
    """Each step's report under its name, in the order the steps ran."""
    notes: list[str] = field(default_factory=list)
    after_step: Callable[[int], None] | None = None
    """Called after each training step (keeps pruned weights at zero, or prunes gradually)."""
    sparse_layers: int = 0
    """Layers left holding zeros stored densely (unstructured or N:M)."""
    quantized: bool = False
    quant_plan: QuantPlan | None = None
    """The quantization plan the quantize step carried out, and the ONNX tree it was made
    for (``quant_tree``): what the drop advice names."""
    quant_tree: LayerTree | None = None
    base_dir: Path | None = None
    """Where the recipe's relative paths start (other model files it names)."""
    trust_models: bool = False
    """The job's trust in model files (JobSpec / CLI ``--trust``): other model files the
    recipe names, distillation teachers, may run code only with it."""
    adapters: Any = None
    """The adapters attached for recovery (``AttachedAdapters``) until they are merged."""

    def settings(self, section: type[S]) -> S:
        """The recipe's section of that type, or its defaults when the recipe leaves it out."""
        return self.recipe.section(section)

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def task(self) -> TaskData:
        if self.data is None:
            raise RuntimeError("the backend has not loaded the data yet")
        return self.data
