"""Decoupled KD and consistent-augmentation KD: the loss on plain tensors, the augmentation's
batches, the recipe settings, and real training steps on a tiny CNN."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from studio.core.data.task import TaskData
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken
from studio.core.methods.distill import KDConfig, make_kd_loss
from studio.core.methods.distill.augment import MAX_SHIFT, ConsistentAugmentation
from studio.core.methods.distill.distiller import CacheSettings
from studio.core.methods.distill.losses import (
    decoupled_kd_loss,
    distillation_loss,
    logit_kd_loss,
    soft_targets,
)
from studio.core.methods.distill.recovery import build_distillation
from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import DistillSection
from studio.core.train.loop import TrainConfig, evaluate, train
from tests.core.methods.test_distill_family import TinyCNN, data, state, trained_teacher

__all__ = ["data"]  # the fixture, shared with the family's tests


def test_dkd_with_nckd_weighed_by_one_minus_the_target_probability_is_classic_kd():
    # The paper's identity: KD = TCKD + (1 - p_target) * NCKD, row by row.
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 3
    targets = torch.randint(0, 10, (6,), generator=g)
    for t in (1.0, 4.0):
        probs = soft_targets([teacher], t)
        for row in range(6):
            p_target = float(probs[row, targets[row]])
            dkd = decoupled_kd_loss(student[row:row + 1], probs[row:row + 1],
                                    targets[row:row + 1], t, 1.0, 1.0 - p_target)
            kd = logit_kd_loss(student[row:row + 1], probs[row:row + 1], t)
            assert torch.allclose(dkd, kd, atol=1e-5), (t, row)


def test_dkd_keeps_the_wrong_class_ranking_of_a_near_one_hot_teacher():
    teacher = torch.tensor([[40.0, 8.0, 0.0, -4.0]])  # p_target ~ 1 even at T 4
    student = torch.tensor([[40.0, -4.0, 0.0, 8.0]], requires_grad=True)  # wrong ranking
    target = torch.tensor([0])
    probs = soft_targets([teacher], 4.0)
    assert float(probs[0, 0]) > 0.9995
    kd = logit_kd_loss(student, probs, 4.0)
    nckd = decoupled_kd_loss(student, probs, target, 4.0, 0.0, 1.0)
    # KD weighs NCKD by 1 - p_target, which silences it here
    assert float(nckd.detach()) > 1000 * float(kd.detach())
    nckd.backward()
    assert student.grad is not None
    assert float(student.grad[0, 3]) > 0 > float(student.grad[0, 1])  # pushes 3 down, 1 up
    assert float(decoupled_kd_loss(teacher, probs, target, 4.0)) == pytest.approx(0, abs=1e-5)


def test_dkd_takes_the_label_and_the_teachers_top_class_where_there_is_none():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) * 2
    probs = soft_targets([teacher], 2.0)
    labels = torch.randint(0, 5, (8,), generator=g)
    with_labels = distillation_loss(student, probs, labels, 2.0, 1.0, (1.0, 8.0))
    assert torch.allclose(with_labels, decoupled_kd_loss(student, probs, labels, 2.0, 1.0, 8.0))
    unlabelled = distillation_loss(student, probs, None, 2.0, 0.7, (1.0, 8.0))
    top = teacher.argmax(-1)
    assert torch.allclose(unlabelled, decoupled_kd_loss(student, probs, top, 2.0, 1.0, 8.0))
    assert not torch.allclose(with_labels, unlabelled)


def test_augmentation_repeats_by_seed_and_mixup_names_each_rows_partner():
    images = torch.rand(5, 1, 6, 6)
    first, again = ConsistentAugmentation("shift", 3), ConsistentAugmentation("shift", 3)
    shifted = first(images, None).inputs
    assert torch.equal(shifted, again(images, None).inputs)
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    # Every output is its image moved by at most MAX_SHIFT pixels (edges repeated).
    pad = nn.functional.pad(images, (MAX_SHIFT,) * 4, mode="replicate")
    for i in range(5):
        assert any(torch.equal(shifted[i], pad[i, :, dy:dy + 6, dx:dx + 6])
                   for dy in range(2 * MAX_SHIFT + 1) for dx in range(2 * MAX_SHIFT + 1))
    rows, labels = torch.eye(6), torch.arange(6) * 10
    batch = ConsistentAugmentation("mixup", 0)(rows, labels)
    assert 0 < batch.share < 1 and torch.equal(batch.labels, labels)
    assert batch.partner_labels is not None
    partner = (batch.inputs - batch.share * rows).argmax(-1)  # the row mixed in
    assert torch.equal(batch.partner_labels, labels[partner])


def test_teacher_and_student_see_the_same_augmented_batch(data):
    torch.manual_seed(0)
    teacher, student = TinyCNN(), TinyCNN()
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, args, name=name: seen.__setitem__(name, args[0].clone()))
        for name, m in (("teacher", teacher), ("student", student))]
    setup = make_kd_loss(student, teacher, KDConfig(augment="shift", decoupled=(1.0, 8.0)),
                         data.tensors[0][:2])
    inputs, labels = data.tensors[0][:16], data.tensors[1][:16]
    loss = setup.loss_fn(student, inputs, labels)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert torch.equal(seen["teacher"], seen["student"])
    assert not torch.equal(seen["student"], inputs)
    for hook in hooks:
        hook.remove()
    setup.close()


def test_settings_that_cannot_work_are_refused_before_training(data):
    with pytest.raises(pydantic.ValidationError, match=r"teacher cache \(memory\) cannot serve"):
        DistillSection(augment="shift", cache="memory")
    with pytest.raises(pydantic.ValidationError, match="apply to mode teacher, not self"):
        DistillSection(mode="self", logit_loss="dkd")
    with pytest.raises(StudioError, match="teacher cache cannot serve augment mixup"):
        make_kd_loss(TinyCNN(), TinyCNN(), KDConfig(augment="mixup"), data.tensors[0][:2],
                     CacheSettings(96))
    flat = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(StudioError, match=r"needs inputs of shape \(N, C, H, W\)"):
        make_kd_loss(flat, nn.Sequential(nn.Linear(4, 3)), KDConfig(augment="shift"),
                     torch.zeros(2, 4))
    with pytest.raises(StudioError, match="decoupled must be two weights"):
        KDConfig(decoupled=(1.0, -1.0))


def test_a_recipe_with_dkd_and_mixup_trains_a_tiny_student_without_a_cache(data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schema_version: 1\nmodel: {path: demo}\ntrain: {epochs: 2}\n"
                      "distill: {logit_loss: dkd, dkd_nontarget_weight: 4, augment: mixup}\n",
                      encoding="utf-8")
    section = read_recipe(recipe).distill
    assert section is not None and section.dkd_nontarget_weight == 4
    teacher = trained_teacher(data)
    before = state(teacher)
    torch.manual_seed(2)
    student = TinyCNN()
    task = TaskData(train=data, test=data, calibration=data, num_classes=4, name="quadrants")
    run = build_distillation(section, student, teacher, data.tensors[0][:2], task, tmp_path)
    assert any("teacher cache off" in line for line in run.logs)
    start = evaluate(student, data)
    for _ in train(student, data, TrainConfig(epochs=10, lr=2e-2, batch_size=16), CancelToken(),
                   run.loss_fn, parameters=run.parameters):
        pass
    report = run.finish()
    run.close()
    assert "teacher_cache" not in report and "augment mixup" in report["teacher_cache_off"]
    assert evaluate(student, data) > max(start, 0.9)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
