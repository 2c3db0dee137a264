"""What a loader hands back: the model, where it came from, and how to trace it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import nn

from studio.core.models.inputs import InputSpec

DEMO = "demo"


@dataclass
class LoadedModel:
    """A model opened from a file: exactly one of ``module`` and ``onnx_model`` is set."""

    name: str
    path: Path
    format: str
    """One of: safetensors, state_dict, pickled_module, torch_export, onnx."""
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
