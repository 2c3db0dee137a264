"""What a settings form needs to know about a recipe section, read from its pydantic schema:
each field's kind, limits, choices, default and help text.

The GUI generates its forms from this, the CLI validates recipes with the same models, so a new
section of :class:`~studio.core.plan.recipe.Recipe` or a new field of a section shows up in the
recipe format, the CLI and the window without a hand-written form.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel

from studio.core.plan.recipe import STAGE_KEYS, Recipe

Kind = Literal["bool", "choice", "int", "float", "text", "section", "table", "value"]
"""``section``: a nested model (a group of fields); ``table``: a list of models (rows);
``value``: anything else (tuples, lists of numbers), edited as YAML text."""


@dataclass(frozen=True)
class FieldForm:
    name: str
    label: str
    kind: Kind
    help: str
    default: Any
    """``None`` also for a required field (it has none)."""
    optional: bool
    """``None`` is a valid value (an empty entry means "not set")."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """``low`` itself is refused (``gt``), not allowed (``ge``)."""
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    model: type[BaseModel] | None = None
    """The nested model of a ``section`` or the row model of a ``table``."""
    many: bool = False
    """A list or tuple ``value``: one item typed alone means a list of one."""


def label_of(name: str) -> str:
    """``latency_batch`` → ``Latency batch``; ``lr`` and ``qat`` become initials (a field's
    ``title`` overrides this)."""
    text = name.replace("_", " ")
    return text.upper() if len(text) <= 3 else text[0].upper() + text[1:]


def model_help(model: type[BaseModel]) -> str:
    """The model's own docstring (not one inherited from a base class), whitespace folded."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split())


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind(annotation: Any) -> tuple[Kind, tuple[Any, ...], type[BaseModel] | None]:
    if annotation is bool:
        return "bool", (), None
    if get_origin(annotation) is Literal:
        return "choice", get_args(annotation), None
    if annotation is int:
        return "int", (), None
    if annotation is float:
        return "float", (), None
    if annotation is str:
        return "text", (), None
    if _is_model(annotation):
        return "section", (), annotation
    if get_origin(annotation) is list and len(get_args(annotation)) == 1 \
            and _is_model(get_args(annotation)[0]):
        return "table", (), get_args(annotation)[0]
    return "value", (), None


def section_fields(model: type[BaseModel]) -> list[FieldForm]:
    """One :class:`FieldForm` per field of ``model``, in declaration order."""
    forms = []
    for name, info in model.model_fields.items():
        annotation, optional = _unwrap_optional(info.annotation)
        kind, choices, nested = _kind(annotation)
        limits: dict[str, Any] = {}
        for item in info.metadata:
            if isinstance(item, annotated_types.Ge):
                limits.update(low=item.ge)
            elif isinstance(item, annotated_types.Gt):
                limits.update(low=item.gt, low_open=True)
            elif isinstance(item, annotated_types.Le):
                limits.update(high=item.le)
            elif isinstance(item, annotated_types.Lt):
                limits.update(high=item.lt, high_open=True)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        help_text = " ".join((info.description or "").split())
        forms.append(FieldForm(name, info.title or label_of(name), kind, help_text, default,
                               optional, choices=choices, model=nested,
                               many=get_origin(annotation) in (list, tuple), **limits))
    return forms


def job_sections() -> dict[str, type[BaseModel]]:
    """The recipe's job sections (data, train, prune, …) and their models, as ``Recipe``
    declares them."""
    sections = {}
    for key in STAGE_KEYS:
        model, _optional = _unwrap_optional(Recipe.model_fields[key].annotation)
        sections[key] = model
    return sections


def is_opt_in(model: type[BaseModel]) -> bool:
    """Whether the section's presence switches its step on (see ``_Section.opt_in``)."""
    return bool(getattr(model, "opt_in", False))
