"""Distillation as a recovery stage: ``train`` with the KD loss, hooks always removed after."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.jobs import CancelToken, Event, Metric
from studio.core.methods.distill.distiller import KDConfig, make_kd_loss, training_parameters
from studio.core.train.loop import TrainConfig, resolve_device, train


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module], data: TensorDataset,
            config: TrainConfig, kd: KDConfig, token: CancelToken,
            example_inputs: Tensor | None = None, stage: str = "distill",
            after_step: Callable[[int], None] | None = None) -> Iterator[Event]:
    """Train ``student`` in place against ``teachers``; yields the loop's events plus each KD
    term (``kd/logit``, ``kd/feature/<layer>``, ...) whenever the loop reports its loss.

    ``example_inputs`` (two training samples when ``None``) sizes the feature projections.
    Cancel raises ``JobCancelled`` from the loop within one batch; hooks are removed either way.
    """
    device = resolve_device(config.device)
    if example_inputs is None:
        example_inputs = data.tensors[0][:2]
    setup = make_kd_loss(student, teachers, kd, example_inputs.to(device))
    try:
        params = training_parameters(student, setup.extra_parameters)
        for event in train(student, data, config, token, loss_fn=setup.loss_fn, stage=stage,
                           after_step=after_step, parameters=params):
            yield event
            if isinstance(event, Metric) and event.name == "loss":
                for name, value in setup.loss_fn.last.items():
                    yield Metric(stage, f"kd/{name}", float(value), event.step)
    finally:
        setup.close()
