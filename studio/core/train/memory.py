"""How much memory a training run needs, estimated before it starts, so a run that cannot fit
stops with the figures instead of swapping or being killed half way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from studio.core.limits import memory_budget

ADAM_STATES = 2
"""AdamW keeps two float32 moments per trained parameter."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    """Every parameter and buffer of the model (bytes)."""
    gradients: int
    optimizer: int
    activations: int
    """Tensors saved for the backward pass of one batch, measured on a real batch."""
    batch_size: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        gb = 1e9
        return (f"about {self.total / gb:.2f} GB (weights {self.weights / gb:.2f}, gradients "
                f"{self.gradients / gb:.2f}, optimiser state {self.optimizer / gb:.2f}, "
                f"activations {self.activations / gb:.2f} for a batch of {self.batch_size})")


def _bytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(run: Callable[[], Tensor], exclude: Sequence[Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves while ``run`` computes a loss (the
    parameters in ``exclude`` are counted as weights, not again). Checkpointed modules save
    their inputs only, so the figure shows what checkpointing gains."""
    seen = {t.data_ptr() for t in exclude}
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        pointer = tensor.data_ptr() if tensor.layout == torch.strided else id(tensor)
        if pointer not in seen:
            saved[pointer] = max(saved.get(pointer, 0), tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        run()
    return sum(saved.values())


def estimate_memory(model: nn.Module, trained: Sequence[nn.Parameter],
                    run: Callable[[], Tensor], batch_size: int) -> MemoryEstimate:
    params = list(model.parameters())
    return MemoryEstimate(
        weights=_bytes(params) + _bytes(list(model.buffers())),
        gradients=_bytes(list(trained)),
        optimizer=ADAM_STATES * sum(p.numel() * 4 for p in trained),
        activations=saved_activation_bytes(run, params),
        batch_size=batch_size)


def memory_limit(gigabytes: float | None, device: torch.device) -> int:
    """The bytes a run may need: ``gigabytes`` when given, else the GPU's or the machine's."""
    if gigabytes is not None:
        return int(gigabytes * 1e9)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return memory_budget()


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Restore the model's buffers (batch-norm statistics) after trial forwards."""
    saved = {name: b.clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
