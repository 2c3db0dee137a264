"""The one training loop every recovery stage uses (plain fine-tuning, KD, QAT).

The loss is a callable, so distillation and quantization-aware training plug in without their own
loops; ``after_step`` lets pruning schedules re-apply masks or step sparsity between batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import MetricTotals, metric_target, needs_reference
from studio.core.data.task import batches
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, Metric, Progress
from studio.core.util import first_tensor

LEARNS_FROM_BATCHES = "learns_from_batches"
"""A module class setting this attribute true keeps training mode while the rest of the model
is in eval mode (QAT layers learning their activation ranges), like batch norms."""
LossFn = Callable[[nn.Module, Tensor, Tensor | None], Tensor]
"""(model, inputs, labels) -> scalar loss; labels are None for unlabelled data."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise StudioError(f"device {choice!r}: no CUDA GPU is available here; use cpu or auto")
    return torch.device(choice)


def cross_entropy(model: nn.Module, inputs: Tensor, labels: Tensor | None) -> Tensor:
    if labels is None:
        raise StudioError("fine-tuning with cross entropy needs labels; unlabelled data is "
                          "trained by matching the uncompressed model's outputs")
    return nn.functional.cross_entropy(model(inputs), labels)


def _split(batch: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """(inputs, labels) of a labelled batch, (inputs, None) of an inputs-only one."""
    return batch[0], (batch[1] if len(batch) > 1 else None)


def train_without_dropout(model: nn.Module) -> None:
    """Training mode for what learns from batches (batch norms' running statistics, QAT layers'
    activation ranges) and eval mode for the rest: dropout (modules, and attention code that
    reads ``self.training``) is off.

    For matching a teacher's outputs the target is exact, so dropout only adds noise: on a pruned
    MiniLM it inflated the matching loss by half and stalled recovery."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or getattr(
                module, LEARNS_FROM_BATCHES, False):
            module.train()


def train(model: nn.Module, data: TensorDataset, config: TrainConfig, token: CancelToken,
          loss_fn: LossFn = cross_entropy, stage: str = "fine-tune",
          after_step: Callable[[int], None] | None = None,
          parameters: list[nn.Parameter] | None = None, dropout: bool = True
          ) -> Iterator[Event]:
    """Train ``model`` in place on ``data`` (already on the right device); yields events.
    ``dropout=False`` trains with dropout off (see :func:`train_without_dropout`)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    params = parameters if parameters is not None else [
        p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loader_steps = (len(data) + config.batch_size - 1) // config.batch_size
    total = config.epochs * loader_steps
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total))
    step = 0
    if dropout:
        model.train()
    else:
        train_without_dropout(model)
    for epoch in range(config.epochs):
        for batch in batches(data, config.batch_size, shuffle=True, seed=config.seed + epoch):
            token.check()
            inputs, labels = _split(batch)
            inputs = inputs.to(device)
            labels = labels.to(device) if labels is not None else None
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, inputs, labels)
            if not torch.isfinite(loss):
                from studio.core.errors import StudioError

                raise StudioError(f"{stage}: the loss became {loss.item()} at step {step}; "
                                  "lower the learning rate")
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if after_step is not None:
                after_step(step)
            if step % 10 == 0 or step == total:
                yield Metric(stage, "loss", float(loss.detach()), step)
            yield Progress(stage, step, total)
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, token: CancelToken | None = None,
             device: str = "cpu", batch_size: int = 256, metric: str = "accuracy",
             reference: Tensor | None = None) -> float:
    """``metric`` of ``model`` on ``data``: top-1 accuracy against its labels, perplexity of
    its next-token logits on the input tokens, or agreement (cosine, top1_agreement, mse) with
    ``reference``, the uncompressed model's outputs on the same samples in order (see
    :func:`studio.core.export.measure.torch_outputs`)."""
    if needs_reference(metric) and reference is None:
        raise StudioError(f"evaluating {metric} needs the uncompressed model's outputs")
    model.eval()
    target = resolve_device(device)
    totals = MetricTotals(metric)
    start = 0
    for batch in batches(data, batch_size):
        if token is not None:
            token.check()
        inputs, labels = _split(batch)
        outputs = first_tensor(model(inputs.to(target)))
        assert outputs is not None, "the model returned no tensor"
        rows = None if reference is None else reference[start:start + len(inputs)]
        totals.add(outputs, metric_target(metric, inputs, labels, rows))
        start += len(inputs)
    return totals.value()

