"""Least-squares reconstruction of a channel-pruned network against its uncompressed original
(few-sample knowledge distillation), without labels.

Cutting output channels leaves every later layer weighing what is left of its input as if
nothing were missing, and the errors compound: the demo CNN with half of every convolution's
channels cut falls from 98.5% to 10%. Each Conv2d and Linear is re-fitted by linear least
squares so that its output equals the uncompressed model's at the channels it kept, on the
calibration samples: the teacher's features as targets, solved in closed form before any training
(Li et al. 2020, "Few Sample Knowledge Distillation for Efficient Network Compression"; He et al.
2017 re-fit pruned layers the same way). Layers are solved in forward order and the student's
inputs recomputed after each re-fit, so an error is corrected downstream instead of compounding;
the ridge pulls toward the pruned weights. Which of the teacher's channels a layer kept comes from
the structured-pruning report.

Hand-written: the normal equations of :mod:`reconstruct` on unfolded convolution inputs; no
library re-fits the layers of a pruned torch model against another model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from studio.core.graph.observe import evaluating, forward_hooks, observe, run_model
from studio.core.methods.pruning.reconstruct import NormalSums, solve_toward

CHANNEL_RIDGE = 0.01
"""Pull toward the pruned weights, relative to the inputs' mean square."""
MAX_INPUTS = 8192
"""A layer with more inputs (kernel area times channels, or features) is left alone: its
float64 Gram matrix and solve would cost gigabytes and minutes (VGG's first classifier layer
has 25,088)."""
ROWS_PER_BATCH = 4096
"""At most this many output positions (pixels, tokens) of a batch enter a layer's sums, drawn
at random with a fixed seed, so a large image costs no more memory than a small one."""


NOTHING_TO_CORRECT = 1e-6
"""A layer whose output already equals the original's this closely (relative) is not counted
as re-fitted: it comes before the cut."""


class _Stop(Exception):
    """Ends a student's forward pass once the layer being fitted has been seen."""


def kept_outputs(groups: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Layer -> the teacher's output channels it kept, from the structured report's groups."""
    kept: dict[str, list[int]] = {}
    for group in groups:
        own, counts = group.get("removed_by_layer", {}), group.get("channels_by_layer", {})
        for name in group["layers"]:
            removed = set(own.get(name, group["removed_channels"]))
            count = counts.get(name, group["channels_before"])
            kept[name] = [i for i in range(count) if i not in removed]
    return kept


def _why_not(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return "not a Conv2d or Linear"
    if module.groups != 1:
        return "a grouped convolution"
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return "padding other than explicit zeros"
    return None


def _forward_order(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Module name -> how many times one forward pass calls it, in the order of first call."""
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
        return count

    observe(model, example, [(module, hook(name)) for name, module in model.named_modules()
                             if isinstance(module, nn.Conv2d | nn.Linear)])
    return calls


def fitted_layers(student: nn.Module, teacher: nn.Module, kept: Mapping[str, list[int]],
                  example: Tensor, leave: Iterable[str] = ()
                  ) -> tuple[list[tuple[str, list[int]]], dict[str, str]]:
    """The layers to re-fit in forward order, each with the teacher channels its outputs match,
    and the layers left as they are with the reason (``leave``: masked by sparsity, which a
    dense re-fit would undo)."""
    masked = set(leave)
    teachers = dict(teacher.named_modules())
    students = dict(student.named_modules())
    layers: list[tuple[str, list[int]]] = []
    skipped: dict[str, str] = {}
    tied = _tied_weights(student)
    for name, calls in _forward_order(student, example).items():
        module, original = students[name], teachers.get(name)
        reason = _why_not(module)
        if reason is None and name in masked:
            reason = "sparse by unstructured or N:M pruning (now or as its schedule goes on)"
        if reason is None and module.weight[0].numel() > MAX_INPUTS:
            reason = (f"too wide to solve here ({module.weight[0].numel():,} inputs, at most "
                      f"{MAX_INPUTS:,})")
        if reason is None and calls > 1:
            reason = "called more than once per forward pass"
        if reason is None and type(original) is not type(module):
            reason = "the uncompressed model has no layer of this name and kind"
        if reason is not None:
            skipped[name] = reason
            continue
        if id(module.weight) in tied:
            skipped[name] = ("its weight is tied to another layer's, which a re-fit would "
                             "change too")
            continue
        outputs = original.weight.shape[0]
        channels = kept.get(name, list(range(outputs)) if module.weight.shape[0] == outputs
                            else None)
        if channels is None or len(channels) != module.weight.shape[0]:
            skipped[name] = "its outputs were cut by another method"
            continue
        if not _sliced_from(module.weight, original.weight, channels):
            skipped[name] = ("its weights are not the original's at the channels it kept "
                             "(changed since the cut)")
            continue
        layers.append((name, channels))
    return layers, skipped


def _tied_weights(model: nn.Module) -> set[int]:
    """Ids of the parameters that more than one module holds (a language model's output
    layer tied to its input embeddings): re-fitting one would silently change the other."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            holders[id(parameter)] = holders.get(id(parameter), 0) + 1
    return {key for key, count in holders.items() if count > 1}


def _sliced_from(weight: Tensor, original: Tensor, channels: Sequence[int],
                 rows: int = 8) -> bool:
    """Whether ``weight`` still holds the original's values at ``channels``: a cut only slices,
    so every value of a kept row is one of its original row's (checked on a few rows). Guards
    against a wrong channel map or weights trained since the cut, which the re-fit would fit
    to the wrong targets."""
    for row in torch.linspace(0, len(weight) - 1, min(rows, len(weight))).long().tolist():
        if not torch.isin(weight[row].detach().flatten(),
                          original[channels[row]].detach().flatten()).all():
            return False
    return True


def _rows(module: nn.Module, inputs: Tensor, position: int, batch: int) -> Tensor:
    """The layer's input as one row per output position (unfolded patches for a convolution),
    at the positions :func:`_chosen` draws. A convolution is unfolded one image at a time: the
    whole batch's patches (kernel area times the input's size) never exist at once."""
    if not isinstance(module, nn.Conv2d):
        rows = inputs.reshape(-1, inputs.shape[-1])
        chosen = _chosen(len(rows), position, batch)
        return rows if chosen is None else rows[chosen]
    per_image = 1
    for size, kernel, padding, dilation, stride in zip(
            inputs.shape[2:], module.kernel_size, module.padding, module.dilation,
            module.stride, strict=True):
        per_image *= (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    chosen = _chosen(len(inputs) * per_image, position, batch)
    parts = []
    for index, image in enumerate(inputs.split(1)):
        patches = nn.functional.unfold(image, module.kernel_size, module.dilation,
                                       module.padding, module.stride)[0].T
        if chosen is not None:
            inside = chosen[(chosen >= index * per_image) & (chosen < (index + 1) * per_image)]
            patches = patches[inside - index * per_image]
        parts.append(patches)
    return torch.cat(parts)


def _outputs(module: nn.Module, output: Tensor, channels: Sequence[int]) -> Tensor:
    """The layer's output at ``channels`` as one row per output position."""
    if isinstance(module, nn.Conv2d):
        return output[:, list(channels)].permute(0, 2, 3, 1).reshape(-1, len(channels))
    return output[..., list(channels)].reshape(-1, len(channels))


def _chosen(count: int, layer: int, batch: int) -> Tensor | None:
    """The same positions for teacher and student: a seeded draw per (layer, batch)."""
    if count <= ROWS_PER_BATCH:
        return None
    generator = torch.Generator().manual_seed(1_000_003 * layer + batch)
    return torch.randperm(count, generator=generator)[:ROWS_PER_BATCH].sort().values


def _teacher_targets(teacher: nn.Module, layers: Sequence[tuple[str, list[int]]],
                     batches: Sequence[Tensor]) -> list[list[Tensor]]:
    """Per layer and batch, the teacher's outputs at the layer's kept channels (one pass per
    batch: the teacher never changes)."""
    targets: list[list[Tensor]] = [[] for _ in layers]
    batch = 0

    def hook(position: int, channels: list[int]) -> Callable[..., None]:
        def keep(module: nn.Module, _args: Any, output: Tensor) -> None:
            rows = _outputs(module, output.detach(), channels)
            chosen = _chosen(len(rows), position, batch)
            targets[position].append(rows if chosen is None else rows[chosen])
        return keep

    hooks = [(teacher.get_submodule(name), hook(position, channels))
             for position, (name, channels) in enumerate(layers)]
    with forward_hooks(hooks), evaluating(teacher):
        for batch, inputs in enumerate(batches):  # noqa: B007 - the hooks read ``batch``
            run_model(teacher, inputs)
    return targets


def _student_rows(student: nn.Module, name: str, inputs: Tensor, position: int, batch: int
                  ) -> Tensor:
    seen: list[Tensor] = []
    module = student.get_submodule(name)

    def hook(_m: nn.Module, args: tuple) -> None:
        seen.append(_rows(module, args[0].detach(), position, batch))
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        run_model(student, inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def _held_out(batches: int) -> list[int]:
    """The batches kept out of the fit to judge it: the last quarter (one of two or three)."""
    count = batches // 4 if batches >= 4 else min(1, batches - 1)
    return list(range(batches - count, batches))


def _accumulate(student: nn.Module, name: str, position: int, batches: Sequence[Tensor],
                targets: Sequence[Tensor], which: Iterable[int], check: Callable[[], None]
                ) -> NormalSums:
    module = student.get_submodule(name)
    bias = module.bias is not None
    width = module.weight[0].numel() + bias
    sums = NormalSums(torch.zeros(width, width, dtype=torch.float64),
                      torch.zeros(width, module.weight.shape[0], dtype=torch.float64))
    for batch in which:
        inputs, target = batches[batch], targets[batch]
        check()
        rows = _student_rows(student, name, inputs, position, batch)
        # float32 products whatever the model's dtype (a bf16 Gram matrix is too coarse to
        # solve), summed on the CPU in float64 wherever the model is (solve_toward's side)
        rows = rows.float()
        target = target.float()
        before = rows @ module.weight.reshape(len(module.weight), -1).T.float()
        if bias:
            before = before + module.bias.float()
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1)
        sums.gram += (rows.T @ rows).double().cpu()
        sums.cross += (rows.T.double() @ target.double()).cpu()
        sums.target_sq += float((target.double() ** 2).sum())
        sums.before_sq += float(((before - target).double() ** 2).sum())
        sums.reference_sq += float((target.double() ** 2).sum())
    return sums


def reconstruct_channels(student: nn.Module, teacher: nn.Module,
                         groups: Iterable[Mapping[str, Any]], inputs: Tensor,
                         ridge: float = CHANNEL_RIDGE, batch_size: int = 64,
                         leave: Iterable[str] = (), check: Callable[[], None] = lambda: None
                         ) -> dict[str, Any] | None:
    """Re-fit ``student``'s Conv2d and Linear layers in forward order, in place, so each one's
    output on ``inputs`` matches ``teacher``'s at the channels it kept (``groups``: the
    structured report's cut groups; ``leave``: layers not to touch).

    The last quarter of the batches is held out: a re-fit is kept only if it lowers the error
    there, and is then solved again on every sample. Returns the JSON-ready report (per layer
    that had something to correct, the relative error before and after its re-fit on the
    held-out samples; the layers left alone and why), or None when there is nothing to fit.
    """
    if len(inputs) == 0:
        return None
    inputs = inputs.to(next(student.parameters()).device)
    layers, skipped = fitted_layers(student, teacher, kept_outputs(groups), inputs[:1], leave)
    if not layers:
        return None
    batches = list(inputs.split(batch_size))
    held = _held_out(len(batches))
    report: dict[str, dict[str, float]] = {}
    with evaluating(student), evaluating(teacher):
        targets = _teacher_targets(teacher, layers, batches)
        for position, (name, _channels) in enumerate(layers):
            if len(targets[position]) != len(batches):
                skipped[name] = "the uncompressed model does not call it once per forward pass"
                continue
            module = student.get_submodule(name)
            fit = _accumulate(student, name, position, batches, targets[position],
                              [b for b in range(len(batches)) if b not in held], check)
            judge = _accumulate(student, name, position, batches, targets[position], held,
                                check) if held else fit
            flat = module.weight.reshape(len(module.weight), -1).T
            current = (torch.cat([flat, module.bias[None]]) if module.bias is not None
                       else flat).double().cpu()
            solution, _ = solve_toward(fit, current, ridge, module.bias is not None)
            norm = judge.reference_sq or 1.0
            before = (judge.before_sq / norm) ** 0.5
            after = (judge.squared_error(solution) / norm) ** 0.5
            if before <= NOTHING_TO_CORRECT:  # before the cut: its inputs are the original's
                continue
            if after < before:  # judged on samples the fit did not see; then fit on all
                if held:
                    solution, _ = solve_toward(fit + judge, current, ridge,
                                               module.bias is not None)
                weights = solution[:flat.shape[0]].T.reshape(module.weight.shape)
                module.weight.copy_(weights.to(module.weight.dtype))
                if module.bias is not None:
                    module.bias.copy_(solution[-1].to(module.bias.dtype))
            report[name] = {"before": before, "after": min(after, before)}
    if not report and not skipped:  # nothing to correct and nothing to say
        return None
    judged = sum(len(batches[b]) for b in held)
    return {"ridge": ridge, "samples": len(inputs), "layers": report, "skipped": skipped,
            "error_on": (f"{judged} held-out calibration samples" if held
                         else "the fitted samples (too few to hold some out)")}


__all__ = ["CHANNEL_RIDGE", "MAX_INPUTS", "fitted_layers", "kept_outputs",
           "reconstruct_channels"]
