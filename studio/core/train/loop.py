"""The one training loop every recovery stage uses (plain fine-tuning, KD, QAT).

The loss is a callable, so distillation and quantization-aware training plug in without their own
loops; ``after_step`` lets pruning schedules re-apply masks or step sparsity between batches.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import MetricTotals, metric_target, needs_reference
from studio.core.data.task import batches
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, Log, Metric, Progress
from studio.core.train.checkpointing import checkpointed
from studio.core.train.memory import MemoryEstimate, estimate_memory, kept_buffers
from studio.core.train.precision import PrecisionChoice, autocast, choose_precision
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
    precision: str = "fp32"
    """fp32, bf16 (autocast) or auto (bf16 when a few timed steps say it is faster)."""
    accumulation_steps: int = 1
    """Batches whose gradients add up before each optimiser step."""
    checkpoint: tuple[str, ...] = ()
    """Modules whose activations are recomputed in the backward pass (gradient checkpointing)."""
    memory_limit: int | None = None
    """Bytes the run may need by the estimate made before it; None: no limit."""


@dataclass(frozen=True)
class TrainSummary:
    """How a run trained, for its stage report."""

    precision: PrecisionChoice
    memory: MemoryEstimate
    optimizer_steps: int
    accumulation_steps: int
    checkpointed: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"precision": self.precision.to_json(), "memory": self.memory.to_json(),
                "optimizer_steps": self.optimizer_steps,
                "accumulation_steps": self.accumulation_steps,
                "gradient_checkpointing": list(self.checkpointed)}


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


def _prepare(model: nn.Module, params: list[nn.Parameter], first: tuple[Tensor, Tensor | None],
             config: TrainConfig, loss_fn: LossFn, stage: str, device: torch.device
             ) -> tuple[PrecisionChoice, MemoryEstimate]:
    """Pick the precision (timing real steps when ``auto``) and estimate the memory on the
    first batch, before any weight changes; refuse a run over the memory limit."""
    inputs, labels = first

    def step(precision: str) -> None:
        with autocast(device, precision):
            loss = loss_fn(model, inputs, labels)
        loss.float().backward()
        for p in params:
            p.grad = None

    with kept_buffers(model):  # the trial steps must not move batch-norm statistics
        choice = choose_precision(config.precision, sum(p.numel() for p in model.parameters()),
                                  step, device)

        def forward() -> Tensor:
            with autocast(device, choice.used):
                return loss_fn(model, inputs, labels)

        memory = estimate_memory(model, params, forward, len(inputs))
    if config.memory_limit is not None and memory.total > config.memory_limit:
        raise StudioError(f"{stage}: training needs {memory.describe()}, over the limit of "
                          f"{config.memory_limit / 1e9:.2f} GB; lower train.batch_size (raise "
                          "train.accumulation_steps to keep the effective batch), turn on "
                          "train.gradient_checkpointing, or recover with adapters")
    return choice, memory


def optimizer_steps(samples: int, config: TrainConfig) -> int:
    """How many optimiser steps :func:`train` takes over ``samples`` training samples (what
    its learning-rate schedule, and a loss with its own schedule, run over)."""
    loader_steps = (samples + config.batch_size - 1) // config.batch_size
    accumulate = max(1, config.accumulation_steps)
    return config.epochs * ((loader_steps + accumulate - 1) // accumulate)


def train(model: nn.Module, data: TensorDataset, config: TrainConfig, token: CancelToken,
          loss_fn: LossFn = cross_entropy, stage: str = "fine-tune",
          after_step: Callable[[int], None] | None = None,
          parameters: list[nn.Parameter] | None = None, dropout: bool = True
          ) -> Generator[Event, None, TrainSummary]:
    """Train ``model`` in place on ``data`` (already on the right device); yields events and
    returns how it trained. ``dropout=False`` trains with dropout off (see
    :func:`train_without_dropout`)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    params = parameters if parameters is not None else [
        p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    accumulate = max(1, config.accumulation_steps)
    total = optimizer_steps(len(data), config)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total))
    step = 0
    if dropout:
        model.train()
    else:
        train_without_dropout(model)
    if len(data) == 0:
        raise StudioError(f"{stage}: there are no training samples")
    with checkpointed(model, config.checkpoint):
        first = _split(next(iter(batches(data, config.batch_size))))
        choice, memory = _prepare(model, params, (first[0].to(device), None if first[1] is None
                                                  else first[1].to(device)),
                                  config, loss_fn, stage, device)
        yield Log(f"{stage}: {choice.used} ({choice.reason}); memory {memory.describe()}")
        for epoch in range(config.epochs):
            chunk: list[list[Tensor]] = []
            for batch in batches(data, config.batch_size, shuffle=True,
                                 seed=config.seed + epoch):
                chunk.append(batch)
                if len(chunk) < accumulate:
                    continue
                loss = _optimizer_step(model, chunk, optimizer, loss_fn, device, choice.used,
                                       token, stage, step)
                chunk = []
                schedule.step()
                step += 1
                if after_step is not None:
                    after_step(step)
                if step % 10 == 0 or step == total:
                    yield Metric(stage, "loss", loss, step)
                yield Progress(stage, step, total)
            if chunk:  # the epoch's last, shorter accumulation
                loss = _optimizer_step(model, chunk, optimizer, loss_fn, device, choice.used,
                                       token, stage, step)
                schedule.step()
                step += 1
                if after_step is not None:
                    after_step(step)
                yield Metric(stage, "loss", loss, step)
                yield Progress(stage, step, total)
    model.eval()
    return TrainSummary(choice, memory, step, accumulate, tuple(config.checkpoint))


def _optimizer_step(model: nn.Module, chunk: list[list[Tensor]], optimizer: torch.optim.Optimizer,
                    loss_fn: LossFn, device: torch.device, precision: str, token: CancelToken,
                    stage: str, step: int) -> float:
    """One optimiser step over the gradients of every batch in ``chunk`` (weighted by size,
    so accumulated batches give the gradient of their union); returns the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    samples = sum(len(batch[0]) for batch in chunk)
    total = 0.0
    for batch in chunk:
        token.check()
        inputs, labels = _split(batch)
        inputs = inputs.to(device)
        labels = labels.to(device) if labels is not None else None
        with autocast(device, precision):
            loss = loss_fn(model, inputs, labels).float()
        if not torch.isfinite(loss):
            raise StudioError(f"{stage}: the loss became {loss.item()} at step {step}; "
                              "lower the learning rate")
        (loss * (len(inputs) / samples)).backward()
        total += float(loss.detach()) * len(inputs) / samples
    optimizer.step()
    return total


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

