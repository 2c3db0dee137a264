"""Recipe files: the model, its example input and the plan, as YAML with a ``schema_version``.

Parsing reports every problem at once with its line number; layer names are checked against the
model's tree separately (the tree is only known once the model is open), and unknown names come
with the nearest names that do exist.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from studio.core.errors import Problem, RecipeError
from studio.core.graph.tree import LayerTree
from studio.core.models.inputs import DTYPES, InputSpec
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.spec import LayerSpec
from studio.core.plan.stages import (
    AdapterSection,
    DataSection,
    DistillSection,
    ExportSection,
    PruneSection,
    QuantizeSection,
    TrainSection,
)

SCHEMA_VERSION = 1
S = TypeVar("S", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    path: str = Field(description="model file, relative to the recipe's folder, or 'demo'")
    architecture: str | None = Field(default=None, description="package.module:factory")


class InputSection(_Section):
    shape: list[int] = Field(min_length=1)
    dtype: str = "float32"

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if any(d < 1 for d in shape):
            raise ValueError("every dimension must be a positive integer, batch first")
        return shape

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        if dtype not in DTYPES:
            raise ValueError(f"use one of {', '.join(DTYPES)}")
        return dtype

    def to_spec(self) -> InputSpec:
        return InputSpec(tuple(self.shape), self.dtype)


class PlanSection(_Section):
    defaults: LayerSpec = Field(default_factory=LayerSpec)
    layers: dict[str, LayerSpec] = Field(default_factory=dict)

    def to_plan(self) -> Plan:
        return Plan({ROOT: self.defaults, **self.layers})


class Recipe(_Section):
    schema_version: int
    model: ModelSection | None = None
    example_input: InputSection | None = None
    plan: PlanSection = Field(default_factory=PlanSection)
    data: DataSection | None = None
    train: TrainSection | None = None
    prune: PruneSection | None = None
    distill: DistillSection | None = None
    adapters: AdapterSection | None = None
    quantize: QuantizeSection | None = None
    export: ExportSection | None = None
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"this version of the studio reads schema_version {SCHEMA_VERSION}")
        return version

    @field_validator("distill")
    @classmethod
    def _distill_needs_training(cls, distill: DistillSection | None,
                                info: ValidationInfo) -> DistillSection | None:
        train = info.data.get("train")
        if distill is not None and train is not None and train.epochs == 0:
            raise ValueError("distillation trains the model, but train.epochs is 0, so it "
                             "would never run: set train.epochs to 1 or more, or remove distill")
        return distill

    @field_validator("adapters")
    @classmethod
    def _adapters_need_training(cls, adapters: AdapterSection | None,
                                info: ValidationInfo) -> AdapterSection | None:
        train = info.data.get("train")
        if adapters is not None and train is not None and train.epochs == 0:
            raise ValueError("adapters are trained during recovery, but train.epochs is 0: "
                             "set train.epochs to 1 or more, or remove adapters")
        return adapters

    def to_plan(self) -> Plan:
        return self.plan.to_plan()

    @classmethod
    def build(cls, plan: Plan, model: ModelSection | None = None,
              example: InputSpec | None = None, stages: dict[str, Any] | None = None) -> Recipe:
        """A recipe of ``plan``; ``stages`` carries the job sections (see :meth:`stages`)."""
        return cls(
            schema_version=SCHEMA_VERSION,
            model=model,
            example_input=InputSection(shape=list(example.shape), dtype=example.dtype)
            if example else None,
            plan=PlanSection(defaults=plan.spec(ROOT),
                             layers={k: v for k, v in plan.specs.items() if k != ROOT}),
            **(stages or {}),
        )

    def section(self, section: type[S]) -> S:
        """The job section of that type, or its defaults when the recipe leaves it out."""
        value = getattr(self, SECTIONS[section])
        return value if value is not None else section()

    def stages(self) -> dict[str, Any]:
        """The job sections that are set (data, train, prune, distill, quantize, export)."""
        return {key: getattr(self, key) for key in STAGE_KEYS if getattr(self, key) is not None}

    def layer_line(self, name: str) -> int | None:
        return self._lines.get(name)

    def __eq__(self, other: object) -> bool:
        """Equal content; where each layer was written in a file (``_lines``) is not content."""
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.model_dump() == other.model_dump()


STAGE_KEYS: tuple[str, ...] = tuple(
    key for key in Recipe.model_fields
    if key not in ("schema_version", "model", "example_input", "plan"))
"""The job sections (data, train, prune, distill, quantize, export), in the order ``Recipe``
declares them: a section added there is saved, autosaved and shown in the GUI's forms."""


def _section_model(key: str) -> type[BaseModel]:
    """The section model of ``Recipe.<key>`` (declared as ``Model | None``)."""
    return next(arg for arg in get_args(Recipe.model_fields[key].annotation)
                if arg is not type(None))


SECTIONS: dict[type[BaseModel], str] = {_section_model(key): key for key in STAGE_KEYS}
"""Each job section's model and its key in a recipe: the settings the pipeline's steps read."""


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node at a pydantic error location, or the deepest one that exists."""
    node = root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node or node
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node


def _key_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The key node named by the last part of ``loc``, if it is there."""
    parent = _node_at(root, loc[:-1]) if loc else None
    if not isinstance(parent, yaml.MappingNode):
        return None
    return next((k for k, _ in parent.value if k.value == str(loc[-1])), None)


def _layer_lines(root: yaml.Node | None) -> dict[str, int]:
    layers = root
    for key in ("plan", "layers"):  # exactly plan.layers, not the deepest node that exists
        if not isinstance(layers, yaml.MappingNode):
            return {}
        layers = next((v for k, v in layers.value if k.value == key), None)
    if not isinstance(layers, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in layers.value}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so ``train:`` written twice would drop the first section without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first}); keep "
                    "one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """Validate ``text``; raise :class:`RecipeError` listing each problem with its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(source, [Problem("", f"not valid YAML: {problem}", line)]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [Problem("", "expected a mapping with schema_version, model, "
                                               "example_input and plan")])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = tuple(item["loc"])
            node = _node_at(root, loc)
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            if item["type"] == "extra_forbidden" or isinstance(node, yaml.CollectionNode):
                node = _key_at(root, loc) or node  # the key's line, not its block value's
            line = node.start_mark.line + 1 if node is not None else None
            problems.append(Problem(".".join(str(p) for p in loc), message, line))
        raise RecipeError(source, problems) from None
    recipe._lines = _layer_lines(root)
    return recipe


def read_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(str(path), [Problem("", f"cannot read the file: {error}")]) from None
    return parse_recipe(text, str(path))


def dump_recipe(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json", exclude_none=True)
    if not data["plan"]["defaults"]:
        del data["plan"]["defaults"]
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def check_layer_names(recipe: Recipe, tree: LayerTree, source: str = "recipe") -> None:
    """Every layer the plan names must exist in ``tree``; suggest the nearest names if not."""
    names = tree.names()
    problems = []
    for name in recipe.plan.layers:
        if name == ROOT:
            problems.append(Problem(f"plan.layers.{name!r}", "use plan.defaults for the whole "
                                    "model", recipe.layer_line(name)))
        elif name not in tree:
            near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            problems.append(Problem(f"plan.layers.{name}", f"no layer named {name!r} in "
                                    f"{tree.model_name}{hint}", recipe.layer_line(name)))
    if problems:
        raise RecipeError(source, problems)
