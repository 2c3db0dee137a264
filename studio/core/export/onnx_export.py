"""Export a torch model to one ONNX file, atomically, with node names that keep module scopes.

The TorchScript exporter (``dynamo=False``) is used on purpose: it is fast (~0.1 s for the demo
against ~1-4 s for dynamo) and names every node after its module (``/res/conv2/Conv``), which is
how :func:`studio.core.graph.onnx_tree.build_onnx_tree` maps ONNX nodes back to torch layers.
A model whose ``onnx_exporter`` attribute says ``dynamo`` (causal LMs: TorchScript fails on their
mask code) goes through ``torch.onnx.export(dynamo=True)`` at opset 18 or more instead; its
nodes carry their module scopes in metadata and its weights keep their parameter names.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import onnx
import torch
from google.protobuf.message import EncodeError
from onnx.external_data_helper import uses_external_data
from torch import Tensor, nn

from studio.core.atomic import write_bytes_atomic
from studio.core.errors import StudioError
from studio.core.graph.onnx_walk import all_graphs, subgraphs
from studio.core.models.onnx_weights import data_chunks, external_tensors, tensor_nbytes

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DYNAMO_OPSET = 18
"""The lowest opset the dynamo exporter converts to without a version conversion pass."""
_SINGLE_FILE_LIMIT = 2**31 - 2**24
"""Protobuf cannot serialise 2 GiB; keep a margin for the graph around the tensors."""


def _as_tuple(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)


def input_names(count: int) -> list[str]:
    """``input`` for one input, ``input_0``, ``input_1``... for several."""
    return [INPUT_NAME] if count == 1 else [f"{INPUT_NAME}_{i}" for i in range(count)]


def external_data_files(path: str | Path) -> list[Path]:
    """The external data files an ONNX file refers to (none for a single-file model)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / location for location in sorted(locations)]


def onnx_file_bytes(path: str | Path) -> int:
    """Bytes on disk of the model file plus every external data file it uses."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path)
                                     if f.exists())


def _consolidate(exported: Path, external: bool) -> list[Path]:
    """Leave ``exported`` single-file, or with one ``<name>.data`` beside it when ``external``.

    The TorchScript exporter writes one file per tensor when a model passes 2 GB; those names
    could collide with other files in the target folder, so they are merged into one file.
    """
    folder = exported.parent
    written = [p for p in folder.iterdir() if p != exported]
    if not external and not written:
        return []
    model = onnx.load(str(exported))  # loads any external tensors from the temporary folder
    for stray in written:
        stray.unlink()
    data_name = f"{exported.name}.data"
    onnx.save_model(model, str(exported), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
    return [folder / data_name] if (folder / data_name).exists() else []


def _single_file_size(model: onnx.ModelProto) -> int | None:
    """Bytes of ``model`` as one file; None when it cannot be one (external tensors, or past
    the protobuf limit, where ``ByteSize`` itself raises)."""
    if next(external_tensors(model), None) is not None:
        return None
    try:
        size = model.ByteSize()
    except EncodeError:
        return None
    return size if size < _SINGLE_FILE_LIMIT else None


def _write_tensor(stream: BinaryIO, tensor: onnx.TensorProto, data_dir: Path | None) -> int:
    """Append the tensor's bytes at a 4 KiB boundary; zero chunks are skipped (left as holes),
    so a sparse data file stays sparse. Returns the offset."""
    offset = -(-stream.tell() // 4096) * 4096
    stream.seek(offset)
    for chunk in data_chunks(tensor, data_dir):
        if isinstance(chunk, int) or chunk.count(0) == len(chunk):
            stream.seek(chunk if isinstance(chunk, int) else len(chunk), os.SEEK_CUR)
        else:
            stream.write(chunk)
    return offset


def _stub(tensor: onnx.TensorProto, location: str, offset: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                            doc_string=tensor.doc_string)
    stub.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(tensor_nbytes(tensor)))):
        stub.external_data.add(key=key, value=value)
    return stub


def _save_with_data_file(model: onnx.ModelProto, target: Path, data_dir: Path | None) -> None:
    """``target`` plus ``target.data`` holding every weight over 1 KiB, the weights streamed
    one at a time (from the source data file, or from memory): ``model`` is not changed."""
    location = f"{target.name}.data"
    out = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                          producer_version=model.producer_version, domain=model.domain,
                          model_version=model.model_version, doc_string=model.doc_string)
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    graph, source = out.graph, model.graph
    for name in ("node", "input", "output", "value_info", "quantization_annotation",
                 "sparse_initializer"):
        getattr(graph, name).extend(getattr(source, name))
    graph.name, graph.doc_string = source.name, source.doc_string
    with (target.parent / location).open("wb") as stream:
        for tensor in source.initializer:
            if uses_external_data(tensor) or tensor_nbytes(tensor) > 1024:
                graph.initializer.append(_stub(tensor, location,
                                               _write_tensor(stream, tensor, data_dir)))
            else:
                graph.initializer.append(tensor)
        # Weights inside If/Loop/Scan bodies came with their nodes; those kept on disk move
        # into the new data file too.
        for tensor in (t for sub in subgraphs(graph) for g in all_graphs(sub)
                       for t in g.initializer if uses_external_data(t)):
            tensor.CopyFrom(_stub(tensor, location, _write_tensor(stream, tensor, data_dir)))
        stream.truncate(stream.tell())
    write_bytes_atomic(target, out.SerializeToString())


def save_onnx(model: onnx.ModelProto, path: str | Path, data_dir: Path | None = None) -> Path:
    """Write ``model`` atomically: one file below 2 GB, else ``path`` + ``path.data``.

    ``data_dir`` is the folder the model's external data is read from (it was opened with its
    data left on disk); such a model is always written with a data file. Weights are copied one
    at a time, so memory stays bounded, and ``model`` is left as it was.
    """
    path = Path(path)
    if _single_file_size(model) is not None:
        write_bytes_atomic(path, model.SerializeToString())
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise StudioError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        target = scratch / path.name
        _save_with_data_file(model, target, data_dir)
        os.replace(scratch / f"{path.name}.data", path.parent / f"{path.name}.data")
        os.replace(target, path)
    except (OSError, ValueError) as error:
        raise StudioError(f"cannot write {path}: {error}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def remove_onnx(path: str | Path) -> None:
    """Delete an ONNX file this run wrote, with the data file :func:`save_onnx` gave it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(f"{path.name}.data").unlink(missing_ok=True)


def _is_tokens(tensor: Tensor) -> bool:
    """Token ids: a rank-2 integer tensor (batch × sequence)."""
    return tensor.dim() == 2 and not tensor.is_floating_point() and tensor.dtype != torch.bool


def dynamic_axes(model: nn.Module, inputs: tuple[Tensor, ...], names: list[str]
                 ) -> dict[str, dict[int, str]]:
    """Batch axes of every input and the output; token inputs (and an output that keeps their
    sequence axis, such as hidden states) also get a free sequence axis, so one file serves
    every sentence length."""
    axes: dict[str, dict[int, str]] = {}
    lengths = set()
    for name, tensor in zip(names, inputs, strict=True):
        axes[name] = {0: "batch"}
        if _is_tokens(tensor):
            axes[name][1] = "sequence"
            lengths.add(int(tensor.shape[1]))
    axes[OUTPUT_NAME] = {0: "batch"}
    if lengths:
        with torch.no_grad():
            output = model(*inputs)
        if isinstance(output, Tensor) and output.dim() >= 3 and int(output.shape[1]) in lengths:
            axes[OUTPUT_NAME][1] = "sequence"
    return axes


def _export_dynamo(model: nn.Module, inputs: tuple[Tensor, ...], target: Path, opset: int,
                   names: list[str], axes: dict[str, dict[int, str]] | None) -> None:
    """``torch.onnx.export(dynamo=True)`` with the free axes of ``axes``. The example batch is
    doubled when it is 1: torch.export fixes a dimension it sees at size 1."""
    from torch.export import Dim

    if axes is not None:
        inputs = tuple(t.repeat(2, *[1] * (t.dim() - 1)) if t.shape[0] == 1 else t
                       for t in inputs)
        shapes = tuple({axis: Dim(f"{label}_{index}" if label != "batch" else label,
                                  min=2 if label == "sequence" else 1)
                        for axis, label in axes[name].items()}
                       for index, name in enumerate(names))
    chatter = logging.getLogger("torch.onnx")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # "torchvision is not installed" for each of its ops
    try:
        program = torch.onnx.export(
            model, inputs, dynamo=True, opset_version=max(opset, DYNAMO_OPSET),
            input_names=names, output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes if axes is not None else None, external_data=False,
            optimize=True, verbose=False)
    finally:
        chatter.setLevel(level)
    save_program(program, model, target)


def save_program(program: object, model: nn.Module, target: Path) -> None:
    """Save what ``torch.onnx.export(dynamo=True)`` returned, weights outside the file only
    when they would pass protobuf's 2 GB."""
    if program is None:
        raise StudioError("the dynamo exporter returned no program")
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    program.save(str(target), external_data=weights > _SINGLE_FILE_LIMIT)  # type: ignore[attr-defined]


def export_onnx(model: nn.Module, example_inputs: Tensor | Sequence[Tensor], path: str | Path,
                opset: int = 17, dynamic_batch: bool = True,
                external_data: bool | None = None, constant_folding: bool = True) -> Path:
    """Export ``model`` (in eval mode) to ``path`` and return it.

    The file is written in a private temporary folder beside ``path`` and renamed into place,
    so a failed export never leaves a half-written file or temporary files behind. The model is
    one file unless it passes 2 GB (or ``external_data`` is True); then it is ``path`` plus one
    ``path.data``. With ``dynamic_batch`` the first axis of every input and output is free, and
    so is the sequence axis of token-id inputs (rank-2 integers), see :func:`dynamic_axes`.
    ``constant_folding=False`` keeps ops on constants (QAT keeps its weight QuantizeLinear,
    which folding would collapse into a float weight).
    """
    path = Path(path)
    inputs = _as_tuple(example_inputs)
    names = input_names(len(inputs))
    was_training = model.training
    try:
        with writing_onnx(path, bool(external_data)) as target:
            model.eval()
            try:
                axes = dynamic_axes(model, inputs, names) if dynamic_batch else None
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # TorchScript's exporter warns it is deprecated
                    if getattr(model, "onnx_exporter", None) == "dynamo":
                        _export_dynamo(model, inputs, target, opset, names, axes)
                    else:
                        torch.onnx.export(model, inputs, str(target), dynamo=False,
                                          opset_version=opset, input_names=names,
                                          output_names=[OUTPUT_NAME], dynamic_axes=axes,
                                          do_constant_folding=constant_folding)
            except OSError:
                raise
            except Exception as error:  # the exporter raises many types; all mean one thing
                message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                raise StudioError(
                    f"cannot export {type(model).__name__} to ONNX (opset {opset}): {message}"
                ) from error
    finally:
        model.train(was_training)
    return path


@contextmanager
def writing_onnx(path: Path, external_data: bool = False) -> Iterator[Path]:
    """A private path in a temporary folder beside ``path`` to export to; when the block ends
    without error the file (with its data file, first) is renamed into place, so a failed
    export never leaves a half-written file or temporary files behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise StudioError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        target = scratch / path.name
        try:
            yield target
        except OSError as error:  # a full or read-only disk while the exporter writes
            raise StudioError(f"cannot write {path}: {error.strerror or error}; "
                              "the previous file is unchanged") from error
        data_files = _consolidate(target, external_data)
        for data in data_files:  # data first: the model file never points at missing data
            os.replace(data, path.parent / data.name)
        os.replace(target, path)
    except OSError as error:
        raise StudioError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
