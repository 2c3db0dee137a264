"""How close a student is to its teacher on held-out data: the numbers that show KD worked."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.data.task import batches
from studio.core.jobs import CancelToken
from studio.core.train.loop import resolve_device
from studio.core.util import first_tensor


@dataclass(frozen=True)
class TeacherAgreement:
    kl: float
    """Mean KL(teacher || student) per sample at temperature 1 (nats)."""
    agreement: float
    """Fraction of samples where student and teacher pick the same top-1 class."""


@torch.no_grad()
def teacher_agreement(student: nn.Module, teacher: nn.Module, data: TensorDataset,
                      device: str = "cpu", batch_size: int = 256,
                      token: CancelToken | None = None) -> TeacherAgreement:
    """KL to the teacher and top-1 agreement on ``data``; both models are evaluated in eval
    mode and put back in the mode they were in."""
    target = resolve_device(device)
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    kl_sum, same, count = 0.0, 0, 0
    try:
        for inputs, _ in batches(data, batch_size):
            if token is not None:
                token.check()
            inputs = inputs.to(target)
            s_out, t_out = first_tensor(student(inputs)), first_tensor(teacher(inputs))
            assert s_out is not None and t_out is not None
            s_rows = s_out.float().reshape(-1, s_out.shape[-1])
            t_rows = t_out.float().reshape(-1, t_out.shape[-1])
            kl_sum += float(F.kl_div(F.log_softmax(s_rows, -1), F.log_softmax(t_rows, -1),
                                     reduction="sum", log_target=True))
            same += int((s_rows.argmax(-1) == t_rows.argmax(-1)).sum())
            count += s_rows.shape[0]
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return TeacherAgreement(kl_sum / max(count, 1), same / max(count, 1))
