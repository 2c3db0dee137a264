"""Teachers as one interface: a frozen torch module, an ONNX file run in onnxruntime, or either
behind a cache. The KD loss asks a teacher for its outputs on a batch and never cares which.

Each call returns the teacher's scores (its first output) and the intermediate features the
feature pairs name: module outputs for a torch teacher (forward hooks), tensors picked by name
for an ONNX teacher (exposed as extra graph outputs).
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.export.measure import ort_session
from studio.core.methods.distill.features import FeatureCapture
from studio.core.models.onnx_feeds import feeder_for
from studio.core.util import first_tensor


class TeacherOutput(NamedTuple):
    logits: Tensor
    features: dict[str, Tensor]


class Teacher(Protocol):
    """What the KD loss needs from a teacher."""

    name: str
    feature_names: tuple[str, ...]

    def __call__(self, inputs: Tensor) -> TeacherOutput: ...

    def close(self) -> None: ...


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher must never change, batch-norm statistics included."""
    model.eval()
    model.requires_grad_(False)
    return model


class TorchTeacher:
    """A frozen torch module; ``feature_names`` are module names captured with hooks."""

    def __init__(self, module: nn.Module, feature_names: Iterable[str] = (),
                 name: str = "teacher") -> None:
        self.module = freeze(module)
        self.name = name
        self.feature_names = tuple(dict.fromkeys(feature_names))
        self._capture = FeatureCapture(module, self.feature_names, name)

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> TeacherOutput:
        self._capture.clear()
        self.module.eval()  # a parent's .train() must not switch batch norm to batch stats
        logits = first_tensor(self.module(inputs))
        if logits is None:
            raise StudioError(f"the {self.name} returned no tensor")
        features = {n: self._capture[n] for n in self.feature_names}
        self._capture.clear()
        return TeacherOutput(logits, features)

    def close(self) -> None:
        self._capture.close()


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    return [out for node in model.graph.node for out in node.output if out]


def expose_outputs(model: onnx.ModelProto, names: Iterable[str], source: str
                   ) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the intermediate tensors ``names``, so
    onnxruntime hands them back (it keeps no intermediate values otherwise)."""
    wanted = list(dict.fromkeys(names))
    produced = _tensor_names(model)
    missing = [n for n in wanted if n not in produced]
    if missing:
        hints = [f"{n!r} (did you mean {', '.join(repr(c) for c in close)}?)" if (
            close := difflib.get_close_matches(n, produced, n=3)) else repr(n) for n in missing]
        raise StudioError(f"{source}: the ONNX teacher has no tensor named "
                          f"{', '.join(hints)}; name a node output of its graph")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in wanted:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


class OnnxTeacher:
    """An ONNX file run in onnxruntime: a teacher the user has only as an exported file.

    Its first output is the scores; ``feature_names`` are intermediate tensors of its graph.
    Frozen by nature (no autograd), so its outputs always come as new float tensors."""

    def __init__(self, path: Path, model: onnx.ModelProto, feature_names: Iterable[str] = (),
                 threads: int = 2) -> None:
        self.name = f"ONNX teacher {path.name}"
        self.path = path
        self.feature_names = tuple(dict.fromkeys(feature_names))
        self._feeder = feeder_for(model, path)
        first_output = model.graph.output[0].name
        graph = expose_outputs(model, self.feature_names, self.name)
        self._outputs = [first_output, *self.feature_names]
        try:
            self._session = _session(graph, path.parent, threads)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise StudioError(f"{self.name}: onnxruntime cannot run it: {error}") from error

    def __call__(self, inputs: Tensor) -> TeacherOutput:
        rows = inputs.detach().cpu().numpy().astype(self._feeder.main.dtype, copy=False)
        try:
            values = self._session.run(self._outputs, self._feeder(rows))
        except Exception as error:
            raise StudioError(f"{self.name}: onnxruntime failed on inputs of shape "
                              f"{list(rows.shape)}: {error}") from error
        tensors = [torch.from_numpy(np.ascontiguousarray(v)).to(inputs.device) for v in values]
        return TeacherOutput(tensors[0], dict(zip(self.feature_names, tensors[1:], strict=True)))

    def close(self) -> None:
        self._session = None


def _session(model: onnx.ModelProto, data_dir: Path, threads: int) -> object:
    """A session on ``model`` (saved to a temporary file for :func:`ort_session`); weights kept
    as external data are read from ``data_dir``, the original file's folder."""
    if any(init.data_location == onnx.TensorProto.EXTERNAL
           for init in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(data_dir))
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "teacher.onnx"
        onnx.save(model, str(file))
        return ort_session(file, threads)
