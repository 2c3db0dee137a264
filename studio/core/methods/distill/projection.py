"""Learned projections that map a student feature to its teacher's width (FitNets regressors)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.losses import align_features


def projection_kind(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
                    ) -> tuple[str, int, int]:
    """("conv", s, t) for a 1x1 convolution from width s to t, ("linear", s, t), or
    ("identity", s, t) when the widths agree; :class:`StudioError` when no projection fits.
    Shared by :class:`FeatureProjector` and the inspector's shape check."""
    if len(student_shape) != len(teacher_shape):
        raise StudioError(f"feature KD: student feature {student_shape} and teacher feature "
                          f"{teacher_shape} have different ranks; pick layers of the same kind")
    rank = len(student_shape)
    if rank in (2, 3, 4):
        axis = 1 if rank == 4 else -1
        s_width, t_width = student_shape[axis], teacher_shape[axis]
        kind = "identity" if s_width == t_width else "conv" if rank == 4 else "linear"
        return kind, s_width, t_width
    if student_shape[1:] == teacher_shape[1:]:
        return "identity", 0, 0
    raise StudioError(f"feature KD: cannot project a {rank}-D feature {student_shape} "
                      f"onto {teacher_shape}; use 2-D, 3-D or 4-D features")


def describe_projection(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> str:
    """The projection a pair will train, in words ("none: widths agree", "1×1 conv 32 → 64")."""
    kind, s_width, t_width = projection_kind(student_shape, teacher_shape)
    if kind == "identity":
        return "no projection: the widths agree"
    what = "1×1 convolution" if kind == "conv" else "linear layer"
    return f"a learned {what}, {s_width} → {t_width} channels"


class FeatureProjector(nn.Module):
    """1x1 convolution for 4-D maps (N, C, H, W); Linear on the last dim for 2-D (N, C) and
    3-D (N, L, C) features; identity when the widths already agree.

    Built from the two shapes seen on an example batch, so widths never have to be typed in.
    Spatial or sequence sizes may differ: :func:`~.losses.align_features` pools them afterwards.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        kind, s_width, t_width = projection_kind(tuple(student_shape), tuple(teacher_shape))
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        self.proj: nn.Module = (nn.Conv2d(s_width, t_width, 1) if kind == "conv" else
                                nn.Linear(s_width, t_width) if kind == "linear" else
                                nn.Identity())

    @property
    def learned(self) -> bool:
        """Whether this projection has weights to train (widths differ)."""
        return not isinstance(self.proj, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@torch.no_grad()
def fit_projection(projector: FeatureProjector, student: Tensor, teacher: Tensor) -> None:
    """Set a learned projection to the least-squares map from ``student`` to ``teacher``
    features on a real batch (every pixel or token a row), instead of a random start.

    A random regressor starts the feature loss far from anything the student can reach and
    sends noise back into the student while it learns; the fitted one starts at the best
    linear match, so the feature term pulls only towards what the teacher does differently.
    Pooling and a 1x1 map commute, so fitting on the aligned features is exact."""
    if not projector.learned:
        return
    layer = projector.proj
    assert isinstance(layer, nn.Conv2d | nn.Linear)
    source, target = align_features(student.float(), teacher.float())
    if source.dim() == 4:
        source, target = source.movedim(1, -1), target.movedim(1, -1)
    rows = source.reshape(-1, source.shape[-1])
    ones = rows.new_ones(len(rows), 1)
    solution = torch.linalg.lstsq(torch.cat([rows, ones], 1).cpu(),
                                  target.reshape(-1, target.shape[-1]).cpu(),
                                  driver="gelsd").solution
    weight, bias = solution[:-1].t(), solution[-1]
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    assert layer.bias is not None
    layer.bias.copy_(bias)
