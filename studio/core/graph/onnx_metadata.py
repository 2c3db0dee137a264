"""The torch exporter's per-node scope metadata, read so that a bad value is simply absent.

``pkg.torch.onnx.name_scopes`` and ``pkg.torch.onnx.class_hierarchy`` hold Python list literals
(``['', 'stem', 'stem.0']``). A file may hold anything there: another type (``"5"``,
``[0, 1, 2]``), deep nesting that overflows the parser, or megabytes that ``ast.literal_eval``
would turn into gigabytes of syntax tree. Such values are ignored, so the node is grouped by
its name as for any other exporter.
"""

from __future__ import annotations

import ast

import onnx

from studio.core.limits import MAX_METADATA_CHARS

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
MAX_SCOPE_DEPTH = 256
"""Deepest scope nesting taken from metadata (real models nest a few dozen levels)."""


def string_list(text: str | None) -> list[str] | None:
    """The list of strings ``text`` spells, or None when it is absent, too long, or not a list
    of strings."""
    if text is None or len(text) > MAX_METADATA_CHARS:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def scope_metadata(node: onnx.NodeProto) -> tuple[list[str], list[str]] | None:
    """(scopes, classes) the exporter recorded for ``node``, outermost first and without the
    root and the node itself; None when it recorded no usable scopes."""
    texts = {prop.key: prop.value for prop in node.metadata_props
             if prop.key in (SCOPES_KEY, CLASSES_KEY)}
    scopes = string_list(texts.get(SCOPES_KEY))
    if scopes is None or len(scopes) > MAX_SCOPE_DEPTH:
        return None
    classes = string_list(texts.get(CLASSES_KEY)) or []
    return scopes[1:-1], classes[1:-1]
