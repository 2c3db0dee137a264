"""Self-distillation (Zhang et al. 2019, "Be Your Own Teacher"): no other teacher. Auxiliary
heads read the outputs of shallower layers and learn both the labels and the model's own final,
softened outputs; their gradients reach the shallow layers as extra supervision.

The heads live beside the model (captured with forward hooks), never inside it, so the model
that is trained is the model that is exported: the heads are dropped by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.features import FeatureCapture
from studio.core.methods.distill.losses import distillation_loss, soft_targets
from studio.core.util import first_tensor


class AuxHead(nn.Module):
    """Global average pooling (over space or sequence) then a linear classifier."""

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) not in (2, 3, 4):
            raise StudioError(f"self-distillation: cannot attach a head to a feature of "
                              f"shape {list(feature_shape)}; pick a layer with 2-D, 3-D or "
                              "4-D outputs")
        width = feature_shape[1] if len(feature_shape) == 4 else feature_shape[-1]
        self.rank = len(feature_shape)
        self.classify = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.rank == 4:
            x = x.mean((2, 3))
        elif self.rank == 3:
            x = x.mean(1)
        return self.classify(x)


def default_self_layers(model: nn.Module) -> list[str]:
    """The model's top-level children that hold weights, except the last: one head per stage."""
    named = [(name, child) for name, child in model.named_children()
             if any(True for _ in child.parameters())]
    return [name for name, _ in named[:-1]]


class SelfDistillLoss:
    """``CE(final) + aux_weight * sum(alpha * KD(head, final softened) + (1 - alpha) * CE)``.

    Call :meth:`close` to remove the hooks; ``heads`` are trained through
    ``extra_parameters`` and thrown away afterwards."""

    def __init__(self, model: nn.Module, layers: Sequence[str], example_inputs: Tensor,
                 temperature: float = 4.0, alpha: float = 0.7, aux_weight: float = 0.3,
                 seed: int = 0) -> None:
        if not layers:
            raise StudioError("self-distillation: no layers to attach auxiliary heads to; "
                              "name them in distill.self_layers")
        self.model = model
        self.layers = list(layers)
        self.temperature, self.alpha, self.aux_weight = temperature, alpha, aux_weight
        self._capture = FeatureCapture(model, self.layers, "model", clone=False)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                output = first_tensor(model(example_inputs))
        finally:
            model.train(was_training)
        if output is None or output.dim() != 2:
            self._capture.close()
            raise StudioError("self-distillation needs a classifier (scores of shape "
                              "[batch, classes])")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleDict({
                str(i): AuxHead(tuple(self._capture[name].shape), output.shape[-1]).to(
                    output.device) for i, name in enumerate(self.layers)})
        self._capture.clear()
        self.last: dict[str, Tensor] = {}

    @property
    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None
                 ) -> Tensor:
        if labels is None:
            raise StudioError("self-distillation needs labels (its heads learn them with the "
                              "model's own outputs); use mode teacher for unlabelled data")
        self._capture.clear()
        final = first_tensor(model(inputs))
        assert final is not None
        total = nn.functional.cross_entropy(final, labels)
        targets = soft_targets([final.detach()], self.temperature)
        for index, name in enumerate(self.layers):
            logits = self.heads[str(index)](self._capture[name])
            term = distillation_loss(logits, targets, labels, self.temperature, self.alpha)
            self.last[f"aux/{name}"] = term.detach()
            total = total + self.aux_weight * term
        self._capture.clear()
        return total

    def close(self) -> None:
        self._capture.close()
