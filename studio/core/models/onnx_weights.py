"""The weights of an ONNX file read lazily, so a model past 2 GB never sits whole in memory.

Files are opened with their external data left on disk (``onnx.load(load_external_data=False)``):
a tensor's size comes from its shape, its values are read from the data file in fixed-size chunks
when they are needed (zeros counted, a layer pruned, the file copied). onnx's own helpers either
read a tensor whole into the proto (``load_external_data_for_tensor``) or need every tensor in
memory to save (``save_model``), which made a 2 GB model take 6 GB; hence these few functions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from studio.core.graph.onnx_walk import all_graphs

CHUNK_BYTES = 1 << 24
"""Bytes read at a time from a data file: memory stays bounded whatever the model's size."""
_SUB_BYTE_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def tensor_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))


def tensor_shape(tensor: onnx.TensorProto) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.dims)


def tensor_bits(tensor: onnx.TensorProto) -> int:
    """Bits per element as stored (4 for int4, 32 for float32)."""
    return 4 if tensor.data_type in _SUB_BYTE_TYPES else tensor_dtype(tensor).itemsize * 8


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the values, from the shape alone (packed 4-bit types count half a byte each)."""
    return math.ceil(math.prod(tensor_shape(tensor)) * tensor_bits(tensor) / 8)


def external_span(tensor: onnx.TensorProto, data_dir: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of a tensor stored in an external data file."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    offset = int(entries.get("offset") or 0)
    length = int(entries["length"]) if entries.get("length") else tensor_nbytes(tensor)
    return data_dir / entries["location"], offset, length


def _file_chunks(path: Path, offset: int, length: int, what: str) -> Iterator[bytes | int]:
    """Bytes of ``path`` from ``offset``; a hole of a sparse file comes as its length (an
    int: that many zero bytes, never read), found with SEEK_DATA where the system has it."""
    end = offset + length
    with path.open("rb") as stream:
        position = offset
        while position < end:
            data, hole = position, end
            if hasattr(os, "SEEK_DATA"):
                try:
                    data = min(os.lseek(stream.fileno(), position, os.SEEK_DATA), end)
                    hole = min(os.lseek(stream.fileno(), data, os.SEEK_HOLE), end)
                except OSError:  # ENXIO: only a hole is left up to the end of the file
                    data = end
            if data > position:
                yield data - position
                position = data
                continue
            stream.seek(position)
            chunk = stream.read(min(CHUNK_BYTES, max(hole, position + 1) - position))
            if not chunk:
                raise ValueError(f"{path.name} ends before the bytes of {what}")
            position += len(chunk)
            yield chunk


def data_chunks(tensor: onnx.TensorProto, data_dir: Path | None) -> Iterator[bytes | int]:
    """The tensor's little-endian bytes in chunks of at most :data:`CHUNK_BYTES`; an int
    stands for that many zero bytes (a hole of a sparse data file)."""
    if not uses_external_data(tensor):
        raw = tensor.raw_data if tensor.HasField("raw_data") else \
            numpy_helper.to_array(tensor).tobytes()
        for start in range(0, len(raw), CHUNK_BYTES):
            yield raw[start:start + CHUNK_BYTES]
        return
    if data_dir is None:
        raise ValueError(f"tensor {tensor.name!r} is stored outside the file; its folder is "
                         "needed to read it")
    path, offset, length = external_span(tensor, data_dir)
    yield from _file_chunks(path, offset, length, f"tensor {tensor.name!r}")


def count_zeros(tensor: onnx.TensorProto, data_dir: Path | None) -> int:
    """Elements equal to zero, read chunk by chunk (packed 4-bit types: not counted, 0)."""
    if tensor.data_type in _SUB_BYTE_TYPES or tensor.data_type == onnx.TensorProto.STRING:
        return 0
    dtype = tensor_dtype(tensor)
    if not uses_external_data(tensor) and not tensor.HasField("raw_data"):
        array = numpy_helper.to_array(tensor)
        return int(array.size - np.count_nonzero(array))
    zeros, carry = 0, b""  # carry: the bytes of an element split between two chunks
    for chunk in data_chunks(tensor, data_dir):
        if isinstance(chunk, int):  # a hole: zero bytes, counted without reading them
            if carry:
                take = min(dtype.itemsize - len(carry), chunk)
                carry, chunk = carry + bytes(take), chunk - take
                if len(carry) < dtype.itemsize:
                    continue
                zeros += 1 - int(np.count_nonzero(np.frombuffer(carry, dtype=dtype)))
            whole, rest = divmod(chunk, dtype.itemsize)
            zeros, carry = zeros + whole, bytes(rest)
            continue
        chunk = carry + chunk
        usable = len(chunk) - len(chunk) % dtype.itemsize
        values = np.frombuffer(chunk[:usable], dtype=dtype)
        zeros += int(values.size - np.count_nonzero(values))
        carry = chunk[usable:]
    return zeros


def read_array(tensor: onnx.TensorProto, data_dir: Path | None) -> np.ndarray:
    """The whole tensor as an array (one tensor, not the model, in memory)."""
    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    raw = b"".join(bytes(c) if isinstance(c, int) else c for c in data_chunks(tensor, data_dir))
    return np.frombuffer(raw, dtype=tensor_dtype(tensor)).reshape(tensor_shape(tensor))


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of every graph (subgraphs included) whose values live in a data file."""
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            if uses_external_data(tensor):
                yield tensor
