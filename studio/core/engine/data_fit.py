"""Does the data fit the model? Checked before a run does any work, and by the studio's Check
Data button, with one message naming both shapes when it does not.

A torch model is simply run on two samples (any sequence length a transformer takes fits); an
ONNX file's declared inputs are compared with the samples, symbolic dims matching any size.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from studio.core.data.metrics import check_top1_fits
from studio.core.data.task import TaskData, model_inputs
from studio.core.errors import InputError, StudioError
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import LoadedModel
from studio.core.models.onnx_feeds import Feeder, OnnxInput, feeder_for, graph_outputs
from studio.core.util import first_tensor


def check_one_input(data: TaskData) -> None:
    """A torch model takes the data's one input tensor: named inputs and constants, which
    feed an ONNX file's inputs by name, are refused rather than silently left out."""
    if data.input_names or data.constants:
        given = ", ".join([*data.input_names, *data.constants])
        raise InputError(f"data: named inputs and constants ({given}) feed an ONNX file's "
                         "inputs by name; a torch model takes the data's one input tensor. "
                         "Give one inputs_key, or open the model's ONNX file")


def token_vocabulary(model: nn.Module) -> tuple[str, int] | None:
    """(what, size) of the table token ids index: a Hugging Face model's input embeddings, or
    else the first ``nn.Embedding`` in the model (what a hand-written language model uses)."""
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter):
            with contextlib.suppress(NotImplementedError, AttributeError):
                embedding = getter()
                if isinstance(embedding, nn.Embedding):
                    return "the model's vocabulary", embedding.num_embeddings
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            return f"embedding {name!r}", module.num_embeddings
    return None


def onnx_token_vocabulary(model: onnx.ModelProto, input_name: str) -> tuple[str, int] | None:
    """(what, size) of the embedding table an ONNX file's ``Gather`` reads with its input's
    token ids (an export's word embeddings), when a weight of the graph is that table."""
    tables = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1:2] == [input_name] \
                and node.input[0] in tables and tables[node.input[0]].dims:
            return f"embedding {node.input[0]!r}", int(tables[node.input[0]].dims[0])
    return None


def input_vocabulary(loaded: LoadedModel) -> tuple[str, int] | None:
    """The vocabulary the model's token ids index, for a torch or an ONNX model; None when
    its input is not token ids, the table is not found, or an ONNX file takes several inputs
    that are not a transformer's (those are fed by name)."""
    if loaded.module is not None:
        return token_vocabulary(loaded.module)
    if loaded.onnx_model is None:
        return None
    try:
        main = feeder_for(loaded.onnx_model, loaded.path).main.name
    except StudioError:
        return None
    return onnx_token_vocabulary(loaded.onnx_model, main)


def check_token_range(data: TaskData, vocabulary: tuple[str, int]) -> None:
    """Integer inputs are token ids: any outside ``0..size-1`` of the ``vocabulary`` (what,
    size) is named (the model itself would fail with an index error that reads like a wrong
    shape)."""
    splits = {"training": data.train, "test": data.test, "calibration": data.calibration}
    if data.test.tensors[0].is_floating_point():
        return
    what, size = vocabulary

    def outside(ids: torch.Tensor) -> torch.Tensor:
        return (ids < 0) | (ids >= size)

    found = [(name, dataset.tensors[0]) for name, dataset in splits.items()
             if bool(outside(dataset.tensors[0]).any())]
    if not found:
        return
    bad = torch.cat([ids[outside(ids)] for _, ids in found]).unique()
    split, ids = found[0]
    sample = int(outside(ids).reshape(len(ids), -1).any(1).nonzero()[0, 0])
    shown = ", ".join(str(int(i)) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
    raise InputError(f"data: token ids must lie in 0..{size - 1} ({what} holds {size} tokens), "
                     f"but the data holds {len(bad)} id(s) out of range: {shown} (the first in "
                     f"{split} sample {sample}); check that the tokenizer matches the model")


@torch.no_grad()
def check_torch_data(model: nn.Module, data: TaskData, example: InputSpec
                     ) -> tuple[int | str, ...]:
    """Run two test samples through the model before any work, so data of the wrong shape or
    labels the model has no output for fail at once with a message naming both; the shape of
    its first output (batch dim ``"N"``) is what settles ``metric: auto``."""
    check_one_input(data)
    vocabulary = token_vocabulary(model)
    if vocabulary is not None:
        check_token_range(data, vocabulary)
    inputs = data.test.tensors[0][:2]
    shape = f"[N, {', '.join(str(d) for d in inputs.shape[1:])}] ({str(inputs.dtype)[6:]})"
    expects = f"{list(example.shape)} ({example.dtype})"
    was_training = model.training
    model.eval()
    try:
        output = first_tensor(model(inputs))
    except Exception as error:
        raise InputError(f"data: the data gives inputs of shape {shape} but the model expects "
                         f"{expects}: {type(error).__name__}: {error}") from None
    finally:
        model.train(was_training)
    if output is None:
        raise InputError("data: the model returned no tensor on the data's inputs")
    classes = data.num_classes if data.metric == "accuracy" else None
    if classes is not None and (output.dim() < 2 or output.shape[-1] < classes):
        raise InputError(f"data: labels run up to {classes - 1} but the model gives outputs "
                         f"of shape {list(output.shape)}, not a score for each of {classes} "
                         "classes; check the labels, or set labelled: false to measure "
                         "agreement instead")
    return ("N", *output.shape[1:])


def _shape(dims: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def feeder_for_data(model: onnx.ModelProto, path: Path, data: TaskData) -> Feeder:
    """How ``data`` feeds the file's inputs (see :func:`feeder_for`), checked before any work:
    every input given, of the shape and type the file declares (:func:`check_onnx_data`), token
    ids inside the vocabulary the file's embedding ``Gather`` reads, and a top-1 metric asked
    only of class scores."""
    feeder = feeder_for(model, path, data.input_names, data.constants)
    check_onnx_data(data, feeder, path)
    vocabulary = None if data.input_names else onnx_token_vocabulary(model, feeder.main.name)
    if vocabulary is not None:
        check_token_range(data, vocabulary)
    outputs = graph_outputs(model)
    if data.metric == "top1_agreement" and outputs and outputs[0].dims is not None:
        check_top1_fits(outputs[0].name, outputs[0].dims, len(outputs), path.name)
    return feeder


def _check_input(inputs: Tensor, feed: OnnxInput, data: TaskData, path: Path) -> None:
    sample = tuple(inputs.shape[1:])
    if feed.dims is not None:
        expected = feed.dims[1:]
        fits = len(expected) == len(sample) and all(
            not isinstance(d, int) or d == s for d, s in zip(expected, sample, strict=True))
        if not fits:
            raise InputError(f"{path.name}: its input {feed.name!r} has shape "
                             f"{_shape(feed.dims)} (first dim: batch), but the data "
                             f"({data.name}) gives samples of shape {_shape(sample)}")
    given = np.dtype(str(inputs.dtype).removeprefix("torch."))
    if given != feed.dtype:
        raise InputError(f"{path.name}: its input {feed.name!r} takes {feed.dtype}, but the data "
                         f"({data.name}) holds {given}")


def check_onnx_data(data: TaskData, feeder: Feeder, path: Path) -> None:
    """Each input the data's samples feed must fit the file's (batch first), or
    :class:`InputError` naming the input and both shapes."""
    inputs = model_inputs(data.test)
    by_name = inputs if isinstance(inputs, dict) else {feeder.main.name: inputs}
    for feed in feeder.per_sample:
        _check_input(by_name[feed.name], feed, data, path)


def check_data_fits(loaded: LoadedModel, example: InputSpec | None, data: TaskData
                    ) -> tuple[str, tuple[int | str, ...]] | None:
    """:class:`InputError` naming both shapes when ``data`` cannot feed the model (a torch model
    is run on it when its ``example`` input is known); else the name and shape of the model's
    first output where known (the file declares it, or the torch model ran), for
    ``metric: auto``."""
    if loaded.capabilities.backend == "onnx":
        feeder_for_data(loaded.onnx_model, loaded.path, data)
        declared = graph_outputs(loaded.onnx_model)[:1]
        known = [(out.name, out.dims) for out in declared
                 if out.dims is not None and all(isinstance(d, int) for d in out.dims[1:])]
        return known[0] if known else None  # else a run reads it from its first batch
    if example is not None:
        return "output", check_torch_data(loaded.module, data, example)
    return None
