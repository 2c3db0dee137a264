"""What a run feeds an ONNX file: the data's one tensor or its named inputs, constant inputs
given in the recipe, and for transformer exports the inputs that follow from the token ids.

A file taking several inputs that are not a transformer's (a recurrent model's ``input``,
``state`` and ``sr``) is fed from data arrays named like its inputs, one row per sample, and
from constants fed alike with every batch; every input must be given exactly once, and a
missing or unknown one is named beside the file's inputs and what the data gives.

Hugging Face exports (``optimum``, ``torch.onnx`` of a ``BertModel``) take ``attention_mask``
and often ``token_type_ids`` or ``position_ids`` beside ``input_ids``. A dataset of token ids
determines all of them: the mask is 1 wherever the id is not the padding id, token types are 0
(one segment), positions count from 0. The padding id comes from the ``config.json`` that such
exports keep beside the file, else 0 (BERT's), and the run's log says which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


Batch = np.ndarray | Mapping[str, np.ndarray]
"""Rows of the data's inputs: its one tensor, or every named input (see :class:`Feeder`)."""


@dataclass(frozen=True)
class Feeder:
    """Turns a batch of the data's inputs into the feed of every input of the file.

    A batch is the rows of the data's one tensor (fed to ``main``), or a mapping of named
    per-sample inputs (``main`` and ``named``); ``constants`` are fed as they are with every
    batch, and ``companions`` are derived from ``main`` (token ids)."""

    main: OnnxInput
    companions: tuple[OnnxInput, ...] = ()
    pad_token_id: int | None = None
    pad_source: str = ""
    named: tuple[OnnxInput, ...] = ()
    """Per-sample inputs besides ``main`` that the data gives by name."""
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Inputs fed the same value with every batch, already of the file's declared type."""

    @property
    def per_sample(self) -> tuple[OnnxInput, ...]:
        """The inputs the data's rows feed: ``main`` first, then the named ones."""
        return (self.main, *self.named)

    def main_rows(self, batch: Batch) -> np.ndarray:
        """The rows of ``main`` in ``batch`` (what companions and real tokens follow from)."""
        return batch[self.main.name] if isinstance(batch, Mapping) else batch

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = dict(batch) if isinstance(batch, Mapping) else {self.main.name: batch}
        main = rows[self.main.name]
        feed = {name: np.ascontiguousarray(value) for name, value in rows.items()}
        feed |= self.constants
        for companion in self.companions:
            if companion.name == "attention_mask":
                value = main != self.pad_token_id
            elif companion.name == "token_type_ids":
                value = np.zeros_like(main)
            else:  # position_ids
                value = np.broadcast_to(np.arange(main.shape[-1]), main.shape)
            feed[companion.name] = np.ascontiguousarray(value.astype(companion.dtype))
        return feed

    def real_tokens(self, outputs: np.ndarray, batch: Batch) -> np.ndarray:
        """Per-token ``outputs`` (batch x sequence x features) as one row per real token, so
        that every score (cosine, top-1, MSE) counts real tokens only: what a model computes
        at padding positions is never used. Other outputs are returned as they are."""
        batch = self.main_rows(batch)
        masked = any(c.name == "attention_mask" for c in self.companions)
        if not masked or outputs.ndim < 3 or outputs.shape[:2] != batch.shape:
            return outputs
        return outputs[batch != self.pad_token_id]

    def describe(self) -> str:
        """How the inputs besides the data's one tensor are fed, for the run's log ('' when
        there are none)."""
        parts = []
        if self.named:
            parts.append(f"{', '.join(i.name for i in self.per_sample)} from the data's "
                         "arrays of the same names")
        if self.constants:
            parts.append("constant " + ", ".join(f"{name} = {_short(value)}"
                                                 for name, value in self.constants.items()))
        if self.companions:
            names = ", ".join(c.name for c in self.companions)
            parts.append(f"{names} derived from {self.main.name} (padding id "
                         f"{self.pad_token_id}, {self.pad_source}); per-token outputs are "
                         "scored on real tokens only")
        return "; ".join(parts)


def _short(value: np.ndarray) -> str:
    return str(value.tolist()) if value.size <= 4 else f"an array of shape {list(value.shape)}"


def _declared(value: onnx.ValueInfoProto) -> OnnxInput:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in tensor.shape.dim) if tensor.HasField("shape") else None
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except KeyError:  # not a tensor, or a type numpy lacks
        dtype = np.dtype(object)
    return OnnxInput(value.name, dims, dtype)


def graph_inputs(model: onnx.ModelProto) -> list[OnnxInput]:
    """The inputs a caller feeds (initializers listed as inputs by old exporters left out)."""
    initializers = {t.name for t in model.graph.initializer}
    return [_declared(value) for value in model.graph.input if value.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[OnnxInput]:
    """The outputs the file gives, as it declares them."""
    return [_declared(value) for value in model.graph.output]


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


def _constant(value: np.ndarray, feed: OnnxInput, name: str) -> np.ndarray:
    """``value`` as ``feed`` declares it: its type, and its rank when the file gives one."""
    if feed.dtype.kind not in "biuf":
        raise StudioError(f"{name}: input {feed.name!r} takes {feed.dtype}, which a constant "
                          "cannot give")
    cast = value.astype(feed.dtype)
    if not np.array_equal(cast, value):
        raise StudioError(f"{name}: constant {feed.name} = {_short(value)} does not fit its "
                          f"type {feed.dtype}")
    if feed.dims is not None and cast.ndim != len(feed.dims):
        if cast.size == 1 and all(d == 1 for d in feed.dims if isinstance(d, int)):
            cast = cast.reshape((1,) * len(feed.dims))
        else:
            raise StudioError(f"{name}: constant {feed.name} has shape {list(cast.shape)}, "
                              f"but the input takes shape {list(feed.dims)}")
    return cast


_HOW = ("Name an .npz array per input (data: inputs_key: [a, b]) or give it in data: "
        f"constants (only {', '.join(COMPANIONS)} follow from token ids)")


def _given(named: Sequence[str], constants: Mapping[str, np.ndarray]) -> str:
    parts = [f"arrays {', '.join(named)}" if named else "one input tensor"]
    if constants:
        parts.append(f"constants {', '.join(constants)}")
    return " and ".join(parts)


def feeder_for(model: onnx.ModelProto, path: Path | None = None, named: Sequence[str] = (),
               constants: Mapping[str, np.ndarray] | None = None) -> Feeder:
    """How to feed ``model`` (read from ``path``) from the data: its one tensor, or the
    per-sample inputs ``named`` (the file's input names; the first is the main one), plus
    ``constants``. A :class:`StudioError` names the file's inputs and what the data gives when
    one is unknown, or missing and cannot be derived."""
    constants = dict(constants or {})
    inputs = graph_inputs(model)
    by_name = {i.name: i for i in inputs}
    name = path.name if path is not None else "the model"
    takes = f"{name}: takes {len(inputs)} inputs ({', '.join(by_name)})"
    given = _given(named, constants)
    unknown = [n for n in (*named, *constants) if n not in by_name]
    if unknown:
        raise StudioError(f"{takes}, and the data gives {given}: the file has no input named "
                          f"{', '.join(unknown)}")
    fed = {n: _constant(value, by_name[n], name) for n, value in constants.items()}
    left = [i for i in inputs if i.name not in fed and i.name not in named]
    if named:
        main, others = by_name[named[0]], tuple(by_name[n] for n in named[1:])
    else:  # the data's one tensor: the one input left, or token ids beside derivable ones
        mains = left if len(left) == 1 else [i for i in left if i.name not in COMPANIONS]
        if len(mains) != 1:
            raise StudioError(f"{takes}, and the data gives {given}: one tensor cannot "
                              f"feed {', '.join(i.name for i in left) or 'no input'}. {_HOW}")
        main, others = mains[0], ()
        left.remove(main)
    derivable = np.issubdtype(main.dtype, np.integer)
    companions = tuple(i for i in left if derivable and i.name in COMPANIONS)
    missing = [i.name for i in left if i not in companions]
    if missing:
        raise StudioError(f"{takes}, and the data gives {given}; missing: "
                          f"{', '.join(missing)}. {_HOW}")
    if not companions:
        return Feeder(main, named=others, constants=fed)
    pad, source = _pad_token_id(path)
    return Feeder(main, companions, pad, source, named=others, constants=fed)
