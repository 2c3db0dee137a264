"""Load an ONNX file, with its external data only from inside the model's own folder.

External data stays on disk: the loaded model holds the graph and the references, the values
are read where needed (:mod:`studio.core.models.onnx_weights`), so a model past 2 GB costs its
graph in memory, not its weights (onnx's ``load_external_data_for_model`` took them whole, and
the tree and the checks copies of them, 3x in all).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from studio.core.errors import ModelLoadError, StudioError
from studio.core.limits import MAX_METADATA_CHARS
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import LoadedModel
from studio.core.models.onnx_feeds import graph_inputs
from studio.core.models.onnx_repair import constant_value
from studio.core.models.onnx_weights import external_span, external_tensors, tensor_nbytes

_EXAMPLE_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "bool"}


def _check_external_data(path: Path, model: onnx.ModelProto) -> None:
    """Every data file inside the model's folder, present, and long enough for its tensors."""
    folder = path.parent.resolve()
    for tensor in external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: refers to external data {location!r} outside its own folder; "
                "refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: its weights are stored in {location!r}, which is missing; "
                "keep the data file next to the model"
            )
        try:
            _, offset, length = external_span(tensor, folder)
        except ValueError as error:
            raise ModelLoadError(f"{path}: weight {tensor.name!r} has a damaged external data "
                                 f"entry ({error}); export it again") from error
        if length != tensor_nbytes(tensor) or offset < 0 or \
                offset + length > target.stat().st_size:
            raise ModelLoadError(
                f"{path}: weight {tensor.name!r} does not fit in {location!r} (bytes "
                f"{offset}-{offset + length} of {target.stat().st_size}, shape "
                f"{list(tensor.dims)}); the data file is cut short or damaged, export it again")


def example_from_graph(model: onnx.ModelProto) -> InputSpec | None:
    """The first fed input (see :func:`graph_inputs`), a free batch dim taken as 1; None when
    another dim is free (an image size, a sequence length): guessing 1 there made a detector's
    MACs 0, so the user gives the example instead."""
    inputs = graph_inputs(model)
    if not inputs or not inputs[0].dims or str(inputs[0].dtype) not in _EXAMPLE_DTYPES:
        return None
    if any(not isinstance(d, int) or d <= 0 for d in inputs[0].dims[1:]):
        return None
    dims = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].dims)
    return InputSpec(dims, str(inputs[0].dtype))


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The first dim of the first graph input when the file fixes it (many exporters write
    batch 1), None when it is free; a fixed batch must be fed exactly that many samples."""
    inputs = graph_inputs(model)
    first = inputs[0].dims[0] if inputs and inputs[0].dims else None
    return first if isinstance(first, int) and first > 0 else None


def _check_initializers(path: Path, model: onnx.ModelProto) -> None:
    """Every weight must decode to its declared shape (a damaged file can parse as protobuf),
    those held in Constant nodes included."""
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            continue  # checked against its data file's size
        try:
            numpy_helper.to_array(tensor)  # a view of raw_data: cheap
        except Exception as error:  # onnx/numpy raise several types on inconsistent tensors
            raise ModelLoadError(
                f"{path}: weight {tensor.name!r} is damaged ({type(error).__name__}: {error}); "
                "the file is corrupt, export it again"
            ) from error
    for node in model.graph.node:
        if node.op_type == "Constant":
            try:
                constant_value(node)
            except StudioError as error:
                raise ModelLoadError(f"{path}: {error}") from error


def _drop_oversized_metadata(model: onnx.ModelProto) -> None:
    """Drop metadata values and doc strings longer than :data:`MAX_METADATA_CHARS`. The studio
    reads none of that size (scope lists are short), and each later copy of the model (shape
    inference, an onnxruntime session, quantization) would copy megabytes of it again."""
    def oversized(text: str) -> bool:
        return len(text) > MAX_METADATA_CHARS

    for holder in (model, model.graph, *model.graph.node):
        if oversized(holder.doc_string):
            holder.doc_string = ""
    for holder in (model, *model.graph.node):
        kept = [(p.key, p.value) for p in holder.metadata_props
                if not oversized(p.key) and not oversized(p.value)]
        if len(kept) != len(holder.metadata_props):
            del holder.metadata_props[:]
            for key, value in kept:
                holder.metadata_props.add(key=key, value=value)


def load_onnx(path: Path) -> LoadedModel:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        raise ModelLoadError(
            f"{path}: not a readable ONNX file (truncated or corrupt?): {error}"
        ) from error
    if not model.graph.node:
        raise ModelLoadError(f"{path}: parsed as ONNX but holds no graph nodes; is it ONNX?")
    _drop_oversized_metadata(model)
    _check_external_data(path, model)
    _check_initializers(path, model)
    name = model.graph.name or path.stem
    return LoadedModel(name=name if name != "main_graph" else path.stem, path=path,
                       format="onnx", onnx_model=model, example=example_from_graph(model))
