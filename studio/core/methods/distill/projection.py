"""Learned projections that map a student feature to its teacher's width (FitNets regressors)."""

from __future__ import annotations

from torch import Tensor, nn

from studio.core.errors import StudioError


class FeatureProjector(nn.Module):
    """1x1 convolution for 4-D maps (N, C, H, W); Linear on the last dim for 2-D (N, C) and
    3-D (N, L, C) features; identity when the widths already agree.

    Built from the two shapes seen on an example batch, so widths never have to be typed in.
    Spatial or sequence sizes may differ: :func:`~.losses.align_features` pools them afterwards.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(student_shape) != len(teacher_shape):
            raise StudioError(f"feature KD: student feature {student_shape} and teacher feature "
                              f"{teacher_shape} have different ranks; pick layers of the same kind")
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        rank = len(student_shape)
        if rank == 4:
            s_width, t_width = student_shape[1], teacher_shape[1]
            self.proj: nn.Module = (nn.Conv2d(s_width, t_width, 1) if s_width != t_width
                                    else nn.Identity())
        elif rank in (2, 3):
            s_width, t_width = student_shape[-1], teacher_shape[-1]
            self.proj = nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()
        elif student_shape[1:] == teacher_shape[1:]:
            self.proj = nn.Identity()
        else:
            raise StudioError(f"feature KD: cannot project a {rank}-D feature {student_shape} "
                              f"onto {teacher_shape}; use 2-D, 3-D or 4-D features")

    @property
    def learned(self) -> bool:
        """Whether this projection has weights to train (widths differ)."""
        return not isinstance(self.proj, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)
