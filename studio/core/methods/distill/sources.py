"""Open the teachers a recipe names: the uncompressed model, other model files through the
studio's own loader (so the same trust rules hold: no code from a file runs without the job's
trust), or ONNX files run in onnxruntime."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from studio.core.errors import ArchitectureConsentRequired, StudioError
from studio.core.methods.distill.teachers import OnnxTeacher, Teacher, TorchTeacher, freeze
from studio.core.models.factory import is_built_in
from studio.core.models.loader import open_model

ORIGINAL = "original"


def open_teacher(path: str, original: nn.Module, feature_names: Sequence[str] = (),
                 architecture: str | None = None, trust: bool = False,
                 base_dir: Path | None = None, name: str = "teacher") -> Teacher:
    """A frozen teacher from ``path`` (``original``: a copy of the uncompressed model).

    ``trust`` is the job's trust in model files (never the recipe's say-so): without it a
    pickled module is refused, and so is an architecture outside the studio's registry."""
    if path == ORIGINAL:
        return TorchTeacher(freeze(copy.deepcopy(original)), feature_names, name)
    file = Path(path).expanduser()
    if not file.is_absolute() and base_dir is not None:
        file = base_dir / file
    if architecture is not None and not trust and not is_built_in(architecture):
        raise ArchitectureConsentRequired(file, architecture)
    loaded = open_model(file, architecture, trust)
    if loaded.onnx_model is not None:
        return OnnxTeacher(loaded.path, loaded.onnx_model, feature_names)
    if loaded.module is None:
        raise StudioError(f"{file}: holds no model to teach with")
    return TorchTeacher(freeze(loaded.module), feature_names, f"{name} {file.name}")
