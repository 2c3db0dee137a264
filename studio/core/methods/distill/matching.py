"""Recovery without labels: train the compressed model to reproduce the uncompressed one.

With no labels there is no task loss, so the only signal is the original model's outputs on the
same inputs. Scores per class are matched as distributions (KL at a temperature, as logit KD);
embeddings and regression outputs by direction and size together (1 - cosine, plus MSE), the
two things the cosine and MSE agreement metrics measure.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.distiller import freeze
from studio.core.methods.distill.features import first_tensor
from studio.core.methods.distill.losses import logit_kd_loss

MatchKind = Literal["logits", "embedding"]


def matching_kind(metric: str) -> MatchKind:
    """Logits when the task is judged by top-1 agreement; embeddings otherwise."""
    return "logits" if metric in ("top1_agreement", "accuracy") else "embedding"


def output_matching_loss(student: Tensor, teacher: Tensor, kind: MatchKind,
                         temperature: float = 4.0) -> Tensor:
    """Distance of the student's outputs from the teacher's (the teacher side is detached)."""
    target = teacher.detach().float()
    student = student.float()
    if student.shape != target.shape:
        raise StudioError(f"output matching: the compressed model gives outputs of shape "
                          f"{list(student.shape)} where the original gives {list(target.shape)}")
    if kind == "logits":
        probs = F.softmax(target.reshape(-1, target.shape[-1]) / temperature, dim=-1)
        return logit_kd_loss(student, probs, temperature)
    rows, target_rows = student.reshape(len(student), -1), target.reshape(len(target), -1)
    cosine = F.cosine_similarity(rows, target_rows, dim=1, eps=1e-8)
    return (1.0 - cosine).mean() + F.mse_loss(rows, target_rows)


class OutputMatchingLoss:
    """``(model, inputs, labels) -> loss`` for the training loop; labels are ignored."""

    def __init__(self, teacher: nn.Module, kind: MatchKind, temperature: float = 4.0) -> None:
        self.teacher = freeze(teacher)
        self.kind = kind
        self.temperature = temperature

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None
                 ) -> Tensor:
        with torch.no_grad():
            self.teacher.eval()
            target = first_tensor(self.teacher(inputs))
        output = first_tensor(model(inputs))
        if target is None or output is None:
            raise StudioError("output matching: the model returned no tensor")
        return output_matching_loss(output, target, self.kind, self.temperature)
