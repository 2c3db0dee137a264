"""What a run feeds an ONNX file: the data's one tensor, and for transformer exports the inputs
that follow from the token ids.

Hugging Face exports (``optimum``, ``torch.onnx`` of a ``BertModel``) take ``attention_mask``
and often ``token_type_ids`` or ``position_ids`` beside ``input_ids``. A dataset of token ids
determines all of them: the mask is 1 wherever the id is not the padding id, token types are 0
(one segment), positions count from 0. The padding id comes from the ``config.json`` that such
exports keep beside the file, else 0 (BERT's), and the run's log says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from studio.core.errors import StudioError

COMPANIONS = ("attention_mask", "token_type_ids", "position_ids")
DEFAULT_PAD_TOKEN_ID = 0


@dataclass(frozen=True)
class OnnxInput:
    """One input of an ONNX file, as the file declares it."""

    name: str
    dims: tuple[int | str, ...] | None
    """None when the file gives no shape; symbolic dims are their names (or ``?``)."""
    dtype: np.dtype


@dataclass(frozen=True)
class Feeder:
    """Turns a batch of the data's one tensor into the feed of every input of the file."""

    main: OnnxInput
    companions: tuple[OnnxInput, ...] = ()
    pad_token_id: int | None = None
    pad_source: str = ""

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.main.name: np.ascontiguousarray(batch)}
        for companion in self.companions:
            if companion.name == "attention_mask":
                value = batch != self.pad_token_id
            elif companion.name == "token_type_ids":
                value = np.zeros_like(batch)
            else:  # position_ids
                value = np.broadcast_to(np.arange(batch.shape[-1]), batch.shape)
            feed[companion.name] = np.ascontiguousarray(value.astype(companion.dtype))
        return feed

    def real_tokens(self, outputs: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Per-token ``outputs`` (batch x sequence x features) as one row per real token, so
        that every score (cosine, top-1, MSE) counts real tokens only: what a model computes
        at padding positions is never used. Other outputs are returned as they are."""
        masked = any(c.name == "attention_mask" for c in self.companions)
        if not masked or outputs.ndim < 3 or outputs.shape[:2] != batch.shape:
            return outputs
        return outputs[batch != self.pad_token_id]

    def describe(self) -> str:
        """How the companion inputs are made, for the run's log ('' when there are none)."""
        if not self.companions:
            return ""
        names = ", ".join(c.name for c in self.companions)
        return (f"{names} derived from {self.main.name} (padding id {self.pad_token_id}, "
                f"{self.pad_source}); per-token outputs are scored on real tokens only")


def graph_inputs(model: onnx.ModelProto) -> list[OnnxInput]:
    """The inputs a caller feeds (initializers listed as inputs by old exporters left out)."""
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tensor.shape.dim) if tensor.HasField("shape") else None
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except KeyError:  # not a tensor, or a type numpy lacks
            dtype = np.dtype(object)
        found.append(OnnxInput(value.name, dims, dtype))
    return found


def _pad_token_id(path: Path | None) -> tuple[int, str]:
    config = path.parent / "config.json" if path is not None else None
    if config is not None and config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("pad_token_id")
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, int):
            return value, f"from {config.name} beside the file"
    return DEFAULT_PAD_TOKEN_ID, "the default: no config.json with pad_token_id beside the file"


def feeder_for(model: onnx.ModelProto, path: Path | None = None) -> Feeder:
    """How to feed ``model`` (read from ``path``) from one tensor, or a :class:`StudioError`
    naming its inputs when they cannot all follow from one."""
    inputs = graph_inputs(model)
    name = path.name if path is not None else "the model"
    if len(inputs) == 1:
        return Feeder(inputs[0])
    main = [i for i in inputs if i.name not in COMPANIONS]
    if len(main) == 1 and np.issubdtype(main[0].dtype, np.integer):
        pad, source = _pad_token_id(path)
        return Feeder(main[0], tuple(i for i in inputs if i.name in COMPANIONS), pad, source)
    raise StudioError(
        f"{name}: runs feed the data's one input tensor; this model takes {len(inputs)} "
        f"({', '.join(i.name for i in inputs)}). Besides integer token ids, only "
        f"{', '.join(COMPANIONS)} can be derived")
