"""What a loader hands back: the model, where it came from, and how to trace it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import nn

from studio.core.models.inputs import InputSpec

DEMO = "demo"


@dataclass(frozen=True)
class Capabilities:
    """What the studio can do with a loaded model, so that the faces ask it rather than test
    which of ``module`` and ``onnx_model`` is set."""

    backend: str
    """``torch`` or ``onnx``: which run backend carries out its recipes."""
    can_train: bool
    """Fine-tuning, distillation, QAT and Taylor importance (need autograd on a module)."""
    can_sweep: bool
    """Sensitivity sweeps (change one layer at a time on a copy of the module)."""
    traces_example: bool
    """Its tree's shapes and MACs come from running an example input (without one they are
    empty); an ONNX file declares its own."""


TORCH = Capabilities("torch", can_train=True, can_sweep=True, traces_example=True)
ONNX = Capabilities("onnx", can_train=False, can_sweep=False, traces_example=False)


@dataclass
class LoadedModel:
    """A model opened from a file: exactly one of ``module`` and ``onnx_model`` is set."""

    name: str
    path: Path
    format: str
    """One of: safetensors, state_dict, pickled_module, torch_export, onnx, huggingface,
    gguf."""
    module: nn.Module | None = None
    onnx_model: onnx.ModelProto | None = None
    """The graph; weights kept in external data stay on disk, read relative to ``path.parent``
    (pass that folder as ``data_dir`` to save, repair, prune or build the tree of it)."""
    architecture: str | None = None
    example: InputSpec | None = None
    """Example input found in the file itself (metadata, export signature, ONNX inputs)."""
    type_names: dict[str, str] = field(default_factory=dict)
    """Original class names of modules whose classes the file format does not keep."""
    metadata: dict[str, str] = field(default_factory=dict)
    trusted: bool = False
    """Opened with the user's trust, running code from the file (a pickled module, or a
    ``.pt2`` through ``torch.export.load``): a job opening it again needs that trust too."""

    @property
    def capabilities(self) -> Capabilities:
        return TORCH if self.module is not None else ONNX
