"""What a layer-wise method needs to know about a Linear layer's inputs X ([tokens, in])."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from studio.core.methods.layerwise.blocks import weight_matrix


class Hessian:
    """H = 2/n X^T X, the Hessian of the layer's squared output error (SparseGPT, GPTQ),
    kept as a running mean so it never depends on how the tokens were batched."""

    def __init__(self, module: nn.Module) -> None:
        columns = weight_matrix(module).shape[1]
        self.matrix = torch.zeros(columns, columns, dtype=torch.float32,
                                  device=module.weight.device)
        self.tokens = 0

    def add(self, inputs: Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        total = self.tokens + x.shape[0]
        self.matrix.mul_(self.tokens / total).addmm_(x.t(), x, alpha=2.0 / total)
        self.tokens = total


class ColumnNorms:
    """Mean squared value of each input feature (Wanda's ||X_j||^2 up to a constant)."""

    def __init__(self, module: nn.Module) -> None:
        columns = weight_matrix(module).shape[1]
        self.squares = torch.zeros(columns, dtype=torch.float32, device=module.weight.device)
        self.tokens = 0

    def add(self, inputs: Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        total = self.tokens + x.shape[0]
        self.squares.mul_(self.tokens / total).add_(x.pow(2).sum(0) / total)
        self.tokens = total
