"""Recipe files: YAML with a schema_version, errors that name the key and the line."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.core.errors import RecipeError, StudioError
from studio.core.models.inputs import InputSpec
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.recipe import (
    ModelSection,
    Recipe,
    check_layer_names,
    dump_recipe,
    parse_recipe,
    read_recipe,
)
from studio.core.plan.spec import LayerSpec


def _text(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def _problems(text: str) -> list:
    with pytest.raises(RecipeError) as raised:
        parse_recipe(_text(text), "my.yaml")
    assert isinstance(raised.value, StudioError)
    assert str(raised.value).startswith("my.yaml: ")
    return raised.value.problems


def _line_of(text: str, fragment: str) -> int:
    """1-based number of the line of ``text`` that contains ``fragment``."""
    lines = _text(text).splitlines()
    (number,) = [i + 1 for i, line in enumerate(lines) if fragment in line]
    return number


GOOD = """
    schema_version: 1
    model:
      path: models/net.safetensors
      architecture: mypkg.models:build_net
    example_input:
      shape: [1, 3, 32, 32]
    plan:
      defaults:
        weight_bits: int8
        sparsity: 0.3
      layers:
        res.conv1:
          granularity: "2:4"
        head:
          exclude: true
"""


def test_a_good_recipe():
    recipe = parse_recipe(_text(GOOD))
    assert recipe.model == ModelSection(path="models/net.safetensors",
                                        architecture="mypkg.models:build_net")
    assert recipe.example_input.to_spec() == InputSpec((1, 3, 32, 32))
    plan = recipe.to_plan()
    assert plan == Plan({ROOT: LayerSpec(weight_bits="int8", sparsity=0.3),
                         "res.conv1": LayerSpec(granularity="2:4"),
                         "head": LayerSpec(exclude=True)})
    assert recipe.layer_line("res.conv1") == _line_of(GOOD, "res.conv1:")
    assert recipe.layer_line("head") == _line_of(GOOD, "head:")
    assert recipe.layer_line("model") is None


def test_layer_lines_only_come_from_plan_layers():
    for text in ("schema_version: 1\n", "schema_version: 1\nplan:\n  defaults: {}\n"):
        recipe = parse_recipe(text)
        assert recipe.layer_line("schema_version") is None
        assert recipe.layer_line("defaults") is None
        assert recipe == Recipe.build(Plan())


def test_round_trip_from_a_plan():
    plan = Plan({ROOT: LayerSpec(weight_bits="int4", act_bits="int8"),
                 "res": LayerSpec(sparsity=0.5, granularity="channels"),
                 "res.conv2": LayerSpec(exclude=True),
                 "head.2": LayerSpec(granularity="1:4")})
    recipe = Recipe.build(plan, ModelSection(path="demo"), InputSpec((2, 1, 28, 28)))
    text = dump_recipe(recipe)
    again = parse_recipe(text)
    assert again == recipe
    assert again.to_plan() == plan
    assert again.example_input.to_spec() == InputSpec((2, 1, 28, 28))
    assert dump_recipe(again) == text
    # The line numbers found on parsing point at the layer keys of the dumped text.
    assert again.layer_line("res.conv2") == _line_of(text, "res.conv2:")


def test_round_trip_of_a_minimal_recipe():
    recipe = Recipe.build(Plan())
    again = parse_recipe(dump_recipe(recipe))
    assert again == recipe
    assert again.model is None and again.example_input is None
    assert again.to_plan() == Plan()


def test_unknown_key_names_the_key_and_its_line():
    text = """
        schema_version: 1
        plan:
          layers:
            res.conv1:
              sparsity: 0.3
              colour: red
    """
    (problem,) = _problems(text)
    assert problem.where == "plan.layers.res.conv1.colour"
    assert problem.message == "unknown key"
    assert problem.line == _line_of(text, "colour")


def test_unknown_top_level_section():
    text = """
        schema_version: 1
        modle:
          path: demo
    """
    (problem,) = _problems(text)
    assert problem.where == "modle" and problem.line == 2


def test_out_of_range_value_names_the_field_and_its_line():
    text = """
        schema_version: 1
        plan:
          defaults:
            weight_bits: int8
          layers:
            stem.0:
              exclude: false
            res.conv2:
              sparsity: 1.5
    """
    (problem,) = _problems(text)
    assert problem.where == "plan.layers.res.conv2.sparsity"
    assert "0.99" in problem.message
    assert problem.line == _line_of(text, "1.5")


def test_every_problem_is_reported_at_once():
    text = """
        schema_version: 1
        example_input:
          shape: [1, 0, 28]
          dtype: float64
        plan:
          defaults:
            weight_bits: int3
          layers:
            head:
              granularity: "3:2"
    """
    problems = {p.where: p for p in _problems(text)}
    assert set(problems) == {"example_input.shape", "example_input.dtype",
                             "plan.defaults.weight_bits", "plan.layers.head.granularity"}
    assert problems["example_input.shape"].line == _line_of(text, "shape:")
    assert problems["example_input.dtype"].line == _line_of(text, "float64")
    assert problems["plan.defaults.weight_bits"].line == _line_of(text, "int3")
    assert problems["plan.layers.head.granularity"].line == _line_of(text, "3:2")
    assert "int8" in problems["plan.defaults.weight_bits"].message  # says what is allowed


def test_bad_yaml_gives_its_line():
    text = """
        schema_version: 1
        plan:
          layers: [stem.0, head
        model:
    """
    (problem,) = _problems(text)
    assert "not valid YAML" in problem.message
    assert problem.line in (_line_of(text, "layers"), _line_of(text, "model:"))
    tab = "schema_version: 1\nplan:\n\tlayers: {}\n"
    with pytest.raises(RecipeError) as raised:
        parse_recipe(tab)
    assert raised.value.problems[0].line == 3


@pytest.mark.parametrize("version", [0, 2, "one"])
def test_wrong_schema_version(version):
    text = f"""
        # a comment first
        schema_version: {version}
    """
    (problem,) = _problems(text)
    assert problem.where == "schema_version"
    assert problem.line == 2


def test_missing_schema_version():
    (problem,) = _problems("plan: {}\n")
    assert problem.where == "schema_version"
    assert "required" in problem.message.lower()


@pytest.mark.parametrize("text", ["", "just a string\n", "- a\n- b\n", "42\n", "null\n"])
def test_documents_that_are_not_mappings(text):
    (problem,) = _problems(text)
    assert "mapping" in problem.message


def test_read_recipe_names_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("schema_version: 3\n")
    with pytest.raises(RecipeError) as raised:
        read_recipe(path)
    assert str(raised.value).startswith(f"{path}: line 1: schema_version")
    with pytest.raises(RecipeError, match="cannot read"):
        read_recipe(tmp_path / "absent.yaml")
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RecipeError, match="cannot read"):
        read_recipe(path)


def test_unknown_layer_names_suggest_the_nearest(demo_workspace):
    text = """
        schema_version: 1
        plan:
          layers:
            stem.0:
              sparsity: 0.2
            res.conv_1:
              sparsity: 0.5
            totally_unrelated_name:
              exclude: true
    """
    recipe = parse_recipe(_text(text))
    with pytest.raises(RecipeError) as raised:
        check_layer_names(recipe, demo_workspace.tree, "my.yaml")
    problems = {p.where: p for p in raised.value.problems}
    assert set(problems) == {"plan.layers.res.conv_1", "plan.layers.totally_unrelated_name"}
    near = problems["plan.layers.res.conv_1"]
    assert near.line == _line_of(text, "res.conv_1:")
    assert "nearest: res.conv1" in near.message
    assert "nearest" not in problems["plan.layers.totally_unrelated_name"].message

    # The workspace applies a recipe only once its names are right.
    before = demo_workspace.plan.copy()
    with pytest.raises(RecipeError):
        demo_workspace.apply_recipe_plan(recipe)
    assert demo_workspace.plan == before
    fixed = parse_recipe(_text(text).replace("res.conv_1", "res.conv1").replace(
        "totally_unrelated_name", "head"))
    demo_workspace.apply_recipe_plan(fixed)
    assert demo_workspace.plan.spec("res.conv1") == LayerSpec(sparsity=0.5)


def test_the_root_is_set_through_defaults(demo_workspace):
    recipe = parse_recipe('schema_version: 1\nplan:\n  layers:\n    "": {sparsity: 0.5}\n')
    with pytest.raises(RecipeError, match=r"plan\.defaults") as raised:
        check_layer_names(recipe, demo_workspace.tree)
    assert raised.value.problems[0].line == 4


# --- property tests ------------------------------------------------------------------------------

def _parse_or_error(text: str) -> Recipe | None:
    """A recipe, or None for a RecipeError; any other exception fails the test."""
    try:
        recipe = parse_recipe(text, "fuzz.yaml")
    except RecipeError as error:
        assert error.problems
        assert str(error).startswith("fuzz.yaml: ")
        return None
    assert isinstance(recipe, Recipe)
    return recipe


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_gives_a_recipe_or_a_recipe_error(text):
    _parse_or_error(text)


_KEYS = st.sampled_from([
    "schema_version", "model", "path", "architecture", "example_input", "shape", "dtype",
    "plan", "defaults", "layers", "sparsity", "granularity", "weight_bits", "act_bits",
    "exclude", "res.conv1", "stem.0", "", "other"])
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["2:4", "3:2", "channels", "int8", "int3", "fp16", "float32", "demo"]))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(_KEYS, st.integers()), inner,
                                            max_size=5)),
    max_leaves=20)
_SPEC = st.dictionaries(st.sampled_from(["sparsity", "granularity", "weight_bits",
                                         "act_bits", "exclude", "other"]), _SCALARS, max_size=4)
_RECIPE_LIKE = st.one_of(
    st.dictionaries(_KEYS, _VALUES, max_size=6),
    st.fixed_dictionaries(
        {"schema_version": st.sampled_from([1, 1, 2, "1"])},
        optional={
            "model": st.dictionaries(st.sampled_from(["path", "architecture", "x"]), _SCALARS),
            "example_input": st.dictionaries(
                st.sampled_from(["shape", "dtype"]),
                st.one_of(_SCALARS, st.lists(st.integers(-1, 5), max_size=4))),
            "plan": st.fixed_dictionaries({}, optional={
                "defaults": _SPEC,
                "layers": st.dictionaries(st.sampled_from(["res.conv1", "head.2", "", "x"]),
                                          _SPEC, max_size=3)}),
        }),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_RECIPE_LIKE, st.booleans())
def test_any_recipe_like_mapping_gives_a_recipe_or_a_recipe_error(data, flow):
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False)
    recipe = _parse_or_error(text)
    if recipe is None:
        with pytest.raises(RecipeError) as raised:
            parse_recipe(text)
        # Past the YAML and mapping checks, every problem can be found in the file.
        if isinstance(data, dict) and data:
            assert all(problem.line is not None for problem in raised.value.problems)
    else:
        assert parse_recipe(dump_recipe(recipe)) == recipe
