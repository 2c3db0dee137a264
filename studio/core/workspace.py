"""An open model with its layer tree and plan: what the GUI edits and the CLI inspects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.errors import ArchitectureConsentRequired, InputError
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.roles import DECODER_BLOCK
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.graph.tree import LayerTree
from studio.core.methods.pruning.structured import channel_groups
from studio.core.models.factory import is_built_in
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import DEMO, LoadedModel
from studio.core.models.loader import open_model
from studio.core.plan.estimate import Estimate, estimate
from studio.core.plan.plan import Plan, ResolvedSpec
from studio.core.plan.recipe import ModelSection, Recipe, check_layer_names


def build_tree(loaded: LoadedModel, example: InputSpec | None) -> LayerTree:
    """Layer tree of a loaded model; torch models are traced on ``example`` when given, ONNX
    models have their shapes inferred for it."""
    if loaded.capabilities.backend == "onnx":
        return build_onnx_tree(loaded.onnx_model, loaded.name, example, loaded.path.parent)
    tree = build_torch_tree(loaded.module, example, loaded.name, loaded.type_names)
    # Causal LMs: channel settings leave decoder blocks whole, and Torch-Pruning's group
    # enumeration did not end on a tiny LLaMA or GPT-2, so their groups are not traced.
    if example is not None and not any(node.role == DECODER_BLOCK for node in tree.nodes):
        _trace_channel_groups(tree, loaded, example)
    return tree


def _trace_channel_groups(tree: LayerTree, loaded: LoadedModel, example: InputSpec) -> None:
    """Give the tree the groups structured pruning cuts together, so the plan's estimate uses
    them; a model Torch-Pruning cannot trace keeps None (the estimate then says so)."""
    try:
        tree.channel_groups = channel_groups(loaded.module, example.make_tensor())
    except Exception as error:  # the tracer meets arbitrary user code
        tree.notes.append(f"Coupled layers could not be traced ({type(error).__name__}); "
                          "channel-pruning estimates treat each layer alone.")


def portable_path(path: str, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies inside it, so a project folder can move."""
    if path == DEMO or base is None:
        return path
    resolved = Path(path).resolve()
    return str(resolved.relative_to(base.resolve())) if resolved.is_relative_to(
        base.resolve()) else str(resolved)


def resolve_path(path: str, base: Path | None) -> str:
    """Inverse of :func:`portable_path`: relative paths are read from ``base``."""
    if path == DEMO or base is None or Path(path).expanduser().is_absolute():
        return str(Path(path).expanduser()) if path != DEMO else path
    return str((base / path).resolve())


@dataclass
class Workspace:
    loaded: LoadedModel
    tree: LayerTree
    example: InputSpec | None
    model_path: str
    """As the user named it: a file path or ``demo``."""
    plan: Plan = field(default_factory=Plan)
    stages: dict[str, Any] = field(default_factory=dict)
    """Job sections of the recipe or project this came from, kept when it is saved again."""

    @property
    def architecture(self) -> str | None:
        return self.loaded.architecture

    def estimate(self, resolved: list[ResolvedSpec] | None = None) -> Estimate:
        """The plan's estimate with this workspace's quantize settings (``resolved``: the plan
        already resolved on the tree, to save resolving it again)."""
        return estimate(self.tree, resolved if resolved is not None else
                        self.plan.resolve(self.tree), self.stages.get("quantize"))

    def to_recipe(self, base: Path | None = None) -> Recipe:
        """This workspace as a recipe whose model path is relative to ``base``."""
        model = ModelSection(path=portable_path(self.model_path, base),
                             architecture=self.architecture)
        return Recipe.build(self.plan, model, self.example, self.stages)

    def apply_recipe_plan(self, recipe: Recipe, source: str = "recipe") -> None:
        """Replace the plan by the recipe's, once its layer names are checked against the tree."""
        check_layer_names(recipe, self.tree, source)
        self.plan = recipe.to_plan()


def open_workspace(path: str, architecture: str | None = None, trust: bool = False,
                   example: InputSpec | None = None) -> Workspace:
    """Load ``path`` and build its tree; ``example`` overrides the file's own example input."""
    loaded = open_model(path, architecture, trust)
    chosen = example or loaded.example
    return Workspace(loaded, build_tree(loaded, chosen), chosen, path)


def _recipe_architecture(named: str | None, trust: bool, source: str) -> str | None:
    """The factory a recipe or project names, if it may be called: a registered one, or any
    when the user trusts the file (CLI ``--trust``, the window's prompt). A project folder sent
    by someone else is a file like a model file; its ``architecture`` is their choice of code."""
    if named is None or trust or is_built_in(named):
        return named
    raise ArchitectureConsentRequired(Path(source), named)


def open_recipe_workspace(recipe: Recipe, base: Path | None, trust: bool = False,
                          source: str = "recipe", architecture: str | None = None
                          ) -> Workspace:
    """Open the model a recipe (or project) names, with its example input and plan;
    ``architecture``: one the user named (CLI ``--arch``, the window's consent), used instead
    of the recipe's."""
    if recipe.model is None:
        raise ValueError("recipe has no model section")
    example = recipe.example_input.to_spec() if recipe.example_input else None
    architecture = architecture or _recipe_architecture(recipe.model.architecture, trust, source)
    try:
        workspace = open_workspace(resolve_path(recipe.model.path, base), architecture, trust,
                                   example)
    except InputError as error:
        if example is None:
            raise
        raise InputError(f"{source}: example_input: {error}") from error
    workspace.model_path = resolve_path(recipe.model.path, base)
    workspace.apply_recipe_plan(recipe, source)
    workspace.stages = recipe.stages()
    return workspace
