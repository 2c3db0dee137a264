"""Re-estimate batch-norm running statistics on a few samples (forward passes only).

A model whose channels changed (pruned, or a subnet of a supernet) still carries the running
mean and variance of the model it came from; re-estimating them recovers much of the loss
without any fine-tuning. Written here rather than taken from
``torch.optim.swa_utils.update_bn``, which puts the whole model in training mode, so dropout
would disturb the statistics it measures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.data.task import batches
from studio.core.jobs import CancelToken


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


@torch.no_grad()
def reestimate_batch_norms(model: nn.Module, data: TensorDataset, batch_size: int,
                           token: CancelToken | None = None) -> int:
    """Reset every BatchNorm's statistics and average them afresh over ``data`` (inputs first);
    the rest of the model stays in eval mode. Returns how many BatchNorms were re-estimated."""
    norms = batch_norms(model)
    was_training = model.training
    saved = [(norm, norm.momentum) for norm in norms]
    model.eval()
    for norm in norms:  # a cumulative average over every batch, from scratch
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for (inputs, *_) in batches(data, batch_size):
            if token is not None:
                token.check()
            model(inputs)
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)
