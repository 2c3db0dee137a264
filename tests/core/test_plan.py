"""Plans: specs inherited down the layer tree, their validation, and size/MAC estimates."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studio.core.plan.channels import kept_channels
from studio.core.plan.estimate import estimate
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.spec import LayerSpec, parse_nm


@pytest.fixture
def tree(demo_workspace):
    return demo_workspace.tree


def _resolved(plan: Plan, tree, name: str):
    return plan.resolve(tree)[tree.get(name).id]


# --- inheritance ---------------------------------------------------------------------------------

def test_defaults_when_nothing_is_set(tree):
    for spec in Plan().resolve(tree):
        assert spec.sparsity == 0.0 and spec.granularity == "unstructured"
        assert spec.weight_bits is None and spec.act_bits is None and not spec.exclude
        assert set(spec.sources.values()) == {None}
        assert spec.effective_sparsity == 0.0


def test_parent_values_flow_to_children_unless_overridden(tree):
    plan = Plan()
    plan.set_field(ROOT, "weight_bits", "int8")
    plan.set_field("res", "sparsity", 0.5)
    plan.set_field("res.conv2", "sparsity", 0.2)
    plan.set_field("res.conv1", "granularity", "channels")
    resolved = plan.resolve(tree)
    by_name = {node.name: resolved[node.id] for node in tree.nodes}

    # Everything under "res" gets 0.5 from it, except conv2 which sets its own value.
    for name in ("res", "res.conv1", "res.conv1.0", "res.bn2", "res.relu"):
        assert by_name[name].sparsity == 0.5, name
        assert by_name[name].sources["sparsity"] == "res", name
    assert by_name["res.conv2"].sparsity == 0.2
    assert by_name["res.conv2"].sources["sparsity"] == "res.conv2"
    assert not by_name["res.conv2"].inherited("sparsity", "res.conv2")
    assert by_name["res.conv1.0"].inherited("sparsity", "res.conv1.0")
    # Outside "res" nothing changed.
    for name in ("stem.0", "block2.0", "head.2"):
        assert by_name[name].sparsity == 0.0 and by_name[name].sources["sparsity"] is None
    # The root's value reaches every node, and says it came from the root.
    for node in tree.nodes:
        assert by_name[node.name].weight_bits == "int8"
        assert by_name[node.name].sources["weight_bits"] == ROOT
    assert by_name["res.conv1.0"].granularity == "channels"
    assert by_name["res.conv1.0"].sources["granularity"] == "res.conv1"
    assert by_name["res.conv2"].granularity == "unstructured"


def test_clearing_a_field_restores_inheritance(tree):
    plan = Plan()
    plan.set_field("res", "sparsity", 0.5)
    plan.set_field("res.conv2", "sparsity", 0.2)
    plan.set_field("res.conv2", "weight_bits", "int4")
    plan.set_field("res.conv2", "sparsity", None)
    spec = _resolved(plan, tree, "res.conv2")
    assert spec.sparsity == 0.5 and spec.sources["sparsity"] == "res"
    assert spec.weight_bits == "int4"
    # Clearing the last field drops the layer from the plan altogether.
    plan.set_field("res.conv2", "weight_bits", None)
    assert "res.conv2" not in plan.specs
    assert plan == Plan({"res": LayerSpec(sparsity=0.5)})


def test_plan_copy_is_independent(tree):
    plan = Plan({"res": LayerSpec(sparsity=0.5)})
    copied = plan.copy()
    assert copied == plan
    copied.set_field("res", "sparsity", 0.7)
    assert plan.spec("res").sparsity == 0.5
    assert copied != plan
    assert Plan({"res": LayerSpec()}) == Plan()  # empty specs are not kept


@pytest.mark.parametrize("field, value", [
    ("sparsity", 1.5), ("sparsity", -0.1), ("sparsity", 1.0), ("sparsity", "half"),
    ("granularity", "3:2"), ("granularity", "0:4"), ("granularity", "2:64"),
    ("granularity", "rows"), ("weight_bits", "int3"), ("act_bits", "int4"),
    ("exclude", "perhaps"), ("colour", "red"),
])
def test_invalid_values_are_rejected(tree, field, value):
    plan = Plan({"res": LayerSpec(sparsity=0.3)})
    with pytest.raises(ValidationError):
        plan.set_field("res", field, value)
    assert plan == Plan({"res": LayerSpec(sparsity=0.3)})  # unchanged
    with pytest.raises(ValidationError):
        LayerSpec.model_validate({field: value})


def test_specs_are_frozen():
    spec = LayerSpec(sparsity=0.2)
    with pytest.raises(ValidationError):
        spec.sparsity = 0.3


@pytest.mark.parametrize("granularity, expected", [("2:4", 0.5), ("1:4", 0.75), ("4:8", 0.5),
                                                   ("3:16", 13 / 16)])
def test_n_m_sparsity_is_implied_by_the_pattern(tree, granularity, expected):
    plan = Plan({"res": LayerSpec(granularity=granularity, sparsity=0.1)})
    n, m = parse_nm(granularity)
    assert expected == pytest.approx(1 - n / m)
    spec = _resolved(plan, tree, "res.conv2")
    assert spec.effective_sparsity == pytest.approx(expected)
    assert spec.sparsity == 0.1  # the number set stays, the pattern wins


def test_exclude_means_no_sparsity(tree):
    plan = Plan({ROOT: LayerSpec(sparsity=0.6, granularity="2:4"),
                 "head": LayerSpec(exclude=True)})
    assert _resolved(plan, tree, "head.2").effective_sparsity == 0.0
    assert _resolved(plan, tree, "head.2").sources["exclude"] == "head"
    assert _resolved(plan, tree, "res.conv2").effective_sparsity == 0.5
    plan.set_field("head.2", "exclude", False)  # a child can opt back in
    assert _resolved(plan, tree, "head.2").effective_sparsity == 0.5


# --- estimates -----------------------------------------------------------------------------------

def _prunable(tree):
    return [node for node in tree.nodes if node.prunable]


def test_empty_plan_changes_nothing(tree):
    result = estimate(tree, Plan().resolve(tree))
    assert result.after == result.before
    assert result.before.params == tree.root.total_params
    assert result.before.macs == tree.root.total_macs
    assert result.ratio("nbytes") == 1.0


def test_int8_weights_take_a_quarter_plus_scales(tree):
    plan = Plan({ROOT: LayerSpec(weight_bits="int8")})
    result = estimate(tree, plan.resolve(tree))
    convs_and_linears = _prunable(tree)
    assert {node.op_type for node in convs_and_linears} == {"Conv2d", "Linear"}
    weight_bytes = sum(node.weight_params * 4 for node in convs_and_linears)
    # act_bits unset with convolutions: int8_path auto quantizes static; per output channel one
    # fp32 scale and one int8 zero point, and the bias as int32 with its own fp32 scale
    int8_bytes = sum(node.weight_params + 9 * node.out_channels for node in convs_and_linears)
    expected = result.before.nbytes - weight_bytes + int8_bytes
    assert result.after.nbytes == expected
    assert result.after.params == result.before.params
    assert result.after.macs == result.before.macs
    # Weights dominate the demo: the whole file shrinks to little more than a quarter.
    assert 0.25 < result.ratio("nbytes") < 0.30
    assert int8_bytes / weight_bytes == pytest.approx(0.25, abs=0.01)


def test_fp16_halves_weight_bytes_without_scales(tree):
    plan = Plan({ROOT: LayerSpec(weight_bits="fp16")})
    result = estimate(tree, plan.resolve(tree))
    weight_bytes = sum(node.weight_params * 4 for node in _prunable(tree))
    assert result.before.nbytes - result.after.nbytes == weight_bytes // 2


def test_channel_pruning_halves_one_conv_and_its_consumers(tree):
    conv = tree.get("res.conv1.0")
    assert conv.out_channels == 64
    plan = Plan({"res.conv1.0": LayerSpec(sparsity=0.5, granularity="channels")})
    result = estimate(tree, plan.resolve(tree))
    assert kept_channels(64, 0.5) == 32
    norm = tree.get("res.conv1.1")  # normalises the conv's channels: it loses half of them too
    consumer = tree.get("res.conv2")  # reads them: it loses half of its inputs
    assert result.before.macs - result.after.macs == \
        conv.macs // 2 + norm.macs // 2 + consumer.macs // 2
    assert result.before.params - result.after.params == \
        conv.params // 2 + norm.params // 2 + consumer.params // 2
    folded_bias = norm.params // 2 * 4  # the export folds the norm into the conv: one bias
    assert result.before.nbytes - result.after.nbytes == \
        conv.nbytes // 2 + folded_bias // 2 + consumer.nbytes // 2
    assert result.after.nonzero_params == result.after.params


def test_a_conv_coupled_outside_the_selection_is_left_whole_and_said_so(tree):
    """res.conv2 is added to block2.0's output: the engine cuts both or neither."""
    alone = estimate(tree, Plan({"res.conv2": LayerSpec(sparsity=0.5, granularity="channels")}
                                ).resolve(tree))
    assert alone.after == alone.before
    assert any("res.conv2, block2.0 left whole: coupled with block2.0" in note
               for note in alone.notes)
    both = Plan({name: LayerSpec(sparsity=0.5, granularity="channels")
                 for name in ("res.conv2", "block2.0")})
    cut = estimate(tree, both.resolve(tree))
    assert cut.ratio("macs") < 1.0 and not cut.notes


def test_channel_pruning_always_keeps_a_channel():
    assert kept_channels(10, 0.99) == 1
    assert kept_channels(3, 0.5) == 2
    assert kept_channels(64, 0.0) == 64


def test_unstructured_sparsity_only_lowers_nonzero_params(tree):
    plan = Plan({ROOT: LayerSpec(sparsity=0.5)})
    result = estimate(tree, plan.resolve(tree))
    assert result.after.nbytes == result.before.nbytes
    assert result.after.macs == result.before.macs
    assert result.after.params == result.before.params
    removed = sum(round(node.weight_params * 0.5) for node in _prunable(tree))
    assert result.before.nonzero_params - result.after.nonzero_params == removed


def test_excluded_layers_are_left_alone(tree):
    everything = Plan({ROOT: LayerSpec(weight_bits="int8", sparsity=0.5,
                                       granularity="channels")})
    some = everything.copy()
    some.set_field("res", "exclude", True)
    full = estimate(tree, everything.resolve(tree))
    partial = estimate(tree, some.resolve(tree))
    # Excluded layers keep their output channels and bits: each loses at most the inputs its
    # producer lost, so the excluded subtree saves less than it would compressed.
    res_nodes = [node for node in tree.subtree(tree.get("res")) if node.prunable]
    for node in res_nodes:
        assert some.resolve(tree)[node.id].exclude
    saved_in_res = estimate(tree, Plan({"res": everything.spec(ROOT)}).resolve(tree))
    assert saved_in_res.after.macs < saved_in_res.before.macs
    assert partial.after.macs > full.after.macs
    assert partial.after.nbytes > full.after.nbytes
    # block1.0 is cut; block2.0 is excluded but reads its outputs: it loses half its inputs.
    block1 = Plan({ROOT: LayerSpec(exclude=True), "block1.0": everything.spec(ROOT)})
    block1.set_field("block1.0", "exclude", False)
    only_block1 = estimate(tree, block1.resolve(tree))
    conv, norm = tree.get("block2.0"), tree.get("block1.1")
    assert only_block1.before.macs - only_block1.after.macs == \
        tree.get("block1.0").macs // 2 + norm.macs // 2 + conv.macs // 2
    # And with everything excluded, nothing changes at all.
    none = everything.copy()
    none.set_field(ROOT, "exclude", True)
    untouched = estimate(tree, none.resolve(tree))
    assert untouched.after == untouched.before


def test_channel_estimate_counts_the_consumers_and_matches_the_real_cut() -> None:
    """Cutting a conv's outputs also shrinks the norm after it and the next conv's inputs; the
    estimate should land near what torch-pruning really removes on the demo."""
    import copy

    from studio.core.methods.pruning import apply_plan_pruning
    from studio.core.plan.estimate import estimate
    from studio.core.workspace import open_workspace

    workspace = open_workspace("demo")
    tree = workspace.tree
    assert tree.nodes[tree.get("block1.0").input_from].name == "stem.0"
    assert tree.nodes[tree.get("res.bn2").input_from].name == "res.conv2"
    assert tree.get("head.2").input_from is None  # after the residual add: unknown
    plan = workspace.plan
    plan.set_field("", "sparsity", 0.5)
    plan.set_field("", "granularity", "channels")
    plan.set_field("head", "exclude", True)
    predicted = estimate(tree, plan.resolve(tree))
    model = copy.deepcopy(workspace.loaded.module)
    real = apply_plan_pruning(model, tree, plan.resolve(tree), workspace.example.make_tensor())
    real_macs = real.report["after"]["macs"] / real.report["before"]["macs"]
    assert abs(predicted.ratio("macs") - real_macs) < 0.03
    assert predicted.ratio("macs") < 0.3
