"""Train a supernet once so that its subnets work without retraining each (once-for-all).

Progressive shrinking: the largest network first learns to run with its residual blocks
skipped (elastic depth), then with ever smaller widths, one more width allowed per stage; the
channels are ranked again before each width stage, and the last stage (every width) takes half
of the steps. Every step follows the sandwich rule: the
largest subnet learns from the labels (or, on unlabelled data, from the original model), and
its outputs are the soft targets the smallest and two random subnets learn from (in-place
distillation). The loop is written here rather than on :func:`studio.core.train.loop.train`
because one optimizer step runs four differently masked forwards of one model.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from studio.core.data.task import batches
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, Log, Metric, Progress
from studio.core.methods.distill.losses import logit_kd_loss, soft_targets
from studio.core.methods.elastic.supernet import Subnet, Supernet

STAGE = "supernet"


@dataclass(frozen=True)
class SupernetConfig:
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    skip_blocks: bool = True
    random_subnets: int = 2
    """Random subnets per step, beside the largest and the smallest (the sandwich rule)."""
    temperature: float = 1.0


@dataclass(frozen=True)
class ShrinkStage:
    widths: tuple[float, ...]
    skip: bool


def shrinking_stages(widths: tuple[float, ...], skip: bool) -> list[ShrinkStage]:
    """Depth first (at full width), then one more width per stage, widest first."""
    ordered = tuple(sorted(set(widths) | {1.0}, reverse=True))
    stages = [ShrinkStage((1.0,), True)] if skip else []
    stages += [ShrinkStage(ordered[:count], skip) for count in range(2, len(ordered) + 1)]
    return stages or [ShrinkStage(ordered, skip)]


def stage_at(step: int, total: int, count: int) -> int:
    """The stage a step trains: the last stage (every width) takes the second half of the
    steps, as once-for-all spends most of its schedule there; the earlier stages share the
    first half equally."""
    last = count - 1
    early = total // 2
    if last == 0 or step >= early:
        return last
    return step * last // early


def train_supernet(supernet: Supernet, data: TensorDataset, config: SupernetConfig,
                   token: CancelToken) -> Generator[Event, None, dict[str, object]]:
    """Train ``supernet.model`` in place; yields progress, returns what it did."""
    if len(data) == 0:
        raise StudioError(f"{STAGE}: there are no training samples")
    model = supernet.model
    labelled = len(data.tensors) > 1
    teacher = None if labelled else copy.deepcopy(model).eval().requires_grad_(False)
    stages = shrinking_stages(tuple(config.widths), config.skip_blocks and bool(supernet.blocks))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    per_epoch = (len(data) + config.batch_size - 1) // config.batch_size
    total = config.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total))
    step, current = 0, -1
    losses: list[float] = []
    for epoch in range(config.epochs):
        model.train()
        for batch in batches(data, config.batch_size, shuffle=True, seed=config.seed + epoch):
            token.check()
            index = stage_at(step, total, len(stages))
            stage = stages[index]
            if index != current:
                current = index
                if len(stage.widths) > 1:
                    supernet.rerank()
                yield Log(f"{STAGE}: stage {index + 1} of {len(stages)} from step {step + 1}: "
                          f"widths {', '.join(f'{w:g}' for w in stage.widths)}"
                          f"{', blocks skippable' if stage.skip else ''}")
            loss = _sandwich_step(supernet, batch, stage, rng, config, teacher)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss)
            if step % 10 == 0 or step == total:
                yield Metric(STAGE, "loss", loss, step)
            yield Progress(STAGE, step, total)
    model.eval()
    return {"epochs": config.epochs, "steps": step, "stages": [
        {"widths": list(s.widths), "skip": s.skip} for s in stages],
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5)}


def _sandwich_step(supernet: Supernet, batch: list[Tensor], stage: ShrinkStage,
                   rng: random.Random, config: SupernetConfig,
                   teacher: torch.nn.Module | None) -> float:
    """Gradients of the largest, the smallest and random subnets on one batch, summed."""
    model = supernet.model
    inputs = batch[0]
    for p in model.parameters():
        p.grad = None
    largest = model(inputs)
    if teacher is None:
        loss = F.cross_entropy(largest, batch[1])
    else:
        with torch.no_grad():
            target = soft_targets([teacher(inputs)], config.temperature)
        loss = logit_kd_loss(largest, target, config.temperature)
    loss.backward()
    targets = soft_targets([largest.detach()], config.temperature)
    total = float(loss.detach())
    students: list[Subnet] = [supernet.smallest(stage.widths, stage.skip)]
    students += [supernet.sample(rng, stage.widths, stage.skip)
                 for _ in range(config.random_subnets)]
    for subnet in students:
        with supernet.active(subnet) as active:
            kd = logit_kd_loss(active(inputs), targets, config.temperature)
        kd.backward()
        total += float(kd.detach())
    return total
