"""Read a ``torch.export`` archive (``.pt2``) without running anything stored in it.

``torch.export.load`` trusts the archive: it fully unpickles weights and constants saved with
``use_pickle``, custom and opaque objects, the legacy ``.pt`` weight files and, when the safe load
fails, the ``sample_inputs`` record; it evaluates symbolic shape expressions with
``sympy.sympify`` (Python ``eval``); it turns any ``torch.*`` attribute named as a node's target
(``torch.os.system``) into a call that runs with the model; and it loads AOTInductor libraries.
This reader walks the archive itself with torch's record reader: pickled records are read with
``weights_only=True`` (or, when they need more, the user must trust the file), expressions and
node targets are checked before torch's deserializer sees them, sample inputs that are not plain
tensors are dropped (the studio never uses them), and declared tensor sizes are checked before
anything is allocated. Hand-written because torch has no safe mode for these archives.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sympy
import torch
import torch.utils._sympy.functions as torch_sympy
from torch._export.serde import schema
from torch._export.serde.serialize import (
    _SYM_OPS,
    ExportedProgramDeserializer,
    _dict_to_dataclass,
    deserialize_scalar_type,
    deserialize_size,
    deserialize_storage_offset,
    deserialize_stride,
)
from torch.export import ExportedProgram
from torch.export.pt2_archive._package import PT2ArchiveReader, _build_file_map
from torch.export.pt2_archive.constants import (
    ARCHIVE_VERSION_PATH,
    ARCHIVE_VERSION_VALUE,
    CONSTANTS_CONFIG_FILENAME_FORMAT,
    CONSTANTS_DIR,
    MODELS_FILENAME_FORMAT,
    SAMPLE_INPUTS_FILENAME_FORMAT,
    TENSOR_CONSTANT_FILENAME_PREFIX,
    WEIGHTS_CONFIG_FILENAME_FORMAT,
    WEIGHTS_DIR,
)

from studio.core.errors import ModelLoadError, TrustRequired
from studio.core.limits import check_declared_bytes
from studio.core.models.unpickle import load_weights_only

MODEL_NAME = "model"
"""The program ``torch.export.save`` writes and ``torch.export.load`` returns."""
_TARGET_ROOTS = (("_operator", operator), ("torch", torch), ("math", math))
"""Where torch's deserializer looks a node's target up, by prefix, in its order."""
_SAFE_OPERATOR_TYPES = (torch._ops.OpOverload, torch._ops.OpOverloadPacket,
                        torch._ops.HigherOrderOperator)


def read_exported_program(path: Path) -> ExportedProgram:
    """The program in ``path``; :class:`TrustRequired` when reading it would need full pickle."""
    reader = PT2ArchiveReader(str(path))
    if reader.read_string(ARCHIVE_VERSION_PATH) != ARCHIVE_VERSION_VALUE:
        raise ModelLoadError(f"{path}: a torch.export archive of another version; export it "
                             "again with this torch")
    names = set(reader.get_file_names())
    model_file = MODELS_FILENAME_FORMAT.format(MODEL_NAME)
    if model_file not in names:
        raise ModelLoadError(f"{path}: a .pt2 archive without an exported program")
    raw = json.loads(reader.read_bytes(model_file))
    _check_program(path, raw)
    program = _dict_to_dataclass(schema.ExportedProgram, raw)
    state_dict = _read_payloads(path, reader, names, WEIGHTS_CONFIG_FILENAME_FORMAT, WEIGHTS_DIR)
    constants = _read_payloads(path, reader, names, CONSTANTS_CONFIG_FILENAME_FORMAT,
                               CONSTANTS_DIR)
    sample_inputs = _read_sample_inputs(reader, names)
    return ExportedProgramDeserializer().deserialize(program, state_dict, constants,
                                                     sample_inputs)


# --- the program: what it calls and which expressions it evaluates --------------------------

def _walk(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``value``, nested graphs included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_program(path: Path, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: the exported program is not a JSON object")
    for item in _walk(raw):
        target = item.get("target")
        if isinstance(target, str) and not _is_operator(target):
            raise TrustRequired(path, f"its graph calls {target!r}, which is not a torch "
                                      "operator")
        expression = item.get("expr_str")
        if isinstance(expression, str) and not _is_plain_expression(expression):
            raise TrustRequired(path, f"a shape expression in it is Python code "
                                      f"({expression[:60]!r})")


def _is_operator(target: str) -> bool:
    """What torch's deserializer would resolve ``target`` to is an operator, not any callable
    reachable from ``torch`` (``torch.os.system``, ``torch.save``...). It resolves by prefix
    (``torchX.os.system`` is ``torch.os.system``), so this does too. Unresolved names and
    ``#``-extension ops stay names or registered handlers: torch refuses or handles those."""
    root = next((module for prefix, module in _TARGET_ROOTS if target.startswith(prefix)), None)
    if root is None:
        return True
    resolved: Any = root
    for name in target.split(".")[1:]:
        if not hasattr(resolved, name):
            return True
        resolved = getattr(resolved, name)
    return isinstance(resolved, _SAFE_OPERATOR_TYPES) or any(resolved is op for op in _SYM_OPS)


def _is_sympy_class(name: str) -> bool:
    for namespace in (sympy, torch_sympy):
        value = getattr(namespace, name, None)
        if isinstance(value, type) and issubclass(value, sympy.Basic):
            return True
    return False


_PLAIN_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.keyword, ast.UnaryOp,
                ast.BinOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop,
                ast.boolop, ast.Call)


def _is_plain_expression(text: str) -> bool:
    """A sympy expression as ``srepr`` writes it (``Mul(Integer(2), Symbol('s0'))``): calls of
    sympy classes on constants and names; no attribute, subscript, lambda or other function,
    since ``sympy.sympify`` evaluates the text as Python."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _PLAIN_NODES):
            return False
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                               and _is_sympy_class(node.func.id)):
            return False
    return True


# --- weights, constants and sample inputs -----------------------------------------------------

def _read_payloads(path: Path, reader: PT2ArchiveReader, names: set[str], config_format: str,
                   folder: str) -> dict[str, Any]:
    legacy = f"{folder}{MODEL_NAME}.pt"
    if legacy in names:
        loaded = load_weights_only(io.BytesIO(reader.read_bytes(legacy)), path, legacy)
        if not isinstance(loaded, dict):
            raise ModelLoadError(f"{path}: {legacy} holds no dict of tensors")
        return loaded
    config_file = config_format.format(MODEL_NAME)
    if config_file not in names:
        raise ModelLoadError(f"{path}: the archive lacks {config_file}")
    config = _dict_to_dataclass(schema.PayloadConfig, json.loads(reader.read_string(config_file)))
    _check_payload_sizes(path, config)
    flat = _build_file_map(reader, config, folder)  # skips pickled records
    payloads: dict[str, Any] = {}
    for fqn, meta in config.config.items():
        record = os.path.join(folder, meta.path_name)
        if folder == CONSTANTS_DIR and not meta.path_name.startswith(
                TENSOR_CONSTANT_FILENAME_PREFIX):
            raise TrustRequired(path, f"constant {fqn!r} is a pickled Python object")
        if meta.use_pickle:
            payloads[fqn] = load_weights_only(io.BytesIO(reader.read_bytes(record)), path,
                                              record)
            continue
        tensor_meta = meta.tensor_meta
        tensor = torch.as_strided(flat[meta.path_name], deserialize_size(tensor_meta.sizes),
                                  deserialize_stride(tensor_meta.strides),
                                  deserialize_storage_offset(tensor_meta.storage_offset))
        payloads[fqn] = (torch.nn.Parameter(tensor, requires_grad=tensor_meta.requires_grad)
                         if meta.is_param else tensor)
    return payloads


def _check_payload_sizes(path: Path, config: schema.PayloadConfig) -> None:
    """A record of zero bytes becomes ``torch.zeros`` of its declared sizes: bound them."""
    declared = 0
    for meta in config.config.values():
        if meta.use_pickle or meta.tensor_meta is None:
            continue
        sizes = deserialize_size(meta.tensor_meta.sizes)
        dtype = deserialize_scalar_type(meta.tensor_meta.dtype)
        declared += math.prod(sizes) * torch._utils._element_size(dtype)
    check_declared_bytes(path, declared, "its tensors")


def _read_sample_inputs(reader: PT2ArchiveReader, names: set[str]) -> Any:
    """The example inputs saved with the program when they load as plain tensors; otherwise
    none (torch would unpickle them fully; the studio never needs them)."""
    record = SAMPLE_INPUTS_FILENAME_FORMAT.format(MODEL_NAME)
    if record not in names:
        return None
    try:
        loaded = torch.load(io.BytesIO(reader.read_bytes(record)), weights_only=True)
    except Exception:
        return None
    return loaded if isinstance(loaded, tuple) else None
