"""Distillation losses on plain tensors: KD, T² scaling, labels, teachers, features, relations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from studio.core.errors import StudioError
from studio.core.methods.distill import (
    FeatureProjector,
    KDConfig,
    distillation_loss,
    feature_kd_loss,
    logit_kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_targets,
)
from studio.core.methods.distill.projection import fit_projection


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=g) * 3
    teacher = torch.randn(16, 10, generator=g) * 3
    labels = torch.randint(0, 10, (16,), generator=g)
    return student, teacher, labels


def manual_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    p = torch.softmax(teacher / t, -1)
    q = torch.softmax(student / t, -1)
    return (p * (p.log() - q.log())).sum(-1).mean()


def test_kd_is_zero_for_identical_logits_and_positive_otherwise(logits):
    student, teacher, labels = logits
    same = distillation_loss(teacher.clone(), soft_targets([teacher], 4.0), labels, 4.0, alpha=1.0)
    other = distillation_loss(student, soft_targets([teacher], 4.0), labels, 4.0, alpha=1.0)
    assert abs(float(same)) < 1e-6
    assert float(other) > 0.1


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_is_the_softened_kl_scaled_by_t_squared(logits, temperature):
    student, teacher, _ = logits
    loss = logit_kd_loss(student, soft_targets([teacher], temperature), temperature)
    raw = manual_kl(student, teacher, temperature)
    assert torch.allclose(loss, raw * temperature**2, rtol=1e-5)
    assert not torch.allclose(loss, raw, rtol=1e-3) or temperature == 1.0


def test_alpha_mixes_kd_with_hard_label_cross_entropy(logits):
    student, teacher, labels = logits
    probs = soft_targets([teacher], 4.0)
    kd = logit_kd_loss(student, probs, 4.0)
    ce = F.cross_entropy(student, labels)
    mixed = distillation_loss(student, probs, labels, 4.0, alpha=0.3)
    assert torch.allclose(mixed, 0.3 * kd + 0.7 * ce, rtol=1e-5)
    assert torch.allclose(distillation_loss(student, probs, labels, 4.0, alpha=0.0), ce)


def test_unlabelled_batches_use_kd_alone(logits):
    student, teacher, labels = logits
    probs = soft_targets([teacher], 4.0)
    kd = logit_kd_loss(student, probs, 4.0)
    assert torch.equal(distillation_loss(student, probs, None, 4.0, alpha=0.5), kd)
    unknown = torch.full_like(labels, -1)
    assert torch.equal(distillation_loss(student, probs, unknown, 4.0, alpha=0.5), kd)
    # Partly labelled: the cross entropy only counts the labelled half.
    partial = labels.clone()
    partial[8:] = -1
    ce = F.cross_entropy(student[:8], labels[:8])
    assert torch.allclose(distillation_loss(student, probs, partial, 4.0, alpha=0.5),
                          0.5 * kd + 0.5 * ce, rtol=1e-5)


def test_sequence_logits_are_distilled_per_position():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    loss = logit_kd_loss(student, soft_targets([teacher], 2.0), 2.0)
    flat = manual_kl(student.reshape(10, 7), teacher.reshape(10, 7), 2.0) * 4
    assert torch.allclose(loss, flat, rtol=1e-5)


def test_multi_teacher_averages_softened_probabilities(logits):
    _, teacher, _ = logits
    other = teacher.flip(0)
    assert torch.allclose(soft_targets([teacher, teacher], 3.0), soft_targets([teacher], 3.0))
    mixed = soft_targets([teacher, other], 3.0, weights=[1.0, 3.0])
    expected = 0.25 * torch.softmax(teacher / 3, -1) + 0.75 * torch.softmax(other / 3, -1)
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.allclose(mixed.sum(-1), torch.ones(16))
    with pytest.raises(ValueError):
        soft_targets([teacher, other], 3.0, weights=[1.0])


def test_feature_projection_for_conv_maps_with_different_width_and_size():
    projector = FeatureProjector((4, 16, 14, 14), (4, 64, 7, 7))
    assert isinstance(projector.proj, torch.nn.Conv2d) and projector.learned
    student = torch.randn(4, 16, 14, 14, requires_grad=True)
    loss = feature_kd_loss(student, torch.randn(4, 64, 7, 7), projector)
    loss.backward()
    assert projector.proj.weight.grad is not None and projector.proj.weight.grad.abs().sum() > 0
    assert student.grad is not None


def test_feature_projection_linear_for_tokens_and_vectors():
    tokens = FeatureProjector((2, 12, 32), (2, 6, 48))
    assert isinstance(tokens.proj, torch.nn.Linear)
    assert feature_kd_loss(torch.randn(2, 12, 32), torch.randn(2, 6, 48), tokens).ndim == 0
    same = FeatureProjector((2, 48), (2, 48))
    assert not same.learned
    x = torch.randn(2, 48)
    assert float(feature_kd_loss(x, x.clone(), same)) == 0.0
    with pytest.raises(StudioError, match="different ranks"):
        FeatureProjector((2, 16, 4, 4), (2, 16))


def test_a_fitted_projection_recovers_a_linear_teacher_map_and_beats_a_random_start():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(8, 6, 14, 14, generator=g)
    mix, shift = torch.randn(10, 6, generator=g), torch.randn(10, generator=g)
    teacher = torch.nn.functional.avg_pool2d(  # another width and a coarser map
        torch.einsum("ts,nshw->nthw", mix, student) + shift[:, None, None], 2)
    random_start = FeatureProjector(tuple(student.shape), tuple(teacher.shape))
    fitted = FeatureProjector(tuple(student.shape), tuple(teacher.shape))
    fit_projection(fitted, student, teacher)
    assert torch.allclose(fitted.proj.weight[:, :, 0, 0], mix, atol=1e-4)
    assert torch.allclose(fitted.proj.bias, shift, atol=1e-4)
    assert float(feature_kd_loss(student, teacher, fitted).detach()) < 1e-8
    assert float(feature_kd_loss(student, teacher, random_start).detach()) > 1.0
    tokens = FeatureProjector((2, 12, 4), (2, 12, 3))
    rows = torch.randn(2, 12, 4, generator=g)
    fit_projection(tokens, rows, rows[..., :3] * 2)
    assert float(feature_kd_loss(rows, rows[..., :3] * 2, tokens).detach()) < 1e-8


def test_feature_loss_does_not_train_the_teacher():
    teacher = torch.randn(3, 8, requires_grad=True)
    feature_kd_loss(torch.randn(3, 8, requires_grad=True), teacher).backward()
    assert teacher.grad is None


def test_relation_losses_ignore_a_global_scale():
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(12, 16, generator=g), torch.randn(12, 64, generator=g)
    for loss in (rkd_distance_loss, rkd_angle_loss):
        base = loss(student, teacher)
        assert float(base) > 1e-3
        assert torch.allclose(loss(student * 7.5, teacher), base, rtol=1e-4, atol=1e-6)
        assert torch.allclose(loss(student, teacher * 0.01), base, rtol=1e-4, atol=1e-6)
        # Same structure at another scale and width (a random rotation) is a perfect match.
        rotation = torch.linalg.qr(torch.randn(16, 16, generator=g)).Q
        assert float(loss(student @ rotation * 3, student)) < 1e-5


def test_relation_loss_gradient_reaches_the_student_only():
    student = torch.randn(8, 4, requires_grad=True)
    teacher = torch.randn(8, 6, requires_grad=True)
    (rkd_distance_loss(student, teacher) + rkd_angle_loss(student, teacher)).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_config_validates_and_normalises_recipe_lists():
    cfg = KDConfig(feature_pairs=[["res", "res"], ("block2", "block2", 0.5)],  # type: ignore[arg-type]
                   teacher_weights=[1, 2])  # type: ignore[arg-type]
    assert cfg.feature_pairs[0].weight == 1.0 and cfg.feature_pairs[1].teacher == "block2"
    assert cfg.teacher_weights == (1, 2)
    with pytest.raises(StudioError, match="alpha"):
        KDConfig(alpha=1.5)
    with pytest.raises(StudioError, match="temperature"):
        KDConfig(temperature=0)
    with pytest.raises(StudioError, match="nothing to distil"):
        KDConfig(logit_weight=0)
