"""Online distillation, deep mutual learning (Zhang et al. 2018): no pre-trained teacher; the
compressed model and a peer of the same shape train together, each on the labels and on the
other's softened outputs. The peer starts as a slightly perturbed copy: two identical copies fed
the same batches would stay identical and teach each other nothing.

Both learn in the one training loop: the loss returns the sum of both students' losses, whose
gradients do not mix, so one optimizer over both parameter sets is two coupled updates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.methods.distill.losses import distillation_loss, soft_targets
from studio.core.util import first_tensor

PEER_NOISE = 0.02
"""Std of the peer's weight perturbation, relative to each tensor's own std (its mean size
where all its values are equal)."""


def make_peer(model: nn.Module, seed: int = 0, noise: float = PEER_NOISE) -> nn.Module:
    """A copy of ``model`` with every floating weight nudged by seeded Gaussian noise."""
    peer = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in peer.parameters():
            if param.is_floating_point() and param.numel() > 1:
                values = param.detach().float()
                scale = float(values.std()) or float(values.abs().mean())  # BN scales: all 1
                scale *= noise
                jitter = torch.randn(param.shape, generator=generator) * scale
                param.add_(jitter.to(device=param.device, dtype=param.dtype))
    peer.requires_grad_(True)
    return peer


def _scores(model: nn.Module, inputs: Tensor) -> Tensor:
    output = first_tensor(model(inputs))
    if output is None:
        raise StudioError("mutual learning: the model returned no tensor")
    return output


class MutualLoss:
    """``(model, inputs, labels) -> loss`` training ``model`` and ``peer`` together.

    Each student's loss is ``alpha * KD(other's softened outputs) + (1 - alpha) * CE``; the
    other's outputs are detached, so each learns only from its own term. ``last`` holds the
    latest disagreement (KL between the two at the temperature)."""

    def __init__(self, model: nn.Module, peer: nn.Module, temperature: float = 1.0,
                 alpha: float = 0.5) -> None:
        self.model = model
        self.peer = peer
        self.temperature = temperature
        self.alpha = alpha
        self.last: dict[str, Tensor] = {}

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None
                 ) -> Tensor:
        if model is not self.model:
            raise StudioError("the mutual-learning loss was built for another model")
        if labels is None:
            raise StudioError("mutual learning needs labels: two students without them only "
                              "learn to agree with each other; use mode teacher instead")
        for mine, theirs in zip(model.modules(), self.peer.modules(), strict=True):
            theirs.training = mine.training  # the peer trains in the model's mode
        own, other = _scores(model, inputs), _scores(self.peer, inputs)
        t = self.temperature
        own_loss = distillation_loss(own, soft_targets([other.detach()], t), labels, t,
                                     self.alpha)
        peer_loss = distillation_loss(other, soft_targets([own.detach()], t), labels, t,
                                      self.alpha)
        self.last = {"model": own_loss.detach(), "peer": peer_loss.detach()}
        return own_loss + peer_loss


def keep_better(model: nn.Module, peer: nn.Module, data: TensorDataset,
                score: Callable[[nn.Module, TensorDataset], float]) -> dict[str, float | str]:
    """Copy the peer's weights into ``model`` when it scores higher on ``data`` (a split
    drawn from the training data, never the test split); returns both scores and the pick."""
    mine, theirs = score(model, data), score(peer, data)
    chosen = "peer" if theirs > mine else "model"
    if chosen == "peer":
        model.load_state_dict(peer.state_dict())
    peer.eval()
    return {"model": mine, "peer": theirs, "kept": chosen}
