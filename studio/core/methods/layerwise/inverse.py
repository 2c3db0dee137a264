"""The upper Cholesky factor of H^-1 that SparseGPT's and GPTQ's column sweeps read."""

from __future__ import annotations

import torch
from torch import Tensor


def dampened_inverse_factor(hessian: Tensor, weight: Tensor, damping: float = 0.01
                            ) -> Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1 (H^-1 = U^T U), lambda = ``damping`` x
    mean(diag H). Inputs that were always zero (diag 0) get H_jj = 1 and their weights are
    zeroed in ``weight`` in place: they never reach the output. When H is too ill-conditioned
    for Cholesky, the damping grows tenfold (up to three times)."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    mean = torch.diag(h).mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(4):
        factor, info = torch.linalg.cholesky_ex(h + damping * 10**attempt * mean * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise ValueError("the calibration Hessian is not positive definite even with damping; "
                     "use more calibration tokens")
