"""Distillation through the one training loop, with real steps on the demo CNN and small students.

The demo model (98.5 % test accuracy) is the teacher. Students are either a copy of it with 70 %
of each convolution's weights zeroed by magnitude, or a narrow ``DemoCNN(width=8)`` whose
features are 16 channels wide where the teacher's are 64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.demo.model import DemoCNN
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, JobCancelled, Metric
from studio.core.methods.distill import (
    FeaturePair,
    KDConfig,
    KDSetup,
    default_teacher,
    distill,
    make_kd_loss,
    teacher_agreement,
    training_parameters,
)
from studio.core.train.loop import TrainConfig, train
from studio.core.workspace import open_workspace


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The trained demo CNN; tests take copies (default_teacher) and never change it."""
    return open_workspace("demo").loaded.module


@pytest.fixture
def teacher(trained: nn.Module) -> nn.Module:
    return default_teacher(trained)


def subset(data: TensorDataset, n: int) -> TensorDataset:
    return TensorDataset(*(t[:n] for t in data.tensors))


def prune_convs(model: nn.Module, amount: float) -> dict[nn.Conv2d, torch.Tensor]:
    """Zero the smallest ``amount`` of each convolution's weights; returns the masks."""
    masks = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight.detach()
            threshold = w.abs().flatten().kthvalue(int(amount * w.numel())).values
            masks[module] = (w.abs() > threshold).to(w.dtype)
            module.weight.data.mul_(masks[module])
    return masks


def run(setup: KDSetup, student: nn.Module, data: TensorDataset, steps: int,
        lr: float = 1e-3, batch_size: int = 64, after_step=None) -> list[Metric]:
    config = TrainConfig(lr=lr, batch_size=batch_size)
    events = list(train(student, subset(data, steps * batch_size), config, CancelToken(),
                        loss_fn=setup.loss_fn, stage="distill", after_step=after_step,
                        parameters=training_parameters(student, setup.extra_parameters)))
    return [e for e in events if isinstance(e, Metric)]


@torch.no_grad()
def held_out_terms(setup: KDSetup, student: nn.Module, data: TensorDataset) -> dict[str, float]:
    """Each KD term on held-out data, the student in eval mode."""
    mode = student.training
    student.eval()
    inputs, labels = data.tensors
    setup.loss_fn(student, inputs[:256], labels[:256])
    student.train(mode)
    return {name: float(value) for name, value in setup.loss_fn.last.items()}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


def assert_no_hooks(*models: nn.Module) -> None:
    for model in models:
        for name, module in model.named_modules():
            assert not module._forward_hooks, f"hook left on {name!r}"


def test_kd_recovers_a_pruned_student_towards_its_teacher(task, trained, teacher):
    student = copy.deepcopy(trained)
    masks = prune_convs(student, 0.7)
    held_out = subset(task.test, 500)
    teacher_state = state(teacher)
    before = teacher_agreement(student, teacher, held_out)

    def keep_pruned(step: int) -> None:
        for module, mask in masks.items():
            module.weight.data.mul_(mask)

    setup = make_kd_loss(student, teacher, KDConfig(temperature=4.0, alpha=0.9),
                         task.train.tensors[0][:2])
    try:
        metrics = run(setup, student, task.train, steps=50, after_step=keep_pruned)
    finally:
        setup.close()
    after = teacher_agreement(student, teacher, held_out)

    print(f"KL to teacher {before.kl:.3f} -> {after.kl:.3f}; "
          f"top-1 agreement {before.agreement:.3f} -> {after.agreement:.3f}")
    assert before.agreement < 0.6  # the pruning really hurt
    assert after.kl < 0.25 * before.kl
    assert after.agreement > before.agreement + 0.3
    assert after.agreement >= 0.9
    losses = [m.value for m in metrics if m.name == "loss"]
    assert losses[-1] < losses[0]
    sparsity = [float((m.weight == 0).float().mean()) for m in masks]
    assert min(sparsity) >= 0.69  # trained with the masks kept, as a pruning stage would
    assert_identical(teacher, teacher_state)
    assert_no_hooks(student, teacher)


def test_feature_kd_trains_projections_from_16_to_64_channels(task, teacher):
    torch.manual_seed(0)
    student = DemoCNN(width=8)
    pairs = (FeaturePair("res", "res"), FeaturePair("block1", "block2", 0.5))
    config = KDConfig(logit_weight=0.0, feature_pairs=pairs)
    setup = make_kd_loss(student, teacher, config, task.train.tensors[0][:2])
    try:
        projections = setup.loss_fn.projections
        assert [p.proj.in_channels for p in projections.values()] == [16, 8]
        assert [p.proj.out_channels for p in projections.values()] == [64, 64]
        assert len(setup.extra_parameters) == 4  # two 1x1 convs, weight and bias each
        # One backward reaches the projections' weights.
        inputs, labels = task.train.tensors[0][:8], task.train.tensors[1][:8]
        setup.loss_fn(student, inputs, labels).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in setup.extra_parameters)
        student.zero_grad()
        initial = [p.detach().clone() for p in setup.extra_parameters]
        before = held_out_terms(setup, student, task.test)
        run(setup, student, task.train, steps=40, lr=1e-2)
        after = held_out_terms(setup, student, task.test)
    finally:
        setup.close()
    print(f"feature loss res {before['feature/res']:.4f} -> {after['feature/res']:.4f}, "
          f"block1 {before['feature/block1']:.4f} -> {after['feature/block1']:.4f}")
    for name in ("feature/res", "feature/block1"):
        assert after[name] < 0.8 * before[name]
    assert all(not torch.equal(a, p) for a, p in zip(initial, setup.extra_parameters, strict=True))
    assert_no_hooks(student, teacher)


def test_relation_kd_decreases_in_training(task, teacher):
    torch.manual_seed(1)
    student = DemoCNN(width=8)
    config = KDConfig(logit_weight=0.0, relation_weight=1.0, relation_angle_weight=1.0,
                      relation_layers=("head.1", "head.1"))  # 16-wide vs 64-wide embeddings
    setup = make_kd_loss(student, teacher, config, task.train.tensors[0][:2])
    try:
        assert setup.extra_parameters == []  # relations need no projection
        before = held_out_terms(setup, student, task.test)
        run(setup, student, task.train, steps=40, lr=3e-3)
        after = held_out_terms(setup, student, task.test)
    finally:
        setup.close()
    print(f"RKD distance {before['relation']:.4f} -> {after['relation']:.4f}, "
          f"angle {before['relation_angle']:.4f} -> {after['relation_angle']:.4f}")
    assert after["relation"] < 0.7 * before["relation"]
    assert after["relation_angle"] < before["relation_angle"]
    assert_no_hooks(student, teacher)


def test_two_identical_teachers_equal_one(task, teacher):
    student = DemoCNN(width=8).eval()
    inputs, labels = task.train.tensors[0][:32], task.train.tensors[1][:32]
    single = make_kd_loss(student, teacher, KDConfig(alpha=0.7), inputs[:2])
    twin = default_teacher(teacher)
    double = make_kd_loss(student, [teacher, twin],
                          KDConfig(alpha=0.7, teacher_weights=(0.3, 0.7)), inputs[:2])
    try:
        one = single.loss_fn(student, inputs, labels).detach()
        two = double.loss_fn(student, inputs, labels).detach()
        assert float(one) > 0.1
        assert torch.allclose(one, two, rtol=1e-5)
    finally:
        single.close()
        double.close()
    with pytest.raises(StudioError, match="2 teachers"):
        make_kd_loss(student, [teacher, twin], KDConfig(teacher_weights=(1.0,)), inputs[:2])


def test_teacher_is_frozen_bit_identical_and_unhooked(task, trained):
    teacher = default_teacher(trained)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    student = DemoCNN(width=8)
    config = KDConfig(feature_pairs=(FeaturePair("res", "res"),), relation_weight=0.5,
                      relation_layers=("head.1", "head.1"))
    setup = make_kd_loss(student, teacher, config, task.train.tensors[0][:2])
    teacher_state = state(teacher)
    teacher.train()  # someone switched it to training mode: batch norm must still not move
    try:
        assert len(teacher.res._forward_hooks) == 1
        run(setup, student, task.train, steps=5)
    finally:
        setup.close()
    assert_identical(teacher, teacher_state)
    assert_no_hooks(student, teacher)
    with pytest.raises(StudioError, match="closed"):
        setup.loss_fn(student, task.train.tensors[0][:4], task.train.tensors[1][:4])


def test_a_teacher_sharing_the_students_weights_is_refused(task, trained):
    student = copy.deepcopy(trained)
    with pytest.raises(StudioError, match="default_teacher"):
        make_kd_loss(student, student, KDConfig(), task.train.tensors[0][:2])
    assert all(p.requires_grad for p in student.parameters())


def test_unlabelled_data_trains_on_kd_alone(task, teacher):
    torch.manual_seed(2)
    student = DemoCNN(width=8)
    images = task.train.tensors[0][:256]
    unlabelled = TensorDataset(images, torch.full((256,), -1, dtype=torch.long))
    events = list(distill(student, teacher, unlabelled, TrainConfig(batch_size=64),
                          KDConfig(alpha=0.5), CancelToken()))
    logged = {e.name: e.value for e in events if isinstance(e, Metric)}
    # No labels anywhere: the loss is pure KD, whatever alpha says.
    assert logged["loss"] == pytest.approx(logged["kd/logit"], rel=1e-6)
    assert_no_hooks(student, teacher)


def test_cancel_stops_within_one_batch_and_removes_hooks(task, trained, teacher):
    student = copy.deepcopy(trained)
    original = state(trained)
    token = CancelToken()
    steps: list[int] = []

    def cancel_at_three(step: int) -> None:
        steps.append(step)
        if step == 3:
            token.cancel()

    config = KDConfig(feature_pairs=(FeaturePair("res", "res"),))
    job = distill(student, teacher, subset(task.train, 640), TrainConfig(batch_size=64), config,
                  token, after_step=cancel_at_three)
    with pytest.raises(JobCancelled):
        for _ in job:
            pass
    assert steps == [1, 2, 3]
    assert_no_hooks(student, teacher)
    assert_identical(trained, original)
