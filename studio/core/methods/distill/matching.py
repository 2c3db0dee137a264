"""Recovery without labels: train the compressed model to reproduce the uncompressed one.

With no labels there is no task loss, so the only signal is the original model's outputs on the
same inputs. Scores per class are matched as distributions (KL at a temperature, as logit KD);
embeddings and regression outputs by direction and size together (1 - cosine, plus MSE), the
two things the cosine and MSE agreement metrics measure.

For a transformer the hidden states every encoder block hands on are matched too, on real
tokens, each scaled by the original's variance and summed over blocks: a pooled sentence
embedding gives one vector of signal per sentence, the blocks one per token and layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.distiller import freeze
from studio.core.methods.distill.features import FeatureCapture
from studio.core.methods.distill.losses import logit_kd_loss
from studio.core.util import first_tensor

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


def hidden_state_loss(student: Tensor, teacher: Tensor, real: Tensor | None) -> Tensor:
    """Mean squared distance of two blocks' hidden states over the real (non-padding) tokens,
    in units of the teacher's variance so that every block weighs alike."""
    target = teacher.detach().float()
    if student.shape != target.shape:
        raise StudioError(f"output matching: a block gives hidden states of shape "
                          f"{list(student.shape)} where the original's give {list(target.shape)}")
    squared = (student.float() - target).pow(2).mean(-1)
    if real is not None and real.shape == squared.shape:
        if not bool(real.any()):  # nothing but padding: nothing to match
            return squared.sum() * 0.0
        squared = squared[real]
    return squared.mean() / target.var().clamp_min(1e-12)


class OutputMatchingLoss:
    """``(model, inputs, labels) -> loss`` for the training loop; labels are ignored.

    ``blocks`` names the encoder blocks whose hidden states are matched as well (the same names
    in the original and the compressed model); ``pad_token_id`` leaves padding tokens out of
    that. Call :meth:`close` to remove the hooks."""

    def __init__(self, teacher: nn.Module, kind: MatchKind, temperature: float = 4.0,
                 blocks: Sequence[str] = (), pad_token_id: int | None = None) -> None:
        self.teacher = freeze(teacher)
        self.kind = kind
        self.temperature = temperature
        self.blocks = list(blocks)
        self.pad_token_id = pad_token_id
        self._teacher_states = FeatureCapture(self.teacher, self.blocks, "original", clone=False)
        self._student_states: FeatureCapture | None = None

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None
                 ) -> Tensor:
        if self.blocks and self._student_states is None:
            self._student_states = FeatureCapture(model, self.blocks, "compressed model",
                                                  clone=False)
        with torch.no_grad():
            self.teacher.eval()
            target = first_tensor(self.teacher(inputs))
        output = first_tensor(model(inputs))
        if target is None or output is None:
            raise StudioError("output matching: the model returned no tensor")
        loss = output_matching_loss(output, target, self.kind, self.temperature)
        if self._student_states is not None:
            real = inputs != self.pad_token_id if self.pad_token_id is not None else None
            loss = loss + sum(hidden_state_loss(self._student_states[name],
                                                self._teacher_states[name], real)
                              for name in self.blocks)
            self._student_states.clear()
            self._teacher_states.clear()
        return loss

    def close(self) -> None:
        """Remove the hooks from both models; safe to call twice."""
        self._teacher_states.close()
        if self._student_states is not None:
            self._student_states.close()
