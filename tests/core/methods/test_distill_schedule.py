"""The distill section's alpha warm-up and least-squares projection start, through
``build_distillation`` and real training steps on a tiny CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.jobs import CancelToken
from studio.core.methods.distill.losses import distillation_loss, soft_targets
from studio.core.methods.distill.recovery import build_distillation
from studio.core.plan.stages import DistillSection, FeaturePair
from studio.core.train.loop import TrainConfig, optimizer_steps, train
from tests.core.methods.test_distill_family import TinyCNN, data, trained_teacher

__all__ = ["data"]  # the fixture, shared with the family's tests


def task(samples: TensorDataset) -> TaskData:
    return TaskData(train=samples, test=samples, calibration=samples, num_classes=4,
                    name="quadrants")


def test_alpha_warms_up_from_cross_entropy_to_alpha_over_the_given_share_of_steps(data):
    teacher = trained_teacher(data)
    torch.manual_seed(1)
    student = TinyCNN()
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=16)
    total = optimizer_steps(len(data), config)
    assert total == 12
    section = DistillSection(temperature=3.0, alpha=0.8, alpha_warmup=0.5)
    run = build_distillation(section, student, teacher, data.tensors[0][:2], task(data),
                             total_steps=total)
    assert any("over the first 6 steps" in line for line in run.logs)
    inputs, labels = data.tensors[0][:16], data.tensors[1][:16]
    probs = soft_targets([teacher(inputs)], 3.0)

    def expected(alpha: float) -> torch.Tensor:
        return distillation_loss(student(inputs), probs, labels, 3.0, alpha)

    student.eval()  # the same batch-norm statistics for the loss and its expectation
    assert torch.allclose(run.loss_fn(student, inputs, labels),
                          F.cross_entropy(student(inputs), labels))
    assert run.after_step is not None
    run.after_step(3)
    assert torch.allclose(run.loss_fn(student, inputs, labels), expected(0.4))
    run.after_step(9)
    assert torch.allclose(run.loss_fn(student, inputs, labels), expected(0.8))
    run.after_step(0)
    for _ in train(student, data, config, CancelToken(), run.loss_fn,
                   after_step=run.after_step, parameters=run.parameters):
        pass
    assert run.loss_fn.steps_done == total and run.loss_fn.alpha == 0.8
    run.close()


def test_projections_start_at_the_least_squares_fit_on_calibration_samples(data):
    teacher = trained_teacher(data, width=8)
    torch.manual_seed(2)
    student = TinyCNN(width=4)
    inputs, labels = data.tensors[0][:32], data.tensors[1][:32]
    losses = {}
    for start in ("random", "least_squares"):
        section = DistillSection(alpha=0.0, projection_init=start,
                                 features=[FeaturePair(student="body", teacher="body")])
        run = build_distillation(section, student, teacher, data.tensors[0][:2], task(data))
        student.train()
        run.loss_fn(student, inputs, labels)
        losses[start] = float(run.loss_fn.last["feature/body"])
        run.close()
    assert losses["least_squares"] < losses["random"] / 3
