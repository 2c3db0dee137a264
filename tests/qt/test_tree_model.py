"""The layer tree model: Qt's model contract, figures, inherited plan values, filter, sort."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt

from studio.core.workspace import open_workspace
from studio.qt.columns import COLUMNS
from studio.qt.tree_filter import LayerFilterProxy
from studio.qt.tree_model import INHERITED_ROLE, NODE_ID_ROLE, SORT_ROLE, LayerTreeModel

PARAMS = next(i for i, c in enumerate(COLUMNS) if c.title == "Params")
PLAN_SPARSITY = next(i for i, c in enumerate(COLUMNS) if c.title == "Plan: sparsity")


def _demo_model() -> tuple[LayerTreeModel, object]:
    workspace = open_workspace("demo")
    model = LayerTreeModel(workspace.tree, workspace.plan.resolve(workspace.tree))
    return model, workspace


def _walk(model, parent=QModelIndex()):  # noqa: B008
    for row in range(model.rowCount(parent)):
        index = model.index(row, 0, parent)
        yield index
        yield from _walk(model, index)


def test_model_contract_holds(qtmodeltester) -> None:
    model, _ = _demo_model()
    qtmodeltester.check(model)
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("conv")
    qtmodeltester.check(proxy)


def test_every_node_is_reachable_once_with_its_figures() -> None:
    model, workspace = _demo_model()
    tree = workspace.tree
    seen = [model.data(index, NODE_ID_ROLE) for index in _walk(model)]
    assert sorted(seen) == list(range(len(tree)))
    root = model.index(0, PARAMS)
    assert model.data(root, SORT_ROLE) == tree.root.total_params
    assert model.data(model.index(0, 0)) == tree.model_name


def test_plan_values_are_marked_inherited_below_the_layer_that_sets_them() -> None:
    model, workspace = _demo_model()
    workspace.plan.set_field("res", "sparsity", 0.5)
    model.plan_changed(workspace.plan.resolve(workspace.tree), ["res"])
    tree = workspace.tree
    res = model.index_of(tree.get("res").id, PLAN_SPARSITY)
    child = model.index_of(tree.get("res.conv2").id, PLAN_SPARSITY)
    other = model.index_of(tree.get("stem.0").id, PLAN_SPARSITY)
    assert model.data(res) == "50%" and model.data(res, INHERITED_ROLE) is False
    assert model.data(child) == "50%" and model.data(child, INHERITED_ROLE) is True
    assert "inherited from res" in model.data(child, Qt.ItemDataRole.ToolTipRole)
    assert model.data(other) == "–"


def test_plan_change_notifies_the_changed_subtree(qtbot) -> None:
    model, workspace = _demo_model()
    changed: list[int] = []
    model.dataChanged.connect(lambda top, bottom, *_: changed.extend(
        model.data(model.index(row, 0, top.parent()), NODE_ID_ROLE)
        for row in range(top.row(), bottom.row() + 1)))
    workspace.plan.set_field("res", "weight_bits", "int8")
    model.plan_changed(workspace.plan.resolve(workspace.tree), ["res"])
    names = {workspace.tree.nodes[i].name for i in changed}
    assert {"res", "res.conv1", "res.conv1.0", "res.conv2"} <= names
    assert "stem.0" not in names


def test_filter_keeps_matches_with_their_ancestors_and_descendants() -> None:
    model, workspace = _demo_model()
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("linear")
    visible = {workspace.tree.nodes[proxy.data(i, NODE_ID_ROLE)].name for i in _walk(proxy)}
    assert visible == {"", "head", "head.2"}
    proxy.set_filter_text("RES.CONV1")  # case-insensitive, and a match shows its children
    visible = {workspace.tree.nodes[proxy.data(i, NODE_ID_ROLE)].name for i in _walk(proxy)}
    assert {"res", "res.conv1", "res.conv1.0", "res.conv1.1"} <= visible
    assert "stem" not in visible


def test_sorting_by_params_orders_siblings_numerically() -> None:
    model, workspace = _demo_model()
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    proxy.sort(PARAMS, Qt.SortOrder.DescendingOrder)
    root = proxy.index(0, 0)
    names = [workspace.tree.nodes[proxy.data(proxy.index(r, 0, root), NODE_ID_ROLE)].name
             for r in range(proxy.rowCount(root))]
    params = [workspace.tree.get(n).total_params for n in names]
    assert params == sorted(params, reverse=True)
    assert names[0] == "res"
