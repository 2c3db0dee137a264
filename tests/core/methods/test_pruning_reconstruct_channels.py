"""Re-fitting a channel-cut CNN to its uncompressed original (few-sample KD): each layer's
output comes closer to the teacher's at the channels it kept, the network's accuracy comes back
before any training, the teacher is untouched, and layers a dense re-fit would spoil are left."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from studio.core.data.task import TaskData
from studio.core.methods.pruning.reconstruct_channels import (
    fitted_layers,
    kept_outputs,
    reconstruct_channels,
)
from studio.core.methods.pruning.structured import prune_channels
from studio.core.train.loop import evaluate
from studio.core.workspace import Workspace

EXAMPLE = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def cut(demo: Workspace) -> tuple[nn.Module, list[dict]]:
    """The demo with half of every convolution's output channels cut (the head kept whole),
    and the cut groups."""
    model = copy.deepcopy(demo.loaded.module)
    ratios = {node.name: 0.5 for node in demo.tree.nodes
              if node.prunable and not node.name.startswith("head")}
    return model, prune_channels(model, EXAMPLE, ratios).groups


def test_kept_outputs_are_the_complement_of_the_removed_channels(
        cut: tuple[nn.Module, list[dict]]) -> None:
    model, groups = cut
    kept = kept_outputs(groups)
    for group in groups:
        for name in group["layers"]:
            assert sorted(set(kept[name]) | set(group["removed_channels"])) == list(
                range(group["channels_before"]))
            assert len(kept[name]) == model.get_submodule(name).weight.shape[0]


def test_the_refit_brings_back_accuracy_and_leaves_the_teacher_alone(
        demo: Workspace, task: TaskData, cut: tuple[nn.Module, list[dict]],
        one_torch_thread: None) -> None:
    teacher = demo.loaded.module
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = copy.deepcopy(cut[0])
    accuracy_cut = evaluate(student, task.test)
    report = reconstruct_channels(student, teacher, cut[1], task.calibration.tensors[0])
    assert report is not None
    layers = report["layers"]
    # forward order, the head included (its input channels were cut); the stem is not: its
    # input is the image, so its kept channels already equal the original's
    assert list(layers) == ["block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]
    for name in ["block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]:
        assert layers[name]["after"] < 0.8 * layers[name]["before"], name
    accuracy = evaluate(student, task.test)
    assert accuracy_cut < 0.5
    assert accuracy > 0.9 > accuracy_cut + 0.3
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())


def test_each_layer_matches_the_teacher_at_its_kept_channels(
        demo: Workspace, task: TaskData, cut: tuple[nn.Module, list[dict]],
        one_torch_thread: None) -> None:
    """The error the report gives is the one to expect on new inputs: it is measured on
    calibration samples the fit did not see, so the final layer's error on test digits it never
    saw, recomputed here over every pixel, is close to it (the report's is over the 4,096
    positions per batch the fit drew), and well below the cut's."""
    teacher, student = demo.loaded.module, copy.deepcopy(cut[0])
    kept = kept_outputs(cut[1])["block1.0"]
    report = reconstruct_channels(student, teacher, cut[1], task.calibration.tensors[0])
    assert report is not None
    assert report["error_on"] == "64 held-out calibration samples"
    fresh = task.test.tensors[0][:256]
    seen: dict[str, torch.Tensor] = {}
    for model, role in ((teacher, "teacher"), (student, "student"), (cut[0], "cut")):
        handle = model.block1[0].register_forward_hook(
            lambda _m, _a, out, role=role: seen.__setitem__(role, out.detach()))
        with torch.no_grad():
            model.eval()(fresh)
        handle.remove()
    target = seen["teacher"][:, kept]
    error = float((seen["student"] - target).norm() / target.norm())
    assert error == pytest.approx(report["layers"]["block1.0"]["after"], rel=0.15)
    cut_error = float((seen["cut"] - target).norm() / target.norm())
    assert cut_error == pytest.approx(report["layers"]["block1.0"]["before"], rel=0.15)
    assert error < 0.5 * cut_error


def test_masked_changed_and_grouped_layers_are_left_as_they_are(
        demo: Workspace, task: TaskData, cut: tuple[nn.Module, list[dict]],
        one_torch_thread: None) -> None:
    teacher, student = demo.loaded.module, copy.deepcopy(cut[0])
    before = student.block2[0].weight.clone()
    report = reconstruct_channels(student, teacher, cut[1], task.calibration.tensors[0][:32],
                                  leave=["block2.0"])
    assert report is not None
    assert "block2.0" not in report["layers"]
    assert report["skipped"]["block2.0"].startswith("sparse by unstructured or N:M pruning")
    assert torch.equal(student.block2[0].weight, before)

    # weights changed since the cut no longer tell which channels they are: left alone
    changed = copy.deepcopy(cut[0])
    with torch.no_grad():
        changed.block1[0].weight.add_(0.01)
    report = reconstruct_channels(changed, teacher, cut[1], task.calibration.tensors[0][:32])
    assert report is not None
    assert "block1.0" not in report["layers"] and "block2.0" in report["layers"]
    assert report["skipped"]["block1.0"].startswith("its weights are not the original's")

    class Depthwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).mean((2, 3)))

    model = Depthwise()
    layers, skipped = fitted_layers(model, copy.deepcopy(model), {"conv": [0, 1, 2, 3]},
                                    torch.zeros(1, 4, 5, 5))
    assert [name for name, _ in layers] == ["head"]
    assert skipped == {"conv": "a grouped convolution"}


class _TinyLM(nn.Module):
    """Embeddings, a cut MLP on the residual stream, an output layer tied to the embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        return self.out(hidden + self.down(torch.relu(self.up(hidden))))


def test_a_layer_tied_to_another_is_left_alone(one_torch_thread: None) -> None:
    """Re-fitting a tied output layer would change the input embeddings under every layer
    already fitted (and the report would no longer tell the model's error)."""
    torch.manual_seed(0)
    teacher = _TinyLM().eval()
    student = copy.deepcopy(teacher)
    ids = torch.randint(0, 50, (64, 8))
    groups = prune_channels(student, ids[:1], {"up": 0.5}).groups
    embeddings = student.embed.weight.clone()
    report = reconstruct_channels(student, teacher, groups, ids)
    assert report is not None
    assert "down" in report["layers"] and "out" not in report["layers"]
    assert report["skipped"]["out"].startswith("its weight is tied to another layer's")
    assert torch.equal(student.embed.weight, embeddings)


def test_a_bfloat16_model_is_fitted_and_reported_as_a_float32_one(
        one_torch_thread: None) -> None:
    """A bf16 Gram matrix is too coarse to solve: the sums are taken in float32, so the fit and
    the error it reports are those of the same model in float32."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.mix = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.fc = nn.Linear(16, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.mix(torch.relu(self.conv(x)))).mean((2, 3)))

    torch.manual_seed(0)
    teacher = Net().eval()
    cut = copy.deepcopy(teacher)
    groups = prune_channels(cut, torch.zeros(1, 3, 16, 16), {"conv": 0.5}).groups
    inputs = torch.randn(128, 3, 16, 16)
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        student = copy.deepcopy(cut).to(dtype)
        report = reconstruct_channels(student, copy.deepcopy(teacher).to(dtype), groups,
                                      inputs.to(dtype))
        assert report is not None
        errors[dtype] = report["layers"]["fc"]["after"]
    assert errors[torch.bfloat16] == pytest.approx(errors[torch.float32], rel=0.05)


def test_a_layer_the_original_does_not_call_is_left_alone(one_torch_thread: None) -> None:
    """Targets exist only for layers the uncompressed model calls as modules (here it reaches
    ``fc`` through ``F.linear``): the others are skipped with the reason, not a crash."""
    class Net(nn.Module):
        def __init__(self, functional: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)
            self.functional = functional

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = torch.relu(self.conv(x)).mean((2, 3))
            return (nn.functional.linear(pooled, self.fc.weight, self.fc.bias)
                    if self.functional else self.fc(pooled))

    teacher = Net(functional=True).eval()
    student = copy.deepcopy(teacher)
    student.functional = False
    groups = prune_channels(student, torch.zeros(1, 3, 8, 8), {"conv": 0.5}).groups
    before = student.fc.weight.clone()
    report = reconstruct_channels(student, teacher, groups, torch.randn(16, 3, 8, 8))
    assert report is not None
    assert report["skipped"]["fc"] == ("the uncompressed model does not call it once per "
                                       "forward pass")
    assert torch.equal(student.fc.weight, before)


def test_a_layer_too_wide_to_solve_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap on inputs (there 8,192; 16 here) keeps a VGG-sized classifier from a
    gigabyte-scale solve; the report says why the layer was left."""
    from studio.core.methods.pruning import reconstruct_channels as module

    monkeypatch.setattr(module, "MAX_INPUTS", 16)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    layers, skipped = fitted_layers(model, copy.deepcopy(model), {"0": list(range(32))},
                                    torch.zeros(1, 8))
    assert [name for name, _ in layers] == ["0"]
    assert skipped == {"2": "too wide to solve here (32 inputs, at most 16)"}


def test_layers_joined_through_a_concatenation_keep_their_own_channels(
        one_torch_thread: None) -> None:
    """``w(x) + cat(a(x), b(x))``: one cut group whose indices are w's; a and b each keep
    their own share (b's shifted back by a's width), so the layer after them is re-fitted
    against the right teacher channels and the output comes closer to the original's."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Conv2d(3, 16, 3, padding=1)
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            joined = torch.relu(self.w(x) + torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(torch.relu(self.c(joined)).mean((2, 3)))

    torch.manual_seed(0)
    teacher = Net().eval()
    student = copy.deepcopy(teacher)
    report = prune_channels(student, torch.zeros(1, 3, 8, 8), {"w": 0.5, "a": 0.5, "b": 0.5})
    kept = kept_outputs(report.groups)
    assert kept["w"] == [*kept["a"], *(8 + i for i in kept["b"])]
    assert report.channels["a"] == [8, len(kept["a"])]
    inputs = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fresh = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = teacher(fresh)
        cut_error = float((student(fresh) - target).norm() / target.norm())
    refit = reconstruct_channels(student, teacher, report.groups, inputs)
    assert refit is not None and refit["skipped"] == {}
    assert set(refit["layers"]) == {"c", "fc"}
    with torch.no_grad():
        error = float((student(fresh) - target).norm() / target.norm())
    assert error < 0.6 * cut_error, (cut_error, error)
