"""The layer view's numbers: the plan applied to one real weight (the demo's), checked against
the weight itself and the engine's own masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.core.engine.layer_stats import layer_stats, sqnr_by_layer, view_samples
from studio.core.methods.pruning.unstructured import _smallest
from studio.core.plan.plan import Plan
from studio.core.plan.spec import LayerSpec
from studio.core.reports.sensitivity_report import SensitivityReport


def _stats(workspace, spec: LayerSpec, name: str = "res.conv2", **kwargs):
    plan = Plan({name: spec})
    resolved = plan.resolve(workspace.tree)[workspace.tree.get(name).id]
    return layer_stats(workspace.loaded.module, name, resolved, **kwargs)


def test_two_of_four_pattern_and_int4_grid(demo_workspace) -> None:
    stats = _stats(demo_workspace, LayerSpec(granularity="2:4", weight_bits="int4"))
    weight = demo_workspace.loaded.module.res.conv2.weight.detach()
    assert stats.shape == tuple(weight.shape) and stats.weights == weight.numel()
    assert stats.group == 4 and stats.sparsity_after == pytest.approx(0.5)
    groups = stats.pattern.reshape(stats.pattern.shape[0], -1, 4).sum(-1)
    assert (groups == 2).all()  # every group of four keeps exactly two
    assert stats.codes is not None and len(stats.codes) == 15  # int4: -7..7
    assert stats.codes[7] >= weight.numel() // 2  # the pruned half sits on level 0
    assert stats.codes.sum() == weight.numel()
    assert stats.before.sum() == stats.after.sum() == weight.numel()
    zero_bin = np.searchsorted(stats.edges, 0.0) - 1
    assert stats.after[zero_bin] >= weight.numel() // 2 > stats.before[zero_bin]
    rows = weight.reshape(weight.shape[0], -1)
    assert np.allclose(stats.channel_max, rows.amax(1).numpy())
    assert np.allclose(stats.channel_min, rows.amin(1).numpy())


def test_sqnr_falls_with_fewer_bits_and_float_has_none(demo_workspace) -> None:
    db = {bits: _stats(demo_workspace, LayerSpec(weight_bits=bits)).sqnr_db
          for bits in ("int8", "int4", "int2")}
    assert db["int8"] > db["int4"] > db["int2"] > 0
    assert 6.02 * 4 - 10 < db["int8"] - db["int4"] < 6.02 * 4 + 10  # ~6 dB a bit
    assert _stats(demo_workspace, LayerSpec()).sqnr_db is None
    assert _stats(demo_workspace, LayerSpec()).codes is None
    whole = sqnr_by_layer(demo_workspace.loaded.module, demo_workspace.tree,
                          Plan({"res.conv2": LayerSpec(weight_bits="int4")}).resolve(
                              demo_workspace.tree))
    assert whole == {"res.conv2": pytest.approx(db["int4"])}


def test_channels_remove_whole_rows(demo_workspace) -> None:
    stats = _stats(demo_workspace, LayerSpec(sparsity=0.5, granularity="channels"))
    kept_rows = stats.pattern.all(axis=1)
    assert (stats.pattern.any(axis=1) == kept_rows).all()  # rows are all kept or all cut
    assert stats.sparsity_after == pytest.approx(0.5)


def test_activation_ranges_and_sensitivity_curve(demo_workspace) -> None:
    inputs, label = view_samples(demo_workspace, count=4)
    assert inputs is not None and len(inputs) == 4 and "demo" in label
    report = SensitivityReport.from_json({
        "kind": "sensitivity", "metric": "accuracy", "baseline": 0.99, "subset": 100,
        "granularity": "unstructured", "layers": ["res.conv2"],
        "sparsity": {"levels": [0.25, 0.5], "drop": [[0.01, 0.04]]},
        "bits": {"levels": ["int8", "int4"], "drop": [[0.0, None]]}})
    stats = _stats(demo_workspace, LayerSpec(), inputs=inputs, report=report)
    model = demo_workspace.loaded.module
    with torch.no_grad():
        output = model.res.conv2(model.res.conv1(model.block2(model.pool1(model.block1(
            model.stem(inputs))))))
    assert np.allclose(stats.act_max, output.amax(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(stats.act_min, output.amin(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert [c.sweep for c in stats.curves] == ["sparsity", "bits"]
    assert stats.curves[1].drops == [0.0, None]


def test_large_layers_sample_the_histogram() -> None:
    from torch import nn

    from studio.core.engine import layer_stats as module
    from studio.core.graph.torch_tree import build_torch_tree
    model = nn.Sequential(nn.Linear(1200, 1000))
    tree = build_torch_tree(model, None, "big")
    spec = Plan({"0": LayerSpec(sparsity=0.5, weight_bits="int8")}).resolve(tree)[1]
    stats = layer_stats(model, "0", spec)
    assert stats.weights == 1_200_000 and stats.sampled == module.HISTOGRAM_SAMPLE
    assert stats.pattern.shape == module.PATTERN_CROP
    assert stats.sparsity_after == pytest.approx(0.5)
    assert not math.isinf(stats.sqnr_db)


def test_selection_matches_a_stable_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        size = int(torch.randint(1, 300, (), generator=generator))
        scores = torch.randint(0, 5, (size,), generator=generator).float()  # many ties
        count = int(torch.randint(0, size + 1, (), generator=generator))
        expected = sorted(torch.argsort(scores, stable=True)[:count].tolist())
        assert _smallest(scores, count).tolist() == expected
